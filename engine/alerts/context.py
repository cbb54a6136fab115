"""What an alert shows besides the lead row, for a batch of leads in a few set-based queries:
the latest events, and for customer alerts the latest score changes (the rules behind them)
and the latest purchases."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, func, select

from engine.db.schema import EVENTS, LEDGER, current_ledger
from engine.rules import spec
from engine.timeutil import isoformat

RECENT = 5
# Event types a time evaluation and nothing a person did: not "activity".
QUIET = (spec.TIME_EVENT,)
# The event type of a purchase when the ruleset sums none.
PURCHASE = "purchase"


def purchase_types(ruleset: spec.Ruleset) -> list[str]:
    """The event types whose values the ruleset adds up (`sum`), else ``purchase``."""
    found = {
        leaf.type
        for rule in ruleset.rules
        for leaf in spec.leaves(rule.when)
        if isinstance(leaf, spec.Sum)
    }
    return sorted(found) or [PURCHASE]


def _latest_events(
    conn: Connection, lead_ids: list[int], where: Any
) -> dict[int, list[tuple[str, Any, dict[str, Any]]]]:
    """Per lead, its latest :data:`RECENT` events matching ``where``: (type, time, properties)."""
    rank = (
        func.row_number()
        .over(
            partition_by=EVENTS.c.lead_id,
            order_by=(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc()),
        )
        .label("rank")
    )
    ranked = (
        select(EVENTS.c.lead_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties, rank)
        .where(EVENTS.c.lead_id.in_(lead_ids), where)
        .subquery()
    )
    found: dict[int, list[tuple[str, Any, dict[str, Any]]]] = {}
    query = select(ranked).where(ranked.c.rank <= RECENT).order_by(ranked.c.rank)
    for row in conn.execute(query):
        found.setdefault(row.lead_id, []).append((row.type, row.occurred_at, row.properties or {}))
    return found


def recent_events(conn: Connection, lead_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each lead's latest events (time evaluations left out): {"type", "at", "detail"}."""
    found = _latest_events(conn, lead_ids, EVENTS.c.type.not_in(QUIET))
    return {
        lead_id: [
            {"type": kind, "at": isoformat(at), "detail": _text(_detail(properties))}
            for kind, at, properties in events
        ]
        for lead_id, events in found.items()
    }


def recent_purchases(
    conn: Connection, lead_ids: list[int], types: Collection[str]
) -> dict[int, list[dict[str, Any]]]:
    """Each lead's latest purchases: {"at", "detail"} with their properties (amount, items)."""
    found = _latest_events(conn, lead_ids, EVENTS.c.type.in_(list(types)))
    return {
        lead_id: [
            {"at": isoformat(at), "detail": f"{kind}: {_properties(properties)}".rstrip(": ")}
            for kind, at, properties in events
        ]
        for lead_id, events in found.items()
    }


def recent_changes(conn: Connection, lead_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Each lead's latest score changes, newest first: the rules behind where it stands."""
    rank = (
        func.row_number()
        .over(partition_by=LEDGER.c.lead_id, order_by=(LEDGER.c.at.desc(), LEDGER.c.id.desc()))
        .label("rank")
    )
    ranked = (
        select(LEDGER.c.lead_id, LEDGER.c.rule, LEDGER.c.component, LEDGER.c.delta, LEDGER.c.at)
        .add_columns(rank)
        .where(LEDGER.c.lead_id.in_(lead_ids), current_ledger())
        .subquery()
    )
    found: dict[int, list[dict[str, Any]]] = {}
    query = select(ranked).where(ranked.c.rank <= RECENT).order_by(ranked.c.rank)
    for row in conn.execute(query):
        found.setdefault(row.lead_id, []).append(
            {
                "rule": row.rule,
                "component": row.component,
                "delta": row.delta,
                "at": isoformat(row.at),
            }
        )
    return found


def _detail(properties: dict[str, Any]) -> object:
    return properties.get("url") or properties.get("title") or properties.get("name")


def _properties(properties: dict[str, Any]) -> str:
    """``amount 29.33, cds 2``: the scalar properties, at most 200 characters."""
    shown = [
        f"{key} {value}"
        for key, value in sorted(properties.items())
        if isinstance(value, str | int | float) and not isinstance(value, bool)
    ]
    return ", ".join(shown)[:200]


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
