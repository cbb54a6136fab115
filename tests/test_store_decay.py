"""Score decay (`nurture tick`, engine.schedule.decay.decay) on SQLite and PostgreSQL: points per
whole period since the component last rose, half-life toward the minimum, never below it,
temperature following, and ticks that are idempotent however often or late they run."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.demo.sample import sample_records
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.reports.leads import lead_detail
from engine.rules.compile import CompiledRuleset
from engine.schedule.decay import decay
from tests.helpers import ROOT, compiled, nurture, ruleset_text
from tests.store_support import another_database, lead_state, ledger_sums, tables

RULESET = ruleset_text("decay-test")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def event(id: str, email: str, type: str, when: str) -> str:
    return json.dumps({"id": id, "email": email, "type": type, "occurred_at": when})


def lead(db: sa.Engine, email: str) -> dict[str, Any]:
    detail = lead_detail(db, email)
    assert detail is not None
    assert sum(row["delta"] for row in detail["ledger"]) == detail["score"]
    assert sum(detail["scores"].values()) == detail["score"]
    return detail


def tick(now: str) -> int:
    result = nurture("tick", "--now", now, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["now"] == now
    return int(report["decayed"])


@pytest.mark.home(rulesets=["decay-test"])
@pytest.mark.usefixtures("cli_home")
def test_points_decay_per_whole_period_since_the_last_rise(db_url: str) -> None:
    db = database.connect(db_url)
    records = [
        json.dumps({"email": "ana@acme.io", "job_title": "VP Sales", "occurred_at": "2026-01-01"}),
        event("w1", "ana@acme.io", "webinar_attended", "2026-01-01T10:00:00Z"),
    ]
    assert nurture("ingest", "-", input="\n".join(records)).exit_code == 0
    start = lead(db, "ana@acme.io")
    assert (start["score"], start["temperature"], start["stage"]) == (70, "hot", "lead")

    assert tick("2026-01-08T09:59:59Z") == 0  # not a whole week yet
    assert lead(db, "ana@acme.io")["score"] == 70
    assert tick("2026-01-08T10:00:00Z") == 1
    ana = lead(db, "ana@acme.io")
    assert (ana["scores"], ana["score"], ana["temperature"]) == (
        {"fit": 30, "engagement": 35},
        65,
        "warm",
    )
    assert ana["stage"] == "lead"  # decay moves the score, not the stage
    assert ana["ledger"][-1] == {
        "rule": "decay",
        "component": "engagement",
        "delta": -5,
        "score_after": 65,
        "event_id": None,
        "at": "2026-01-08T10:00:00Z",
        "ruleset_version": ana["ruleset_version"],
    }

    # The same time again, or an earlier one, changes nothing at all.
    state = tables(db)
    assert tick("2026-01-08T10:00:00Z") == 0
    assert tick("2026-01-05T00:00:00Z") == 0
    assert tick("2026-01-08T11:00:00Z") == 0
    assert tables(db) == state

    # Three whole weeks since the rise: two more periods.
    assert tick("2026-01-22T10:00:00Z") == 1
    assert lead(db, "ana@acme.io")["scores"]["engagement"] == 25

    # A new rise restarts the clock: nothing until a whole week after it.
    ingest_one = event("v1", "ana@acme.io", "page_view", "2026-01-23T10:00:00Z")
    assert nurture("ingest", "-", input=ingest_one).exit_code == 0
    assert lead(db, "ana@acme.io")["scores"]["engagement"] == 35
    assert tick("2026-01-30T09:00:00Z") == 0
    assert tick("2026-01-30T10:00:00Z") == 1
    assert lead(db, "ana@acme.io")["scores"]["engagement"] == 30

    # Months later: engagement stops at its minimum, fit does not decay.
    assert tick("2026-09-01T00:00:00Z") == 1
    ana = lead(db, "ana@acme.io")
    assert (ana["scores"], ana["score"], ana["temperature"]) == (
        {"fit": 30, "engagement": 0},
        30,
        "cold",
    )
    assert tick("2027-01-01T00:00:00Z") == 0
    decays = [row for row in ana["ledger"] if row["rule"] == "decay"]
    assert [row["delta"] for row in decays] == [-5, -10, -5, -30]
    with db.connect() as conn:
        versions = conn.execute(sa.text("SELECT DISTINCT ruleset_version FROM score_ledger"))
        assert len(versions.all()) == 1  # decay rows name the ruleset in force

    cold = json.loads(nurture("leads", "--temperature", "cold", "--json").stdout)
    assert [row["email"] for row in cold] == ["ana@acme.io"]


def test_points_decay_never_goes_below_a_nonzero_minimum(db: sa.Engine) -> None:
    rules = compiled(
        "ruleset: floor\ntemperature: {cold: 0, warm: 20, hot: 40}\ncomponents:\n"
        "  activity: {min: 10, max: 50, decay: {points: 15, every: 1d}}\n"
        "rules:\n  - name: visit\n    when: {event.type: page_view}\n"
        "    then: {score: {activity: 30}}\n"
    )
    ingest(db, rules, parse_jsonl([event("f1", "flo@x.io", "page_view", "2026-03-01T00:00:00Z")]))
    flo = lead(db, "flo@x.io")
    assert (flo["score"], flo["temperature"]) == (40, "hot")  # starts at its minimum, 10
    assert decay(db, rules.ruleset, at("2026-03-02T00:00:00Z")) == 1
    assert (lead(db, "flo@x.io")["score"], lead(db, "flo@x.io")["temperature"]) == (25, "warm")
    assert decay(db, rules.ruleset, at("2026-03-03T00:00:00Z")) == 1
    assert (lead(db, "flo@x.io")["score"], lead(db, "flo@x.io")["temperature"]) == (10, "cold")
    # Already at the minimum: no ledger row, however much later.
    assert decay(db, rules.ruleset, at("2026-03-04T00:00:00Z")) == 0
    assert decay(db, rules.ruleset, at("2026-06-01T00:00:00Z")) == 0
    flo = lead(db, "flo@x.io")
    assert flo["score"] == 10
    assert [r["delta"] for r in flo["ledger"] if r["rule"] == "decay"] == [-15, -15]


HALF_LIFE = compiled(
    "ruleset: halving\ntemperature: {cold: 0, warm: 30, hot: 60}\ncomponents:\n"
    "  engagement: {min: 10, max: 100, decay: {half_life: 10d}}\n"
    "rules:\n  - name: webinar\n    when: {event.type: webinar_attended}\n"
    "    then: {score: {engagement: 70}}\n"
    "  - name: visit\n    when: {event.type: page_view}\n"
    "    then: {score: {engagement: 10}}\n"
)


def test_half_life_halves_toward_the_minimum(db: sa.Engine) -> None:
    rules = HALF_LIFE
    ingest(db, rules, parse_jsonl([event("h1", "hal@x.io", "webinar_attended", "2026-03-01")]))
    assert (lead(db, "hal@x.io")["score"], lead(db, "hal@x.io")["temperature"]) == (80, "hot")
    # Half of what is above the minimum (70) goes every 10 days, continuously.
    assert decay(db, rules.ruleset, at("2026-03-06T00:00:00Z")) == 1
    assert lead(db, "hal@x.io")["score"] == 10 + round(70 * 0.5**0.5)  # 59
    assert decay(db, rules.ruleset, at("2026-03-11T00:00:00Z")) == 1
    hal = lead(db, "hal@x.io")
    assert (hal["score"], hal["temperature"]) == (45, "warm")
    state = tables(db)
    assert decay(db, rules.ruleset, at("2026-03-11T00:00:00Z")) == 0
    assert decay(db, rules.ruleset, at("2026-03-02T00:00:00Z")) == 0
    assert tables(db) == state
    # 17.5 rounds half away from zero on both databases.
    assert decay(db, rules.ruleset, at("2026-03-21T00:00:00Z")) == 1
    assert (lead(db, "hal@x.io")["score"], lead(db, "hal@x.io")["temperature"]) == (28, "cold")
    assert decay(db, rules.ruleset, at("2026-03-31T00:00:00Z")) == 1
    assert lead(db, "hal@x.io")["score"] == 19
    assert decay(db, rules.ruleset, at("2027-03-01T00:00:00Z")) == 1
    assert decay(db, rules.ruleset, at("2028-03-01T00:00:00Z")) == 0
    hal = lead(db, "hal@x.io")
    assert hal["score"] == 10  # the minimum, never below
    assert [r["delta"] for r in hal["ledger"] if r["rule"] == "decay"] == [-21, -14, -17, -9, -9]


def test_half_life_keeps_a_late_events_points(db: sa.Engine) -> None:
    """A late event rose the component too: the next tick decays its points, never wipes them."""
    rules = HALF_LIFE
    ingest(db, rules, parse_jsonl([event("h1", "lou@x.io", "webinar_attended", "2026-03-01")]))
    assert decay(db, rules.ruleset, at("2026-03-11T00:00:00Z")) == 1
    assert lead(db, "lou@x.io")["score"] == 45
    # A page view from Feb 28 arrives late: +10. At Mar 11 those points are worth about half
    # (they rose 11 days ago), so the tick at the same time takes about 5 of them, not all 10.
    ingest(db, rules, parse_jsonl([event("v1", "lou@x.io", "page_view", "2026-02-28")]))
    assert lead(db, "lou@x.io")["score"] == 55
    decay(db, rules.ruleset, at("2026-03-11T00:00:00Z"))
    assert lead(db, "lou@x.io")["score"] == 50
    assert decay(db, rules.ruleset, at("2026-03-11T00:00:00Z")) == 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["points", "half_life"])
def test_ticking_daily_for_three_weeks_equals_one_tick_at_the_end(
    db: sa.Engine, tmp_path: Path, kind: str
) -> None:
    text = (ROOT / "rulesets" / "b2b-saas.yaml").read_text()
    if kind == "half_life":
        text = text.replace("decay: {points: 5, every: 7d}", "decay: {half_life: 9d}")
        assert "half_life" in text
    rules: CompiledRuleset = compiled(text, "b2b-saas.yaml")
    records = [json.dumps(r) for r in sample_records(leads=200, events_per_lead=8, seed=4)]
    end = datetime(2026, 11, 1, tzinfo=UTC)
    url = str(db.url.render_as_string(hide_password=False))
    with another_database(url, tmp_path) as other:
        once = database.connect(other)
        for target in (db, once):
            assert not ingest(target, rules, parse_jsonl(records)).rejected
        daily = 0
        for day in range(1, 22):
            daily += decay(db, rules.ruleset, end + timedelta(days=day, hours=3))
        single = decay(once, rules.ruleset, end + timedelta(days=21, hours=3))
        assert 0 < single <= daily
        a, b = lead_state(db), lead_state(once)
        assert a["leads"] == b["leads"] and a["scores"] == b["scores"]
        claimed = rules.ruleset.claimed
        assert ledger_sums(db, claimed) == ledger_sums(once, claimed)
    scores, ledger, components = ledger_sums(db, rules.ruleset.claimed)
    assert scores == ledger == components
    temperatures = {row[0]: (row[1], row[2]) for row in a["leads"]}
    assert all(rules.ruleset.band(score) == band for score, band in temperatures.values())


@pytest.mark.postgres
def test_two_ticks_at_once_decay_once(pg_url: str) -> None:
    """Two schedulers run tick at the same moment: each lead decays once, not twice."""
    database.upgrade(pg_url)
    db = database.connect(pg_url)
    rules = compiled(RULESET)
    records = [event(f"w{i}", f"l{i}@x.io", "webinar_attended", "2026-01-01") for i in range(40)]
    ingest(db, rules, parse_jsonl(records))
    # Hold every lead so both ticks have read what is due before either can write.
    blocker = db.connect()
    transaction = blocker.begin()
    blocker.execute(sa.text("SELECT id FROM lead ORDER BY id FOR UPDATE"))
    now = at("2026-01-15T00:00:00Z")
    errors: list[BaseException] = []

    def run() -> None:
        try:
            decay(db, rules.ruleset, now)
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    waiting = 0
    deadline = time.monotonic() + 20
    while waiting < 2 and time.monotonic() < deadline:
        with db.connect() as conn:  # a new transaction: pg_stat_activity is a snapshot
            waiting = int(
                conn.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND datname = current_database() "
                        "AND position('FOR UPDATE' IN query) > 0"
                    )
                ).scalar()
                or 0
            )
        time.sleep(0.02)
    transaction.rollback()
    blocker.close()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert waiting == 2, "both ticks should have been waiting for the leads"
    for i in range(40):
        detail = lead(db, f"l{i}@x.io")
        assert detail["scores"]["engagement"] == 30  # 40 - 2 weeks × 5, once
        assert [r["delta"] for r in detail["ledger"] if r["rule"] == "decay"] == [-10]
