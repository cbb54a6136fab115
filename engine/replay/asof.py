"""A lead's scores as of a date: its events up to then replayed under the version in force (or
an earlier one of ``nurture rules history``), decayed up to then. Nothing is written."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from engine.active import apply_history
from engine.address import normalise_email
from engine.db import reading
from engine.db.schema import LEADS
from engine.errors import NurtureError
from engine.home import compile_text
from engine.ingest.rescore import load_stored, replay
from engine.rules.compile import CompiledRuleset
from engine.settings import Settings
from engine.timeutil import isoformat


def version_compiled(db: Engine, settings: Settings, version: str) -> CompiledRuleset:
    """A version of ``nurture rules history`` (a prefix of it will do), compiled."""
    with reading(db) as conn:
        found = [row for row in apply_history(conn) if row.version.startswith(version)]
    if not found:
        raise NurtureError(f"ruleset version {version}: not in `nurture rules history`")
    return compile_text(found[-1].source, found[-1].name, settings.home)


def as_of(db: Engine, compiled: CompiledRuleset, email: str, at: datetime) -> dict[str, Any] | None:
    """The lead as ``compiled`` scores its events up to ``at`` (None: no such lead)."""
    ruleset = compiled.ruleset
    with reading(db) as conn:
        lead_id = conn.execute(
            select(LEADS.c.id).where(LEADS.c.email == normalise_email(email))
        ).scalar()
        if lead_id is None:
            return None
        stored = load_stored(conn, [lead_id], lock=False)
        found = replay(conn, compiled, stored, at, until=at)[0]
    state = found.lead.state
    totals = ruleset.totals(state.scores) if ruleset.scores else {}
    return {
        "email": found.stored.email,
        "as_of": isoformat(at),
        "ruleset_version": ruleset.version,
        "score": found.score,
        "scores": dict(state.scores),
        "totals": totals,
        "bands": ruleset.named_bands(totals) if ruleset.scores else {},
        "temperature": ruleset.band(found.score),
        "stage": state.stage,
        "tags": list(state.tags),
        "attributes": {k: v for k, v in state.attributes.items() if k != "email"},
        "events": found.events,
        "ledger": [
            {
                "rule": row["rule"],
                "component": row["component"],
                "delta": row["delta"],
                "score_after": row["score_after"],
                "event_id": row["event_id"],
                "at": isoformat(row["at"]),
                "ruleset_version": row["ruleset_version"],
            }
            for row in found.rows.ledger
        ],
    }
