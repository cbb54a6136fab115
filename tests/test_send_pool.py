"""The pooled transport behind the SendGrid client writes requests through ``h11`` and reads
answers through ``httptools`` when they are plain, ``h11`` otherwise, rather than
``http.client`` (the library's own transport before it). A plain answer reads the same through
either parser, and does not reach ``h11``. What a server or
the client code could notice stays the same: on generated requests (methods, paths and queries,
header names and values, bodies) the server reads the request ``http.client`` would have sent
(whether the request was built or taken from the pool's cache of built requests),
and on generated answers (statuses, headers, bodies by length, chunked or up to the close,
HTTP/1.0 and 1.1, interim answers, any split into reads) the client gets the status, headers
and body ``http.client`` reads, and the connection is kept or closed as it would be. Where
``h11`` is stricter or follows the RFC more closely than ``http.client``, the test says so
(an HTTP/1.0 answer closes its connection, an interim 1xx answer is followed by the answer,
204 and 304 answers have no body). Hostile input is refused: a header or target that would
break a request raises before anything is sent, a broken answer raises the ``URLError`` the
mail backend treats as transient, and a kept-alive connection the server closed while idle is
retried once on a new one."""

from __future__ import annotations

import http.client
import io
from typing import Any
from urllib.error import HTTPError, URLError

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.send.pool import ConnectionPool, _Connection, _Read, _request


class Wire:
    """A socket stand-in: what is sent is kept, reads come from ``answer`` ``piece`` bytes at a
    time, then the end of the connection."""

    def __init__(self, answer: bytes = b"", piece: int = 65536) -> None:
        self.sent = b""
        self.answer = answer
        self.piece = piece
        self.closed = False

    def sendall(self, data: bytes) -> None:
        self.sent += bytes(data)

    def recv(self, size: int) -> bytes:
        out, self.answer = (
            self.answer[: min(size, self.piece)],
            self.answer[min(size, self.piece) :],
        )
        return out

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.answer))  # what http.client reads from

    def gettimeout(self) -> float | None:
        return None

    def settimeout(self, timeout: float | None) -> None:
        pass

    def close(self) -> None:
        self.closed = True


class Pool(ConnectionPool):
    """A pool whose new connections are :class:`Wire` s answering with ``answers`` in turn."""

    def __init__(self, *answers: bytes, piece: int = 65536) -> None:
        super().__init__("http://fake.test")
        self.wires = [Wire(answer, piece) for answer in answers]
        self.used: list[Wire] = []

    def _new(self, timeout: float | None) -> _Connection:
        self.used.append(self.wires.pop(0))
        return _Connection(self.used[-1])  # type: ignore[arg-type]


class Capturing(http.client.HTTPConnection):
    """``http.client`` writing a request onto a :class:`Wire`."""

    def connect(self) -> None:
        self.sock = Wire()


