"""A fake SendGrid v3 Mail Send API on 127.0.0.1 for the official client to talk to.

Checks the bearer token and, when SendGrid's published OpenAPI description is at hand
(``sendgrid/mail-v3.openapi.json`` of the real data, or ``NURTURE_SENDGRID_OPENAPI``), every
request body against its schema: an invalid body is answered 400 and kept in ``invalid``.
Answers 202 with an ``X-Message-Id``, or the failures a test queued with ``fail_next``.
Connections are kept alive (HTTP/1.1) and counted in ``connections``.

``python -m tests.fake_sendgrid [--delay SECONDS] [--validate] [--realtime]`` runs one in its
own process (for benchmarks: bodies are checked against the schema only with ``--validate``,
which costs about 0.5 ms of CPU a request; ``--realtime`` runs it at the lowest real-time
priority, SCHED_RR 1, where the system permits it and at normal priority otherwise, so that on
a busy machine its answers leave at their deadline rather than when the scheduler gets round to
it): it prints its URL, serves until its standard input closes, and answers ``GET /stats`` with
its counts; it keeps no bodies. That one serves from a uvloop event loop rather than a thread
per connection, each connection an ``asyncio.Protocol`` whose answers one clock thread sends
at their deadlines (no task or sleeping thread per request). So 32 connections at 20 ms get
their answers on time: threads reached ~1,250 of the 1,600 answers/s those allow, a task
sleeping per request ~1,370, the loop's own timers (whole milliseconds) ~1,520. Both answer
through :meth:`FakeSendGrid.answer`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import heapq
import itertools
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import jsonschema
import uvloop
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.helpers import shared_data

SPEC_CANDIDATES = [
    Path(os.environ.get("NURTURE_SENDGRID_OPENAPI", "/nonexistent")),
    shared_data("sendgrid/mail-v3.openapi.json"),
]
SPEC_URI = "urn:sendgrid-mail-v3"
BODY_SCHEMA = "/components/requestBodies/PostMailSend/content/application~1json/schema"


def mail_send_validator() -> jsonschema.protocols.Validator | None:
    """A validator for Mail Send request bodies, or None when the description is absent."""
    for path in SPEC_CANDIDATES:
        if path.is_file():
            document = json.loads(path.read_text())
            resource = Resource.from_contents(document, default_specification=DRAFT202012)
            registry: Registry = Registry().with_resource(SPEC_URI, resource)
            schema = {"$ref": f"{SPEC_URI}#{BODY_SCHEMA}"}
            return jsonschema.Draft202012Validator(schema, registry=registry)
    return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # dozens of concurrent clients must not see refused connections


class FakeSendGrid:
    def __init__(self) -> None:
        self.calls = 0
        self.connections = 0  # TCP connections accepted
        self.messages: list[dict[str, Any]] = []
        self.keep = True  # whether accepted bodies are kept in ``messages``
        self.invalid: list[tuple[dict[str, Any], str]] = []
        self.delay = 0.0
        self.validator = mail_send_validator()
        self._failures: deque[tuple[int, dict[str, str]]] = deque()
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def fail_next(self, status: int, headers: dict[str, str] | None = None) -> None:
        """Answer the next request (after those already queued) with ``status``."""
        self._failures.append((status, headers or {}))

    def __enter__(self) -> FakeSendGrid:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(
        self, method: str, path: str, headers: Mapping[str, str], raw: bytes
    ) -> tuple[int, bytes, dict[str, str]]:
        """Status, body and headers of the answer to one request (``headers``: looked up by
        lower-case name), as SendGrid would give it or as a test queued it."""
        if method == "GET":
            if path != "/stats":
                return _json(404, {"errors": [{"message": "not found"}]})
            with self._lock:
                return _json(200, {"calls": self.calls, "connections": self.connections})
        with self._lock:
            self.calls += 1
            failure = self._failures.popleft() if self._failures else None
        if path != "/v3/mail/send":
            return _json(404, {"errors": [{"message": "not found"}]})
        if not (headers.get("authorization") or "").startswith("Bearer "):
            return _json(401, {"errors": [{"message": "no API key"}]})
        if failure is not None:
            status, extra = failure
            return _json(status, {"errors": [{"message": "fake failure"}]}, extra)
        body = json.loads(raw)
        if self.validator is not None:
            problem = next(iter(self.validator.iter_errors(body)), None)
            if problem is not None:
                with self._lock:
                    self.invalid.append((body, problem.message))
                return _json(400, {"errors": [{"message": problem.message}]})
        if self.keep:
            with self._lock:
                self.messages.append(body)
        return 202, b"", {"X-Message-Id": uuid.uuid4().hex}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse its connection

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def do_GET(self) -> None:
                self._reply(*fake.answer("GET", self.path, {}, b""))

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.delay:
                    time.sleep(fake.delay)
                headers = {name.lower(): value for name, value in self.headers.items()}
                self._reply(*fake.answer("POST", self.path, headers, raw))

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _reply(self, status: int, data: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    async def serve(self, ready: Callable[[str], None], stop: asyncio.Future[None]) -> None:
        """The same answers from an asyncio loop on a port of its own (``ready`` gets its URL)
        until ``stop`` is done."""
        loop = asyncio.get_running_loop()
        connections: set[asyncio.Transport] = set()
        clock = _Clock()
        server = await loop.create_server(
            lambda: _Connection(self, loop, clock, connections), "127.0.0.1", 0, backlog=256
        )
        clock.start()
        try:
            async with server:
                ready(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
                await stop
                for transport in list(connections):  # kept-alive connections end with it
                    transport.close()
        finally:
            clock.stop()


class _Clock(threading.Thread):
    """Calls back at deadlines (``time.monotonic()``), in its own thread, to within the time a
    thread takes to wake: it sleeps on a condition until the earliest one. The loop's own timers
    count whole milliseconds and start each round from a clock read at its beginning, so an
    answer left ~0.9 ms late on average; called on the loop (a wake-up of the loop more), 0.4."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._due: list[tuple[float, int, Callable[[float], None]]] = []  # a heap
        self._count = itertools.count()  # ties broken by arrival, never by the callbacks
        self._changed = threading.Condition()
        self._stopped = False

    def at(self, deadline: float, callback: Callable[[float], None]) -> None:
        with self._changed:
            heapq.heappush(self._due, (deadline, next(self._count), callback))
            if self._due[0][0] == deadline:  # sooner than the clock sleeps until
                self._changed.notify()

    def stop(self) -> None:
        with self._changed:
            self._stopped = True
            self._changed.notify()
        self.join()

    def run(self) -> None:
        due = self._due
        while True:
            with self._changed:
                while not self._stopped and (not due or (wait := due[0][0] - time.monotonic()) > 0):
                    self._changed.wait(wait if due else None)
                if self._stopped:
                    return
                now = time.monotonic()
                ready = []
                while due and due[0][0] <= now:
                    deadline, _, callback = heapq.heappop(due)
                    ready.append((callback, deadline))
            for callback, deadline in ready:
                callback(deadline)


