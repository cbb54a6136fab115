"""The dispatcher's claim reads two ranges of the (kind, status, due) index instead of one OR
condition over the outbox: on generated outboxes (queued, sending with a lapsed or live lease,
settled; several kinds; due before and after now) each claim takes exactly the messages the
plain condition, ordered by due time, names; and the suppression check the claim makes names
what reading the leads and events names."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.db.schema import EVENTS, LEADS, OUTBOX
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


def test_a_claim_names_what_the_plain_suppression_check_names(db: sa.Engine, db_url: str) -> None:
    """The claim tells why each campaign email must not go out (its lead unsubscribed, else
    bounced or reported spam) in the same statement: on generated leads and events, what it
    names is what reading the leads and events one by one names; alerts are never blocked."""
    draw = random.Random(16)
    types = ["bounce", "spam_report", "open", "click", "unsubscribe"]
    with db.begin() as conn:
        leads = [
            conn.execute(
                sa.text(
                    "INSERT INTO lead (email, attributes, score, temperature, stage, "
                    "stage_entered_at, tags, subscribed, version, created_at, updated_at) VALUES "
                    "(:email, '{}', 0, 'cold', 'lead', :now, '[]', :yes, 0, :now, :now) "
                    "RETURNING id"
                ),
                {"email": f"l{i}@example.com", "now": NOW, "yes": draw.random() < 0.7},
            ).scalar_one()
            for i in range(300)
        ]
        events = [
            {
                "event_id": f"e{i}",
                "lead_id": draw.choice(leads),
                "type": draw.choice(types),
                "occurred_at": NOW,
                "properties": {},
            }
            for i in range(400)
        ]
        conn.execute(EVENTS.insert(), events)
        conn.execute(
            OUTBOX.insert(),
            [
                {
                    "idempotency_key": f"k{i}",
                    "kind": draw.choice(KINDS),
                    "lead_id": draw.choice(leads),
                    "status": "queued",
                    "to_email": f"m{i}@example.com",
                    "from_email": "hello@acme.io",
                    "headers": {},
                    "attempts": 0,
                    "next_attempt_at": NOW - timedelta(minutes=i),
                    "created_at": NOW,
                }
                for i in range(600)
            ],
        )
        unsubscribed = set(
            conn.execute(sa.select(LEADS.c.id).where(LEADS.c.subscribed.is_(False))).scalars()
        )
    suppressing = {}
    for event in sorted(events, key=lambda e: e["type"], reverse=True):
        if event["type"] in ("bounce", "spam_report"):
            suppressing[event["lead_id"]] = event["type"]  # the first by name wins
    settings = Settings(database_url=db_url)
    dispatcher = Dispatcher(db, settings, mailer=None, kinds=KINDS)  # type: ignore[arg-type]
    claimed = dispatcher.claim(NOW, 600)
    assert len(claimed) == 600
    for row in claimed:
        if row.kind != "campaign":
            expected = None
        elif row.lead_id in unsubscribed:
            expected = "unsubscribed"
        else:
            expected = suppressing.get(row.lead_id)
        assert row.blocked == expected
    assert {row.blocked for row in claimed} == {None, "unsubscribed", "bounce", "spam_report"}
