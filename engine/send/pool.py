"""Kept-alive HTTP connections behind the official SendGrid client.

``python_http_client`` (under ``sendgrid.SendGridAPIClient``) sends each request through a new
``urllib`` opener: a new TCP (and TLS) connection per email, closed after the answer. At
hundreds of emails a second that is most of the cost, and thousands of sockets in TIME-WAIT.
:class:`PooledClient` keeps the library's URL building, headers, response and error classes;
its requests go over a connection taken from a :class:`ConnectionPool` and put back once the
answer is read. A host reached through a proxy (``HTTPS_PROXY`` and the like) keeps the
library's own transport, which honours it (:func:`proxied`).
"""

from __future__ import annotations

import http.client
import io
import json
import ssl
import threading
import weakref
from email.message import Message
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlsplit
from urllib.request import Request, getproxies, proxy_bypass

import python_http_client
from python_http_client.client import Response
from python_http_client.exceptions import handle_error

# Connections kept idle for reuse; more may be open at once (one per concurrent request), the
# extra ones are closed when their request ends.
MAX_IDLE = 64
# Errors of a kept-alive connection the server closed while it was idle: the request never
# reached it, so it is sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


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


class _Gathering(http.client.HTTPConnection):
    """Sends a request as one write. ``http.client`` writes a request's headers and its body
    with a ``send`` each, two packets on a TCP_NODELAY socket (a packet costs tens of µs of CPU
    on the loopback). Corking the socket around them instead costs two ``setsockopt`` calls,
    and Python holds the GIL through those (the uncork is where the kernel sends the segment),
    so every other sender thread waited on it; ``sendall`` lets them run."""

    _pending: list[bytes] | None = None

    def send(self, data: Any) -> None:
        if self._pending is None:
            super().send(data)
        else:
            self._pending.append(bytes(data))

    def request_at_once(self, method: str, target: str, body: Any, headers: dict[str, str]) -> None:
        if self.sock is None:
            self.connect()
        self._pending = []
        try:
            self.request(method, target, body, headers)
            whole = b"".join(self._pending)
        finally:
            self._pending = None
        assert self.sock is not None
        self.sock.sendall(whole)


class _Secure(_Gathering, http.client.HTTPSConnection):
    pass


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
        self._idle: list[_Gathering] = []
        self._lock = threading.Lock()
        self._tls = ssl.create_default_context() if self.https else None
        # Idle connections are closed when the pool is dropped, not left to the collector.
        weakref.finalize(self, _close_all, self._idle)

    def _new(self, timeout: float | None) -> _Gathering:
        with self._lock:
            self.opened += 1
        if self._tls is not None:
            return _Secure(self.host, self.port, timeout=timeout, context=self._tls)
        return _Gathering(self.host, self.port, timeout=timeout)

    def _take(self, timeout: float | None) -> tuple[_Gathering, bool]:
        """A connection and whether it was reused."""
        with self._lock:
            connection = self._idle.pop() if self._idle else None
        if connection is None:
            return self._new(timeout), False
        if connection.timeout != timeout:
            # Only when it changes: setting a socket's timeout is a system call (its blocking
            # mode), and a pool's requests nearly always share one timeout.
            connection.timeout = timeout
            if connection.sock is not None:
                connection.sock.settimeout(timeout)
        return connection, True

    def _give_back(self, connection: _Gathering) -> None:
        with self._lock:
            if len(self._idle) < self.max_idle:
                self._idle.append(connection)
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            _close_all(self._idle)

    def request(self, request: Request, timeout: float | None) -> Answer:
        """``request`` sent and its answer read; a 4xx/5xx answer raised as ``urllib`` raises
        it (an ``HTTPError``), a connection failure as ``URLError``, a timeout as
        ``TimeoutError``."""
        parts = urlsplit(request.full_url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = dict(request.header_items())
        headers.setdefault("Host", parts.netloc)
        for attempt in range(2):
            connection, reused = self._take(timeout)
            try:
                connection.request_at_once(request.get_method(), target, request.data, headers)
                response = connection.getresponse()
                body = response.read()
            except _STALE as error:
                connection.close()
                if reused and attempt == 0:
                    continue
                raise URLError(error) from None
            except TimeoutError:
                connection.close()
                raise
            except (OSError, http.client.HTTPException) as error:
                connection.close()
                raise URLError(error) from None
            if response.will_close:
                connection.close()
            else:
                self._give_back(connection)
            if response.status >= 400:
                raise HTTPError(
                    request.full_url, response.status, response.reason, response.headers,
                    io.BytesIO(body),
                )  # fmt: skip
            return Answer(response.status, body, response.headers)
        raise AssertionError("unreachable")


def proxied(base_url: str) -> bool:
    """Whether the environment sends requests to ``base_url`` through a proxy."""
    parts = urlsplit(base_url)
    return parts.scheme in getproxies() and not proxy_bypass(parts.hostname or "")


def _close_all(connections: list[_Gathering]) -> None:
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
            request = Request(
                self._build_url(query_params), data, self.request_headers, method=method
            )
            return Response(self._make_request(None, request, timeout))

        return http_request

    def _make_request(self, opener: Any, request: Request, timeout: float | None = None) -> Any:
        try:
            return self.pool.request(request, timeout or self.timeout)
        except HTTPError as error:
            failure = handle_error(error)
            failure.__cause__ = None
            raise failure from None
