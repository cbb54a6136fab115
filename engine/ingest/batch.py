"""Ingest, the stage's entry point: records → rules → effects in SQL, a batch per transaction.

For each batch: create unknown leads, lock the batch's leads (``FOR UPDATE`` on PostgreSQL),
drop events already stored (rejecting a record whose id was stored with other content), load the
state and history the rules need in a few set-based queries, evaluate every record in file order
in memory, then write events, ledger, stage history, firings, intents and lead state in bulk
(``executemany``; ``COPY`` for appends on PostgreSQL). SQLite has one write lock for the whole
database, so there a batch is read and evaluated in a snapshot, its new leads under provisional
ids, and only written under the lock, which refuses it (to be read again) if one of its leads
moved meanwhile. An event and all its effects commit together; a crash loses at most the
uncommitted batch, which a re-run scores again (event ids make it idempotent). A batch that
fired ``alert: sales`` wakes this process's alerts job once it has committed.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, Engine, select
from sqlalchemy.exc import IntegrityError, OperationalError

from engine import metrics
from engine.alerts import wake
from engine.campaigns.compile import CompiledCampaigns
from engine.db import reading, writer_lock
from engine.db.schema import APPLIES
from engine.ingest import outcome, rescore, state
from engine.ingest.outcome import LoadedLead, Rows
from engine.ingest.parse import MAX_FIELDS, EventRecord, LeadRecord, Parsed, Record, Rejection
from engine.ingest.score import Scorer
from engine.ingest.write import ConflictError, write
from engine.rules.account import ACCOUNT_FIELDS, AccountBook
from engine.rules.compile import CompiledRuleset
from engine.rules.evaluate import ChainError, Event
from engine.rules.timing import TIME, next_change
from engine.status import ActionStatus
from engine.timeutil import utcnow

RETRIES = 5
REUSED_ID = "id: event id reused with different content; the stored event is kept"


def _stored_form(record: Record) -> tuple[str, dict[str, Any]]:
    """The type and properties a record's event is stored with (a profile: ``profile_update``
    and none; its attributes go to the lead, not the event)."""
    if isinstance(record, LeadRecord):
        return "profile_update", {}
    return record.type, record.properties


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    # The lines (indexes over HTTP) of the duplicates, for per-record answers.
    duplicate_lines: list[int] = field(default_factory=list)
    # Alerts queued for the alerts job: none for profiles or a backfill, nor (given the
    # NURTURE_ALERT_MAX_AGE) for events it will find stale.
    alerts: int = 0

    def as_json(self, position: str = "line") -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "rejected": [{position: r.line, "error": r.error} for r in self.rejected],
        }


def ingest(
    db: Engine,
    compiled: CompiledRuleset,
    parsed: Iterable[Parsed],
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    campaigns: CompiledCampaigns | None = None,
    backfill: bool = False,
    alert_max_age: timedelta | None = None,
) -> IngestResult:
    """Score every record; rejections (parse errors, runaway chains) are reported, not fatal.
    With ``campaigns``, each evaluation also enrolls the lead in campaigns or ends enrollments,
    in the same transaction. Imports never page sales for the past: the alerts of a profile
    record, and with ``backfill`` of every record, are stored as past, never sent; those of
    events older than ``alert_max_age`` are not counted as alerts (dispatch finds them stale)."""
    result = IngestResult()
    for chunk in _batches(parsed, batch_size):
        records = [item for item in chunk if not isinstance(item, Rejection)]
        unparsed = [item for item in chunk if isinstance(item, Rejection)]
        result.rejected.extend(unparsed)
        metrics.events_ingested(0, 0, len(unparsed))
        if records:
            batch = _apply_with_retries(db, compiled, records, campaigns, backfill, alert_max_age)
            result.accepted += batch.accepted
            result.alerts += batch.alerts
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
    API clients that made the p99 latency ~1 s. Processes (``serve --workers``, ``ingest
    --workers``) queue on a lock file beside the database (:func:`engine.db.writer_lock`), so
    the next writer is woken when the last one commits, not when its sleep ends."""
    if db.dialect.name != "sqlite":
        return nullcontext()
    return _Writer(_SQLITE_WRITERS.setdefault(str(db.url), threading.Lock()), db.url.database)


class _Writer:
    """This process's lock of a SQLite database, then the lock file other processes take."""

    def __init__(self, threads: threading.Lock, path: str | None) -> None:
        self.threads = threads
        self.path = path
        self.held: AbstractContextManager[object] = nullcontext()

    def __enter__(self) -> None:
        self.threads.acquire()
        try:
            self.held = writer_lock(self.path)
            self.held.__enter__()
        except BaseException:
            self.threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.held.__exit__(None, None, None)
        finally:
            self.threads.release()


