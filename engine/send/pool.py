"""Kept-alive HTTP connections behind the official SendGrid client.

``python_http_client`` (under ``sendgrid.SendGridAPIClient``) sends each request through a new
``urllib`` opener: a new TCP (and TLS) connection per email, closed after the answer. At
hundreds of emails a second that is most of the cost, and thousands of sockets in TIME-WAIT.
:class:`PooledClient` keeps the library's URL building, headers, response and error classes;
its requests go over a connection taken from a :class:`ConnectionPool` and put back once the
answer is read. Requests are written by ``h11``, once per body length (:func:`_request`);
answers are read by ``httptools`` (llhttp, in C) when they are plain (HTTP/1.1, a final status,
one ``Content-Length``, nothing after them), and by ``h11`` otherwise, which then decides: h11's
state machine was over half of a send's CPU and cost the dispatcher ~3 % of its rate. Not
``http.client``: its header checks, e-mail header parser and objects per request cost a sender
about three times the CPU.
A host reached through a proxy (``HTTPS_PROXY`` and the like) keeps the library's own
transport, which honours it (:func:`proxied`).
"""

from __future__ import annotations

import functools
import http.client
import io
import json
import socket
import ssl
import threading
import weakref
from collections.abc import Mapping
from email.message import Message
from typing import Any, NamedTuple
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import h11
import httptools
import python_http_client
from python_http_client.client import Response
from python_http_client.exceptions import handle_error

# Connections kept idle for reuse; more may be open at once (one per concurrent request), the
# extra ones are closed when their request ends.
MAX_IDLE = 64
# Errors of a kept-alive connection the server closed while it was idle: the request never
# reached it, so it is sent again on a new connection.
_STALE = (BrokenPipeError, ConnectionResetError)
_READ = 65536  # bytes asked of the socket at a time
_PLAIN_MAX = 65536  # bytes of an answer :class:`_Plain` reads before leaving it to h11
_WITH_BODY = frozenset({"PATCH", "POST", "PUT"})  # those get a Content-Length even without one


class Answer:
    """A read answer in the shape ``python_http_client.Response`` reads (``urllib``'s)."""

    def __init__(self, status: int, body: bytes, headers: Message) -> None:
        self.status = status
        self.body = body
        self.headers = headers

    def getcode(self) -> int:
        return self.status

    def read(self) -> bytes:
        return self.body

    def info(self) -> Message:
        return self.headers


class _Connection:
    """One kept-alive HTTP/1.1 connection: a request written in one ``sendall`` (one packet on
    the loopback, the GIL released while the kernel sends it), its answer read by
    :class:`_Plain` or, where that declines, ``h11``. An answer's head (status line and headers,
    or a chunk's size line) still incomplete past h11's ``max_incomplete_event_size`` (16 KiB)
    is refused."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timeout = sock.gettimeout()
        self.pending = b""  # bytes read after an answer

    def settimeout(self, timeout: float | None) -> None:
        # Only when it changes: setting a socket's timeout is a system call (its blocking mode),
        # and a pool's requests nearly always share one timeout.
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        self.sock.close()

    def exchange(self, request: _Prepared, body: bytes | None) -> _Read:
        """``request`` sent, and its answer (after any interim 1xx answer) with its body, and
        whether another request may follow on this connection. A server that closes the
        connection before a byte of the answer raises ``ConnectionResetError`` (a kept-alive
        connection it closed while idle), a broken answer ``h11``'s ``RemoteProtocolError``."""
        self.sock.sendall(request.head + body if body else request.head)
        received: list[bytes] = []
        if self.pending:  # what came after the last answer is the start of this one
            received.append(self.pending)
            self.pending = b""
        elif request.plain:
            plain = _Plain()
            # Until the end of the connection, which h11 then reads (and says what it means).
            while data := self.sock.recv(_READ):
                received.append(data)
                if not plain.feed(data):
                    break
                if plain.answer is not None:
                    return plain.answer
        return self._strictly(request, body, received)

    def _strictly(self, request: _Prepared, body: bytes | None, received: list[bytes]) -> _Read:
        """The answer read by ``h11`` from what :meth:`exchange` has received so far on."""
        http = h11.Connection(h11.CLIENT)
        http.send(request.request)
        if body:
            http.send(h11.Data(data=body))
        http.send(h11.EndOfMessage())
        answer, parts, replayed = None, [], 0
        while True:
            event = http.next_event()
            if event is h11.NEED_DATA:
                # What was read already, a read at a time (h11 bounds a head by what is
                # incomplete after a read), then the socket.
                if replayed < len(received):
                    http.receive_data(received[replayed])
                    replayed += 1
                    continue
                data = self.sock.recv(_READ)
                if not data and not received:
                    raise ConnectionResetError("the server closed the connection without an answer")
                received.append(data)
                replayed += 1
                http.receive_data(data)
            elif isinstance(event, h11.Response):
                answer = event
            elif isinstance(event, h11.Data):
                parts.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                assert answer is not None  # h11 reads a body only after its head
                # Another request may follow unless either side asked to close, the answer was
                # HTTP/1.0 or its body ran to the end of the connection (which h11 reads as a
                # complete answer, its state ``DONE``).
                reusable = (
                    http.our_state is h11.DONE
                    and http.their_state is h11.DONE
                    and not http.trailing_data[1]
                )
                self.pending = http.trailing_data[0]
                return _Read(
                    answer.status_code,
                    answer.reason,
                    list(answer.headers.raw_items()),
                    b"".join(parts),
                    reusable,
                )
            elif not isinstance(event, h11.InformationalResponse):  # a protocol switch
                raise h11.RemoteProtocolError(f"not an HTTP answer: {event!r}")


