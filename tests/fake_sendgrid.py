"""A fake SendGrid v3 Mail Send API on 127.0.0.1 for the official client to talk to.

Checks the bearer token and, when SendGrid's published OpenAPI description is at hand
(``sendgrid/mail-v3.openapi.json`` of the real data, or ``NURTURE_SENDGRID_OPENAPI``), every
request body against its schema: an invalid body is answered 400 and kept in ``invalid``.
Answers 202 with an ``X-Message-Id``, or the failures a test queued with ``fail_next``.
Connections are kept alive (HTTP/1.1) and counted in ``connections``.

``python -m tests.fake_sendgrid [--delay SECONDS] [--validate]`` runs one in its own process
(for benchmarks: bodies are checked against the schema only with ``--validate``, which costs
about 0.5 ms of CPU a request): it prints its URL, serves until its standard input closes, and
answers ``GET /stats`` with its counts.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import uuid
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import jsonschema
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

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse its connection

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def do_GET(self) -> None:
                if self.path != "/stats":
                    return self._answer(404, {"errors": [{"message": "not found"}]})
                with fake._lock:
                    counts = {"calls": fake.calls, "connections": fake.connections}
                self._answer(200, counts)

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any = None, **headers: str) -> None:
                data = json.dumps(body).encode() if body is not None else b""
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if fake.delay:
                    time.sleep(fake.delay)
                with fake._lock:
                    fake.calls += 1
                    failure = fake._failures.popleft() if fake._failures else None
                if self.path != "/v3/mail/send":
                    return self._answer(404, {"errors": [{"message": "not found"}]})
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._answer(401, {"errors": [{"message": "no API key"}]})
                if failure is not None:
                    status, headers = failure
                    return self._answer(status, {"errors": [{"message": "fake failure"}]},
                                        **headers)  # fmt: skip
                body = json.loads(raw)
                if fake.validator is not None:
                    problem = next(iter(fake.validator.iter_errors(body)), None)
                    if problem is not None:
                        with fake._lock:
                            fake.invalid.append((body, problem.message))
                        return self._answer(400, {"errors": [{"message": problem.message}]})
                with fake._lock:
                    fake.messages.append(body)
                self._answer(202, None, X_Message_Id=uuid.uuid4().hex)

        return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description="A fake SendGrid in its own process.")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--validate", action="store_true", help="check bodies against the schema")
    args = parser.parse_args()
    with FakeSendGrid() as fake:
        fake.delay = args.delay
        if not args.validate:
            fake.validator = None
        print(fake.url, flush=True)
        sys.stdin.read()  # until the parent closes the pipe (or exits)


if __name__ == "__main__":
    main()
