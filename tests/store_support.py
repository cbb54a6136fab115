"""Helpers shared by the store tests (test_store_*.py, test_accounts.py): a second database of the
same kind, and snapshots of what is stored, by email so two databases can be compared."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine import db as database
from engine.db.schema import (
    ACTIONS,
    EVENTS,
    FIRINGS,
    LEADS,
    LEDGER,
    NAMED_SCORES,
    SCORES,
    STAGES,
)
from engine.rules.spec import NamedScore
from tests.helpers import PG_URL


def pg_schema() -> AbstractContextManager[str]:
    """A URL of a fresh schema on the test PostgreSQL, dropped afterwards."""
    return database.scratch_schema(PG_URL, "t")


@contextmanager
def another_database(url: str, folder: Path) -> Iterator[str]:
    """A second, empty database of the same kind as ``url`` (migrated): SQLite when it starts
    with ``sqlite``, else a scratch schema on the test PostgreSQL."""
    if url.startswith("sqlite"):
        other = f"sqlite:///{folder / f'other-{uuid.uuid4().hex[:8]}.db'}"
        database.upgrade(other)
        yield other
        database.connect(other).dispose()
        return
    with pg_schema() as other:
        database.upgrade(other)
        yield other


def tables(engine: sa.Engine) -> dict[str, list[Any]]:
    """Every row of every lead table, as stored (ids, versions and timestamps included)."""
    with engine.connect() as conn:
        return {
            table.name: [
                tuple(row) for row in conn.execute(sa.select(table).order_by(*table.primary_key))
            ]
            for table in (LEADS, SCORES, EVENTS, LEDGER, STAGES, FIRINGS, ACTIONS)
        }


def lead_state(engine: sa.Engine) -> dict[str, Any]:
    """What scoring decided, keyed by email rather than by ids, without processing times (when
    the batch ran), so two runs in two databases compare equal when they scored alike."""
    email = LEADS.c.email
    with engine.connect() as conn:
        leads = conn.execute(
            sa.select(
                email,
                LEADS.c.score,
                LEADS.c.temperature,
                LEADS.c.stage,
                LEADS.c.stage_entered_at,
                LEADS.c.subscribed,
                LEADS.c.attributes,
                LEADS.c.tags,
            ).order_by(email)
        ).all()
        scores = conn.execute(
            sa.select(email, SCORES.c.component, SCORES.c.value, SCORES.c.rose_at, SCORES.c.peak)
            .join(LEADS, LEADS.c.id == SCORES.c.lead_id)
            .order_by(email, SCORES.c.component)
        ).all()
        ledger = conn.execute(
            sa.select(
                email,
                LEDGER.c.event_id,
                LEDGER.c.rule,
                LEDGER.c.component,
                LEDGER.c.delta,
                LEDGER.c.score_after,
                LEDGER.c.ruleset_version,
                LEDGER.c.at,
            ).join(LEADS, LEADS.c.id == LEDGER.c.lead_id)
        ).all()
        stages = conn.execute(
            sa.select(
                email,
                STAGES.c.event_id,
                STAGES.c.from_stage,
                STAGES.c.to_stage,
                STAGES.c.rule,
                STAGES.c.at,
            ).join(LEADS, LEADS.c.id == STAGES.c.lead_id)
        ).all()
        firings = conn.execute(
            sa.select(email, FIRINGS.c.rule, FIRINGS.c.event_id, FIRINGS.c.at).join(
                LEADS, LEADS.c.id == FIRINGS.c.lead_id
            )
        ).all()
        actions = conn.execute(
            sa.select(
                email,
                ACTIONS.c.kind,
                ACTIONS.c.target,
                ACTIONS.c.rule,
                ACTIONS.c.event_id,
                ACTIONS.c.at,
                ACTIONS.c.status,
            ).join(LEADS, LEADS.c.id == ACTIONS.c.lead_id)
        ).all()
        events = conn.execute(
            sa.select(
                EVENTS.c.event_id, email, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties
            )
            .join(LEADS, LEADS.c.id == EVENTS.c.lead_id)
            .order_by(EVENTS.c.event_id)
        ).all()
    return {
        "leads": [tuple(row) for row in leads],
        "scores": [tuple(row) for row in scores],
        "ledger": sorted((tuple(row) for row in ledger), key=repr),
        "stages": sorted((tuple(row) for row in stages), key=repr),
        "firings": sorted((tuple(row) for row in firings), key=repr),
        "actions": sorted((tuple(row) for row in actions), key=repr),
        "events": [tuple(row) for row in events],
    }


def ledger_sums(
    engine: sa.Engine, claimed: Mapping[str, NamedScore] | None = None
) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int], dict[tuple[str, str], int]]:
    """Per (lead email, score): the stored total, the sum of its ledger and the sum of its
    components. The score is ``score`` (the lead score) or a named score, whose components
    ``claimed`` maps (a ruleset's ``claimed``); a lead's ledger sums to each of its scores."""
    owner = {component: score.name for component, score in (claimed or {}).items()}

    def score_of(column: Any) -> Any:
        return (
            sa.case(owner, value=column, else_=sa.literal("score"))
            if owner
            else sa.literal("score")
        )

    with engine.connect() as conn:
        scores = {
            (e, "score"): int(s) for e, s in conn.execute(sa.select(LEADS.c.email, LEADS.c.score))
        }
        scores |= {
            (e, name): int(total)
            for e, name, total in conn.execute(
                sa.select(LEADS.c.email, NAMED_SCORES.c.name, NAMED_SCORES.c.total).join(
                    NAMED_SCORES, NAMED_SCORES.c.lead_id == LEADS.c.id
                )
            )
        }
        sums = {}
        for table, column in ((LEDGER, LEDGER.c.delta), (SCORES, SCORES.c.value)):
            score = score_of(table.c.component).label("score")
            sums[table.name] = {
                (e, name): int(s)
                for e, name, s in conn.execute(
                    sa.select(LEADS.c.email, score, sa.func.sum(column))
                    .join(table, table.c.lead_id == LEADS.c.id)
                    .group_by(LEADS.c.email, score)
                )
            }
    # A score without ledger rows is 0.
    ledger = {key: sums[LEDGER.name].get(key, 0) for key in scores}
    components = {key: sums[SCORES.name].get(key, 0) for key in scores}
    return scores, ledger, components