class _Connection(asyncio.Protocol):
    """One client connection of :meth:`FakeSendGrid.serve`: requests parsed as their bytes
    arrive on the loop, each answer written at its deadline, ``delay`` after the request came
    in, by the :class:`_Clock`'s thread straight to the socket (answers leave in the order of
    their requests). A deadline rather than a task that sleeps: no task per request, and the
    parsing, the answer's building and the loop's rounds do not add to the delay (a 20 ms
    sleep cycled in 20.4 ms)."""

    def __init__(
        self,
        fake: FakeSendGrid,
        loop: asyncio.AbstractEventLoop,
        clock: _Clock,
        open: set[asyncio.Transport],
    ) -> None:
        self.fake = fake
        self.loop = loop
        self.clock = clock
        self.open = open
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.answers: deque[tuple[float, bytes]] = deque()  # (deadline, answer), by deadline
        # The clock's own descriptor of the socket, closed (-1) with the connection under
        # ``lock``: a number closed by the loop alone could be another connection's by then.
        self.socket = -1
        self.lock = threading.Lock()
        self.queued = False  # an answer went to the loop: the ones after it go the same way

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.open.add(self.transport)
        self.socket = os.dup(self.transport.get_extra_info("socket").fileno())
        with self.fake._lock:
            self.fake.connections += 1

    def connection_lost(self, error: Exception | None) -> None:
        assert self.transport is not None
        self.open.discard(self.transport)
        with self.lock:
            os.close(self.socket)
            self.socket = -1

    def data_received(self, data: bytes) -> None:
        arrived = time.monotonic()  # the loop's own clock is the start of its round
        self.received += data
        while (end := self.received.find(b"\r\n\r\n")) >= 0:
            line, *fields = self.received[:end].decode("latin-1").split("\r\n")
            headers = {}
            for field in fields:
                name, _, value = field.partition(":")
                headers[name.strip().lower()] = value.strip()
            start = end + 4
            stop = start + int(headers.get("content-length") or 0)
            if len(self.received) < stop:
                return  # the body is still on its way
            raw = bytes(self.received[start:stop])
            del self.received[:stop]
            method, path, _version = line.split(" ", 2)
            status, data, extra = self.fake.answer(method, path, headers, raw)
            lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
            lines += [f"{name}: {value}" for name, value in extra.items()]
            lines.append(f"Content-Length: {len(data)}")
            answer = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data
            deadline = arrived + (self.fake.delay if method == "POST" else 0.0)
            self.answers.append((deadline, answer))
            self.clock.at(deadline, self._due)

    def _due(self, deadline: float) -> None:
        """Write the answers due by ``deadline``, oldest first (an answer behind one not yet due
        waits for that one's turn), in the clock's thread. What the socket does not take at once
        (the client is not reading) goes through the loop's transport, and so does every later
        answer."""
        assert self.transport is not None
        with self.lock:
            while self.answers and self.answers[0][0] <= deadline:
                answer = self.answers.popleft()[1]
                if self.socket < 0:
                    continue
                if not self.queued:
                    try:
                        answer = answer[os.write(self.socket, answer) :]
                    except BlockingIOError:
                        pass
                    except OSError:  # the client went away: nothing more to answer
                        continue
                if answer:
                    self.queued = True
                    self.loop.call_soon_threadsafe(self.transport.write, answer)


