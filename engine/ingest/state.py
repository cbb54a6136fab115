"""Ingest, step 2: a batch's leads as the rules need them, in a few set-based queries: create the
unknown leads, lock the batch's leads, find events already stored, and load scores, history,
enrollments and account peers.

The queries are built once per dialect (and ruleset) and cached, the batch's ids given as
parameters (:func:`engine.db.among_param`): the API's batches of a few events each paid more to
build and key a statement than SQLite took to run it. A provisional lead (id below 0, see
:func:`provisional`) is not stored, so nothing of its past is read."""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select

from engine.db import among, among_param, fetch_rows, upsert_rows
from engine.db.schema import ENROLLMENTS, EVENTS, FIRINGS, LEADS, SCORES
from engine.ingest.outcome import LoadedLead
from engine.ingest.parse import Record
from engine.rules.account import AccountBook, Peers, account_domain
from engine.rules.compile import CompiledRuleset, longest_window, window_start
from engine.rules.evaluate import LeadState, new_lead, prime
from engine.rules.spec import DaysSince, Ruleset, Sum


def _new_rows(
    ruleset: Ruleset, first_seen: Mapping[str, datetime], now: datetime
) -> list[dict[str, Any]]:
    """The rows of new leads, first seen at the given times."""
    start, band = ruleset.stages[0], ruleset.band(0)
    return [
        {
            "email": email,
            "attributes": {},
            "score": 0,
            "temperature": band,
            "stage": start,
            "stage_entered_at": at,
            "tags": [],
            "subscribed": True,
            "version": 0,
            "ruleset_version": ruleset.version,
            "created_at": now,
            "updated_at": now,
        }
        # Sorted: concurrent writers then take unique-index locks in one order.
        for email, at in sorted(first_seen.items())
    ]


def create_missing(
    conn: Connection, ruleset: Ruleset, first_seen: Mapping[str, datetime], now: datetime
) -> int:
    """Create the leads not stored yet; how many were created."""
    return upsert_rows(conn, LEADS, _new_rows(ruleset, first_seen, now), ["email"])


# The columns a batch reads of its leads (not the ones it only writes: decoding a time or JSON
# is most of the client's cost of the read).
_READ = (
    "id",
    "email",
    "attributes",
    "stage",
    "stage_entered_at",
    "tags",
    "subscribed",
    "version",
    "time_due_at",
    "ruleset_version",
)


def _loaded(row: Mapping[Any, Any]) -> LoadedLead:
    attributes = dict(row["attributes"])
    attributes["email"] = row["email"]
    if row["version"] == 0:
        attributes.setdefault("domain", row["email"].rsplit("@", 1)[1])
    state = LeadState(attributes, {}, row["stage"], list(row["tags"]))
    return LoadedLead(
        row["id"],
        row["email"],
        row["version"],
        state,
        row["subscribed"],
        row["stage_entered_at"],
        {},
        new=row["version"] == 0,
        created_at=row["stage_entered_at"],
        due_at=row["time_due_at"],
        ruleset_version=row["ruleset_version"],
    )


@functools.cache
def _lock_query(dialect: str) -> Select[Any]:
    query = select(*(LEADS.c[name] for name in _READ)).where(
        among_param(dialect, LEADS.c.email, "emails")
    )
    query = query.order_by(LEADS.c.id)
    return query.with_for_update() if dialect == "postgresql" else query


def lock(conn: Connection, emails: list[str]) -> dict[str, LoadedLead]:
    """The leads of ``emails``, locked until the transaction ends (PostgreSQL; SQLite's write
    lock is the transaction's), or only read in a snapshot (SQLite's read transactions)."""
    found = fetch_rows(conn, _lock_query(conn.dialect.name), {"emails": list(emails)})
    return {row[1]: _loaded(dict(zip(_READ, row, strict=True))) for row in found}


def stored_ids(leads: Mapping[str, LoadedLead]) -> list[int]:
    """The ids of the leads that are stored: a provisional one (id below 0) has no rows yet,
    so a query about it could only find nothing."""
    return [lead.id for lead in leads.values() if lead.id > 0]


