"""Warnings about rules that read what the stored data never had: a lead attribute no stored
lead has (often a CSV header named otherwise, see :mod:`engine.ingest.columns`) or an event
type the event log has never seen. For ``nurture rules check`` and the validate endpoint; only
once the database has leads. Each answer is one set-based query (the distinct attribute keys or
event types among the names the rules read), whatever the number of rules."""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import Connection, Engine, bindparam, select, text

from engine.db.schema import EVENTS, LEADS
from engine.errors import Problem
from engine.rules.lint import attribute_reads, event_type_reads
from engine.rules.spec import Ruleset


def unseen(ruleset: Ruleset, db: Engine) -> list[Problem]:
    """A warning for each read of ``ruleset`` that the stored leads and events never had, in
    file order; none while the database has no lead."""
    attributes, types = attribute_reads(ruleset), event_type_reads(ruleset)
    with db.connect() as conn:
        if conn.execute(select(LEADS.c.id).limit(1)).first() is None:
            return []
        keys = _attribute_keys(conn, {read.name for read in attributes})
        seen = _event_types(conn, {read.name for read in types})
    found = [
        Problem(
            ruleset.path,
            read.line,
            f"rule {read.rule!r} reads lead.{read.name}, which no stored lead has (CSV "
            "headers become snake_case attributes: is the name spelled as they are?)",
        )
        for read in attributes
        if read.name not in keys
    ]
    found += [
        Problem(
            ruleset.path,
            read.line,
            f"rule {read.rule!r} reads event type {read.name!r}, which the event log has "
            "never seen",
        )
        for read in types
        if read.name not in seen
    ]
    return sorted(found, key=lambda problem: problem.line)


def _attribute_keys(conn: Connection, names: Collection[str]) -> set[str]:
    """Those of ``names`` that at least one stored lead has as an attribute."""
    if not names:
        return set()
    keys = (
        "SELECT DISTINCT k.key FROM lead, json_each(lead.attributes) AS k"
        if conn.dialect.name == "sqlite"
        else "SELECT DISTINCT k.key FROM lead, jsonb_object_keys(lead.attributes::jsonb) AS k(key)"
    )
    query = text(f"{keys} WHERE k.key IN :names").bindparams(bindparam("names", expanding=True))
    return set(conn.execute(query, {"names": sorted(names)}).scalars())


def _event_types(conn: Connection, names: Collection[str]) -> set[str]:
    """Those of ``names`` that at least one stored event has as its type."""
    if not names:
        return set()
    query = select(EVENTS.c.type).where(EVENTS.c.type.in_(sorted(names))).distinct()
    return set(conn.execute(query).scalars())
