"""The set-based bulk forms (one array parameter per column on PostgreSQL: ``among``,
``upsert_rows``, ``update_rows``) and ingest's skipping of component rows it leaves unchanged
store what the straightforward path stores: rows checked against a plain model on generated
data, and a stream of events ingested one record per batch (most components unchanged) against
the same stream in one batch, with decay and named scores. On SQLite and PostgreSQL."""

from __future__ import annotations

import io
import json
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine import db as database
from engine.db import among, update_rows, upsert_rows
from engine.db.bulk import execute_many
from engine.db.schema import ENROLLMENTS, LEADS, MOVE_DAYS, NAMED_SCORES, SCORES
from engine.ingest.batch import ingest
from engine.ingest.outcome import Rows
from engine.ingest.parse import parse_jsonl
from engine.ingest.write import enroll_and_exit
from engine.status import EnrollmentStatus
from tests.helpers import compiled, ruleset_text
from tests.store_support import another_database

START = datetime(2026, 3, 1, tzinfo=UTC)


def _leads(conn: sa.Connection, count: int) -> list[int]:
    rows = [
        {
            "email": f"u{n}@x{n % 7}.io",
            "attributes": {"n": n},
            "score": 0,
            "temperature": "cold",
            "stage": "subscriber",
            "stage_entered_at": START,
            "tags": [],
            "subscribed": True,
            "version": 0,
            "ruleset_version": "v",
            "created_at": START,
            "updated_at": START,
        }
        for n in range(count)
    ]
    assert upsert_rows(conn, LEADS, rows, ["email"]) == count
    assert upsert_rows(conn, LEADS, rows[:5], ["email"]) == 0  # taken: skipped
    return list(conn.execute(sa.select(LEADS.c.id).order_by(LEADS.c.id)).scalars())


