"""The dashboard's campaign figures from the event's ``outbox_id`` and ``campaign`` columns
are the figures the JSON of every feedback event gave: for events written since (ingest fills
the columns) and for events stored before (migration 0009 fills them)."""

from __future__ import annotations

import random
from typing import Any

import sqlalchemy as sa
from alembic import command

from engine import db as database
from engine.db.connect import alembic_config
from engine.db.schema import EVENTS, OUTBOX
from engine.ingest.batch import ingest
from engine.ingest.parse import EventRecord
from engine.reports import overview
from tests.campaign_support import seed_outbox
from tests.helpers import compiled, ruleset_text

RULES = compiled(ruleset_text("ingest-test"), "ingest-test.yaml")
KINDS = ("email_open", "email_click", "unsubscribe", "page_view")


def shapes(rng: random.Random, outbox_ids: list[int]) -> dict[str, Any]:
    """The properties feedback arrives with. (Where the JSON query named nonsense, the columns
    differ on purpose: an outbox id like "12abc" or true matched email 12 or 1 on SQLite, and
    an empty or nested category was a campaign called "[]" or '{"nested": 1}'.)"""
    outbox = rng.choice(outbox_ids)
    return rng.choice(
        [
            {"outbox_id": str(outbox), "category": "ignored-when-the-email-is-known"},
            {"outbox_id": outbox},
            {"outbox_id": "99999999", "category": ["spring", "other"]},  # no such email
            {"outbox_id": "123456789012345678901", "category": "summer"},  # beyond any id
            {"category": "summer"},
            {"category": ["autumn"]},
            {"campaign": "winter"},
            {"campaign": 7},
            {},
        ]
    )


def seed(db: sa.Engine, count: int = 300) -> None:
    seed_outbox(db, 40)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'sent', sent_at = created_at"))
        conn.execute(sa.text("UPDATE outbox_message SET campaign = 'spring' WHERE id % 3 = 0"))
        outbox_ids = list(conn.execute(sa.select(OUTBOX.c.id)).scalars())
    rng = random.Random(15)
    records = [
        EventRecord(
            n,
            f"l{rng.randrange(40)}@example.com",
            f"f{n}",
            rng.choice(KINDS),
            None,
            shapes(rng, outbox_ids),
        )
        for n in range(count)
    ]
    result = ingest(db, RULES, records)
    assert result.accepted == count


def from_json(db: sa.Engine) -> list[dict[str, Any]]:
    """The figures as the dashboard computed them before the columns: from the JSON."""
    props = EVENTS.c.properties
    text = props["outbox_id"].as_string()
    outbox_id: Any = sa.cast(text, sa.BigInteger)
    if db.dialect.name == "postgresql":
        outbox_id = sa.case((text.regexp_match(r"^[0-9]{1,18}$"), outbox_id))
    campaign = sa.func.coalesce(
        OUTBOX.c.campaign,
        props[("category", 0)].as_string(),
        props["category"].as_string(),
        props["campaign"].as_string(),
    ).label("campaign")
    attributed = (
        sa.select(EVENTS.c.lead_id, EVENTS.c.type, campaign)
        .select_from(EVENTS.outerjoin(OUTBOX, OUTBOX.c.id == outbox_id))
        .where(EVENTS.c.type.in_(list(overview.FEEDBACK)))
        .subquery()
    )
    counts = [
        sa.func.count(sa.func.distinct(sa.case((attributed.c.type == k, attributed.c.lead_id))))
        for k in overview.FEEDBACK
    ]
    query = sa.select(attributed.c.campaign, *counts).group_by(attributed.c.campaign)
    with db.connect() as conn:
        found = {str(name): list(map(int, rest)) for name, *rest in conn.execute(query) if name}
    return sorted((name, n) for name, n in found.items() if any(n))  # type: ignore[return-value]


def from_columns(db: sa.Engine) -> list[Any]:
    return sorted(
        (row["campaign"], [row[figure] for figure in overview.FEEDBACK.values()])
        for row in overview.campaigns(db)
        if any(row[figure] for figure in overview.FEEDBACK.values())
    )


def test_campaign_figures_from_the_columns_equal_those_from_the_json(db: sa.Engine) -> None:
    seed(db)
    expected = from_json(db)
    names = {name for name, _ in expected}
    assert {"spring", "c", "summer", "autumn", "winter", "7"} <= names, expected
    assert from_columns(db) == expected


def test_the_migration_fills_the_columns_of_events_stored_before(
    db: sa.Engine, db_url: str
) -> None:
    seed(db)
    with db.connect() as conn:
        before = conn.execute(
            sa.select(EVENTS.c.event_id, EVENTS.c.outbox_id, EVENTS.c.campaign)
        ).all()
    assert any(row.outbox_id for row in before) and any(row.campaign for row in before)
    expected = from_columns(db)
    with db.begin() as conn:  # the columns gone, as before 0009
        config = alembic_config(db_url)
        config.attributes["connection"] = conn
        command.downgrade(config, "0008")
    database.upgrade(db_url)
    with db.connect() as conn:
        after = conn.execute(
            sa.select(EVENTS.c.event_id, EVENTS.c.outbox_id, EVENTS.c.campaign)
        ).all()
    assert sorted(after) == sorted(before)
    assert from_columns(db) == expected
