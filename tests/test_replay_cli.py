"""The ruleset in force as a marketer meets it, on SQLite and PostgreSQL: editing the file changes
nothing live until `nurture rules apply` (status says the files differ); plan shows the change
and writes nothing; apply refuses a ruleset whose tests fail; history and rollback; a lead's
ledger by version and as of a date, on the command line and over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from engine.db.schema import ACTIONS, LEADS
from engine.settings import Settings
from tests.helpers import API_TOKEN, nurture, ruleset_text
from tests.store_support import tables

pytestmark = pytest.mark.home(rulesets=["cli-test"])
RULESET = ruleset_text("cli-test")
MORE = RULESET.replace("then: {score: {engagement: 10}}", "then: {score: {engagement: 30}}")
RECORDS: list[dict[str, Any]] = [
    {"email": "ana@acme.io", "job_title": "VP Sales", "id": "p1",
     "occurred_at": "2026-10-01T09:00:00Z"},
    {"id": "e1", "email": "ana@acme.io", "type": "page_view",
     "occurred_at": "2026-10-02T09:00:00Z", "properties": {"url": "/pricing"}},
    {"id": "e2", "email": "ana@acme.io", "type": "page_view",
     "occurred_at": "2026-10-05T09:00:00Z", "properties": {"url": "/pricing"}},
    {"id": "e3", "email": "bo@acme.io", "type": "page_view",
     "occurred_at": "2026-10-03T09:00:00Z", "properties": {"url": "/pricing"}},
]  # fmt: skip


def ingest(home: Path, records: list[dict[str, Any]]) -> None:
    path = home / "records.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    result = nurture("ingest", str(path), "--json")
    assert result.exit_code == 0, result.output


def lead(email: str, *args: str) -> dict[str, Any]:
    result = nurture("lead", email, "--json", *args)
    assert result.exit_code == 0, result.output
    found: dict[str, Any] = json.loads(result.stdout)
    return found


@pytest.mark.slow
def test_an_edit_goes_live_only_by_apply(cli_home: Path, db_url: str) -> None:
    ingest(cli_home, RECORDS[:2])
    status = json.loads(nurture("rules", "status", "--json").stdout)
    assert status["files_differ"] is False and status["kind"] == "adopt"
    first = status["version"]
    assert lead("ana@acme.io")["score"] == 25  # senior 15 + pricing 10

    (cli_home / "rulesets" / "cli-test.yaml").write_text(MORE)
    ingest(cli_home, RECORDS[2:])
    # Still the version in force: the new page view scores 10, not 30.
    assert lead("ana@acme.io")["score"] == 35
    assert lead("bo@acme.io")["score"] == 10
    status = json.loads(nurture("rules", "status", "--json").stdout)
    assert status["version"] == first and status["files_differ"] is True
    assert "files differ" in nurture("rules", "status").stdout

    db = database.connect(db_url)
    before = tables(db)
    planned = nurture("rules", "plan", "--json")
    assert planned.exit_code == 0, planned.output
    report = json.loads(planned.stdout)
    assert tables(db) == before  # a plan writes nothing
    assert report["in_force"] == first and report["leads"] == 2
    assert report["score_changed"] == 2 and report["deltas"] == {"+20..+49": 2}
    assert report["temperature"] == {"cold": {"cold": 1, "hot": 1}}
    assert report["newly_hot"]["examples"] == ["ana@acme.io"]
    top = report["biggest"][0]
    assert (top["email"], top["before"], top["after"]) == ("ana@acme.io", 35, 75)

    applied = nurture("rules", "apply", "-m", "pricing counts more", "--alert")
    assert applied.exit_code == 0, applied.output
    assert "2 leads rescored" in applied.stdout
    # --alert: the lead the rescore made hot gets one alert, now; nothing else is pending.
    with db.connect() as conn:
        pending = conn.execute(
            sa.select(LEADS.c.email, ACTIONS.c.rule)
            .join(LEADS, LEADS.c.id == ACTIONS.c.lead_id)
            .where(ACTIONS.c.kind == "alert", ACTIONS.c.status == "pending")
        ).all()
    assert [tuple(row) for row in pending] == [("ana@acme.io", "rescore")]
    assert lead("ana@acme.io")["score"] == 75 and lead("bo@acme.io")["score"] == 30
    status = json.loads(nurture("rules", "status", "--json").stdout)
    assert status["files_differ"] is False and status["finished"] is True
    second = status["version"]
    # Every version's ledger is kept; the lead shows the one it is scored under.
    assert {row["ruleset_version"] for row in lead("ana@acme.io")["ledger"]} == {second}
    every = {row["ruleset_version"] for row in lead("ana@acme.io", "--versions")["ledger"]}
    assert every == {first, second}
    grouped = nurture("lead", "ana@acme.io", "--versions").stdout
    assert f"ledger of version {first}" in grouped and f"ledger of version {second}" in grouped
    # Scores as of a date: the events up to then, under the version in force or an earlier one.
    assert lead("ana@acme.io", "--as-of", "2026-10-03T00:00:00Z")["score"] == 45
    earlier = lead("ana@acme.io", "--as-of", "2026-10-03T00:00:00Z", "--ruleset", first[:6])
    assert earlier["score"] == 25 and earlier["ruleset_version"] == first

    again = nurture("rules", "apply")
    assert "nothing to do" in again.stdout
    history = json.loads(nurture("rules", "history", "--json").stdout)
    assert [(h["kind"], h["version"], h["leads_rescored"]) for h in history] == [
        ("adopt", first, 0),
        ("apply", second, 2),
    ]
    assert history[1]["note"] == "pricing counts more" and history[1]["rules"] == 2

    rolled = nurture("rules", "rollback")
    assert rolled.exit_code == 0, rolled.output
    assert lead("ana@acme.io")["score"] == 35 and lead("bo@acme.io")["score"] == 10
    history = json.loads(nurture("rules", "history", "--json").stdout)
    assert (history[-1]["kind"], history[-1]["version"]) == ("rollback", first)


def test_apply_refuses_a_ruleset_whose_tests_fail(cli_home: Path, db_url: str) -> None:
    ingest(cli_home, RECORDS)
    (cli_home / "rulesets" / "tests").mkdir()
    (cli_home / "rulesets" / "tests" / "cli-test.yaml").write_text(
        "- name: a pricing view\n"
        "  lead: {email: x@acme.io}\n"
        "  events: [{type: page_view, properties: {url: /pricing}}]\n"
        "  expect: {score: 10}\n"
    )
    (cli_home / "rulesets" / "cli-test.yaml").write_text(MORE)
    refused = nurture("rules", "apply")
    assert refused.exit_code == 1 and "nothing applied" in refused.output
    status = json.loads(nurture("rules", "status", "--json").stdout)
    assert status["kind"] == "adopt" and status["files_differ"] is True
    assert lead("bo@acme.io")["score"] == 10


def test_plan_and_as_of_over_http(cli_home: Path, db_url: str) -> None:
    ingest(cli_home, RECORDS)
    settings = Settings(home=cli_home, database_url=db_url, api_token=API_TOKEN)
    auth = {"Authorization": f"Bearer {API_TOKEN}"}
    with TestClient(create_app(settings), headers=auth) as client:
        answer = client.post(
            "/api/rulesets/plan", content=MORE, headers={"Content-Type": "application/yaml"}
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["score_changed"] == 2
        broken = client.post("/api/rulesets/plan", content="ruleset: [", headers=auth)
        assert broken.status_code == 422
        now = client.get("/api/leads/ana@acme.io").json()
        past = client.get("/api/leads/ana@acme.io", params={"as_of": "2026-10-03"}).json()
        assert (now["score"], past["score"]) == (35, 25)
        assert past["as_of"] == "2026-10-03T00:00:00Z"
        assert [row["event_id"] for row in past["ledger"]] == ["p1", "e1"]
        bad = client.get("/api/leads/ana@acme.io", params={"as_of": "yesterday-ish"})
        assert bad.status_code == 422
    with database.connect(db_url).connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM ruleset_apply")).scalar() == 1
