"""Records → rules → effects in SQL, a batch per transaction.

For each batch: create unknown leads, lock the batch's leads (``FOR UPDATE`` on PostgreSQL;
``BEGIN IMMEDIATE`` already holds SQLite's write lock), drop events already stored, load the
state and history the rules need in a few set-based queries, evaluate every record in file order
in memory, then write events, ledger, stage history, firings, intents and lead state in bulk
(``executemany``; ``COPY`` for appends on PostgreSQL). An event and all its effects commit
together; a crash loses at most the uncommitted batch, which a re-run scores again (event ids
make it idempotent). A batch that fired ``alert: sales`` wakes this process's alerts job once
it has committed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError

from engine import metrics
from engine.accounts import AccountBook, account_domain, stored_peers
from engine.alerts import wake
from engine.campaigns.compile import CompiledCampaigns
from engine.ingest.parse import LeadRecord, Parsed, Record, Rejection
from engine.rules.account import ACCOUNT_FIELDS
from engine.rules.compile import CompiledRuleset, longest_window, window_start
from engine.rules.evaluate import (
    ChainError,
    Event,
    LeadState,
    Outcome,
    evaluate,
    new_lead,
    prime,
)
from engine.rules.history import MemoryHistory
from engine.store.db import append_rows
from engine.store.schema import ACTIONS, ENROLLMENTS, EVENTS, FIRINGS, LEADS, LEDGER, SCORES, STAGES
from engine.timeutil import epoch, utcnow

# Event types that withdraw consent whatever the ruleset says.
OPT_OUTS = frozenset({"unsubscribe", "spam_report"})
RETRIES = 5


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # The lines (indexes over HTTP) of the duplicates, for per-record answers.
    duplicate_lines: list[int] = field(default_factory=list)

    def as_json(self, position: str = "line") -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{position: r.line, "error": r.error} for r in self.rejected],
        }


class ConflictError(Exception):
    """A lead's version moved under the batch; the batch is retried."""


@dataclass
class _Lead:
    id: int
    email: str
    version: int
    state: LeadState
    subscribed: bool
    stage_entered_at: datetime
    decay: dict[str, list[int | None]]  # component → [rose_at, peak, decay_steps]
    new: bool
    created_at: datetime  # when its first record happened
    history: MemoryHistory = field(default_factory=MemoryHistory)
    # Ledger rows for components that start away from 0 (a minimum above 0): the ledger sums
    # to the score from the start.
    opening: list[dict[str, Any]] = field(default_factory=list)
    enrolled: dict[str, str] = field(default_factory=dict)  # campaign → enrollment status


def ingest(
    db: Engine,
    compiled: CompiledRuleset,
    parsed: Iterable[Parsed],
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    campaigns: CompiledCampaigns | None = None,
) -> IngestResult:
    """Score every record; rejections (parse errors, runaway chains) are reported, not fatal.
    With ``campaigns``, each evaluation also enrolls the lead in campaigns or ends enrollments,
    in the same transaction."""
    result = IngestResult()
    for chunk in _batches(parsed, batch_size):
        records = [item for item in chunk if not isinstance(item, Rejection)]
        unparsed = [item for item in chunk if isinstance(item, Rejection)]
        result.rejected.extend(unparsed)
        metrics.events_ingested(0, 0, len(unparsed))
        if records:
            batch = _apply_with_retries(db, compiled, records, campaigns)
            result.accepted += batch.accepted
            result.duplicates += batch.duplicates
            result.duplicate_lines.extend(batch.duplicate_lines)
            result.rejected.extend(batch.rejected)
        if on_progress:
            on_progress(len(chunk))
    result.rejected.sort(key=lambda r: r.line)
    return result


def _batches(items: Iterable[Parsed], size: int) -> Iterator[list[Parsed]]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


_SQLITE_WRITERS: dict[str, threading.Lock] = {}


def _one_writer(db: Engine) -> AbstractContextManager[object]:
    """SQLite admits one writer at a time. Threads of this process (the API's) queue on a lock
    instead of on SQLite's busy handler, which polls with growing sleeps: under 8 concurrent
    API clients that made the p99 latency ~1 s. Other processes still meet the busy handler."""
    if db.dialect.name != "sqlite":
        return nullcontext()
    return _SQLITE_WRITERS.setdefault(str(db.url), threading.Lock())