def _json(
    status: int, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps(body).encode(), headers or {}


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake SendGrid in its own process.")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--validate", action="store_true", help="check bodies against the schema")
    parser.add_argument(
        "--realtime",
        action="store_true",
        help="run at real-time priority (SCHED_RR 1) where the system permits it",
    )
    args = parser.parse_args()
    if args.realtime:
        realtime()
    fake = FakeSendGrid()  # its threaded server is never started: the loop serves
    fake.delay = args.delay
    # Nobody reads the bodies of this one, and a list of them growing by thousands a second
    # made each full collection longer: pauses of 30-100 ms that held every answer due meanwhile.
    fake.keep = False
    if not args.validate:
        fake.validator = None
    gc.freeze()  # what is loaded by now is never garbage: collections need not walk it

    async def run() -> None:
        loop = asyncio.get_running_loop()
        stop = loop.create_future()
        # Until the parent closes the pipe (or exits).
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)

        def read() -> None:
            try:
                if os.read(stdin, 65536):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            loop.remove_reader(stdin)
            if not stop.done():
                stop.set_result(None)

        loop.add_reader(stdin, read)
        await fake.serve(lambda url: print(url, flush=True), stop)

    uvloop.run(run())


def realtime() -> None:
    """This process at the lowest real-time priority when the system permits it, else as it
    was: on a busy machine an answer then leaves at its deadline, not when the scheduler gets
    round to the fake (a benchmark measures the dispatcher, not the fake's place in the run
    queue)."""
    with contextlib.suppress(AttributeError, OSError):  # not Linux, or not permitted
        os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(1))


if __name__ == "__main__":
    main()