def test_bulk_forms_match_a_plain_model(db: sa.Engine) -> None:
    rng = random.Random(15)
    with db.begin() as conn:
        ids = _leads(conn, 40)
        # among / not among, empty included, against Python's filter.
        for _ in range(20):
            chosen = [*rng.sample(ids, rng.randrange(0, 12)), 10**6]
            got = conn.execute(sa.select(LEADS.c.id).where(among(conn, LEADS.c.id, chosen)))
            assert sorted(got.scalars()) == sorted(set(chosen) & set(ids))
            rest = conn.execute(sa.select(LEADS.c.id).where(~among(conn, LEADS.c.id, chosen)))
            assert sorted(rest.scalars()) == sorted(set(ids) - set(chosen))
        emails = conn.execute(sa.select(LEADS.c.email).where(among(conn, LEADS.c.email, [])))
        assert emails.all() == []
        # Upserts that replace, and counters that add, in rounds.
        scores: dict[tuple[int, str], tuple[Any, ...]] = {}
        counters: dict[tuple[int, str, str, str], int] = {}
        for _ in range(6):
            keys = {(rng.choice(ids), rng.choice("abc")) for _ in range(30)}
            rows: list[dict[str, Any]] = [
                {
                    "lead_id": lead,
                    "component": name,
                    "value": rng.randrange(-5, 100),
                    "rose_at": rng.choice([None, rng.randrange(10**9, 2 * 10**9)]),
                    "peak": rng.randrange(100),
                    "decay_steps": rng.randrange(4),
                }
                for lead, name in sorted(keys)
            ]
            upsert_rows(
                conn, SCORES, rows, ["lead_id", "component"], replace=["value", "rose_at", "peak"]
            )
            for row in rows:
                key = (row["lead_id"], row["component"])
                steps = scores[key][3] if key in scores else row["decay_steps"]
                scores[key] = (row["value"], row["rose_at"], row["peak"], steps)
            moves = {
                (rng.randrange(20_000, 20_005), "a", rng.choice("bc"), rng.choice("xy")): 0
                for _ in range(8)
            }
            rows = [
                {"day": d, "from_stage": f, "to_stage": t, "rule": r, "n": rng.randrange(1, 5)}
                for d, f, t, r in sorted(moves)
            ]
            upsert_rows(conn, MOVE_DAYS, rows, ["day", "from_stage", "to_stage", "rule"], add=["n"])
            for row in rows:
                day = (row["day"], row["from_stage"], row["to_stage"], row["rule"])
                counters[day] = counters.get(day, 0) + row["n"]
        stored = conn.execute(
            sa.select(SCORES.c.lead_id, SCORES.c.component, SCORES.c.value, SCORES.c.rose_at)
            .add_columns(SCORES.c.peak, SCORES.c.decay_steps)
            .order_by(SCORES.c.lead_id, SCORES.c.component)
        ).all()
        assert [tuple(row) for row in stored] == [(*k, *v) for k, v in sorted(scores.items())]
        stored = conn.execute(sa.select(MOVE_DAYS).order_by(*MOVE_DAYS.primary_key)).all()
        assert {tuple(row[:4]): row[4] for row in stored} == counters
        # Updates that match on id and version: a moved version is not updated.
        versions = dict(conn.execute(sa.select(LEADS.c.id, LEADS.c.version)).all())
        chosen = rng.sample(ids, 15)
        changes: list[dict[str, Any]] = [
            {
                "id": lead,
                "version": versions[lead] + (1 if lead == chosen[0] else 0),
                "attributes": {"k": [lead, "é"]},
                "stage_entered_at": START + timedelta(seconds=lead),
                "tags": ["t", str(lead)],
                "time_due_at": None,
            }
            for lead in chosen
        ]
        later = START + timedelta(days=1)
        updated = update_rows(
            conn, LEADS, changes, ["id", "version"], {"updated_at": later}, increment="version"
        )
        assert updated == 14
        columns = (LEADS.c.id, LEADS.c.version, LEADS.c.attributes, LEADS.c.stage_entered_at)
        after = {
            row[0]: row[1:]
            for row in conn.execute(
                sa.select(*columns, LEADS.c.tags, LEADS.c.updated_at, LEADS.c.time_due_at)
            )
        }
    for lead in ids:
        if lead in chosen[1:]:
            expected = (1, {"k": [lead, "é"]}, START + timedelta(seconds=lead), ["t", str(lead)])
            assert after[lead][:4] == expected
            assert after[lead][4:] == (later, None)
        else:
            assert after[lead][0] == 0 and after[lead][1] == {"n": ids.index(lead)}


def test_exits_in_one_statement_end_what_one_by_one_ends(db: sa.Engine) -> None:
    """A batch's exits (one ``update_rows`` with a ``where``) end the active enrollments they
    name, as one UPDATE per exit in order does: the first of two exits of one enrollment
    gives its time and reason, and ended ones stay as they were."""
    rng = random.Random(16)
    campaigns = ["a", "b", "c"]
    with db.begin() as conn:
        ids = _leads(conn, 30)
        enroll = [
            {
                "lead_id": lead,
                "campaign": name,
                "step": 1,
                "status": rng.choice([EnrollmentStatus.ACTIVE] * 3 + [EnrollmentStatus.EXITED]),
                "enrolled_at": START,
                "next_due_at": START + timedelta(days=1),
                "ended_at": None,
                "reason": "start",
            }
            for lead in ids
            for name in campaigns
            if rng.random() < 0.7
        ]
        exits = [
            {
                "lead_id": rng.choice(ids),
                "campaign": rng.choice(campaigns),
                "ended_at": START + timedelta(hours=n),
                "reason": f"exit {n}",
            }
            for n in range(60)
        ]
        enroll_and_exit(conn, Rows(enroll=enroll, exit=exits))
        columns = ["lead_id", "campaign", "status", "next_due_at", "ended_at", "reason"]
        stored = {
            (row[0], row[1]): tuple(row[2:])
            for row in conn.execute(sa.select(*(ENROLLMENTS.c[name] for name in columns)))
        }
        conn.rollback()
    expected: dict[tuple[Any, Any], tuple[Any, ...]] = {
        (row["lead_id"], row["campaign"]): (row["status"], row["next_due_at"], None, "start")
        for row in enroll
    }
    for row in exits:
        key = (row["lead_id"], row["campaign"])
        if key in expected and expected[key][0] == EnrollmentStatus.ACTIVE:
            expected[key] = (EnrollmentStatus.EXITED, None, row["ended_at"], row["reason"])
    assert stored == expected
    assert any(status == EnrollmentStatus.EXITED for status, *_ in expected.values())