def written_by_http_client(
    method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> bytes:
    """What the library's own transport sent: ``http.client`` with ``Host`` set from the URL."""
    parts = http.client.urlsplit(url)  # type: ignore[attr-defined]
    connection = Capturing("fake.test")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request(method, target, body, {**headers, "Host": parts.netloc, **headers})
    assert isinstance(connection.sock, Wire)
    return connection.sock.sent


def as_a_server_reads_it(request: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """A request as ``http.server`` reads it: its line, its headers (their order aside) and
    its body by ``Content-Length``."""
    wire = io.BytesIO(request)
    line = wire.readline().decode("latin-1").rstrip("\r\n")
    headers = http.client.parse_headers(wire)
    body = wire.read(int(headers.get("Content-Length", 0)))
    assert wire.read() == b"", "bytes after the request"
    return line, sorted(headers.items()), body


def sent_by_pool(method: str, url: str, body: bytes | None, headers: dict[str, str]) -> bytes:
    """The request sent twice on one connection, the same bytes both times: the second from
    the cache of requests, as may be the first (filled by the examples before, a request
    taken for another's would show as a difference from ``http.client``)."""
    pool = Pool(b"HTTP/1.1 204 No Content\r\n\r\n" * 2)
    for _ in range(2):
        pool.request(method, url, body, headers, 5.0)
    sent = pool.used[0].sent
    assert len(pool.used) == 1 and sent[: len(sent) // 2] == sent[len(sent) // 2 :]
    return sent[: len(sent) // 2]


def read_by_http_client(answer: bytes, method: str) -> tuple[int, list[Any], bytes, bool]:
    response = http.client.HTTPResponse(Wire(answer), method=method)  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    return response.status, response.headers.items(), body, response.will_close


def read_by_pool(
    answer: bytes, method: str, piece: int = 65536
) -> tuple[int, list[Any], bytes, bool]:
    """The answer as the client code gets it (an error status raised as ``urllib`` raises it),
    and whether its connection was closed rather than kept for the next request."""
    pool = Pool(answer, piece=piece)
    try:
        got = pool.request(method, "http://fake.test/v3/mail/send", b"{}", {}, 5.0)
        status, headers, body = got.getcode(), got.info(), got.read()
    except HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    closed = pool.used[0].closed
    assert closed == (not pool._idle)
    return status, headers.items(), body, closed


TOKEN = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_", min_size=1)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"))
HEADERS = st.dictionaries(
    TOKEN.filter(lambda n: n.lower() not in {"host", "content-length", "accept-encoding"}),
    VALUE.map(str.strip),
    max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD"]),
    path=st.lists(TOKEN, max_size=4).map(lambda parts: "/" + "/".join(parts)),
    query=st.one_of(st.just(""), st.from_regex(r"\A[a-z]+=[a-z0-9%]*(&[a-z]+=[a-z0-9]*)*\Z")),
    host=st.sampled_from(["api.sendgrid.com", "127.0.0.1:8025", "[::1]:8080"]),
    body=st.one_of(st.none(), st.binary(max_size=300)),
    headers=HEADERS,
)
def test_a_server_reads_the_request_http_client_would_have_sent(
    method: str, path: str, query: str, host: str, body: bytes | None, headers: dict[str, str]
) -> None:
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    expected = as_a_server_reads_it(written_by_http_client(method, url, body, headers))
    assert as_a_server_reads_it(sent_by_pool(method, url, body, headers)) == expected


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "one\r\nX-Injected: yes"},
        {"X-A": "one\nX-Injected: yes"},
        {"X-A": "one\rtwo"},
        {"X-A": "nul\x00"},
        {"X A": "space in the name"},
        {"X-A:": "colon in the name"},
        {"": "no name"},
    ],
)
def test_a_header_that_would_break_the_request_is_refused(headers: dict[str, str]) -> None:
    pool = Pool(b"HTTP/1.1 204 No Content\r\n\r\n")
    with pytest.raises(h11.LocalProtocolError):
        pool.request("POST", "http://fake.test/v3/mail/send", b"{}", headers, 5.0)
    assert not pool.used, "refused before a connection was made"


@pytest.mark.parametrize(
    "url", ["http://fake.test/v3/mail send", "http://fake.test/v3\r\nX: y", "http://h/\x7f"]
)
def test_a_target_that_would_break_the_request_line_is_refused(url: str) -> None:
    pool = Pool(b"HTTP/1.1 204 No Content\r\n\r\n")
    with pytest.raises(h11.LocalProtocolError):
        pool.request("POST", url, b"{}", {}, 5.0)
    assert not pool.used


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, rest = b"", body
    for size in sizes:
        if not rest:
            break
        part, rest = rest[: size or 1], rest[size or 1 :]
        out += b"%x;ext=1\r\n" % len(part) + part + b"\r\n"
    if rest:
        out += b"%X\r\n" % len(rest) + rest + b"\r\n"
    return out + b"0\r\nTrailer: x\r\n\r\n"


ANSWER_HEADERS = st.lists(
    st.tuples(
        TOKEN.filter(
            lambda n: (
                n.lower() not in {"content-length", "transfer-encoding", "connection", "keep-alive"}
            )
        ),
        VALUE.map(lambda v: v.strip(" \t")),
    ),
    max_size=5,
)


