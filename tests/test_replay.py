"""Scores are replayable, on SQLite and PostgreSQL: scoring events as they arrive (ticks
included) equals replaying the event log under the same version; applying a second version to a
database scored under the first gives what a fresh database scoring the same events under the
second gives (stages apart: they only move forward); a plan writes nothing; a rollback brings
the first version's scores back."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.db.schema import ACTIONS, LEADS, STAGES
from engine.demo.sample import DEFAULT_END, sample_records
from engine.home import compile_text
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.replay.run import apply, plan
from engine.rules.compile import CompiledRuleset
from engine.schedule.clock import evaluate_due
from engine.schedule.decay import decay
from engine.settings import Settings
from engine.status import ActionStatus
from tests.helpers import ROOT
from tests.store_support import another_database, lead_state, tables

pytestmark = pytest.mark.slow  # each ingests the sample data and replays it (10–60 s)
LEADS_N = 120
TICKS = [DEFAULT_END + timedelta(days=d, hours=10) for d in (1, 4, 9, 20, 45)]


def _compiled(name: str, edit: tuple[str, str] | None = None) -> CompiledRuleset:
    text = (ROOT / "rulesets" / name).read_text()
    if edit is not None:
        assert edit[0] in text
        text = text.replace(*edit)
    return compile_text(text, name, ROOT)


def _settings(tmp_path: Path, url: str) -> Settings:
    return Settings(home=tmp_path / "home", database_url=url)


def _ingest(db: sa.Engine, compiled: CompiledRuleset, ticks: list[datetime] = TICKS) -> None:
    lines = (json.dumps(r) for r in sample_records(leads=LEADS_N, seed=11))
    result = ingest(db, compiled, parse_jsonl(lines), batch_size=500)
    assert result.accepted > 1000 and not result.rejected
    for now in ticks:
        decay(db, compiled.ruleset, now)
        evaluate_due(db, compiled, None, now)


def _scored(state: dict[str, Any]) -> dict[str, Any]:
    """What scoring decided, the replayed intents (stored as past) apart."""
    found = dict(state)
    found["actions"] = [row for row in state["actions"] if row[-1] != ActionStatus.PAST]
    return found


def _forget_versions(db: sa.Engine) -> None:
    """As if the leads were scored before versions were tracked: apply rescans them all."""
    with db.begin() as conn:
        conn.execute(sa.update(LEADS).values(ruleset_version=None))


@pytest.mark.parametrize("name", ["b2b-saas.yaml", "examples/customer-health.yaml"])
def test_online_scoring_equals_replay(db_url: str, tmp_path: Path, name: str) -> None:
    database.upgrade(db_url)
    db = database.connect(db_url)
    compiled = _compiled(name)
    _ingest(db, compiled)
    with db.connect() as conn:
        time_events = conn.execute(sa.text("SELECT count(*) FROM event WHERE type = 'time'"))
        assert (time_events.scalar() or 0) > 0  # the ticks evaluated leads: their events replay too
    online = lead_state(db)
    _forget_versions(db)
    result = apply(db, _settings(tmp_path, db_url), compiled, now=TICKS[-1])
    assert result.summary.leads == LEADS_N and result.summary.changed == 0
    replayed = lead_state(db)
    assert _scored(replayed) == online
    # Every intent was replayed, and stored as past: nothing is sent again.
    past = sorted(row[:-1] for row in replayed["actions"] if row[-1] == ActionStatus.PAST)
    assert past == sorted(row[:-1] for row in online["actions"])
    with db.connect() as conn:
        versions = conn.execute(sa.select(LEADS.c.ruleset_version).distinct()).scalars().all()
    assert versions == [compiled.ruleset.version]


V2_EDIT = ("then: {score: {engagement: 25}}", "then: {score: {engagement: 40}}")


def test_apply_equals_a_fresh_database_scored_under_the_new_version(
    db_url: str, tmp_path: Path
) -> None:
    database.upgrade(db_url)
    db = database.connect(db_url)
    v1, v2 = _compiled("b2b-saas.yaml"), _compiled("b2b-saas.yaml", V2_EDIT)
    now = TICKS[0]
    _ingest(db, v1, ticks=[])
    before = lead_state(db)
    # Two worker processes, each a slice of the leads.
    result = apply(db, _settings(tmp_path, db_url), v2, workers=2, now=now)
    assert result.summary.leads == LEADS_N and result.summary.changed > 0
    with another_database(db_url, tmp_path) as other_url:
        fresh = database.connect(other_url)
        _ingest(fresh, v2, ticks=[])
        decay(fresh, v2.ruleset, now)  # apply decays every lead up to now
        expected, got = lead_state(fresh), lead_state(db)
        fresh.dispose()

    def scoring(state: dict[str, Any], version: str) -> dict[str, Any]:
        leads = [(e, s, t, sub, attrs, tags) for e, s, t, _, _, sub, attrs, tags in state["leads"]]
        ledger = [row for row in state["ledger"] if row[6] == version]
        return {"leads": leads, "scores": state["scores"], "ledger": ledger,
                "firings": state["firings"], "events": state["events"]}  # fmt: skip

    assert scoring(got, v2.ruleset.version) == scoring(expected, v2.ruleset.version)
    # The first version's ledger rows stay, for audit.
    v1_rows = [row for row in got["ledger"] if row[6] == v1.ruleset.version]
    assert v1_rows == [row for row in before["ledger"] if row[6] == v1.ruleset.version]
    # Stages only moved forward, each move recorded as a rescore.
    order = v2.ruleset.stages
    moves = {(e, s) for e, _, _, s, *_ in got["leads"]} - {
        (e, s) for e, _, _, s, *_ in before["leads"]
    }
    with db.connect() as conn:
        rescored = conn.execute(
            sa.select(STAGES.c.from_stage, STAGES.c.to_stage).where(STAGES.c.rescore)
        ).all()
    assert len(rescored) == len(moves)
    assert all(order.index(b) < order.index(a) for b, a in rescored if a in order and b in order)
    # No email, alert or webhook for the past: every new intent is stored as past.
    with db.connect() as conn:
        pending = conn.execute(
            sa.select(sa.func.count()).where(ACTIONS.c.status == ActionStatus.PENDING)
        ).scalar()
    assert pending == sum(1 for row in before["actions"] if row[-1] == ActionStatus.PENDING)
    # A second apply changes nothing.
    again = tables(db)
    second = apply(db, _settings(tmp_path, db_url), v2, now=now)
    assert second.summary.leads == 0 and tables(db) == again


def test_plan_writes_nothing_and_rollback_restores(db_url: str, tmp_path: Path) -> None:
    database.upgrade(db_url)
    db = database.connect(db_url)
    settings = _settings(tmp_path, db_url)
    v1, v2 = _compiled("b2b-saas.yaml"), _compiled("b2b-saas.yaml", V2_EDIT)
    now = TICKS[0]
    _ingest(db, v1, ticks=[])
    _forget_versions(db)
    apply(db, settings, v1, now=now)  # v1 in force, every lead decayed up to now
    scored_v1 = _scored(lead_state(db))
    stored = tables(db)
    summary = plan(db, settings, v2, now=now)
    assert tables(db) == stored
    assert summary.leads == LEADS_N and summary.changed > 0
    report = summary.as_json()
    assert sum(report["deltas"].values()) == summary.changed
    assert sum(n for row in report["temperature"].values() for n in row.values()) == LEADS_N
    # V2 gives more points for the same events: scores rise, the biggest first, with ledgers.
    assert set(report["deltas"]) <= {"+1..+19", "+20..+49", "≥ +50"}
    biggest = report["biggest"]
    assert biggest[0]["delta"] == max(row["delta"] for row in biggest)
    assert biggest[0]["ledger_after"][-1]["score_after"] >= biggest[0]["after"]
    apply(db, settings, v2, now=now)
    assert _scored(lead_state(db)) != scored_v1
    apply(db, settings, v1, kind="rollback", now=now)
    back = _scored(lead_state(db))
    # The same scores as before; stages only moved forward in between.
    keep = ("scores", "firings", "events")
    assert {k: back[k] for k in keep} == {k: scored_v1[k] for k in keep}
    # The ledger in force is v1's again; v2's rows stay beside it, for audit.
    v1_rows = [row for row in back["ledger"] if row[6] == v1.ruleset.version]
    assert v1_rows == scored_v1["ledger"]
    assert len(back["ledger"]) > len(v1_rows)
    assert [row[:3] for row in back["leads"]] == [row[:3] for row in scored_v1["leads"]]