def lock_or_create(
    conn: Connection, ruleset: Ruleset, first_seen: Mapping[str, datetime], now: datetime
) -> dict[str, LoadedLead]:
    """The leads of ``first_seen``, locked as :func:`lock` does, those not stored yet created
    first (most of a batch's leads exist: they are only read, not offered to an INSERT)."""
    leads = lock(conn, list(first_seen))
    missing = {email: at for email, at in first_seen.items() if email not in leads}
    if not missing:
        return leads
    create_missing(conn, ruleset, missing, now)
    leads |= lock(conn, list(missing))
    return dict(sorted(leads.items(), key=lambda item: item[1].id))


def provisional(
    ruleset: Ruleset, first_seen: Mapping[str, datetime], now: datetime
) -> dict[str, LoadedLead]:
    """Leads a snapshot does not have, as :func:`create_missing` would create them, with ids
    below 0 until :func:`create_provisional` stores them."""
    rows = _new_rows(ruleset, first_seen, now)
    return {
        row["email"]: _loaded({**row, "id": -n, "time_due_at": None})
        for n, row in enumerate(rows, start=1)
    }


def create_provisional(
    conn: Connection, ruleset: Ruleset, leads: Collection[LoadedLead], now: datetime
) -> dict[int, int] | None:
    """Store the provisional leads (in the write transaction): provisional id → stored id, or
    None when another writer created one of them since the snapshot."""
    first_seen = {lead.email: lead.created_at for lead in leads}
    if not first_seen:
        return {}
    if create_missing(conn, ruleset, first_seen, now) != len(first_seen):
        return None
    found = fetch_rows(conn, _ids_query(conn.dialect.name), {"emails": list(first_seen)})
    stored = {email: id_ for email, id_ in found}
    return {lead.id: stored[lead.email] for lead in leads}


@functools.cache
def _ids_query(dialect: str) -> Select[Any]:
    return select(LEADS.c.email, LEADS.c.id).where(among_param(dialect, LEADS.c.email, "emails"))


@dataclass(frozen=True)
class Stored:
    """What an event id stands for: a digest of its lead, type and properties, and its time."""

    digest: str
    at: datetime


