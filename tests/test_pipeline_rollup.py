"""The pipeline report from its rollups equals the straightforward one (window functions over
stage_history, ``pipeline_reference``) on generated histories: random forward, backward, exit
and unknown-stage moves, ties and sub-second times, moves written in batches and out of order,
periods with partial days, offsets other than UTC and empty ones; and after migration 0010
backfills an existing history. On SQLite and PostgreSQL."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from engine import db as database
from engine.db import rollup
from engine.db.rollup import record_moves
from engine.db.schema import LEADS, STAGES, STAYS
from engine.reports.pipeline import pipeline, pipeline_reference
from engine.rules.load import parse_ruleset
from engine.timeutil import parse_instant
from tests.helpers import ruleset_text

RULESET = parse_ruleset(ruleset_text("pipeline-test"), "pipeline-test.yaml")
START = datetime(2026, 1, 1, tzinfo=UTC)
NOW = datetime(2026, 6, 1, tzinfo=UTC)
# Where a lead can go: the funnel, the exits and a stage the ruleset no longer has.
PLACES = (*RULESET.all_stages, "legacy")


def histories(leads: int, seed: int) -> list[list[dict[str, Any]]]:
    """Each lead's moves in time order (lead ids 1..leads)."""
    rng = random.Random(seed)
    result = []
    for lead in range(1, leads + 1):
        at = START + timedelta(
            days=rng.randrange(90), seconds=rng.choice([0, rng.randrange(86400)])
        )
        stage: str | None = None
        moves: list[dict[str, Any]] = []
        for _ in range(rng.randrange(1, 9)):
            if moves:
                at += rng.choice(
                    [
                        timedelta(0),  # a tie: the order of writing decides
                        timedelta(seconds=rng.randrange(1, 3600)),
                        timedelta(hours=rng.randrange(1, 72), microseconds=rng.randrange(10**6)),
                        timedelta(days=rng.randrange(1, 40)),
                    ]
                )
            here = RULESET.stages.index(stage) if stage in RULESET.stages else 0
            to = rng.choice(
                [
                    RULESET.stages[min(here + rng.choice([1, 1, 2]), len(RULESET.stages) - 1)],
                    RULESET.stages[max(here - rng.choice([1, 2]), 0)],
                    rng.choice(PLACES),
                ]
            )
            moves.append(
                {
                    "lead_id": lead,
                    "from_stage": stage,
                    "to_stage": to,
                    "rule": rng.choice(["advance", "cooled-off", "competitor", "form"]),
                    "event_id": None,
                    "at": at,
                }
            )
            stage = to
        result.append(moves)
    return result


def add_leads(conn: sa.Connection, moves: list[list[dict[str, Any]]]) -> None:
    conn.execute(
        LEADS.insert(),
        [
            {
                "id": lead[0]["lead_id"],
                "email": f"lead{lead[0]['lead_id']}@example.com",
                "attributes": {},
                "score": 0,
                "temperature": "cold",
                "stage": lead[-1]["to_stage"],
                "stage_entered_at": lead[-1]["at"],
                "tags": [],
                "subscribed": True,
                "version": 1,
                "created_at": lead[0]["at"],
                "updated_at": NOW,
            }
            for lead in moves
        ],
    )


def periods(moves: list[list[dict[str, Any]]]) -> list[tuple[datetime | None, datetime | None]]:
    a_move = moves[7][-1]["at"]  # a period that starts and ends exactly on a move
    day = START + timedelta(days=30)
    return [
        (None, None),
        (day, None),
        (None, day),
        (day, day + timedelta(days=20)),
        (day + timedelta(hours=7, minutes=13), day + timedelta(days=20, hours=3)),
        (day + timedelta(hours=1), day + timedelta(hours=20)),  # within one day
        (day + timedelta(microseconds=500_000), day + timedelta(days=9)),
        (day + timedelta(hours=23), day + timedelta(days=1, hours=1)),  # across one midnight
        (parse_instant("2026-01-15T00:00:00+05:30"), parse_instant("2026-02-10T09:00:00-08:00")),
        (a_move, a_move + timedelta(days=3)),
        (a_move - timedelta(days=3), a_move),
        (day + timedelta(days=5), day),  # empty: since after until
        (NOW, None),  # after everything
    ]


def same_report(db: sa.Engine, since: datetime | None, until: datetime | None) -> None:
    options: dict[str, Any] = {"since": since, "until": until, "cohorts": True, "now": NOW}
    options["stuck_days"] = {"subscriber": 3, "lead": 10, "mql": 0}
    assert pipeline(db, RULESET, **options) == pipeline_reference(db, RULESET, **options), (
        since,
        until,
    )