def _apply_with_retries(
    db: Engine,
    compiled: CompiledRuleset,
    records: list[Record],
    campaigns: CompiledCampaigns | None,
) -> IngestResult:
    started = time.perf_counter()
    for attempt in range(RETRIES):
        try:
            with _one_writer(db), db.begin() as connection:
                batch = _Batch(connection, compiled, campaigns)
                result = batch.run(records)
        except (ConflictError, IntegrityError, OperationalError):
            # Lost a race (another writer stored the same event or lead, or a deadlock /
            # lock timeout): the transaction rolled back, so running the batch again is safe.
            if attempt == RETRIES - 1:
                raise
            continue
        metrics.INGEST_BATCH.observe(time.perf_counter() - started)
        metrics.events_ingested(result.accepted, result.duplicates, len(result.rejected))
        metrics.rules_fired(row["rule"] for row in batch.rows["firings"])
        if any(row["kind"] == "alert" for row in batch.rows["actions"]):
            wake.notify()
        return result
    raise AssertionError("unreachable")


class _Batch:
    def __init__(
        self,
        connection: Connection,
        compiled: CompiledRuleset,
        campaigns: CompiledCampaigns | None = None,
    ) -> None:
        self.conn = connection
        self.compiled = compiled
        self.campaigns = campaigns
        self.ruleset = compiled.ruleset
        self.now = utcnow()
        self.result = IngestResult()
        self.accounts: AccountBook | None = None  # when rules read lead.account.*
        self.rows: dict[str, list[dict[str, Any]]] = {
            "events": [],
            "ledger": [],
            "stages": [],
            "firings": [],
            "actions": [],
            "enroll": [],
            "exit": [],
        }

    # -- load -----------------------------------------------------------------------------
    def run(self, records: list[Record]) -> IngestResult:
        first_seen: dict[str, datetime] = {}
        for record in records:
            at = record.occurred_at or self.now
            first_seen[record.email] = min(first_seen.get(record.email, at), at)
        self._create_missing(first_seen)
        leads = self._lock(list(first_seen))
        seen = self._stored_ids([r.id for r in records])
        fresh: list[Record] = []
        for record in records:
            if record.id in seen:
                self.result.duplicates += 1
                self.result.duplicate_lines.append(record.line)
            else:
                seen.add(record.id)
                fresh.append(record)
        if fresh:
            self._load_scores(leads, first_seen)
            self._load_history(leads, fresh)
            self._prime_models(leads, fresh)
            if self.campaigns is not None:
                self._load_enrollments(leads)
            if self.compiled.all_reads & ACCOUNT_FIELDS:
                self._load_accounts(leads, fresh)
            touched = set()
            for record in fresh:
                if self._score(leads[record.email], record):
                    touched.add(record.email)
            # New leads are written even when all their records were rejected: they exist now.
            self._write([lead for lead in leads.values() if lead.new or lead.email in touched])
        return self.result

    def _create_missing(self, first_seen: dict[str, datetime]) -> None:
        start = self.ruleset.stages[0]
        rows = [
            {
                "email": email,
                "attributes": {},
                "score": 0,
                "temperature": self.ruleset.band(0),
                "stage": start,
                "stage_entered_at": at,
                "tags": [],
                "subscribed": True,
                "version": 0,
                "created_at": self.now,
                "updated_at": self.now,
            }
            # Sorted: concurrent writers then take unique-index locks in one order.
            for email, at in sorted(first_seen.items())
        ]
        insert = pg_insert if self.conn.dialect.name == "postgresql" else sqlite_insert
        self.conn.execute(insert(LEADS).on_conflict_do_nothing(index_elements=["email"]), rows)

    def _lock(self, emails: list[str]) -> dict[str, _Lead]:
        query = select(LEADS).where(LEADS.c.email.in_(emails)).order_by(LEADS.c.id)
        if self.conn.dialect.name == "postgresql":
            query = query.with_for_update()
        leads = {}
        for row in self.conn.execute(query).mappings():
            attributes = dict(row["attributes"])
            attributes["email"] = row["email"]
            if row["version"] == 0:
                attributes.setdefault("domain", row["email"].rsplit("@", 1)[1])
            state = LeadState(attributes, {}, row["stage"], list(row["tags"]))
            leads[row["email"]] = _Lead(
                row["id"],
                row["email"],
                row["version"],
                state,
                row["subscribed"],
                row["stage_entered_at"],
                {},
                new=row["version"] == 0,
                created_at=row["stage_entered_at"],
            )
        return leads

    def _stored_ids(self, ids: list[str]) -> set[str]:
        query = select(EVENTS.c.event_id).where(EVENTS.c.event_id.in_(ids))
        return set(self.conn.execute(query).scalars())

    def _load_scores(self, leads: dict[str, _Lead], first_seen: dict[str, datetime]) -> None:
        by_id = {lead.id: lead for lead in leads.values()}
        query = select(SCORES).where(SCORES.c.lead_id.in_(list(by_id)))
        for row in self.conn.execute(query).mappings():
            lead = by_id[row["lead_id"]]
            lead.state.scores[row["component"]] = row["value"]
            lead.decay[row["component"]] = [row["rose_at"], row["peak"], row["decay_steps"]]
        start = new_lead(self.ruleset, {}).scores
        for lead in leads.values():
            # Components a lead has not scored on yet (new lead, or new in this ruleset).
            total = sum(lead.state.scores.get(name, 0) for name in self.ruleset.components)
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
                            "ruleset_version": self.ruleset.version,
                            "event_id": None,
                            "at": first_seen[lead.email],
                        }
                    )
            lead.state.scores = {name: lead.state.scores[name] for name in self.ruleset.components}

    def _load_history(self, leads: dict[str, _Lead], records: list[Record]) -> None:
        counts = self.compiled.count_windows
        limited = self.compiled.limited_rules
        if not counts and not limited:
            return
        times = [r.occurred_at or self.now for r in records]
        since = window_start(min(times), longest_window(self.compiled))
        by_id = {lead.id: lead for lead in leads.values()}
        ids = list(by_id)
        if counts:
            query = select(EVENTS.c.lead_id, EVENTS.c.type, EVENTS.c.occurred_at).where(
                EVENTS.c.lead_id.in_(ids),
                EVENTS.c.type.in_({c.type for c in counts}),
                EVENTS.c.occurred_at > since,
            )
            for lead_id, kind, at in self.conn.execute(query):
                by_id[lead_id].history.add_event(kind, at)
        if limited:
            ever = [r.name for r in limited if r.limit and r.limit.per is None]
            query = select(FIRINGS.c.lead_id, FIRINGS.c.rule, FIRINGS.c.at).where(
                FIRINGS.c.lead_id.in_(ids),
                FIRINGS.c.rule.in_([r.name for r in limited]),
                (FIRINGS.c.at > since) | FIRINGS.c.rule.in_(ever),
            )
            for lead_id, rule, at in self.conn.execute(query):
                by_id[lead_id].history.add_firing(rule, at)

    def _load_accounts(self, leads: dict[str, _Lead], records: list[Record]) -> None:
        """The batch's accounts in one query: each lead's, and any a record's `domain` names."""
        ids = [lead.id for lead in leads.values()]
        self.accounts = AccountBook(lambda domains: stored_peers(self.conn, domains, ids))
        for lead in leads.values():
            self.accounts.place(
                lead.id, account_domain(lead.state.attributes, lead.email), lead.state.score
            )
        self.accounts.prefetch(
            [account_domain(lead.state.attributes, lead.email) for lead in leads.values()]
            + [account_domain(r.attributes, r.email) for r in records if "domain" in r.attributes]
        )

    def _prime_models(self, leads: dict[str, _Lead], records: list[Record]) -> None:
        """Components fed by a model: predict the batch's leads in one call, each with the
        attributes it will have when its record is evaluated."""
        if all(c.model is None for c in self.ruleset.components.values()):
            return
        merged = {email: dict(lead.state.attributes) for email, lead in leads.items()}
        rows = []
        for record in records:
            merged[record.email].update(record.attributes)
            rows.append(dict(merged[record.email]))
        prime(self.ruleset, rows)

    def _load_enrollments(self, leads: dict[str, _Lead]) -> None:
        by_id = {lead.id: lead for lead in leads.values()}
        query = select(ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.status)
        for lead_id, campaign, status in self.conn.execute(
            query.where(ENROLLMENTS.c.lead_id.in_(list(by_id)))
        ):
            by_id[lead_id].enrolled[campaign] = status

    # -- evaluate -------------------------------------------------------------------------
    def _score(self, lead: _Lead, record: Record) -> bool:
        """Evaluate one record against its lead; False when it was rejected."""
        at = record.occurred_at or self.now
        before = lead.state.copy()
        if isinstance(record, LeadRecord):
            attributes, event = record.attributes, Event(record.id, "profile_update", at)
        else:
            attributes = record.attributes
            event = Event(record.id, record.type, at, record.properties)
        attributes = dict(attributes)
        subscribed = attributes.pop("subscribed", None)
        lead.state.attributes.update(attributes)
        if self.accounts is not None:
            domain = account_domain(lead.state.attributes, lead.email)
            lead.state.account = self.accounts.peers(lead.id, domain)
        tracked = event.type in {c.type for c in self.compiled.count_windows}
        if tracked:
            lead.history.add_event(event.type, at)
        try:
            outcome = evaluate(self.compiled, lead.state, event, lead.history)
        except ChainError as error:
            lead.state = before
            if tracked:
                lead.history.events[event.type].remove(at)
            self.result.rejected.append(Rejection(record.line, str(error)))
            return False
        self.result.accepted += 1
        if isinstance(subscribed, bool):
            lead.subscribed = subscribed
        if event.type in OPT_OUTS:
            lead.subscribed = False
        self._record(lead, event, outcome)
        if self.accounts is not None:
            domain = account_domain(lead.state.attributes, lead.email)
            self.accounts.place(lead.id, domain, lead.state.score)
        if self.campaigns is not None:
            self._enrollments(lead, event, outcome, self.campaigns)
        return True

    def _enrollments(
        self, lead: _Lead, event: Event, outcome: Outcome, campaigns: CompiledCampaigns
    ) -> None:
        requested = [
            (i.kind, i.target, i.rule) for i in outcome.intents if i.kind in ("enroll", "exit")
        ]
        changes = campaigns.changes(lead.state, lead.subscribed, lead.enrolled, requested)
        at = event.occurred_at
        for name, reason in changes.enroll.items():
            first = campaigns.campaigns[name].steps[0]
            self.rows["enroll"].append(
                {
                    "lead_id": lead.id,
                    "campaign": name,
                    "step": 0,
                    "status": "active",
                    "enrolled_at": at,
                    "next_due_at": at + first.wait,
                    "ended_at": None,
                    "reason": reason,
                }
            )
            lead.enrolled[name] = "active"
        for name, reason in changes.exit.items():
            self.rows["exit"].append(
                {"b_lead": lead.id, "b_campaign": name, "b_at": at, "b_reason": reason}
            )
            lead.enrolled[name] = "exited"

    def _record(self, lead: _Lead, event: Event, outcome: Outcome) -> None:
        at, version = event.occurred_at, self.ruleset.version
        rows = self.rows
        rows["events"].append(
            {
                "event_id": event.id,
                "lead_id": lead.id,
                "type": event.type,
                "occurred_at": at,
                "properties": dict(event.properties),
                "received_at": self.now,
            }
        )
        for change in outcome.score_changes:
            rows["ledger"].append(
                {
                    "lead_id": lead.id,
                    "component": change.component,
                    "delta": change.delta,
                    "score_after": change.score_after,
                    "rule": change.rule,
                    "ruleset_version": version,
                    "event_id": event.id,
                    "at": at,
                }
            )
            if change.delta > 0:
                rose_at = lead.decay.get(change.component, [None, 0, 0])[0]
                if rose_at is None or epoch(at) >= rose_at:
                    value = outcome.state.scores[change.component]
                    lead.decay[change.component] = [epoch(at), value, 0]
                else:
                    # A late rise, before the last one: its points join what half-life decay
                    # halves from the last rise, instead of being taken back by the next tick.
                    entry = lead.decay[change.component]
                    entry[1] = (entry[1] or 0) + change.delta
        for stage in outcome.stage_changes:
            rows["stages"].append(
                {
                    "lead_id": lead.id,
                    "from_stage": stage.from_stage,
                    "to_stage": stage.to_stage,
                    "rule": stage.rule,
                    "event_id": event.id,
                    "at": at,
                }
            )
            lead.stage_entered_at = at
        for rule in outcome.fired:
            rows["firings"].append(
                {"lead_id": lead.id, "rule": rule, "event_id": event.id, "at": at}
            )
            lead.history.add_firing(rule, at)
        for intent in outcome.intents:
            rows["actions"].append(
                {
                    "lead_id": lead.id,
                    "kind": intent.kind,
                    "target": intent.target,
                    "rule": intent.rule,
                    "event_id": event.id,
                    "at": at,
                    # Enrollments and exits are applied in this transaction when campaigns
                    # are loaded; alerts wait for the dispatcher.
                    "status": "applied"
                    if self.campaigns is not None and intent.kind != "alert"
                    else "pending",
                }
            )
        lead.state = outcome.state

    # -- write ----------------------------------------------------------------------------
    def _write(self, leads: list[_Lead]) -> None:
        conn, rows = self.conn, self.rows
        # A new lead's first stage is history too: pipeline reports count entries from it.
        rows["stages"][:0] = [
            {
                "lead_id": lead.id,
                "from_stage": None,
                "to_stage": self.ruleset.stages[0],
                "rule": "new-lead",
                "event_id": None,
                "at": lead.created_at,
            }
            for lead in leads
            if lead.new
        ]
        rows["ledger"][:0] = [row for lead in leads for row in lead.opening]
        for table, key in (
            (EVENTS, "events"),
            (LEDGER, "ledger"),
            (STAGES, "stages"),
            (FIRINGS, "firings"),
            (ACTIONS, "actions"),
        ):
            if rows[key]:
                append_rows(conn, table, rows[key])
        if rows["enroll"]:
            insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            conn.execute(
                insert(ENROLLMENTS).on_conflict_do_nothing(index_elements=["lead_id", "campaign"]),
                rows["enroll"],
            )
        if rows["exit"]:
            conn.execute(
                update(ENROLLMENTS)
                .where(
                    ENROLLMENTS.c.lead_id == bindparam("b_lead"),
                    ENROLLMENTS.c.campaign == bindparam("b_campaign"),
                    ENROLLMENTS.c.status == "active",
                )
                .values(
                    status="exited",
                    ended_at=bindparam("b_at"),
                    reason=bindparam("b_reason"),
                    next_due_at=None,
                ),
                rows["exit"],
            )
        if not leads:
            return
        updated = conn.execute(
            update(LEADS)
            .where(LEADS.c.id == bindparam("b_id"), LEADS.c.version == bindparam("b_version"))
            .values(
                attributes=bindparam("b_attributes"),
                score=bindparam("b_score"),
                temperature=bindparam("b_temperature"),
                stage=bindparam("b_stage"),
                stage_entered_at=bindparam("b_entered"),
                tags=bindparam("b_tags"),
                subscribed=bindparam("b_subscribed"),
                account_domain=bindparam("b_account"),
                version=LEADS.c.version + 1,
                updated_at=self.now,
            ),
            [
                {
                    "b_id": lead.id,
                    "b_version": lead.version,
                    "b_attributes": {
                        k: v for k, v in lead.state.attributes.items() if k != "email"
                    },
                    "b_score": lead.state.score,
                    "b_temperature": self.ruleset.band(lead.state.score),
                    "b_stage": lead.state.stage,
                    "b_entered": lead.stage_entered_at,
                    "b_tags": lead.state.tags,
                    "b_subscribed": lead.subscribed,
                    "b_account": account_domain(lead.state.attributes, lead.email),
                }
                for lead in leads
            ],
        )
        if updated.rowcount != len(leads):
            raise ConflictError("a lead changed during the batch")
        # One upsert for every component row: new leads and new components insert, others update.
        statement = (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(SCORES)
        conn.execute(
            statement.on_conflict_do_update(
                index_elements=["lead_id", "component"],
                set_={
                    "value": statement.excluded.value,
                    "rose_at": statement.excluded.rose_at,
                    "peak": statement.excluded.peak,
                    "decay_steps": statement.excluded.decay_steps,
                },
            ),
            [
                {
                    "lead_id": lead.id,
                    "component": name,
                    "value": value,
                    "rose_at": rose_at,
                    "peak": peak or 0,
                    "decay_steps": steps or 0,
                }
                for lead in leads
                for name, value in lead.state.scores.items()
                for rose_at, peak, steps in [lead.decay.get(name, [None, 0, 0])]
            ],
        )
