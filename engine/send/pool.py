"""Kept-alive HTTP connections behind the official SendGrid client.

``python_http_client`` (under ``sendgrid.SendGridAPIClient``) sends each request through a new
``urllib`` opener: a new TCP (and TLS) connection per email, closed after the answer. At
hundreds of emails a second that is most of the cost, and thousands of sockets in TIME-WAIT.
:class:`PooledClient` keeps the library's URL building, headers, response and error classes;
its requests go over a connection taken from a :class:`ConnectionPool` and put back once the
answer is read. The pool writes each request and reads each answer itself, as ``http.client``
would (``tests/test_send_pool.py`` holds them equal), at a fraction of its CPU. A host reached
through a proxy (``HTTPS_PROXY`` and the like) keeps the
library's own transport, which honours it (:func:`proxied`).
"""

from __future__ import annotations

import http.client
import io
import json
import re
import socket
import ssl
import threading
import weakref
from collections.abc import Mapping
from email.message import Message
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import python_http_client
from python_http_client.client import Response
from python_http_client.exceptions import handle_error

# Connections kept idle for reuse; more may be open at once (one per concurrent request), the
# extra ones are closed when their request ends.
MAX_IDLE = 64
# Errors of a kept-alive connection the server closed while it was idle: the request never
# reached it, so it is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)
_MAX_LINE = 65536  # bytes of an answer's status or header line, as http.client allows
_MAX_HEADERS = 100  # headers of an answer, as http.client allows
_NOT_IN_TARGET = re.compile(r"[\x00-\x20\x7f]")  # what http.client refuses in a request line
_NOT_IN_HEADER = re.compile(r"[\r\n\x00]")  # in a header value (http.client allows folding)
_HEADER_NAME = re.compile(r"[!-9;-~]+")  # printable ASCII but the colon, as e-mail headers
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
    the loopback, the GIL released while the kernel sends it), its answer read through one
    buffered reader. What ``http.client`` does for a request and its answer, without its header
    validation, its e-mail parser for the answer's headers and its objects per request: ~110
    µs of a sender's CPU a request, held against the GIL the other senders wait for."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.answers = sock.makefile("rb")
        self.timeout = sock.gettimeout()

    def settimeout(self, timeout: float | None) -> None:
        # Only when it changes: setting a socket's timeout is a system call (its blocking mode),
        # and a pool's requests nearly always share one timeout.
        if timeout != self.timeout:
            self.sock.settimeout(timeout)
            self.timeout = timeout

    def close(self) -> None:
        self.answers.close()
        self.sock.close()

    def exchange(self, request: bytes, head_only: bool) -> tuple[int, str, Message, bytes, bool]:
        """``request`` sent, and its answer as ``http.client`` reads it: status, reason,
        headers, body, and whether the connection must be closed after it. Header lines that
        are not ``name: value`` (folded, or without a colon) are refused rather than mended."""
        self.sock.sendall(request)
        answers = self.answers
        while True:
            status, reason, version, headers = _read_head(answers)
            if status != 100:  # "100 Continue" is followed by the answer
                break
        connection = (headers.get("Connection") or "").lower()
        if version == "HTTP/1.0":
            close = not headers.get("Keep-Alive") and "keep-alive" not in connection
        else:
            close = "close" in connection
        if head_only:
            return status, reason, headers, b"", close
        if (headers.get("Transfer-Encoding") or "").lower() == "chunked":
            return status, reason, headers, _read_chunks(answers), close
        if status in (204, 304) or 100 <= status < 200:
            return status, reason, headers, b"", close
        length = headers.get("Content-Length")
        if length is None:  # the body runs to the end of the connection
            return status, reason, headers, answers.read(), True
        if not length.strip().isdigit():
            raise http.client.HTTPException(f"bad Content-Length: {length[:20]!r}")
        expected = int(length)
        body = answers.read(expected)
        if len(body) < expected:
            raise http.client.IncompleteRead(body, expected - len(body))
        return status, reason, headers, body, close


