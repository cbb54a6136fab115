"""The step job's reads of a batch (its leads and their scores, their recent emails, and the
check that nothing moved), statements built once and run through ``fetch_rows`` with the
batch's ids in one parameter, read what plain SQLAlchemy ``IN`` queries read, on generated
leads, scores, emails and enrollments, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.db import reading
from engine.db.schema import ENROLLMENTS, LEADS, OUTBOX, SCORES
from engine.render.templates import Renderer
from engine.schedule.steps import COUNTED, Share, StepRunner, _Due, _due_query, _Loaded
from engine.status import EnrollmentStatus
from tests.campaign_support import CAMPAIGN_HOME, campaigns_in, settings_for
from tests.plans import analyze, bare_leads, query_plan

pytestmark = CAMPAIGN_HOME

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
STATUSES = ["queued", "sending", "sent", "failed", "held", "cancelled"]


def seed(db: sa.Engine, draw: random.Random, count: int) -> None:
    """``count`` leads with generated attributes, tags, scores, emails and an enrollment."""
    with db.begin() as conn:
        for i in range(count):
            attributes = {
                "first_name": draw.choice(["Ana", "Zoë", "", None, "O'Brien"]),
                "n": draw.randrange(100),
                "nested": {"k": [i, "v"]},
            }
            inserted = conn.execute(
                sa.insert(LEADS).values(
                    email=f"l{i}@example.com",
                    attributes=attributes,
                    score=draw.randrange(100),
                    temperature="warm",
                    stage=draw.choice(["lead", "mql"]),
                    stage_entered_at=NOW,
                    tags=draw.sample(["a", "b", "c"], draw.randrange(3)),
                    subscribed=draw.random() < 0.9,
                    version=draw.randrange(5),
                    created_at=NOW - timedelta(microseconds=draw.randrange(10**12)),
                    updated_at=NOW,
                )
            ).inserted_primary_key
            assert inserted is not None
            lead = inserted[0]
            for component in draw.sample(["fit", "engagement", "intent"], draw.randrange(4)):
                conn.execute(
                    sa.insert(SCORES).values(
                        lead_id=lead,
                        component=component,
                        value=draw.randrange(-10, 60),
                        peak=60,
                        decay_steps=0,
                    )
                )
            for n in range(draw.randrange(4)):
                at = NOW - timedelta(hours=draw.randrange(24 * 10))
                conn.execute(
                    sa.insert(OUTBOX).values(
                        idempotency_key=f"k{i}:{n}",
                        kind="campaign",
                        lead_id=lead,
                        campaign="c",
                        step=n,
                        template="t",
                        to_email=f"l{i}@example.com",
                        from_email="hello@acme.io",
                        headers={},
                        status=draw.choice(STATUSES),
                        attempts=0,
                        next_attempt_at=at,
                        created_at=at,
                    )
                )
            conn.execute(
                sa.insert(ENROLLMENTS).values(
                    lead_id=lead,
                    campaign="warm-nurture",
                    step=draw.randrange(3),
                    status=draw.choice(["active", "active", "exited"]),
                    enrolled_at=NOW,
                    next_due_at=NOW + timedelta(hours=draw.randrange(-48, 48)),
                )
            )


def plain_leads(conn: sa.Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
    columns = [*("id", "email", "attributes", "score", "stage", "tags", "subscribed")]
    columns += ["created_at", "version"]
    leads = {
        row[0]: dict(zip(columns, row, strict=True), scores={})
        for row in conn.execute(
            sa.select(*(LEADS.c[c] for c in columns)).where(LEADS.c.id.in_(ids))
        ).all()
    }
    query = sa.select(SCORES.c.lead_id, SCORES.c.component, SCORES.c.value)
    for lead_id, component, value in conn.execute(query.where(SCORES.c.lead_id.in_(ids))).all():
        leads[lead_id]["scores"][component] = value
    return leads


def plain_recent(conn: sa.Connection, ids: set[int], since: datetime) -> dict[int, list[Any]]:
    sent: dict[int, list[Any]] = defaultdict(list)
    query = (
        sa.select(OUTBOX.c.lead_id, OUTBOX.c.created_at, OUTBOX.c.status)
        .where(OUTBOX.c.lead_id.in_(ids), OUTBOX.c.created_at > since)
        .order_by(OUTBOX.c.created_at)
    )
    for lead_id, at, status in conn.execute(query).all():
        if status in COUNTED:
            sent[lead_id].append(at)
    return sent


def plain_unchanged(conn: sa.Connection, ids: list[int]) -> set[tuple[Any, ...]]:
    query = (
        sa.select(ENROLLMENTS.c.id, ENROLLMENTS.c.step, LEADS.c.version)
        .join_from(ENROLLMENTS, LEADS, LEADS.c.id == ENROLLMENTS.c.lead_id)
        .where(
            ENROLLMENTS.c.id.in_(ids),
            ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE,
            ENROLLMENTS.c.next_due_at <= NOW,
        )
    )
    return {tuple(row) for row in conn.execute(query).all()}


@pytest.mark.parametrize("seed_value", [1, 2])
def test_the_batch_reads_read_what_plain_queries_read(
    db: sa.Engine, db_url: str, home: Path, seed_value: int
) -> None:
    draw = random.Random(seed_value)
    seed(db, draw, 60)
    runner = StepRunner(db, settings_for(home, db_url), campaigns_in(home), Renderer(home))
    caps = [c.frequency_cap.per for c in runner.campaigns.campaigns.values() if c.frequency_cap]
    assert caps  # the recent emails are read
    with reading(db) as conn, conn.begin():
        all_ids = [row[0] for row in conn.execute(sa.select(LEADS.c.id)).all()]
        enrollments = conn.execute(
            sa.select(
                ENROLLMENTS.c.id, ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.step
            )
        ).all()
        due = {row.id for row in enrollments} & {
            id_ for id_, *_ in plain_unchanged(conn, [row.id for row in enrollments])
        }
        assert due  # some of the enrollments are as a batch read them
        for size in (0, 1, 7, len(all_ids)):
            ids = set(draw.sample(all_ids, size)) | {-1}  # an id with no lead
            leads = runner._leads(conn, ids)
            assert leads == plain_leads(conn, ids)
            assert json.dumps(leads, default=str) == json.dumps(plain_leads(conn, ids), default=str)
            recent = runner._recent(conn, leads, NOW)
            assert recent == plain_recent(conn, set(leads), NOW - max(caps))
            for only_due in (False, True):
                rows = [
                    _Due(*row)
                    for row in enrollments
                    if row[1] in ids and (row[0] in due or not only_due)
                ]
                loaded = _Loaded(rows, leads, recent)
                read = {(row.id, row.step, leads[row.lead_id]["version"]) for row in rows}
                want = plain_unchanged(conn, [row.id for row in rows]) == read
                assert want or not only_due
                assert runner._unchanged(conn, loaded, NOW) == want


def plain_due(conn: sa.Connection, size: int, share: Share) -> list[_Due]:
    query = (
        sa.select(
            ENROLLMENTS.c.id, ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.step
        )
        .where(ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE, ENROLLMENTS.c.next_due_at <= NOW)
        .order_by(ENROLLMENTS.c.next_due_at, ENROLLMENTS.c.id)
    )
    rows = [_Due(*row) for row in conn.execute(query).all()]
    return [row for row in rows if row.lead_id % share.of == share.slot][:size]


@pytest.mark.parametrize("share", [Share(0, 1), Share(0, 2), Share(1, 2), Share(2, 3)])
def test_a_batch_takes_the_first_due_steps_of_its_share(
    db: sa.Engine, db_url: str, home: Path, share: Share
) -> None:
    seed(db, random.Random(3), 80)
    runner = StepRunner(db, settings_for(home, db_url), campaigns_in(home), Renderer(home))
    with reading(db) as conn, conn.begin():
        for size in (1, 7, 500):
            loaded = runner._load(conn, NOW, size, share)
            want = plain_due(conn, size, share)
            assert want  # some steps of the share are due
            assert loaded is not None and list(loaded.rows) == want


def test_a_batch_is_read_from_the_due_index_in_order_not_sorted(db: sa.Engine) -> None:
    """Many steps due at one moment (a campaign enrolling many leads at once): a batch reads
    its own rows from the due index, where PostgreSQL read and sorted every due step for each
    batch; a share's rows too (its condition as PostgreSQL estimates it)."""
    lead_ids = bare_leads(db, 4000, NOW)
    with db.begin() as conn:
        conn.execute(
            sa.insert(ENROLLMENTS),
            [{"lead_id": lead, "campaign": "warm-nurture", "step": 0, "status": "active",
              "enrolled_at": NOW, "next_due_at": NOW} for lead in lead_ids],
        )  # fmt: skip
    analyze(db)
    for shared in (False, True):
        values = {"active": "active", "now": NOW.isoformat(), "size": 500, "of": 2, "slot": 1}
        plan = query_plan(db, _due_query(db.dialect.name, shared), values)
        assert "ix_enrollment_due" in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
