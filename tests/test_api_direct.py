"""``POST /api/events`` through its :class:`~engine.api.events.Direct` handler answers exactly
as FastAPI's own handler of the same route would: generated requests (valid events, duplicates,
reused ids, bad items, hostile and oversized bodies, NUL in the query, bad tokens) sent to two
apps, one with the direct handler and one with FastAPI's, each on its own database fed the same
requests, must get the same status, headers and body byte for byte. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import db as database
from engine.api import events
from engine.api.app import create_app
from engine.settings import Settings
from tests.helpers import API_TOKEN, PG_URL

pytestmark = pytest.mark.home(rulesets=["api-test"])

MAX_BODY = 1500
MAX_EVENTS = 4


def _app(home: Path, url: str) -> FastAPI:
    settings = Settings(
        home=home,
        database_url=url,
        api_token=API_TOKEN,
        max_body_bytes=MAX_BODY,
        max_events_per_request=MAX_EVENTS,
    )
    return create_app(settings)


@pytest.fixture
def urls(db_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two empty databases of the kind under test."""
    if db_url.startswith("sqlite"):
        yield db_url, f"sqlite:///{tmp_path / 'plain.db'}"
        return
    with database.scratch_schema(PG_URL, "t") as other:
        yield db_url, other


@pytest.fixture
def clients(home: Path, urls: tuple[str, str]) -> Iterator[tuple[TestClient, TestClient]]:
    """(the app as served, the same app with FastAPI's handler on the route)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events.Direct, "get_route_handler", APIRoute.get_route_handler)
        plain = _app(home, urls[1])  # its handler is built here, under the patch
    direct = _app(home, urls[0])
    with ExitStack() as stack:
        yield stack.enter_context(TestClient(direct)), stack.enter_context(TestClient(plain))


EMAILS = st.sampled_from(["ana@acme.io", "bo@acme.io", "Ana@Acme.io", "not-an-email", "", "a@b"])
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=12), st.floats()
)
EVENT = st.fixed_dictionaries(
    {"email": EMAILS},
    optional={
        "type": st.sampled_from(["page_view", "form_submit", "demo_request", "", "x" * 300]),
        "id": st.one_of(st.sampled_from(["e1", "e2", "e3", ""]), st.integers(0, 3), VALUES),
        "properties": st.one_of(
            st.dictionaries(st.sampled_from(["url", "n", "é\x00"]), VALUES, max_size=3),
            VALUES,
        ),
        "occurred_at": st.sampled_from(
            ["2026-11-01T10:00:00Z", "2026-11-01T10:00:00+02:00", "yesterday", "", None]
        ),
        "lead": st.one_of(st.dictionaries(st.sampled_from(["company", "email"]), VALUES), VALUES),
        "extra": VALUES,
    },
)
PAYLOAD: st.SearchStrategy[Any] = st.one_of(
    EVENT, st.lists(st.one_of(EVENT, VALUES), max_size=MAX_EVENTS + 1), VALUES, st.just({})
)


def _encoded(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, allow_nan=True).encode()


BODIES = st.one_of(
    PAYLOAD.map(_encoded),
    st.binary(max_size=40),  # not JSON, not UTF-8
    st.just(b"[" * 200 + b"]" * 200),  # deeper than the parser goes
    st.just(b'{"email": "ana@acme.io", "type": "page_view", "id": "\\u0000"}'),
    st.integers(MAX_BODY - 40, MAX_BODY + 40).map(  # around the body limit
        lambda n: _encoded({"email": "ana@acme.io", "type": "t", "id": "x" * n})[:n]
    ),
)
AUTH = st.sampled_from(
    [f"Bearer {API_TOKEN}", f"bearer  {API_TOKEN} ", "Bearer wrong", f"Basic {API_TOKEN}", None]
)
QUERY = st.sampled_from(["", "?stage=x", "?x=%00", "?a=1&a=%00b"])
CONTENT_TYPE = st.sampled_from(["application/json", "text/plain", None])


def _send(client: TestClient, body: bytes, auth: str | None, query: str, kind: str | None) -> Any:
    headers = {name: value for name, value in (("Authorization", auth), ("Content-Type", kind))
               if value is not None}  # fmt: skip
    response = client.post(f"/api/events{query}", content=body, headers=headers)
    return response.status_code, sorted(response.headers.multi_items()), response.content


def test_the_direct_handler_answers_byte_for_byte_as_fastapi_does(
    clients: tuple[TestClient, TestClient],
) -> None:
    direct, plain = clients
    assert direct.app is not plain.app

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(BODIES, AUTH, QUERY, CONTENT_TYPE)
    def same(body: bytes, auth: str | None, query: str, kind: str | None) -> None:
        # Both databases get every request, so they hold the same events throughout and an id
        # sent twice is a duplicate (or a reused id) for both.
        assert _send(direct, body, auth, query, kind) == _send(plain, body, auth, query, kind)

    same()
    for client in clients:  # the generated stream did reach the database
        body = _encoded({"email": "ana@acme.io", "type": "t"})
        answer = _send(client, body, f"Bearer {API_TOKEN}", "", None)
        assert answer[0] == 200


def test_an_app_whose_route_changed_is_refused(home: Path, urls: tuple[str, str]) -> None:
    """The start-up check sees a difference between the route and what the handler does."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events, "_expected", lambda: ("something else",))
        with pytest.raises(RuntimeError, match="not what its Direct handler does"):
            _app(home, urls[0])