def test_rollups_equal_the_straightforward_report(db: sa.Engine) -> None:
    moves = histories(300, seed=15)
    rng = random.Random(16)
    # Most moves in three interleaved batches in order; for one lead in ten, one past move is
    # written only at the end (a replay's), after the moves that follow it.
    late = [lead.pop(rng.randrange(len(lead) - 1)) for lead in moves[::10] if len(lead) > 2]
    assert len(late) > 10
    batches: list[list[dict[str, Any]]] = [[], [], []]
    for lead in moves:
        for i, move in enumerate(lead):
            batches[min(i * 3 // len(lead), 2)].append(move)
    with db.begin() as conn:
        add_leads(conn, moves)
    for batch in [*batches, late]:
        with db.begin() as conn:
            record_moves(conn, batch)
    for since, until in periods(moves):
        same_report(db, since, until)
    report = pipeline(db, RULESET, now=NOW, cohorts=True)
    assert report["backward"] and report["exits"] and report["cohorts"]
    assert any(row["stage"] == "legacy" for row in report["stages"])
    assert all(row["median_days"] is not None for row in report["stages"][:3])


def test_migration_backfills_what_record_moves_keeps(db_url: str) -> None:
    db = database.connect(db_url)
    with db.begin() as conn:
        config = database.alembic_config(db_url)
        config.attributes["connection"] = conn
        command.upgrade(config, "0010-1")  # the schema before the rollups
    moves = histories(300, seed=42)
    with db.begin() as conn:
        add_leads(conn, moves)
        conn.execute(STAGES.insert(), [move for lead in moves for move in lead])
    database.upgrade(db_url)
    for since, until in periods(moves)[:8]:
        same_report(db, since, until)
    with db.connect() as conn:
        history = conn.execute(
            sa.select(STAGES.c.lead_id, STAGES.c.to_stage, STAGES.c.at).order_by(
                STAGES.c.lead_id, STAGES.c.at, STAGES.c.id
            )
        )
        expected = list(rollup.stays(history, rollup.codes(conn)))
        order = (STAYS.c.lead_id, STAYS.c.seq)
        stored = [dict(row._mapping) for row in conn.execute(sa.select(STAYS).order_by(*order))]
    assert stored == expected
    # Moves written afterwards update the backfilled rollups like any others.
    more = histories(300, seed=43)
    with db.begin() as conn:
        record_moves(conn, [move | {"at": move["at"] + timedelta(days=60)} for move in more[0]])
    same_report(db, None, None)
    same_report(db, START + timedelta(days=40), None)


@pytest.mark.parametrize(("place", "median"), [("subscriber", 5.0), ("legacy", 4.0)])
def test_a_past_move_rewrites_the_stays_after_it(db: sa.Engine, place: str, median: float) -> None:
    """A move written after later ones (a replay's) changes the stay it splits and the stages
    entered after earlier stays: the report counts it as if written in order."""
    moves: list[dict[str, Any]] = [
        {"lead_id": 1, "from_stage": before, "to_stage": to, "rule": "advance", "event_id": None}
        | {"at": START + timedelta(days=i * 10)}
        for i, (before, to) in enumerate([(None, "subscriber"), ("subscriber", "mql")])
    ]
    with db.begin() as conn:
        add_leads(conn, [moves])
        record_moves(conn, moves)
    before = pipeline(db, RULESET, now=NOW)
    past = {"lead_id": 1, "from_stage": "subscriber", "to_stage": place, "rule": "replay"}
    with db.begin() as conn:
        record_moves(conn, [past | {"event_id": None, "at": START + timedelta(days=4)}])
    after = pipeline(db, RULESET, now=NOW)
    assert after == pipeline_reference(db, RULESET, now=NOW)
    subscriber = {row["stage"]: row for row in after["stages"]}["subscriber"]
    # The first stay now ends on day 4, not day 10 (then, back in subscriber: 6 more days).
    assert (subscriber["entered"], subscriber["median_days"]) == (1, median)
    assert before != after


def test_concurrent_writers_lose_no_count(db: sa.Engine) -> None:
    """Four writers record moves of their own leads at once, on the same days: the counters
    they share add up (upserts that add, taken in one order)."""
    moves = histories(200, seed=7)
    with db.begin() as conn:
        add_leads(conn, moves)

    def writer(part: int) -> None:
        mine = moves[part::4]
        for step in range(0, len(mine), 5):
            with db.begin() as conn:
                record_moves(conn, [move for lead in mine[step : step + 5] for move in lead])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(writer, range(4)))
    same_report(db, None, None)
    same_report(db, START + timedelta(days=20, hours=6), START + timedelta(days=70))
