"""The dispatcher's claim reads two ranges of the (kind, status, due) index instead of one OR
condition over the outbox: on generated outboxes (queued, sending with a lapsed or live lease,
settled; several kinds; due before and after now) each claim takes exactly the messages the
plain condition, ordered by due time, names."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.db.schema import OUTBOX
from engine.send.dispatch import Dispatcher
from engine.settings import Settings

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
STATUSES = ["queued", "queued", "sending", "sending", "sent", "failed", "held", "suppressed"]
KINDS = ["campaign", "campaign", "alert", "webhook"]


def seed(db: sa.Engine, draw: random.Random, count: int) -> None:
    minutes = draw.sample(range(-100_000, 100_000), count)  # distinct due times: one answer
    rows = [
        {
            "idempotency_key": f"k{i}",
            "kind": draw.choice(KINDS),
            "status": draw.choice(STATUSES),
            "to_email": f"l{i}@example.com",
            "from_email": "hello@acme.io",
            "headers": {},
            "attempts": 0,
            "next_attempt_at": NOW + timedelta(minutes=minutes[i]),
            "lease_until": NOW + timedelta(minutes=draw.randrange(-600, 600)),
            "created_at": NOW,
        }
        for i in range(count)
    ]
    with db.begin() as conn:
        lead = conn.execute(
            sa.text(
                "INSERT INTO lead (email, attributes, score, temperature, stage, stage_entered_at, "
                "tags, subscribed, version, created_at, updated_at) VALUES ('a@example.com', "
                "'{}', 0, 'cold', 'lead', :now, '[]', :yes, 0, :now, :now) RETURNING id"
            ),
            {"now": NOW, "yes": True},
        ).scalar_one()
        conn.execute(OUTBOX.insert(), [{**row, "lead_id": lead} for row in rows])


def test_a_claim_takes_what_the_plain_condition_names(db: sa.Engine, db_url: str) -> None:
    draw = random.Random(15)
    seed(db, draw, 1500)
    settings = Settings(database_url=db_url, lease_seconds=60)
    rounds = 0
    for kinds in (("campaign",), ("alert", "webhook")):
        dispatcher = Dispatcher(db, settings, mailer=None, kinds=kinds)  # type: ignore[arg-type]
        moment = NOW
        while True:
            size = draw.choice([1, 7, 25, 50])
            plain = (
                sa.select(OUTBOX.c.id)
                .where(dispatcher.due(moment))
                .order_by(OUTBOX.c.next_attempt_at)
                .limit(size)
            )
            with db.connect() as conn:
                expected = list(conn.execute(plain).scalars())
            claimed = [row.id for row in dispatcher.claim(moment, size)]
            assert claimed == expected
            rounds += 1
            if not claimed:
                if moment > NOW + timedelta(days=2):
                    break
                moment += timedelta(hours=draw.randrange(1, 30))  # leases lapse, more falls due
    with db.connect() as conn:
        left = conn.execute(sa.select(sa.func.count()).where(dispatcher.due(moment))).scalar()
    assert left == 0 and rounds > 50