def content_digest(email: str, kind: str, properties: Mapping[str, Any]) -> str:
    text = json.dumps([email, kind, properties], sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.cache
def _events_query(dialect: str) -> Select[Any]:
    return (
        select(*(EVENTS.c[name] for name in ("event_id", "type", "occurred_at", "properties")))
        .add_columns(LEADS.c.email)
        .join(LEADS, LEADS.c.id == EVENTS.c.lead_id)
        .where(among_param(dialect, EVENTS.c.event_id, "ids"))
    )


def stored_events(conn: Connection, ids: list[str]) -> dict[str, Stored]:
    """The batch's event ids already stored, with their content, in one query: a record whose
    id is here is a duplicate when its content matches, else an id reused for other content."""
    found = fetch_rows(conn, _events_query(conn.dialect.name), {"ids": list(ids)})
    return {
        key: Stored(content_digest(email, kind, properties), at)
        for key, kind, at, properties, email in found
    }


def load_scores(
    conn: Connection,
    ruleset: Ruleset,
    leads: dict[str, LoadedLead],
    first_seen: dict[str, datetime],
) -> None:
    by_id = {lead.id: lead for lead in leads.values()}
    ids = stored_ids(leads)
    found = fetch_rows(conn, _scores_query(conn.dialect.name), {"ids": ids}) if ids else ()
    for lead_id, component, value, rose_at, peak, steps in found:
        lead = by_id[lead_id]
        lead.state.scores[component] = value
        lead.decay[component] = [rose_at, peak, steps]
        lead.stored[component] = (value, rose_at, peak, steps)
    start = new_lead(ruleset, {}).scores
    for lead in leads.values():
        opening(ruleset, lead, start, first_seen[lead.email])


@functools.cache
def _scores_query(dialect: str) -> Select[Any]:
    columns = ("lead_id", "component", "value", "rose_at", "peak", "decay_steps")
    query = select(*(SCORES.c[name] for name in columns))
    return query.where(among_param(dialect, SCORES.c.lead_id, "ids"))


def opening(ruleset: Ruleset, lead: LoadedLead, start: dict[str, int], at: datetime) -> None:
    """Components a lead has not scored on yet (new lead, or new in this ruleset) take their
    starting value, with a ledger row (in ``lead.opening``) when it is not 0."""
    total = sum(lead.state.scores.get(name, 0) for name in ruleset.components)
    for name, value in start.items():
        if name in lead.state.scores:
            continue
        lead.state.scores[name] = value
        if value:
            total += value
            lead.opening.append(
                {
                    "lead_id": lead.id,
                    "component": name,
                    "delta": value,
                    "score_after": total,
                    "rule": "new-lead" if lead.new else "new-component",
                    "ruleset_version": ruleset.version,
                    "event_id": None,
                    "at": at,
                }
            )
    lead.state.scores = {name: lead.state.scores[name] for name in ruleset.components}


def load_history(
    conn: Connection,
    compiled: CompiledRuleset,
    leads: dict[str, LoadedLead],
    records: list[Record],
    now: datetime,
) -> None:
    """What counts, sums, days_since and limits read of the batch's stored leads' past: events
    and firings inside the longest window before the batch's first record, and for
    ``days_since`` each type's first and latest event before that."""
    history = _history(conn.dialect.name, compiled)
    ids = stored_ids(leads)
    if history.empty or not ids:
        return
    times = [r.occurred_at or now for r in records]
    values = {**history.names, "ids": ids, "since": window_start(min(times), history.window)}
    by_id = {lead.id: lead for lead in leads.values()}
    if history.events is not None:
        for lead_id, kind, at, *properties in fetch_rows(conn, history.events, values):
            amounts = compiled.amounts(kind, properties[0]) if properties else None
            by_id[lead_id].history.add_event(kind, at, amounts)
    if history.bounds is not None:
        for lead_id, kind, first, latest in fetch_rows(conn, history.bounds, values):
            for at in {first, latest}:
                by_id[lead_id].history.add_event(kind, at)
    if history.firings is not None:
        for lead_id, rule, at in fetch_rows(conn, history.firings, values):
            by_id[lead_id].history.add_firing(rule, at)


@dataclass(frozen=True)
class _History:
    """The statements :func:`load_history` runs for one ruleset, each taking ``ids`` (the
    leads) and ``since`` (the window's start), and the ruleset's event types and rule names in
    ``names`` (parameters like the ids: a list written into the statement would have it
    rendered again on every execution); None where the ruleset needs no such rows."""

    window: timedelta
    names: dict[str, list[str]] = field(default_factory=dict)
    events: Select[Any] | None = None
    bounds: Select[Any] | None = None
    firings: Select[Any] | None = None

    @property
    def empty(self) -> bool:
        return self.events is None and self.bounds is None and self.firings is None


# Rulesets are compiled once per version (engine.rules.compile.compile_ruleset), so this holds
# one entry per dialect and version in use.
@functools.lru_cache(maxsize=32)
def _history(dialect: str, compiled: CompiledRuleset) -> _History:
    types = sorted(compiled.history_types)
    limited = compiled.limited_rules
    window = longest_window(compiled)
    if not types and not limited:
        return _History(window)
    events = bounds = firings = None
    names: dict[str, list[str]] = {}

    def among_names(column: Any, name: str, values: list[str]) -> Any:
        names[name] = values
        return among_param(dialect, column, name)

    if types:
        since = bindparam("since", type_=EVENTS.c.occurred_at.type)
        ids = among_param(dialect, EVENTS.c.lead_id, "ids")
        summed = {a.type for a in compiled.aggregates if isinstance(a, Sum)}
        ever = sorted(
            a.type for a in compiled.aggregates if isinstance(a, Sum) and a.within is None
        )
        columns = [EVENTS.c.lead_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties]
        events = select(*columns if summed else columns[:3]).where(
            ids,
            among_names(EVENTS.c.type, "types", types),
            (EVENTS.c.occurred_at > since) | among_names(EVENTS.c.type, "ever", ever),
        )
        before = sorted(
            {a.type for a in compiled.aggregates if isinstance(a, DaysSince)} - set(ever)
        )
        if before:
            # Only a type's first and latest event before the window: one row per lead and type.
            bounds = (
                select(
                    EVENTS.c.lead_id,
                    EVENTS.c.type,
                    func.min(EVENTS.c.occurred_at),
                    func.max(EVENTS.c.occurred_at),
                )
                .where(
                    ids,
                    among_names(EVENTS.c.type, "before", before),
                    EVENTS.c.occurred_at <= since,
                )
                .group_by(EVENTS.c.lead_id, EVENTS.c.type)
            )
    if limited:
        ever_limited = [r.name for r in limited if r.limit and r.limit.per is None]
        firings = select(FIRINGS.c.lead_id, FIRINGS.c.rule, FIRINGS.c.at).where(
            among_param(dialect, FIRINGS.c.lead_id, "ids"),
            among_names(FIRINGS.c.rule, "limited", [r.name for r in limited]),
            (FIRINGS.c.at > bindparam("since", type_=FIRINGS.c.at.type))
            | among_names(FIRINGS.c.rule, "ever_limited", ever_limited),
        )
    return _History(window, names, events, bounds, firings)


def load_accounts(
    conn: Connection, ruleset: Ruleset, leads: dict[str, LoadedLead], records: list[Record]
) -> AccountBook:
    """The batch's accounts in one query: each lead's, and any a record's `domain` names."""
    ids = [lead.id for lead in leads.values()]
    book = AccountBook(lambda domains: stored_peers(conn, domains, ids))
    for lead in leads.values():
        domain = account_domain(lead.state.attributes, lead.email)
        book.place(lead.id, domain, ruleset.lead_score(lead.state.scores))
    book.prefetch(
        [account_domain(lead.state.attributes, lead.email) for lead in leads.values()]
        + [account_domain(r.attributes, r.email) for r in records if "domain" in r.attributes]
    )
    return book


def stored_peers(
    conn: Connection, domains: Collection[str], exclude: Collection[int]
) -> dict[str, Peers]:
    """Count, score total and top score of each account's stored leads, leaving out ``exclude``
    (the batch's own leads, which the batch tracks as they change)."""
    found = {domain: Peers(0, 0, None) for domain in domains}
    if not domains:
        return found
    query = (
        select(
            LEADS.c.account_domain, func.count(), func.sum(LEADS.c.score), func.max(LEADS.c.score)
        )
        .where(among(conn, LEADS.c.account_domain, domains), ~among(conn, LEADS.c.id, exclude))
        .group_by(LEADS.c.account_domain)
    )
    for domain, count, total, top in conn.execute(query).all():
        found[domain] = Peers(int(count), int(total), int(top))
    return found


def prime_models(ruleset: Ruleset, leads: dict[str, LoadedLead], records: list[Record]) -> None:
    """Components fed by a model: predict the batch's leads in one call, each with the
    attributes it will have when its record is evaluated."""
    if all(c.model is None for c in ruleset.components.values()):
        return
    merged = {email: dict(lead.state.attributes) for email, lead in leads.items()}
    rows = []
    for record in records:
        merged[record.email].update(record.attributes)
        rows.append(dict(merged[record.email]))
    prime(ruleset, rows)


def load_enrollments(conn: Connection, leads: dict[str, LoadedLead]) -> None:
    by_id = {lead.id: lead for lead in leads.values()}
    ids = stored_ids(leads)
    found = fetch_rows(conn, _enrollments_query(conn.dialect.name), {"ids": ids}) if ids else ()
    for lead_id, campaign, status in found:
        by_id[lead_id].enrolled[campaign] = status


@functools.cache
def _enrollments_query(dialect: str) -> Select[Any]:
    query = select(ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.status)
    return query.where(among_param(dialect, ENROLLMENTS.c.lead_id, "ids"))