def _line(answers: io.BufferedReader) -> bytes:
    line = answers.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise http.client.LineTooLong("answer line")
    return line


def _read_head(answers: io.BufferedReader) -> tuple[int, str, str, Message]:
    """An answer's status line (as ``http.client`` splits it) and headers."""
    line = _line(answers)
    if not line:
        raise http.client.RemoteDisconnected("the server closed the connection without an answer")
    text = line.decode("iso-8859-1")
    version, code, reason = ([*text.split(None, 2), "", ""])[:3]
    if not version.startswith("HTTP/"):
        raise http.client.BadStatusLine(text)
    if version not in ("HTTP/1.0", "HTTP/0.9") and not version.startswith("HTTP/1."):
        raise http.client.UnknownProtocol(version)
    try:
        status = int(code)
    except ValueError:
        raise http.client.BadStatusLine(text) from None
    if not 100 <= status <= 999:
        raise http.client.BadStatusLine(text)
    headers = http.client.HTTPMessage()
    for _ in range(_MAX_HEADERS + 1):
        field = _line(answers)
        if field in (b"\r\n", b"\n", b""):
            return status, reason.strip(), "HTTP/1.0" if version == "HTTP/0.9" else version, headers
        name, colon, value = field.decode("iso-8859-1").partition(":")
        if not colon or not _HEADER_NAME.fullmatch(name):  # folded, or not a header
            raise http.client.HTTPException(f"bad header line: {field[:80]!r}")
        headers[name] = value.lstrip(" \t").rstrip("\r\n")
    raise http.client.HTTPException(f"got more than {_MAX_HEADERS} headers")


def _read_chunks(answers: io.BufferedReader) -> bytes:
    """A chunked body (its trailer read and dropped)."""
    parts: list[bytes] = []
    while True:
        size = _line(answers).split(b";", 1)[0]
        try:
            left = int(size, 16)
        except ValueError:
            raise http.client.HTTPException(f"bad chunk size: {size[:20]!r}") from None
        if left == 0:
            while _line(answers) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        chunk = answers.read(left)
        if len(chunk) < left:
            raise http.client.IncompleteRead(b"".join(parts) + chunk)
        parts.append(chunk)
        answers.read(2)  # the CRLF after the chunk


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
        request = self._request(method, url, body, headers)
        for attempt in range(2):
            connection = self._take()
            reused = connection is not None
            try:
                if connection is None:
                    connection = self._new(timeout)
                else:
                    connection.settimeout(timeout)
                status, reason, answer_headers, data, close = connection.exchange(
                    request, method == "HEAD"
                )
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
            except (OSError, ValueError, http.client.HTTPException) as error:
                if connection is not None:
                    connection.close()
                raise URLError(error) from None
            if close:
                connection.close()
            else:
                self._give_back(connection)
            if status >= 400:
                raise HTTPError(url, status, reason, answer_headers, io.BytesIO(data))
            return Answer(status, data, answer_headers)
        raise AssertionError("unreachable")

    def _request(
        self, method: str, url: str, body: bytes | None, headers: Mapping[str, str]
    ) -> bytes:
        """The request's bytes: the headers as given, ``Host``, ``Accept-Encoding`` and
        ``Content-Length`` added as ``http.client`` adds them, refused as it refuses them."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if _NOT_IN_TARGET.search(method + target):
            raise ValueError(f"a space or control character in {method} {target!r}")
        lines = [f"{method} {target} HTTP/1.1"]
        names = {name.lower() for name in headers}
        if "accept-encoding" not in names:
            lines.append("Accept-Encoding: identity")
        if "content-length" not in names and (body is not None or method in _WITH_BODY):
            lines.append(f"Content-Length: {len(body or b'')}")
        for name, value in headers.items():
            if not _HEADER_NAME.fullmatch(name) or _NOT_IN_HEADER.search(value):
                raise ValueError(f"a bad header name or a line break in {name!r}")
            lines.append(f"{name}: {value}")
        if "host" not in names:
            lines.append(f"Host: {parts.netloc}")
        return "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + (body or b"")


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