def test_update_rows_without_increment_stores_what_one_update_per_row_stores(
    db: sa.Engine,
) -> None:
    """The step job's moves (update_rows on id alone, nothing counted up) against the same moves
    as one UPDATE per row, on two copies of generated enrollments: times in other zones, None,
    ended and active ones."""
    rng = random.Random(16)
    zone = timezone(timedelta(hours=5, minutes=30))
    with db.begin() as conn:
        ids = _leads(conn, 30)
        for copy in ("set", "rows"):
            enrollments = [
                {
                    "lead_id": lead,
                    "campaign": copy,
                    "step": 0,
                    "status": "active",
                    "enrolled_at": START,
                    "next_due_at": START,
                }
                for lead in ids
            ]
            conn.execute(sa.insert(ENROLLMENTS), enrollments)
        stored = conn.execute(sa.select(ENROLLMENTS.c.id, ENROLLMENTS.c.campaign)).all()
        by_copy = {
            c: sorted(row.id for row in stored if row.campaign == c) for c in ("set", "rows")
        }
        moves = []
        for position in rng.sample(range(len(ids)), 20):
            ended = rng.random() < 0.4
            at = START + timedelta(minutes=rng.randrange(10_000))
            moves.append(
                (
                    position,
                    {
                        "step": rng.randrange(4),
                        "status": "exited" if ended else "active",
                        "next_due_at": None if ended else at.astimezone(zone),
                        "ended_at": at if ended else None,
                        "reason": "unsubscribed" if ended else None,
                    },
                )
            )
        rows = [{"id": by_copy["set"][position], **move} for position, move in moves]
        assert update_rows(conn, ENROLLMENTS, rows, match=["id"]) == len(rows)
        for position, move in moves:
            one = ENROLLMENTS.c.id == by_copy["rows"][position]
            conn.execute(sa.update(ENROLLMENTS).where(one).values(**move))
        columns = [c for c in ENROLLMENTS.c if c.name not in ("id", "campaign")]
        got = {
            c: conn.execute(
                sa.select(*columns).where(ENROLLMENTS.c.campaign == c).order_by(ENROLLMENTS.c.id)
            ).all()
            for c in ("set", "rows")
        }
    assert got["set"] == got["rows"]
    assert sum(row.status == "exited" for row in got["set"]) > 0


def _stream(seed: int) -> list[str]:
    rng = random.Random(seed)
    lines = []
    for n in range(300):
        at = START + timedelta(hours=n * 7 + rng.randrange(5))
        email = f"lead{rng.randrange(25)}@acme.io"
        if rng.random() < 0.15:
            title = rng.choice(["VP Sales", "intern", "CTO"])
            lines.append(
                json.dumps({"email": email, "job_title": title, "occurred_at": at.isoformat()})
            )
            continue
        kind = rng.choice(["page_view", "page_view", "webinar_attended", "other"])
        lines.append(
            json.dumps({"id": f"e{n}", "email": email, "type": kind, "occurred_at": at.isoformat()})
        )
    return lines


