"""The dispatcher's claim reads two ranges of the (kind, status, due) index instead of one OR
condition over the outbox: on generated outboxes (queued, sending with a lapsed or live lease,
settled; several kinds; due before and after now) each claim takes exactly the messages the
plain condition, ordered by due time, names; and the suppression check the claim makes names
what reading the leads and events names; the claim statement, kept for every dispatcher and
size, takes what the plain condition names at each size. Outcomes are written in one statement
(arrays on PostgreSQL): on generated settlements with hostile text the rows end as one plain
``UPDATE`` per row leaves them. A claim that fails still settles what was sent before it."""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from engine.db.schema import EVENTS, LEADS, OUTBOX
from engine.send.dispatch import Dispatcher, write_outcomes
from engine.send.email import Email
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
        lead = a_lead(conn)
        conn.execute(OUTBOX.insert(), [{**row, "lead_id": lead} for row in rows])


def a_lead(conn: sa.Connection) -> int:
    return int(
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, attributes, score, temperature, stage, stage_entered_at, "
                "tags, subscribed, version, created_at, updated_at) VALUES ('a@example.com', "
                "'{}', 0, 'cold', 'lead', :now, '[]', :yes, 0, :now, :now) RETURNING id"
            ),
            {"now": NOW, "yes": True},
        ).scalar_one()
    )


def plainly_due(db: sa.Engine, dispatcher: Dispatcher, moment: datetime, size: int) -> list[int]:
    """The ids a claim of ``size`` should take: the plain due condition, soonest first."""
    plain = (
        sa.select(OUTBOX.c.id)
        .where(dispatcher.due(moment))
        .order_by(OUTBOX.c.next_attempt_at)
        .limit(size)
    )
    with db.connect() as conn:
        return list(conn.execute(plain).scalars())


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
            expected = plainly_due(db, dispatcher, moment, size)
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


def test_the_kept_claim_statement_takes_what_the_plain_condition_names_at_every_size(
    db: sa.Engine, db_url: str
) -> None:
    """The claim statement is built once per process for a dialect and set of kinds, its size a
    parameter: dispatchers of different kinds, each a new one or an old one, claiming at
    random sizes in random turns, each take exactly what the plain condition names at that
    size (a statement kept with a size baked in, or shared between kinds, takes other rows)."""
    draw = random.Random(17)
    seed(db, draw, 1200)
    settings = Settings(database_url=db_url, lease_seconds=60)
    groups = [("campaign",), ("alert", "webhook"), ("alert",)]
    dispatchers = [Dispatcher(db, settings, mailer=None, kinds=k) for k in groups]  # type: ignore[arg-type]
    moment, empty, rounds = NOW, 0, 0
    while empty < 12:
        kinds = draw.choice(groups)
        if draw.random() < 0.5:  # a new dispatcher, as each scheduled run makes
            dispatcher = Dispatcher(db, settings, mailer=None, kinds=kinds)  # type: ignore[arg-type]
        else:
            dispatcher = dispatchers[groups.index(kinds)]
        size = draw.randrange(1, 60)
        expected = plainly_due(db, dispatcher, moment, size)
        assert [row.id for row in dispatcher.claim(moment, size)] == expected
        rounds += 1
        if not expected:
            empty += 1
            moment += timedelta(hours=draw.randrange(1, 30))  # leases lapse, more falls due
    assert rounds > 50


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


# Text a settlement may carry: what array literals, quoting and encodings could mangle.
HOSTILE = [
    "",
    "NULL",
    "null",
    '{"a", "b"}',
    "a,b",
    '"quoted"',
    "back\\slash",
    "{}",
    "(1,2)",
    "tab\tnew\nline",
    "é ü 漢字 🙂",
    "x" * 2000,
    "'; DROP TABLE outbox_message; --",
]


def settlements(draw: random.Random, ids: list[int]) -> list[dict[str, Any]]:
    """Outcomes for a random subset of ``ids``, one per id, every key present, as the
    dispatcher makes them."""
    moment = NOW + timedelta(seconds=draw.randrange(0, 10**6), microseconds=draw.randrange(10**6))
    outcomes = []
    for outbox_id in draw.sample(ids, draw.randrange(1, len(ids))):
        status = draw.choice(["sent", "queued", "failed", "suppressed"])
        text = draw.choice([None, *HOSTILE, f"SendGrid 503: {draw.random()}"])
        outcomes.append(
            {
                "id": outbox_id,
                "status": status,
                "last_error": None if status == "sent" else text,
                "provider_id": draw.choice([None, *HOSTILE[:11]]) if status == "sent" else None,
                "sent_at": moment if status == "sent" else None,
                "next_attempt_at": moment + timedelta(minutes=draw.randrange(-90, 90)),
            }
        )
    return outcomes


