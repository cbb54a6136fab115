"""Events posted one small request at a time through ``POST /api/events`` leave the same leads,
scores, ledger, stages, firings, actions and events as ``nurture ingest`` of the same stream in
one batch, on SQLite and PostgreSQL, for generated streams under the repository's b2b-saas
ruleset (counts, limits, a windowed sum, days_since).

The API's small groups read each lead's past from the database through the cached read
statements (``engine.ingest.state``), new leads under provisional ids whose past is never read;
the one batch holds the whole stream in memory and reads nothing back. A wrong window, a lost
parameter or a stored lead taken for a new one changes a count, a limit or a sum, and so the
tables."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from engine import db as database
from engine.api.app import create_app
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.settings import Settings
from tests.helpers import API_TOKEN, ROOT, compiled
from tests.store_support import another_database, lead_state

RULESET = ROOT / "rulesets" / "b2b-saas.yaml"
RULES = compiled(RULESET.read_text(), "b2b-saas.yaml")
START = datetime(2021, 1, 4, 9, tzinfo=UTC)  # the longest stream ends within 5 years
KINDS = st.sampled_from(
    ["page_view", "purchase", "form_submit", "demo_request", "crm_meeting", "crm_won",
     "content_download", "webinar_attended", "email_click"]
)  # fmt: skip


@st.composite
def streams(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Events of a few leads over months (counts' and limits' windows are days, the sum's a
    year), mostly in time order with some late ones, and some sent twice. None is earlier than
    its lead's first event: a lead is first seen when its first request comes, so one batch
    holding an earlier event would start the lead earlier."""
    events: list[dict[str, Any]] = []
    hours = 0
    first: dict[str, int] = {}
    for n in range(draw(st.integers(1, 40))):
        hours += draw(st.sampled_from([0, 1, 5, 30, 24 * 8, 24 * 40]))
        email = f"lead{draw(st.integers(0, 4))}@acme{draw(st.integers(0, 1))}.io"
        at = max(first.setdefault(email, hours), hours - draw(st.sampled_from([0, 0, 50, 240])))
        kind = draw(KINDS)
        properties: dict[str, Any] = {}
        if kind == "page_view":
            properties["url"] = draw(st.sampled_from(["/pricing", "/blog", "/careers"]))
        if kind == "purchase":
            properties["amount"] = draw(st.sampled_from([100, 2500, 4000]))
        event = {
            "id": f"e{n}",
            "email": email,
            "type": kind,
            "occurred_at": (START + timedelta(hours=at)).isoformat(),
            "properties": properties,
        }
        events.append(event)
        if draw(st.integers(0, 9)) == 0:
            events.append(dict(event))  # a retry: a duplicate
    return events


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_events_posted_one_by_one_score_as_one_ingest_batch(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if kind == "postgres":
        request.getfixturevalue("pg_available") or pytest.skip("no PostgreSQL reachable")
    home = tmp_path / "home"
    (home / "rulesets").mkdir(parents=True)
    shutil.copy(RULESET, home / "rulesets")

    # Not shrunk: each example builds two databases, and shrinking ran for minutes.
    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    @given(streams(), st.lists(st.integers(1, 3), min_size=1, max_size=8))
    def same(stream: list[dict[str, Any]], sizes: list[int]) -> None:
        with (
            another_database(kind, tmp_path) as posted_url,
            another_database(kind, tmp_path) as ingested_url,
        ):
            app = create_app(Settings(home=home, database_url=posted_url, api_token=API_TOKEN))
            auth = {"Authorization": f"Bearer {API_TOKEN}"}
            with TestClient(app, headers=auth) as client:
                start = 0
                for size in itertools.cycle(sizes):  # requests of 1 to 3 events, in order
                    if start >= len(stream):
                        break
                    response = client.post("/api/events", json=stream[start : start + size])
                    assert response.status_code == 200, response.text
                    assert not response.json()["rejected"]
                    start += size
            whole = ingest(
                database.connect(ingested_url),
                RULES,
                parse_jsonl([json.dumps(event) for event in stream]),
                batch_size=100_000,
            )
            assert not whole.rejected
            posted = lead_state(database.connect(posted_url))
            assert posted == lead_state(database.connect(ingested_url))
            assert len(posted["events"]) == len({event["id"] for event in stream})

    same()