class _Read(NamedTuple):
    """An answer as read: status, reason, headers (raw names and values, in order), body, and
    whether its connection may carry another request."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    reusable: bool


class _Plain:
    """``httptools``' reading of an answer, kept only when it is plain: HTTP/1.1, a final
    status (not 1xx), framed by one ``Content-Length`` (no ``Transfer-Encoding``), a
    ``Connection`` header absent or ``keep-alive`` or ``close``, and no byte after it. What
    else it meets (an error, another framing, an interim answer, a head past 64 KiB) it leaves
    to ``h11``, which may refuse what llhttp would take or take what llhttp refuses (a bare LF,
    a folded header): h11's reading is the one that counts."""

    __slots__ = ("answer", "begun", "body", "done", "headers", "parser", "reason", "size")

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.begun = 0  # answers begun: a second one is bytes after the first
        self.size = 0
        self.done = False  # an answer read to its end
        self.answer: _Read | None = None  # once read, and plain

    def feed(self, data: bytes) -> bool:
        """``data`` read; False once the answer is not plain (or past this reader's bound)."""
        self.size += len(data)
        if self.size > _PLAIN_MAX:
            return False
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False
        if self.begun > 1:
            return False
        return self.answer is not None or not self.done

    def on_message_begin(self) -> None:
        self.begun += 1

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value.strip(b" \t")))

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.done = True
        status = self.parser.get_status_code()
        if status < 200 or self.parser.get_http_version() != "1.1":
            return
        lengths = connection = 0
        reusable = True
        for name, value in self.headers:
            name = name.lower()
            if name == b"content-length":
                lengths += 1
            elif name == b"transfer-encoding":
                return
            elif name == b"connection":
                connection += 1
                token = value.lower()
                if token not in (b"keep-alive", b"close"):
                    return
                reusable = token == b"keep-alive"
        if lengths == 1 and connection <= 1:
            self.answer = _Read(status, self.reason, self.headers, b"".join(self.body), reusable)