@settings(max_examples=400, deadline=None)
@given(
    version=st.sampled_from(["HTTP/1.1", "HTTP/1.0"]),
    status=st.sampled_from([200, 202, 204, 304, 400, 401, 403, 429, 500, 503]),
    reason=st.sampled_from(["", "OK", "Accepted", "Too Many Requests", " Spaced  Out "]),
    headers=ANSWER_HEADERS,
    body=st.binary(max_size=400),
    framing=st.sampled_from(["length", "chunked", "close"]),
    sizes=st.lists(st.integers(0, 50), max_size=6),
    connection=st.sampled_from([None, "close", "keep-alive", "Keep-Alive, Upgrade"]),
    interim=st.sampled_from(
        [b"", b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early\r\nX: 1\r\n\r\n"]
    ),
    method=st.sampled_from(["POST", "GET", "HEAD"]),
    newline=st.sampled_from([b"\r\n", b"\n"]),
    piece=st.sampled_from([1, 7, 100, 65536]),
)
def test_an_answer_is_read_as_http_client_reads_it(
    version: str,
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    framing: str,
    sizes: list[int],
    connection: str | None,
    interim: bytes,
    method: str,
    newline: bytes,
    piece: int,
) -> None:
    fields = list(headers)
    if connection is not None:
        fields.append(("Connection", connection))
    if framing == "length":
        fields.append(("Content-Length", str(len(body))))
        payload = body
    elif framing == "chunked":
        fields.append(("Transfer-Encoding", "chunked"))
        payload = chunked(body, sizes)
    else:
        payload = body
    head = f"{version} {status} {reason}".encode("latin-1") + newline
    head += b"".join(f"{n}: {v}".encode("latin-1") + newline for n, v in fields) + newline
    # Without the interim answer: http.client takes a 103 for the answer itself.
    status, items, read, close = read_by_http_client(head + payload, method)
    if status in (204, 304):  # no body, whatever the headers say (RFC 9112 6.3)
        read = b""
    if version == "HTTP/1.0":  # h11 keeps no HTTP/1.0 connection alive
        close = True
    assert read_by_pool(interim + head + payload, method, piece) == (status, items, read, close)


def test_a_kept_alive_connection_is_reused_until_the_server_closes_it() -> None:
    pool = Pool(
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n"
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\nok"
        b"HTTP/1.1 202 Accepted\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n\r\nto the end",
    )
    bodies = [pool.request("POST", "http://fake.test/", b"{}", {}, 5.0).read() for _ in range(4)]
    assert bodies == [b"", b"ok", b"", b"to the end"]
    assert [wire.sent.count(b"POST") for wire in pool.used] == [3, 1]
    assert pool.used[1].closed and not pool._idle  # the second closed after its body


def test_a_connection_the_server_closed_while_idle_is_retried_once_on_a_new_one() -> None:
    pool = Pool(
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",  # then closed while idle
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b"",  # a new connection closed at once: not retried
    )
    for _ in range(2):
        assert pool.request("POST", "http://fake.test/", b"{}", {}, 5.0).getcode() == 202
    assert len(pool.used) == 2 and pool.used[0].closed
    pool._idle.clear()
    with pytest.raises(URLError):
        pool.request("POST", "http://fake.test/", b"{}", {}, 5.0)


def test_an_obsolete_folded_header_is_read_unfolded() -> None:
    answer = b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\nContent-Length: 0\r\n\r\n"
    assert read_by_pool(answer, "POST")[1] == [("X-A", "1 continued"), ("Content-Length", "0")]


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed before answering
        b"HTTP/1.1\r\n\r\n",
        b"SMTP/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/1.1 1000 High\r\n\r\n",
        b"HTTP/1.1 103 Early\r\n\r\n",  # an interim answer, and no answer after it
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx",
        # A head still incomplete after 16 KiB (h11's limit) beyond what one read brings
        # (64 KiB): one long line, or many short ones.
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 12000 + b"\r\n",
        # Mended by http.client, refused by h11: a line without a colon, a length that is not
        # a number, a chunk's size line ended by a bare LF.
        b"HTTP/1.1 200 OK\r\nnot a header\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\n0\n\n",
    ],
)
def test_a_broken_answer_is_refused_as_a_connection_failure(answer: bytes) -> None:
    with pytest.raises(URLError):
        read_by_pool(answer, "POST")


def test_a_switch_of_protocol_is_refused_rather_than_waited_on() -> None:
    pool = Pool(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: Upgrade\r\n\r\n")
    upgrade = {"Connection": "Upgrade", "Upgrade": "x"}
    with pytest.raises(URLError):
        pool.request("GET", "http://fake.test/", None, upgrade, 5.0)
    assert pool.used[0].closed


class Strict(_Connection):
    """A connection that counts the answers it leaves to ``h11``."""

    strictly = 0

    def _strictly(self, *args: Any) -> _Read:
        self.strictly += 1
        return super()._strictly(*args)


@settings(max_examples=300, deadline=None)
@given(
    status=st.sampled_from([200, 202, 204, 304, 400, 401, 429, 500, 503]),
    reason=st.sampled_from(["", "OK", "Accepted", "Too Many Requests"]),
    headers=ANSWER_HEADERS,
    body=st.binary(max_size=400),
    connection=st.sampled_from([None, "close", "keep-alive", "Keep-Alive", " close "]),
    piece=st.sampled_from([1, 7, 100, 65536]),
)
def test_a_plain_answer_is_read_by_httptools_as_h11_reads_it(
    status: int,
    reason: str,
    headers: list[tuple[str, str]],
    body: bytes,
    connection: str | None,
    piece: int,
) -> None:
    fields = [*headers, ("Content-Length", str(len(body)))]
    if connection is not None:
        fields.insert(len(headers) // 2, ("Connection", connection))
    if status in (204, 304):
        body = b""  # what follows such an answer is not its body: no longer a plain answer
    answer = f"HTTP/1.1 {status} {reason}\r\n".encode("latin-1")
    answer += b"".join(f"{n}: {v}\r\n".encode("latin-1") for n, v in fields) + b"\r\n" + body
    request = _request("POST", "http://fake.test/v3/mail/send", 2, ())
    plain = Strict(Wire(answer, piece))  # type: ignore[arg-type]
    strict = Strict(Wire(answer, piece))  # type: ignore[arg-type]
    assert plain.exchange(request, b"{}") == strict.exchange(request._replace(plain=False), b"{}")
    assert (plain.strictly, strict.strictly) == (0, 1)