def _apply_with_retries(
    db: Engine,
    compiled: CompiledRuleset,
    records: list[Record],
    campaigns: CompiledCampaigns | None,
    backfill: bool = False,
    alert_max_age: timedelta | None = None,
) -> IngestResult:
    started = time.perf_counter()
    for attempt in range(RETRIES):
        try:
            # The last try holds its leads throughout: a batch always gets through.
            batch = _attempt(db, compiled, records, campaigns, backfill, attempt < RETRIES - 1)
        except (ConflictError, IntegrityError, OperationalError):
            # Lost a race (another writer stored the same event or lead, or a deadlock /
            # lock timeout): the transaction rolled back, so running the batch again is safe.
            if attempt == RETRIES - 1:
                raise
            continue
        result = batch.result
        metrics.INGEST_BATCH.observe(time.perf_counter() - started)
        metrics.events_ingested(result.accepted, result.duplicates, len(result.rejected))
        metrics.rules_fired(row["rule"] for row in batch.rows.firings)
        queued = [
            row["at"]
            for row in batch.rows.actions
            if row["kind"] == "alert" and row["status"] == ActionStatus.PENDING
        ]
        cutoff = batch.now - alert_max_age if alert_max_age is not None else None
        result.alerts = sum(cutoff is None or at >= cutoff for at in queued)
        if queued:
            wake.notify()
        return result
    raise AssertionError("unreachable")


def _attempt(
    db: Engine,
    compiled: CompiledRuleset,
    records: list[Record],
    campaigns: CompiledCampaigns | None,
    backfill: bool,
    snapshot: bool,
) -> _Batch:
    """One try at a batch. On SQLite (``snapshot``) it is read and evaluated in a snapshot,
    without the write lock, and only written under it, after checking that its leads did not
    change meanwhile (ConflictError if they did): processes then evaluate side by side. Where
    that cannot be (PostgreSQL locks rows instead; leads to replay first; account peers), one
    transaction holds the batch's leads from reading to writing."""
    if snapshot and db.dialect.name == "sqlite":
        # One connection for both transactions: one pool checkout and return (with its reset)
        # a batch instead of two, ~5 % of the API's group commit.
        with reading(db) as conn:
            with conn.begin():
                batch = _Batch(conn, compiled, campaigns, backfill)
                ready = batch.prepare(records)
            if ready:
                if batch.leads_to_store():
                    conn.execution_options(nurture_read_only=False)
                    with _one_writer(db), conn.begin():
                        batch.commit(conn)
                return batch
    with _one_writer(db), db.begin() as connection:
        batch = _Batch(connection, compiled, campaigns, backfill)
        batch.run(records)
    return batch


def _digest(record: Record) -> str:
    kind, properties = _stored_form(record)
    return state.content_digest(record.email, kind, properties)


def _due(lead: LoadedLead, record: Record) -> bool:
    """A time evaluation (the scheduler's ``time`` record) is for a lead that is still due at
    its time: another scheduler, or an event since, may have evaluated it."""
    if not (isinstance(record, EventRecord) and record.type == TIME):
        return True
    return (
        lead.due_at is not None
        and record.occurred_at is not None
        and (lead.due_at <= record.occurred_at)
    )


