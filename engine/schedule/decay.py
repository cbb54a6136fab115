"""Score decay, run by ``nurture tick``: stale engagement fades, as set-based SQL.

``{points: P, every: D}`` takes P off for each whole D since the component last rose;
``{half_life: H}`` brings what rose back toward the component's minimum, halving every H. Each
change is a ledger row with rule ``decay``. Decay is a function of (now, last rise), so running
tick again at the same time, or more often, changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    bindparam,
    case,
    column,
    literal,
    select,
    table,
    text,
    update,
)
from sqlmodel.sql.sqltypes import UTCDateTime

from engine.db.schema import LEADS
from engine.rules import spec
from engine.timeutil import epoch


def _temperature(ruleset: spec.Ruleset) -> ColumnElement[str]:
    """The lead's band from its score, as :meth:`~engine.rules.spec.Ruleset.band` says."""
    whens = [(LEADS.c.score >= lower, name) for name, lower in ruleset.bands_from_top()]
    return case(*whens, else_=ruleset.bottom) if whens else literal(ruleset.bottom)


def _due_query(component: spec.Component) -> str:
    """SELECT lead_id, delta (≤ 0), steps for the rows of one component that decay now."""
    decay = component.decay
    if isinstance(decay, spec.PointsDecay):
        every = int(decay.every.total_seconds())
        due = f"((:now_s - rose_at) / {every} - decay_steps)"
        lowered = f"value - {decay.points} * {due}"
        new = f"CASE WHEN {lowered} < {component.min} THEN {component.min} ELSE {lowered} END"
        return (
            f"SELECT lead_id, ({new}) - value AS delta, {due} AS steps FROM lead_score "
            f"WHERE component = :component AND rose_at IS NOT NULL AND {due} > 0"
        )
    assert isinstance(decay, spec.HalfLifeDecay)
    half_life = decay.half_life.total_seconds()
    target = (
        f"({component.min} + CAST(ROUND((peak - {component.min}) * "
        f"power(0.5, (:now_s - rose_at) * 1.0 / {half_life})) AS INTEGER))"
    )
    return (
        f"SELECT lead_id, {target} - value AS delta, 0 AS steps FROM lead_score "
        f"WHERE component = :component AND rose_at IS NOT NULL AND rose_at <= :now_s "
        f"AND {target} < value"
    )


def decay(db: Engine, ruleset: spec.Ruleset, now: datetime) -> int:
    """Apply every component's decay up to ``now``; return the number of ledger rows written."""
    written = 0
    with db.begin() as conn:
        for component in ruleset.components.values():
            if component.decay is not None:
                written += _decay_component(conn, ruleset, component, now)
    return written


def _decay_component(
    conn: Connection, ruleset: spec.Ruleset, component: spec.Component, now: datetime
) -> int:
    postgres = conn.dialect.name == "postgresql"
    params = {"component": component.name, "now_s": epoch(now)}
    at = bindparam("now", value=now, type_=UTCDateTime())
    conn.execute(text("DROP TABLE IF EXISTS decay_due"))
    conn.execute(
        text(
            "CREATE TEMPORARY TABLE decay_due "
            "(lead_id INTEGER PRIMARY KEY, delta INTEGER, steps INTEGER)"
        )
    )
    conn.execute(text(f"INSERT INTO decay_due {_due_query(component)}"), params)
    if postgres:
        # Lock leads before their scores, in id order, the order ingest takes them.
        locked = list(
            conn.execute(
                text(
                    "SELECT id FROM lead WHERE id IN (SELECT lead_id FROM decay_due) "
                    "ORDER BY id FOR UPDATE"
                )
            ).scalars()
        )
        # What is due was read before the locks: another tick or an ingest may have committed
        # while we waited. Read it again, now that these leads are ours (READ COMMITTED sees
        # their latest rows), or the same periods would be taken off twice.
        conn.execute(text("DELETE FROM decay_due"))
        conn.execute(
            text(f"INSERT INTO decay_due {_due_query(component)} AND lead_id = ANY(:locked)"),
            {**params, "locked": locked},
        )
    written = conn.execute(
        text(
            "INSERT INTO score_ledger "
            "(lead_id, component, delta, score_after, rule, ruleset_version, event_id, at) "
            "SELECT d.lead_id, :component, d.delta, l.score + d.delta, 'decay', :version, "
            "NULL, :now "
            "FROM decay_due d JOIN lead l ON l.id = d.lead_id WHERE d.delta < 0"
        ).bindparams(at),
        {**params, "version": ruleset.version},
    ).rowcount
    conn.execute(
        text(
            "UPDATE lead_score SET "
            "value = value + (SELECT delta FROM decay_due d WHERE d.lead_id = lead_score.lead_id), "
            "decay_steps = decay_steps + "
            "(SELECT steps FROM decay_due d WHERE d.lead_id = lead_score.lead_id) "
            "WHERE component = :component AND lead_id IN (SELECT lead_id FROM decay_due)"
        ),
        params,
    )
    conn.execute(
        text(
            "UPDATE lead SET "
            "score = score + (SELECT delta FROM decay_due d WHERE d.lead_id = lead.id), "
            "version = version + 1, updated_at = :now "
            "WHERE id IN (SELECT lead_id FROM decay_due WHERE delta < 0)"
        ).bindparams(at)
    )
    due = table("decay_due", column("lead_id"), column("delta"))
    lowered: Select[Any] = select(due.c.lead_id).where(due.c.delta < 0)
    conn.execute(
        update(LEADS).where(LEADS.c.id.in_(lowered)).values(temperature=_temperature(ruleset))
    )
    conn.execute(text("DROP TABLE decay_due"))
    return int(written)
