"""Ingest, explain and decay on SQLite and PostgreSQL, through the `nurture` command."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.db.schema import LEADS, LEDGER, SCORES, STAGES
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.reports.leads import lead_detail
from engine.schedule.decay import decay
from tests.helpers import ROOT, compiled, nurture

pytestmark = pytest.mark.home(rulesets=["store-test"])


def event(n: int, email: str, type: str, at: str, **properties: Any) -> str:
    return json.dumps(
        {"id": f"e{n}", "email": email, "type": type, "occurred_at": at, "properties": properties}
    )


LINES = [
    json.dumps({"email": "Ana@Acme.io", "job_title": "VP Marketing", "occurred_at": "2026-01-01"}),
    event(1, "ana@acme.io", "page_view", "2026-01-05T10:00:00Z", url="/pricing"),
    event(2, "ana@acme.io", "page_view", "2026-01-03T10:00:00Z", url="/blog"),  # late, earlier
    event(3, "ana@acme.io", "form_submit", "2026-01-06T10:00:00Z"),
    event(4, "ana@acme.io", "page_view", "2026-01-07T10:00:00Z", url="/pricing"),
    '{"email": "bob@beta.io", "type": "page_view", "occurred_at": "yesterday"}',
    '{"email": "not-an-email", "type": "page_view"}',
    event(5, "bob@beta.io", "unsubscribe", "2026-01-08T10:00:00Z"),
]


@pytest.fixture
def events(cli_home: Path) -> Path:
    """The lines above as a file, with the home and the database under test in the environment."""
    path = cli_home / "events.jsonl"
    path.write_text("\n".join(LINES) + "\n")
    return path


def snapshot(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as conn:
        state = {
            "leads": conn.execute(
                sa.select(
                    LEADS.c.email,
                    LEADS.c.score,
                    LEADS.c.stage,
                    LEADS.c.temperature,
                    LEADS.c.subscribed,
                ).order_by(LEADS.c.email)
            ).all(),
            "scores": conn.execute(
                sa.select(SCORES).order_by(SCORES.c.lead_id, SCORES.c.component)
            ).all(),
            "ledger": conn.execute(
                sa.select(
                    LEDGER.c.lead_id, LEDGER.c.rule, LEDGER.c.delta, LEDGER.c.score_after
                ).order_by(LEDGER.c.id)
            ).all(),
            "stages": conn.execute(
                sa.select(STAGES.c.lead_id, STAGES.c.from_stage, STAGES.c.to_stage).order_by(
                    STAGES.c.id
                )
            ).all(),
        }
    engine.dispose()
    return state


def test_ingest_reports_bad_lines_keeps_good_ones_and_is_idempotent(
    events: Path, db_url: str
) -> None:
    first = nurture("ingest", str(events), "--json")
    assert first.exit_code == 1, first.output
    summary = json.loads(first.stdout)
    assert summary["accepted"] == 6 and summary["duplicates"] == 0
    assert summary["rejected"] == [
        {"line": 6, "error": "occurred_at: not an ISO 8601 time: 'yesterday'"},
        {"line": 7, "error": "email: not an email address"},
    ]
    state = snapshot(db_url)
    again = nurture("ingest", str(events))
    assert "accepted 0, duplicates 6, rejected 2" in again.stdout
    assert snapshot(db_url) == state


def test_lead_explains_its_score(events: Path) -> None:
    nurture("ingest", str(events))
    result = nurture("lead", "ANA@acme.io", "--json")
    assert result.exit_code == 0, result.output
    lead = json.loads(result.stdout)
    # fit 30 (title) + pricing 20 + form 10 + pricing 20 + busy week (3 views by Jan 7) 5 = 85
    assert lead["scores"] == {"fit": 30, "engagement": 55}
    assert (lead["score"], lead["temperature"], lead["stage"]) == (85, "hot", "mql")
    assert sum(row["delta"] for row in lead["ledger"]) == lead["score"]
    assert [row["rule"] for row in lead["ledger"]] == [
        "senior-title",
        "pricing-page",
        "became-lead",
        "pricing-page",
        "busy-week",
    ]
    assert lead["ledger"][-1]["event_id"] == "e4"
    assert [(h["from"], h["to"], h["rule"]) for h in lead["stage_history"]] == [
        (None, "subscriber", "new-lead"),
        ("subscriber", "lead", "became-lead"),
        ("lead", "mql", "marketing-qualified"),
    ]
    assert lead["attributes"] == {"job_title": "VP Marketing", "domain": "acme.io"}
    assert lead["recent_events"][0] == {
        "id": "e4",
        "type": "page_view",
        "occurred_at": "2026-01-07T10:00:00Z",
        "properties": {"url": "/pricing"},
    }
    text = nurture("lead", "ana@acme.io")
    assert "marketing-qualified" in text.stdout and "busy-week" in text.stdout
    assert nurture("lead", "nobody@acme.io").exit_code == 1


def test_leads_filters_and_unsubscribe_withdraws_consent(events: Path) -> None:
    nurture("ingest", str(events))
    hot = json.loads(nurture("leads", "--temperature", "hot", "--json").stdout)
    assert [lead["email"] for lead in hot] == ["ana@acme.io"]
    gone = json.loads(nurture("leads", "--stage", "unsubscribed", "--json").stdout)
    assert [(lead["email"], lead["subscribed"]) for lead in gone] == [("bob@beta.io", False)]


@pytest.mark.usefixtures("cli_home")
def test_csv_and_stdin() -> None:
    csv = (
        "id,email,type,occurred_at,properties.url,job_title\n"
        "c1,ana@acme.io,page_view,2026-01-05T10:00:00Z,/pricing,\n"
        ",cleo@corp.io,,,,Chief of Staff\n"
    )
    result = nurture("ingest", "-", "--json", input=csv)
    assert json.loads(result.stdout) == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [],
        "alerts": 0,
    }
    cleo = json.loads(nurture("lead", "cleo@corp.io", "--json").stdout)
    assert cleo["scores"]["fit"] == 30
    assert json.loads(nurture("lead", "ana@acme.io", "--json").stdout)["score"] == 20


def test_tick_decays_once_per_period(events: Path, db_url: str) -> None:
    nurture("ingest", str(events))
    # Engagement last rose on Jan 7 at 10:00; two whole weeks later, -10.
    assert nurture("tick", "--now", "2026-01-21T10:00:00Z").exit_code == 0
    lead = json.loads(nurture("lead", "ana@acme.io", "--json").stdout)
    assert lead["scores"]["engagement"] == 45 and lead["score"] == 75
    state = snapshot(db_url)
    nurture("tick", "--now", "2026-01-21T10:00:00Z")
    nurture("tick", "--now", "2026-01-15T00:00:00Z")
    assert snapshot(db_url) == state
    # Daily ticks for months equal one tick at the end, and never go below the minimum.
    for day in range(22, 32):
        nurture("tick", "--now", f"2026-01-{day}T12:00:00Z")
    nurture("tick", "--now", "2026-06-01T00:00:00Z")
    lead = json.loads(nurture("lead", "ana@acme.io", "--json").stdout)
    assert (lead["scores"]["engagement"], lead["score"], lead["temperature"]) == (0, 30, "cold")
    assert sum(row["delta"] for row in lead["ledger"]) == 30
    assert {row["rule"] for row in lead["ledger"] if row["delta"] < 0} == {"decay"}


def test_repo_rulesets_check_and_test_pass() -> None:
    check = nurture("rules", "check", str(ROOT / "rulesets"))
    assert check.exit_code == 0, check.output
    tested = nurture("rules", "test", str(ROOT / "rulesets"))
    assert tested.exit_code == 0, tested.output
    assert " 0 cases failed" in tested.stdout


def test_a_line_that_is_not_utf8_is_rejected_alone(cli_home: Path) -> None:
    good = event(9, "dee@acme.io", "page_view", "2026-01-05T10:00:00Z", url="/pricing")
    (cli_home / "mixed.jsonl").write_bytes(good.encode() + b"\n" + b'{"email": "\xff@x.io"}\n')
    result = nurture("ingest", str(cli_home / "mixed.jsonl"), "--json")
    assert json.loads(result.stdout) == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": [{"line": 2, "error": "not valid UTF-8 text"}],
        "alerts": 0,
    }


@pytest.mark.slow
def test_demo_scores_sample_leads_and_shows_where_to_look(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NURTURE_HOME", str(ROOT))
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    first = nurture("demo", "--leads", "120")
    assert first.exit_code == 0, first.output
    assert "rejected 0" in first.stdout and "funnel" in first.stdout
    assert "hot leads" in first.stdout and "nurture lead " in first.stdout
    # Sample leads become customers, whose health the clock moves without new events.
    assert re.search(r"health of the [1-9]\d* customers: at_risk \d+", first.stdout)
    assert re.search(r"[1-9]\d* time evaluations", first.stdout)
    again = nurture("demo", "--leads", "120")
    assert "accepted 0" in again.stdout  # a re-run finds every record stored


def test_check_warns_about_a_fit_rule_without_a_limit(tmp_path: Path) -> None:
    (tmp_path / "r.yaml").write_text(
        "ruleset: r\ncomponents: {fit: {min: 0, max: 60}}\nrules:\n"
        "  - name: vp\n    when: {lead.job_title: VP}\n    then: {score: {fit: 10}}\n"
        "  - name: visit\n    when: {event.type: page_view}\n    then: {score: {fit: 1}}\n"
    )
    result = nurture("rules", "check", str(tmp_path / "r.yaml"))
    assert result.exit_code == 0
    assert f"warning {tmp_path / 'r.yaml'}:4: rule 'vp' reads only the lead" in result.stdout
    assert "'visit'" not in result.stdout


def test_half_life_decay_halves_what_rose(db: sa.Engine) -> None:
    rules = compiled(
        "ruleset: halving\ncomponents:\n  engagement: {min: 0, max: 100, decay: {half_life: 10d}}\n"
        "rules:\n  - name: webinar\n    when: {event.type: webinar_attended}\n"
        "    then: {score: {engagement: 80}}\n"
    )
    ingest(
        db, rules, parse_jsonl([event(1, "hal@x.io", "webinar_attended", "2026-03-01T00:00:00Z")])
    )
    assert decay(db, rules.ruleset, datetime(2026, 3, 11, tzinfo=UTC)) == 1
    assert decay(db, rules.ruleset, datetime(2026, 3, 11, tzinfo=UTC)) == 0
    lead = lead_detail(db, "hal@x.io")
    assert lead is not None and lead["score"] == 40
    decay(db, rules.ruleset, datetime(2026, 3, 21, tzinfo=UTC))
    lead = lead_detail(db, "hal@x.io")
    assert lead is not None
    assert [(r["rule"], r["delta"], r["score_after"]) for r in lead["ledger"]] == [
        ("webinar", 80, 80),
        ("decay", -40, 40),
        ("decay", -20, 20),
    ]