class _Batch:
    """One transaction: load the batch's leads (:mod:`.state`), evaluate each record in order,
    turn outcomes into rows (:mod:`.outcome`), write them (:mod:`.write`)."""

    def __init__(
        self,
        connection: Connection,
        compiled: CompiledRuleset,
        campaigns: CompiledCampaigns | None = None,
        backfill: bool = False,
    ) -> None:
        self.conn = connection
        self.backfill = backfill
        self.compiled = compiled
        self.campaigns = campaigns
        self.ruleset = compiled.ruleset
        self.now = utcnow()
        self.result = IngestResult()
        self.accounts: AccountBook | None = None  # when rules read lead.account.*
        self.rows = Rows()
        self.leads: dict[str, LoadedLead] = {}
        self.written: list[LoadedLead] = []  # the leads to write, as evaluated

    def run(self, records: list[Record]) -> IngestResult:
        """The batch in one transaction that holds its leads from reading to writing."""
        first_seen = self._first_seen(records)
        leads = state.lock_or_create(self.conn, self.ruleset, first_seen, self.now)
        stale = self._stale(leads)
        if stale and self._in_force():
            # Scored under another version than the one in force (an apply is under way, or
            # has not reached them yet): replay them under this one first, so the batch's
            # records are scored once, under the version in force, and the apply skips them.
            rescore.rescore(self.conn, self.compiled, stale, self.now, self.campaigns)
            leads = state.lock(self.conn, list(first_seen))
        self._evaluate(records, leads, first_seen)
        self._write()
        return self.result

    def prepare(self, records: list[Record]) -> bool:
        """Read and evaluate the batch in a read transaction (a snapshot); leads not stored yet
        get provisional ids. False when it must hold its leads instead: some are under another
        version (to replay first), or the rules read account peers (other leads)."""
        if self.compiled.all_reads & ACCOUNT_FIELDS:
            return False
        first_seen = self._first_seen(records)
        leads = state.lock(self.conn, list(first_seen))
        if self._stale(leads):
            return False
        missing = {email: at for email, at in first_seen.items() if email not in leads}
        leads.update(state.provisional(self.ruleset, missing, self.now))
        self._evaluate(records, leads, first_seen)
        return True

    def commit(self, connection: Connection) -> None:
        """Write what :meth:`prepare` evaluated, in the write transaction. A lead that changed
        since the snapshot (every writer of a lead moves its version, which the write checks)
        or that another writer created meanwhile is a ConflictError: the transaction rolls
        back and the batch is read and evaluated again."""
        self.conn = connection
        new = [lead for lead in self.leads.values() if lead.id < 0]
        ids = state.create_provisional(connection, self.ruleset, new, self.now)
        if ids is None:
            raise ConflictError("a lead was created since the batch read it")
        outcome.renumber(self.rows, new, ids)
        self._write()

    def leads_to_store(self) -> bool:
        """Whether :meth:`prepare` left anything to write (a file read again has nothing)."""
        return bool(self.written) or any(lead.id < 0 for lead in self.leads.values())

    def _first_seen(self, records: list[Record]) -> dict[str, datetime]:
        first_seen: dict[str, datetime] = {}
        for record in records:
            at = record.occurred_at or self.now
            first_seen[record.email] = min(first_seen.get(record.email, at), at)
        return first_seen

    def _stale(self, leads: dict[str, LoadedLead]) -> list[int]:
        return [
            lead.id
            for lead in leads.values()
            if not lead.new and lead.ruleset_version not in (None, self.ruleset.version)
        ]

    def _evaluate(
        self, records: list[Record], leads: dict[str, LoadedLead], first_seen: dict[str, datetime]
    ) -> None:
        """Drop the records already stored, score the others in order, and gather the rows of
        the leads to write (:attr:`written`)."""
        self.leads = leads
        seen = state.stored_events(self.conn, [r.id for r in records])
        fresh: list[Record] = []
        taken: dict[str, Record] = {}  # event id → the batch's record that stores it
        for record in records:
            if not _due(leads[record.email], record):
                self.result.duplicates += 1
                self.result.duplicate_lines.append(record.line)
                continue
            stored = seen.get(record.id)
            if stored is None and record.id in taken:
                earlier = taken[record.id]
                stored = state.Stored(_digest(earlier), earlier.occurred_at or self.now)
            if stored is None:
                # A digest only when an id meets another: most records meet none.
                taken[record.id] = record
                fresh.append(record)
            elif stored.digest == _digest(record) and record.occurred_at in (None, stored.at):
                self.result.duplicates += 1
                self.result.duplicate_lines.append(record.line)
            else:
                self.result.rejected.append(Rejection(record.line, REUSED_ID))
        if not fresh:
            return
        state.load_scores(self.conn, self.ruleset, leads, first_seen)
        state.load_history(self.conn, self.compiled, leads, fresh, self.now)
        state.prime_models(self.ruleset, leads, fresh)
        if self.campaigns is not None:
            state.load_enrollments(self.conn, leads)
        if self.compiled.all_reads & ACCOUNT_FIELDS:
            self.accounts = state.load_accounts(self.conn, self.ruleset, leads, fresh)
        scorer = Scorer(self.compiled, self.rows, self.now, self.campaigns, self.accounts)
        touched = set()
        for record in fresh:
            if self._score(scorer, leads[record.email], record):
                touched.add(record.email)
        # New leads are written even when all their records were rejected: they exist now.
        self.written = [lead for lead in leads.values() if lead.new or lead.email in touched]
        for lead in self.written:
            if lead.evaluated_at is not None:
                lead.due_at = next_change(self.compiled, lead.history, lead.evaluated_at)
        self.rows.stages[:0] = outcome.new_lead_stages(self.written, self.ruleset.stages[0])
        self.rows.ledger[:0] = [row for lead in self.written for row in lead.opening]

    def _write(self) -> None:
        if self.written:
            write(self.conn, self.ruleset, self.rows, self.written, self.now)

    def _in_force(self) -> bool:
        """This process scores with the version in force. Just after an apply it may not yet
        (it reads the latest apply every few seconds): then it must not replay leads back to
        the old version; it scores as before, and the apply rescans what it marks old."""
        latest = select(APPLIES.c.version).order_by(APPLIES.c.id.desc()).limit(1)
        return self.conn.execute(latest).scalar() in (None, self.ruleset.version)

    def _score(self, scorer: Scorer, lead: LoadedLead, record: Record) -> bool:
        """Evaluate one record against its lead; False when it was rejected."""
        kind, properties = _stored_form(record)
        event = Event(record.id, kind, record.occurred_at or self.now, properties)
        added = [key for key in record.attributes if key not in lead.state.attributes]
        added = [key for key in added if key != "subscribed"]
        if added and len(lead.state.attributes) + len(added) > MAX_FIELDS:
            # Each record is bounded; so is what a lead gathers from many of them.
            error = f"{added[0]}: the lead would have more than {MAX_FIELDS} attributes"
            self.result.rejected.append(Rejection(record.line, error))
            return False
        try:
            # Imports never page sales for the past: a profile, or any record of a backfill.
            past = self.backfill or isinstance(record, LeadRecord)
            scorer.score(lead, event, record.attributes, past=past)
        except ChainError as error:
            self.result.rejected.append(Rejection(record.line, str(error)))
            return False
        self.result.accepted += 1
        return True