def plain_write(conn: sa.Connection, outcomes: list[dict[str, Any]]) -> None:
    """The straightforward write: one UPDATE per settlement, through SQLAlchemy."""
    for outcome in outcomes:
        conn.execute(
            sa.update(OUTBOX)
            .where(OUTBOX.c.id == outcome["id"], OUTBOX.c.status == "sending")
            .values({k: v for k, v in outcome.items() if k != "id"} | {"lease_until": None})
        )


def test_the_outcomes_write_leaves_what_one_update_per_row_leaves(
    db: sa.Engine, db_url: str
) -> None:
    draw = random.Random(17)
    seed(db, draw, 400)
    with db.connect() as conn:
        ids = list(conn.execute(sa.select(OUTBOX.c.id)).scalars())
    table = sa.select(OUTBOX).order_by(OUTBOX.c.id)
    for _ in range(25):
        outcomes = settlements(draw, ids)
        after = []
        for write in (write_outcomes, plain_write):
            with db.connect() as conn:
                change = conn.begin()
                write(conn, outcomes)
                after.append(conn.execute(table).all())
                change.rollback()
        assert after[0] == after[1]
        # Rows that were sending took their outcome, the others did not move.
        settled = {row.id: row for row in after[0]}
        assert any(settled[o["id"]].status == o["status"] != "sending" for o in outcomes)


class Recording:
    """A mailer that accepts every email at once and records which outbox rows it sent."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self._lock = threading.Lock()

    def send(self, email: Email) -> str:
        with self._lock:
            self.sent.append(email.outbox_id)
        return f"provider-{email.outbox_id}"


REFUSE_SQLITE = """
CREATE TRIGGER refuse_late_claims BEFORE UPDATE ON outbox_message
WHEN NEW.status = 'sending' AND substr(OLD.idempotency_key, 1, 4) = 'late'
BEGIN SELECT RAISE(ABORT, 'claim refused'); END
"""
REFUSE_PG = [
    "CREATE FUNCTION refuse_late_claims() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'claim refused'; END $$",
    "CREATE TRIGGER refuse_late_claims BEFORE UPDATE ON outbox_message FOR EACH ROW "
    "WHEN (NEW.status = 'sending' AND substr(OLD.idempotency_key, 1, 4) = 'late') "
    "EXECUTE FUNCTION refuse_late_claims()",
]


def test_a_failed_claim_still_settles_what_was_sent(db: sa.Engine, db_url: str) -> None:
    """The database refuses a claim once the first messages are out: the run raises, and
    every message sent before is settled ``sent`` (not left ``sending``, to be sent again once
    its lease ends); the messages the refused claim named were never sent and stay queued."""
    early, late = 60, 30
    with db.begin() as conn:
        lead = a_lead(conn)
        conn.execute(
            OUTBOX.insert(),
            [
                {
                    "idempotency_key": f"{'early' if i < early else 'late'}{i}",
                    "lead_id": lead,
                    "kind": "campaign",
                    "status": "queued",
                    "to_email": f"l{i}@example.com",
                    "from_email": "hello@acme.io",
                    "subject": "Hi",
                    "html": "<p>Hi</p>",
                    "text": "Hi",
                    "headers": {},
                    "attempts": 0,
                    "next_attempt_at": NOW - timedelta(minutes=early + late - i),
                    "created_at": NOW,
                }
                for i in range(early + late)
            ],
        )
        for statement in [REFUSE_SQLITE] if db.dialect.name == "sqlite" else REFUSE_PG:
            conn.exec_driver_sql(statement)
    mailer = Recording()
    settings = Settings(database_url=db_url, dispatch_batch=20, send_concurrency=4)
    with pytest.raises(sa.exc.DBAPIError, match="claim refused"):
        Dispatcher(db, settings, mailer).run(NOW)
    with db.connect() as conn:
        rows = {row.id: row for row in conn.execute(sa.select(OUTBOX))}
    sent = set(mailer.sent)
    assert len(sent) == len(mailer.sent) >= 20  # once each, at least the first claim's
    for outbox_id, row in rows.items():
        if outbox_id in sent:
            assert row.idempotency_key.startswith("early")
            assert (row.status, row.provider_id, row.attempts) == (
                "sent", f"provider-{outbox_id}", 1,
            )  # fmt: skip
            assert row.lease_until is None
        else:
            assert (row.status, row.attempts) == ("queued", 0)
