"""The pipeline report on a hand-built stage history whose answers are worked out below, on
SQLite and PostgreSQL alike, through the function and `nurture pipeline`."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from engine.db.rollup import record_moves
from engine.db.schema import LEADS
from engine.reports.pipeline import pipeline
from engine.rules.load import parse_ruleset
from tests.helpers import nurture, ruleset_text

RULESET = ruleset_text("pipeline-test")
NOW = datetime(2026, 3, 1, tzinfo=UTC)

# Each lead's moves: (day, to stage, rule), from 2026-01-01 (day 1) on.
HISTORY: dict[str, list[tuple[int, str, str]]] = {
    # subscriber 2d, lead 10d, mql 1d, in sql since Jan 14 (46 days at NOW)
    "a@acme.io": [(1, "subscriber", "new-lead"), (3, "lead", "form"), (13, "mql", "mql"),
                  (14, "sql", "sales-ready")],
    # subscriber 4d, lead 4d, mql 10d, back to lead on Jan 20 (40 days at NOW)
    "b@beta.io": [(2, "subscriber", "new-lead"), (6, "lead", "form"), (10, "mql", "mql"),
                  (20, "lead", "cooled-off")],
    # subscriber 6d, lead 1d, then out
    "c@gamma.io": [(5, "subscriber", "new-lead"), (11, "lead", "form"),
                   (12, "disqualified", "competitor")],
    # February: subscriber 8d, lead 1d, straight to sql (skips mql) on Feb 10 (19 days at NOW)
    "d@delta.io": [(32, "subscriber", "new-lead"), (40, "lead", "form"), (41, "sql", "demo")],
    # February, still a subscriber (26 days at NOW)
    "e@eps.io": [(34, "subscriber", "new-lead")],
}  # fmt: skip


def day(n: int) -> datetime:
    return datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=n - 1)


def build(db: sa.Engine) -> None:
    with db.begin() as conn:
        for email, moves in HISTORY.items():
            last_day, last_stage, _ = moves[-1]
            lead_id = conn.execute(
                LEADS.insert()
                .values(
                    email=email,
                    attributes={},
                    score=0,
                    temperature="cold",
                    stage=last_stage,
                    stage_entered_at=day(last_day),
                    tags=[],
                    subscribed=True,
                    version=1,
                    created_at=NOW,
                    updated_at=NOW,
                )
                .returning(LEADS.c.id)
            ).scalar_one()
            before = None
            changes = []
            for n, stage, rule in moves:
                changes.append(
                    {
                        "lead_id": lead_id,
                        "from_stage": before,
                        "to_stage": stage,
                        "rule": rule,
                        "event_id": None,
                        "at": day(n),
                    }
                )
                before = stage
            record_moves(conn, changes)


def by_stage(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["stage"]: row for row in report["stages"]}


@pytest.fixture
def ruleset() -> Any:
    return parse_ruleset(RULESET, "pipeline-test.yaml")


def test_whole_history(db: sa.Engine, ruleset: Any) -> None:
    build(db)
    report = pipeline(db, ruleset, now=NOW)
    stages = by_stage(report)
    assert [row["stage"] for row in report["stages"]] == [
        "subscriber", "lead", "mql", "sql", "opportunity", "customer",
        "disqualified", "unsubscribed",
    ]  # fmt: skip
    assert stages["subscriber"] == {
        "stage": "subscriber",
        "leads": 1,
        "entered": 5,
        "converted_to_next": 4,
        "conversion_rate": 0.8,
        "median_days": 5.0,  # stays 2, 4, 6, 8 days (e's is still open)
        "p90_days": 7.4,
        "stuck": 0,
    }
    # b entered lead twice but counts once; c left for an exit, d skipped mql: converted.
    assert stages["lead"] == {
        "stage": "lead",
        "leads": 1,
        "entered": 4,
        "converted_to_next": 3,
        "conversion_rate": 0.75,
        "median_days": 2.5,  # stays 1, 1, 4, 10 days
        "p90_days": 8.2,
        "stuck": 1,  # b, back in lead for 40 days
    }
    assert (stages["mql"]["entered"], stages["mql"]["converted_to_next"]) == (2, 1)
    assert (stages["mql"]["median_days"], stages["mql"]["p90_days"]) == (5.5, 9.1)
    assert stages["sql"] | {} == {
        "stage": "sql",
        "leads": 2,
        "entered": 2,
        "converted_to_next": 0,
        "conversion_rate": 0.0,
        "median_days": None,  # nobody has left sql
        "p90_days": None,
        "stuck": 1,  # a (46 days); d has been there 19
    }
    assert stages["opportunity"]["conversion_rate"] is None  # nobody entered
    assert stages["customer"]["converted_to_next"] is None  # the end of the funnel
    assert stages["disqualified"] == {
        "stage": "disqualified",
        "leads": 1,
        "entered": 1,
        "converted_to_next": None,
        "conversion_rate": None,
        "median_days": None,
        "p90_days": None,
        "stuck": None,
    }
    assert report["backward"] == [{"from": "mql", "to": "lead", "rule": "cooled-off", "moves": 1}]
    assert report["exits"] == [
        {"from": "lead", "to": "disqualified", "rule": "competitor", "moves": 1}
    ]
    assert report["cohorts"] is None
    assert report["stuck_days"] == {
        s: 30 for s in ("subscriber", "lead", "mql", "sql", "opportunity")
    }


def test_period_thresholds_and_cohorts(db: sa.Engine, ruleset: Any) -> None:
    build(db)
    february = pipeline(db, ruleset, since=day(32), until=NOW, now=NOW, cohorts=True)
    stages = by_stage(february)
    assert stages["subscriber"]["entered"] == 2
    assert stages["subscriber"]["converted_to_next"] == 1
    assert (stages["subscriber"]["median_days"], stages["subscriber"]["p90_days"]) == (8.0, 8.0)
    assert (stages["lead"]["entered"], stages["lead"]["converted_to_next"]) == (1, 1)
    assert stages["mql"]["entered"] == 0
    assert stages["lead"]["leads"] == 1  # leads now are not limited to the period
    assert february["backward"] == [] and february["exits"] == []
    assert february["period"] == {"since": "2026-02-01T00:00:00Z", "until": "2026-03-01T00:00:00Z"}
    assert february["cohorts"] == [
        {
            "cohort": "2026-02",
            "leads": 2,
            "reached": {"subscriber": 2, "lead": 1, "mql": 1, "sql": 1, "opportunity": 0,
                        "customer": 0},
            "exits": {"disqualified": 0, "unsubscribed": 0},
        }
    ]  # fmt: skip

    # From Jan 15: b's return to lead (still open) and d's entry; only d moved on.
    late = by_stage(pipeline(db, ruleset, since=day(15), now=NOW))
    assert (late["lead"]["entered"], late["lead"]["converted_to_next"]) == (2, 1)

    everyone = pipeline(db, ruleset, now=NOW, stuck_days={"sql": 10}, cohorts=True)
    assert by_stage(everyone)["sql"]["stuck"] == 2
    assert by_stage(everyone)["lead"]["stuck"] == 1  # the default 30 days still applies
    assert everyone["cohorts"][0] == {
        "cohort": "2026-01",
        "leads": 3,
        "reached": {"subscriber": 3, "lead": 3, "mql": 2, "sql": 1, "opportunity": 0,
                    "customer": 0},
        "exits": {"disqualified": 1, "unsubscribed": 0},
    }  # fmt: skip


@pytest.mark.home(rulesets=["pipeline-test"])
@pytest.mark.usefixtures("cli_home")
def test_cli(db: sa.Engine) -> None:
    build(db)
    result = nurture(
        "pipeline", "--since", "2026-01-01", "--stuck-days", "100000", "--stuck-days", "lead=1",
        "--cohort", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"stages", "backward", "exits", "cohorts", "period"}
    assert set(report["stages"][0]) == {
        "stage", "leads", "entered", "converted_to_next", "conversion_rate", "median_days",
        "p90_days", "stuck",
    }  # fmt: skip
    stages = by_stage(report)
    assert stages["sql"]["stuck"] == 0 and stages["lead"]["stuck"] == 1
    assert report["stuck_days"]["sql"] == 100000
    assert [c["cohort"] for c in report["cohorts"]] == ["2026-01", "2026-02"]

    table = nurture("pipeline", "--cohort")
    assert table.exit_code == 0, table.output
    assert "cooled-off" in table.stdout and "competitor" in table.stdout
    assert "2026-02" in table.stdout

    bad = nurture("pipeline", "--stuck-days", "mql=soon")
    assert bad.exit_code == 1
    assert "--stuck-days" in bad.stderr