class ConnectionPool:
    """Idle connections to one ``scheme://host:port``, shared by threads (LIFO: the most
    recently used connection is the least likely to have been closed by the server)."""

    def __init__(self, base_url: str, max_idle: int = MAX_IDLE) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.max_idle = max_idle
        self.opened = 0  # connections made so far
        self._idle: list[_Connection] = []
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context() if self.https else None
        # Idle connections are closed when the pool is dropped, not left to the collector.
        weakref.finalize(self, _close_all, self._idle)

    def _new(self, timeout: float | None) -> _Connection:
        sock = socket.create_connection((self.host, self.port), timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        with self._lock:
            self.opened += 1
        return _Connection(sock)

    def _take(self) -> _Connection | None:
        """An idle connection, if any."""
        with self._lock:
            return self._idle.pop() if self._idle else None

    def _give_back(self, connection: _Connection) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            _close_all(self._idle)

    def request(
        self,
        method: str,
        url: str,
        body: bytes | None,
        headers: Mapping[str, str],
        timeout: float | None,
    ) -> Answer:
        """The request sent and its answer read; a 4xx/5xx answer raised as ``urllib`` raises
        it (an ``HTTPError``), a connection failure as ``URLError``, a timeout as
        ``TimeoutError``."""
        length = None if body is None else len(body)
        request = _request(method, url, length, tuple(headers.items()))
        for attempt in range(2):
            connection = self._take()
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._new(timeout)
                else:
                    connection.settimeout(timeout)
                answer = connection.exchange(request, body)
            except _STALE as error:
                if connection is not None:
                    connection.close()
                if reused and attempt == 0:
                    continue
                raise URLError(error) from None
            except TimeoutError:
                if connection is not None:
                    connection.close()
                raise
            except (OSError, h11.ProtocolError) as error:
                if connection is not None:
                    connection.close()
                raise URLError(error) from None
            if answer.reusable:
                self._give_back(connection)
            else:
                connection.close()
            # The headers as urllib gives them: an e-mail message, names in the server's case.
            answer_headers = http.client.HTTPMessage()
            for name, value in answer.headers:
                answer_headers[name.decode("latin-1")] = value.decode("latin-1")
            if answer.status >= 400:
                reason = answer.reason.decode("latin-1")
                raise HTTPError(url, answer.status, reason, answer_headers, io.BytesIO(answer.body))
            return Answer(answer.status, answer.body, answer_headers)
        raise AssertionError("unreachable")


class _Prepared(NamedTuple):
    """A request as :meth:`_Connection.exchange` sends it: h11's, its head as h11 writes it, and
    whether its answer may be read by :class:`_Plain` (not a ``HEAD``'s, which has no body
    whatever its headers say)."""

    request: h11.Request
    head: bytes
    plain: bool


# Requests differ mostly by their body, of which only the length is in the request itself: the
# same request (immutable) serves every send of a length, h11's checks of each header and its
# writing done once, not on every send (they were a fifth of its CPU per request).
@functools.lru_cache(maxsize=1024)
def _request(
    method: str, url: str, length: int | None, headers: tuple[tuple[str, str], ...]
) -> _Prepared:
    """The request for a body of ``length`` bytes (``None``: no body): the headers as given,
    and ``Host``, ``Accept-Encoding`` and ``Content-Length`` as ``http.client`` adds them.
    ``h11`` refuses (``LocalProtocolError``) a method, target or header that would break it (a
    space in the target, a line break in a value, a colon in a name)."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    names = {name.lower() for name, _ in headers}
    fields = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    if "host" not in names:
        fields.append((b"Host", parts.netloc.encode("latin-1")))
    if "accept-encoding" not in names:
        fields.append((b"Accept-Encoding", b"identity"))
    if "content-length" not in names and (length is not None or method in _WITH_BODY):
        fields.append((b"Content-Length", b"%d" % (length or 0)))
    request = h11.Request(
        method=method.encode("latin-1"), target=target.encode("latin-1"), headers=fields
    )
    head = h11.Connection(h11.CLIENT).send(request)
    assert head is not None
    return _Prepared(request, head, method != "HEAD")


def proxied(base_url: str) -> bool:
    """Whether the environment sends requests to ``base_url`` through a proxy."""
    parts = urlsplit(base_url)
    return parts.scheme in getproxies() and not proxy_bypass(parts.hostname or "")


def _close_all(connections: list[_Connection]) -> None:
    while connections:
        connections.pop().close()


class PooledClient(python_http_client.Client):  # type: ignore[misc]
    """``python_http_client.Client`` whose requests go through a :class:`ConnectionPool`; every
    client it builds for a URL segment (``client.mail.send``) shares the pool."""

    def __init__(self, *args: Any, pool: ConnectionPool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pool = pool

    def _build_client(self, name: str | None = None) -> PooledClient:
        url_path = [*self._url_path, name] if name else self._url_path
        return PooledClient(
            host=self.host,
            version=self._version,
            request_headers=self.request_headers,
            url_path=url_path,
            append_slash=self.append_slash,
            timeout=self.timeout,
            pool=self.pool,
        )

    def __getattr__(self, name: str) -> Any:
        if name not in self.methods:
            return super().__getattr__(name)
        # The library's verb builds a urllib opener (a handler registry and a scan of the
        # proxy environment) on every call: ~1.4 ms of CPU, more than the rest of a send. The
        # same request, encoded as the library encodes it, without one.
        method = name.upper()

        def http_request(
            request_body: Any = None,
            query_params: dict[str, Any] | None = None,
            request_headers: dict[str, str] | None = None,
            timeout: float | None = None,
            **_: Any,
        ) -> Response:
            if request_headers:
                self._update_headers(request_headers)
            data = None
            if request_body is not None:
                if self.request_headers.get("Content-Type", "application/json") == (
                    "application/json"
                ):
                    self.request_headers.setdefault("Content-Type", "application/json")
                    data = json.dumps(request_body).encode()
                else:
                    data = request_body.encode()
            url = self._build_url(query_params)
            try:
                answer = self.pool.request(
                    method, url, data, self.request_headers, timeout or self.timeout
                )
            except HTTPError as error:
                failure = handle_error(error)
                failure.__cause__ = None
                raise failure from None
            return Response(answer)

        return http_request