def _scored(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    email = LEADS.c.email
    with engine.connect() as conn:
        return {
            "scores": [
                tuple(row)
                for row in conn.execute(
                    sa.select(email, SCORES.c.component, SCORES.c.value, SCORES.c.rose_at)
                    .add_columns(SCORES.c.peak, SCORES.c.decay_steps)
                    .join(LEADS, LEADS.c.id == SCORES.c.lead_id)
                    .order_by(email, SCORES.c.component)
                )
            ],
            "named": [
                tuple(row)
                for row in conn.execute(
                    sa.select(email, NAMED_SCORES.c.name, NAMED_SCORES.c.total)
                    .add_columns(NAMED_SCORES.c.band)
                    .join(LEADS, LEADS.c.id == NAMED_SCORES.c.lead_id)
                    .order_by(email, NAMED_SCORES.c.name)
                )
            ],
            "leads": [
                tuple(row)
                for row in conn.execute(
                    sa.select(email, LEADS.c.score, LEADS.c.temperature, LEADS.c.stage)
                    .add_columns(LEADS.c.version)
                    .order_by(email)
                )
            ],
        }


RULESET = ruleset_text("decay-test") + (
    "scores:\n  total: {components: [fit, engagement], bands: {low: 0, high: 50}}\n"
)


def test_unchanged_components_skipped_store_what_one_batch_stores(
    db_url: str, tmp_path: Path
) -> None:
    database.upgrade(db_url)
    lines = _stream(16)
    rules = compiled(RULESET, "decay-test.yaml")
    one = database.connect(db_url)
    result = ingest(one, rules, parse_jsonl(io.StringIO("\n".join(lines) + "\n")), batch_size=1000)
    assert not result.rejected and result.accepted == len(lines)
    whole = _scored(one)
    with another_database(db_url, tmp_path) as url:
        each = database.connect(url)
        for line in lines:
            ingest(each, rules, parse_jsonl(io.StringIO(line + "\n")), batch_size=1)
        per_record = _scored(each)
        each.dispose()
    assert per_record["scores"] == whole["scores"]
    assert per_record["named"] == whole["named"] and whole["named"]
    # Versions differ (one write per batch); what was scored does not.
    assert [row[:4] for row in per_record["leads"]] == [row[:4] for row in whole["leads"]]
    assert any(row[3] for row in whole["scores"])  # decay state was exercised


def test_execute_many_stores_what_sqlalchemy_stores(db: sa.Engine) -> None:
    # Its values taken column by column, through each type's bind processor (times repeated,
    # JSON, None), and the statement's own constants, against SQLAlchemy's per-row assembly.
    statement = (
        sa.update(LEADS)
        .where(LEADS.c.id == sa.bindparam("b_id"))
        .values(
            attributes=sa.bindparam("b_attributes"),
            stage_entered_at=sa.bindparam("b_at"),
            temperature=sa.bindparam("b_temperature"),
            version=LEADS.c.version + 1,
            ruleset_version="w",
        )
    )
    rng = random.Random(16)
    times = [START + timedelta(hours=h) for h in range(3)] + [
        datetime(2026, 3, 2, 5, tzinfo=timezone(timedelta(hours=2)))
    ]

    def stored(bulk: bool) -> list[tuple[Any, ...]]:
        with db.connect() as conn, conn.begin() as transaction:
            ids = _leads(conn, 30)
            rows = [
                {
                    "b_id": lead,
                    "b_attributes": rng.choice([{"n": n, "é": [1, None]}, None, {}]),
                    "b_at": rng.choice(times),
                    "b_temperature": rng.choice(["hot", "cold"]),
                }
                for n, lead in enumerate(ids[::2])
            ]
            if bulk:
                assert execute_many(conn, statement, rows).rowcount == len(rows)
            else:
                conn.execute(statement, rows)
            # As the driver reads them: text on SQLite, as each bind processor wrote it.
            found = [
                tuple(row)
                for row in conn.exec_driver_sql(
                    "SELECT email, attributes, stage_entered_at, temperature, version, "
                    "ruleset_version FROM lead ORDER BY id"
                )
            ]
            transaction.rollback()
        return found

    state = rng.getstate()
    bulk = stored(True)
    rng.setstate(state)
    assert bulk == stored(False)
    assert {row[4] for row in bulk} == {0, 1}
