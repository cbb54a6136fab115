"""One body limit for every route (``NURTURE_MAX_BODY_BYTES``), enforced before a route reads
anything: a declared length over it is refused at once, an undeclared (chunked) body as soon as
the bytes received pass it, on routes that read their body and on routes that do not. Driven over
raw ASGI so that the test sees how much of a streamed body the server pulled."""

from __future__ import annotations

import asyncio
import json
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute

from engine.api import dashboard, events, leads, ops, rulesets, webhooks
from engine.api.app import create_app
from engine.settings import Settings
from tests.helpers import API_TOKEN as TOKEN
from tests.helpers import api_home

LIMIT = 64 * 1024
CHUNK = 16 * 1024
GIB = 1 << 30


@pytest.fixture
def app(tmp_path: Path) -> FastAPI:
    settings = Settings(
        home=api_home(tmp_path),
        database_url=f"sqlite:///{tmp_path / 'limits.db'}",
        api_token=TOKEN,
        max_body_bytes=LIMIT,
    )
    return create_app(settings)


def post_routes(_app: FastAPI) -> list[str]:
    routers = (dashboard.router, events.router, leads.router, ops.router, rulesets.router,
               webhooks.router)  # fmt: skip
    routes = [route for router in routers for route in router.routes]
    return sorted(
        {r.path for r in routes if isinstance(r, APIRoute) and "POST" in (r.methods or set())}
    )


class Upload:
    """A client streaming ``total`` bytes in chunks; counts what the server pulled."""

    def __init__(self, total: int, declared: bool) -> None:
        self.total, self.declared, self.pulled = total, declared, 0

    async def receive(self) -> dict[str, Any]:
        if self.pulled >= self.total:
            await asyncio.sleep(3600)  # the client waits for the answer, as a socket would
        self.pulled += CHUNK
        return {"type": "http.request", "body": b"x" * CHUNK, "more_body": self.pulled < self.total}


def call(app: FastAPI, path: str, upload: Upload) -> tuple[int, dict[str, Any]]:
    headers = [(b"host", b"testserver"), (b"authorization", f"Bearer {TOKEN}".encode())]
    headers.append((b"content-type", b"application/json"))
    if upload.declared:
        headers.append((b"content-length", str(upload.total).encode()))
    else:
        headers.append((b"transfer-encoding", b"chunked"))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 5000),
             "server": ("testserver", 80)}  # fmt: skip
    sent: list[MutableMapping[str, Any]] = []

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    asyncio.run(asyncio.wait_for(app(scope, upload.receive, send), 30))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, json.loads(body) if body.startswith(b"{") else {}


def test_every_post_route_is_covered(app: FastAPI) -> None:
    assert post_routes(app) == [
        "/api/events",
        "/api/leads",
        "/api/rulesets/plan",
        "/api/rulesets/validate",
        "/login",
        "/logout",
        "/unsubscribe",
        "/webhooks/sendgrid",
    ]


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_gibibyte_body_is_refused_on_every_post_route_without_being_read(
    app: FastAPI, declared: bool
) -> None:
    for path in post_routes(app):
        upload = Upload(GIB, declared)
        status, body = call(app, path, upload)
        assert status == 413, path
        assert body["detail"] == f"the body is larger than {LIMIT} bytes (NURTURE_MAX_BODY_BYTES)"
        # Memory stays flat: a declared length is refused before a byte is read, a streamed
        # body as soon as it passes the limit.
        assert upload.pulled <= (0 if declared else LIMIT + CHUNK), path


def test_a_body_within_the_limit_still_reaches_the_route(app: FastAPI) -> None:
    upload = Upload(2 * CHUNK, declared=False)
    status, body = call(app, "/api/rulesets/validate", upload)
    assert status == 200 and body["valid"] is False
