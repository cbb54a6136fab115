"""The pooled transport behind the SendGrid client writes requests and reads answers itself
rather than through ``http.client``: on generated requests (methods, paths and queries, header
names and values, bodies) it writes the bytes ``http.client`` writes, and on generated answers
(statuses, reasons, headers, bodies by length, chunked or up to the close, HTTP/1.0 and 1.1,
interim "100 Continue" answers) it reads what ``http.client`` reads, down to whether the
connection stays open; hostile input (line breaks in headers, broken status lines, headers,
chunk sizes and lengths, cut-off bodies) is refused where ``http.client`` refuses it, and also
where it would mend it."""

from __future__ import annotations

import http.client
import io
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.send.pool import ConnectionPool, _Connection


class Wire:
    """A socket stand-in: what is sent is kept, what is read comes from ``answer``."""

    def __init__(self, answer: bytes = b"") -> None:
        self.sent = b""
        self.answer = answer

    def sendall(self, data: bytes) -> None:
        self.sent += bytes(data)

    def makefile(self, mode: str, *args: Any, **kwargs: Any) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self.answer))

    def gettimeout(self) -> float | None:
        return None

    def close(self) -> None:
        pass


class Capturing(http.client.HTTPConnection):
    """``http.client`` writing a request onto a :class:`Wire`."""

    def connect(self) -> None:
        self.sock = Wire()


def written_by_http_client(
    method: str, url: str, body: bytes | None, headers: dict[str, str]
) -> bytes:
    """What the old transport sent: ``http.client`` with ``Host`` set from the URL."""
    parts = http.client.urlsplit(url)  # type: ignore[attr-defined]
    connection = Capturing("fake.test")
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    connection.request(method, target, body, {**headers, "Host": parts.netloc, **headers})
    assert isinstance(connection.sock, Wire)
    return connection.sock.sent


def read_by_http_client(answer: bytes, method: str) -> tuple[int, str, list[Any], bytes, bool]:
    response = http.client.HTTPResponse(Wire(answer), method=method)  # type: ignore[arg-type]
    response.begin()
    body = response.read()
    return response.status, response.reason, response.headers.items(), body, response.will_close


def read_by_pool(answer: bytes, method: str) -> tuple[int, str, list[Any], bytes, bool]:
    status, reason, headers, body, close = _Connection(Wire(answer)).exchange(  # type: ignore[arg-type]
        b"", method == "HEAD"
    )
    return status, reason, headers.items(), body, close


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
def test_a_request_is_written_as_http_client_writes_it(
    method: str, path: str, query: str, host: str, body: bytes | None, headers: dict[str, str]
) -> None:
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    expected = written_by_http_client(method, url, body, headers)
    assert ConnectionPool(f"http://{host}")._request(method, url, body, headers) == expected


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
    pool = ConnectionPool("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        pool._request("POST", "http://127.0.0.1:1/v3/mail/send", b"{}", headers)


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:1/v3/mail send", "http://127.0.0.1:1/v3\r\nX: y", "http://h/\x7f"]
)
def test_a_target_that_would_break_the_request_line_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        ConnectionPool("http://127.0.0.1:1")._request("POST", url, b"{}", {})


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
    status=st.sampled_from([200, 202, 204, 304, 400, 401, 403, 429, 500, 503, 103]),
    reason=st.sampled_from(["", "OK", "Accepted", "Too Many Requests", " Spaced  Out "]),
    headers=ANSWER_HEADERS,
    body=st.binary(max_size=400),
    framing=st.sampled_from(["length", "chunked", "close"]),
    sizes=st.lists(st.integers(0, 50), max_size=6),
    connection=st.sampled_from([None, "close", "keep-alive", "Keep-Alive, Upgrade"]),
    interim=st.booleans(),
    method=st.sampled_from(["POST", "GET", "HEAD"]),
    newline=st.sampled_from([b"\r\n", b"\n"]),
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
    interim: bool,
    method: str,
    newline: bytes,
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
    answer = (b"HTTP/1.1 100 Continue\r\nX-Early: 1\r\n\r\n" if interim else b"") + head + payload
    assert read_by_pool(answer, method) == read_by_http_client(answer, method)


@pytest.mark.parametrize(
    "answer",
    [
        b"",  # closed before answering
        b"HTTP/1.1\r\n\r\n",
        b"SMTP/1.1 200 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 abc OK\r\n\r\n",
        b"HTTP/1.1 99 Low\r\n\r\n",
        b"HTTP/1.1 1000 High\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 70000 + b"\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"X-A: 1\r\n" * 101 + b"\r\n",
        # Mended by http.client, refused here: a folded header, a line without a colon, a
        # length that is not a number.
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  continued\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nnot a header\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
    ],
)
def test_a_broken_answer_is_refused(answer: bytes) -> None:
    with pytest.raises((http.client.HTTPException, ValueError)):
        read_by_pool(answer, "POST")
