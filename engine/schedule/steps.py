"""Due campaign steps → rendered emails in the outbox: the schedule step between the rules and
the dispatcher.

A batch of due enrollments is read, each is decided in memory (exit, skip, wait for the send
window or the frequency cap, or send), the emails are rendered, and the outbox rows and the
enrollments' next steps are written in one transaction: a crash leaves either both or neither,
and the idempotency key (enrollment, step) keeps a step from being queued twice. On PostgreSQL
the batch is locked from reading to writing (``FOR UPDATE SKIP LOCKED``, so several runners
share the work). On SQLite, one write lock for the whole database, it is read, decided and
rendered in a snapshot and written under the lock only if what it read has not moved (else
taken again), so runners render side by side. Runners may split the leads between them
(:class:`Share`, see :mod:`engine.schedule.shares`).
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import Connection, Engine, Integer, Select, bindparam, func, select, update

from engine import metrics
from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.spec import Campaign, FrequencyCap, SendWindow
from engine.db import among_param, append_rows, fetch_rows, reading, update_rows
from engine.db.schema import ENROLLMENTS, LEADS, OUTBOX, SCORES
from engine.render.templates import Renderer, TemplateError, context, lead_context
from engine.rules.evaluate import LeadState
from engine.send.outbox import message, not_in
from engine.send.unsubscribe import list_unsubscribe_headers, unsubscribe_url
from engine.settings import Settings
from engine.status import EnrollmentStatus, OutboxStatus

log = logging.getLogger(__name__)


# Outbox rows that count against a frequency cap: everything that went or is going out.
COUNTED = (OutboxStatus.QUEUED, OutboxStatus.SENDING, OutboxStatus.SENT)
BATCH = 500


@dataclass
class StepReport:
    queued: int = 0
    held: int = 0
    skipped: int = 0  # a step whose `when` did not hold
    deferred: int = 0  # outside the send window or over the frequency cap
    exited: int = 0
    completed: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: StepReport) -> None:
        for name in ("queued", "held", "skipped", "deferred", "exited", "completed"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors.extend(other.errors)


class Pending(NamedTuple):
    """An email decided on, waiting for the batch to be rendered. A tuple, as :class:`_Due`
    is: a frozen dataclass sets each field through ``object.__setattr__``."""

    message: dict[str, Any]
    template: str
    variables: dict[str, Any]


class Share(NamedTuple):
    """The leads one runner takes when several run side by side: those whose id is ``slot``
    modulo ``of``. A lead's enrollments all fall to one runner, so its frequency cap is counted
    in one place."""

    slot: int
    of: int


WHOLE = Share(0, 1)


class _Due(NamedTuple):
    """A due enrollment as read. A plain tuple: SQLAlchemy's row answers an attribute only
    after its own lookup failed with an exception (~4 µs a message over a batch's reads)."""

    id: int
    lead_id: int
    campaign: str
    step: int


@dataclass(frozen=True)
class _Loaded:
    """A batch as read: due enrollments, their leads, and the leads' recent email times."""

    rows: Sequence[_Due]
    leads: dict[int, dict[str, Any]]
    sent: dict[int, list[datetime]]


@dataclass(frozen=True)
class _Plan:
    """A batch decided and rendered: what its transaction writes."""

    report: StepReport
    messages: list[dict[str, Any]]
    moves: list[dict[str, Any]]


# -- pure decisions ------------------------------------------------------------------------------
def lead_zone(attributes: Mapping[str, Any], default: str) -> ZoneInfo:
    """The lead's ``timezone`` attribute when it names a zone, else the default."""
    name = attributes.get("timezone")
    if isinstance(name, str) and name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return ZoneInfo(default)


def next_opening(window: SendWindow, now: datetime, zone: ZoneInfo) -> datetime:
    """``now`` when it falls inside the window in ``zone``, else the window's next opening (UTC)."""
    local = now.astimezone(zone)
    for offset in range(8):
        day = local.date() + timedelta(days=offset)
        if day.weekday() not in window.days:
            continue
        start = datetime.combine(day, window.start, zone)
        end = datetime.combine(day, window.end, zone)
        if offset == 0 and start <= local < end:
            return now
        if local < start:
            return start.astimezone(now.tzinfo)
    raise AssertionError("a send window has at least one day")  # pragma: no cover


def _opening(window: SendWindow, now: datetime, zone: ZoneInfo) -> datetime:
    """:func:`next_opening`, remembered: a batch's emails share ``now`` and a few zones."""
    # Keyed by `now`'s zone too: an equal moment in another zone is answered in that zone.
    return _openings(window, now, now.tzinfo, zone)


@functools.lru_cache(maxsize=1024)
def _openings(window: SendWindow, now: datetime, _zone: Any, zone: ZoneInfo) -> datetime:
    return next_opening(window, now, zone)


def cap_frees_at(cap: FrequencyCap, sent: Sequence[datetime], now: datetime) -> datetime | None:
    """None when one more email fits under the cap at ``now`` (``sent``: times of the lead's
    emails, ascending), else when the oldest one counted leaves the window."""
    recent = [at for at in sent if at > now - cap.per]
    if len(recent) < cap.max:
        return None
    return recent[len(recent) - cap.max] + cap.per


# -- the batch's reads: built once, so neither built nor compiled again per batch (see
# engine.db.fetch_rows), each with its batch's ids in one parameter (engine.db.among_param)
_LEAD_COLUMNS = ("id", "email", "attributes", "score", "stage", "tags", "subscribed", "created_at",
                 "version")  # fmt: skip
# An enrollment due at `:now` (status `:active`): what a batch takes, and checks is still so.
_IS_DUE = (
    ENROLLMENTS.c.status == bindparam("active"),
    ENROLLMENTS.c.next_due_at <= bindparam("now"),
)


@functools.cache
def _due_query(dialect: str, shared: bool) -> Select[Any]:
    """The first ``:size`` enrollments due at ``:now``, in the order of their index (0012): a
    batch reads its own rows, not every due one. Shared, those of the leads of one
    :class:`Share`; on PostgreSQL locked, skipping those another runner holds."""
    columns = (ENROLLMENTS.c.id, ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.step)
    query = (
        select(*columns)
        .where(*_IS_DUE)
        .order_by(ENROLLMENTS.c.next_due_at, ENROLLMENTS.c.id)
        .limit(bindparam("size", type_=Integer))
    )
    if shared:
        # As a plain boolean expression (it is never NULL): PostgreSQL has no statistics for
        # `lead_id % of = slot`, takes such an equality for 0.5 % of the rows, and then sorts
        # every due step rather than read the index in order until a batch is full.
        mine = ENROLLMENTS.c.lead_id % bindparam("of") == bindparam("slot")
        query = query.where(func.coalesce(mine, False))
    if dialect == "postgresql":
        query = query.with_for_update(skip_locked=True)
    return query


@functools.cache
def _leads_query(dialect: str) -> Select[Any]:
    columns = (LEADS.c[name] for name in _LEAD_COLUMNS)
    return select(*columns).where(among_param(dialect, LEADS.c.id, "ids"))


@functools.cache
def _scores_query(dialect: str) -> Select[Any]:
    query = select(SCORES.c.lead_id, SCORES.c.component, SCORES.c.value)
    return query.where(among_param(dialect, SCORES.c.lead_id, "ids"))


@functools.cache
def _recent_query(dialect: str) -> Select[Any]:
    # Status is checked in Python rather than in SQL: a status condition leads SQLite to scan
    # every queued or sent message instead of reading each lead's few from the index.
    return (
        select(OUTBOX.c.lead_id, OUTBOX.c.created_at, OUTBOX.c.status)
        .where(
            among_param(dialect, OUTBOX.c.lead_id, "ids"),
            OUTBOX.c.created_at > bindparam("since"),
        )
        .order_by(OUTBOX.c.created_at)
    )


@functools.cache
def _unchanged_query(dialect: str) -> Select[Any]:
    return (
        select(ENROLLMENTS.c.id, ENROLLMENTS.c.step, LEADS.c.version)
        .join_from(ENROLLMENTS, LEADS, LEADS.c.id == ENROLLMENTS.c.lead_id)
        .where(among_param(dialect, ENROLLMENTS.c.id, "ids"), *_IS_DUE)
    )


# -- the job -------------------------------------------------------------------------------------
class StepRunner:
    """Runs due steps for one set of campaigns, renderer and settings."""

    def __init__(
        self, db: Engine, settings: Settings, campaigns: CompiledCampaigns, renderer: Renderer
    ) -> None:
        self.db = db
        self.settings = settings
        self.campaigns = campaigns
        self.renderer = renderer
        self.key = settings.signing_key()
        self.lz4: bool | None = None  # PostgreSQL: see _lz4

    def run(self, now: datetime, batch: int = BATCH, share: Share = WHOLE) -> StepReport:
        """Every step due at ``now`` of the leads in ``share``, a batch per transaction, until
        none is left."""
        report = StepReport()
        # Each pass ends, defers past ``now`` or advances every enrollment it takes, so the
        # loop ends after at most (steps per campaign) passes over the due set.
        while True:
            if self.db.dialect.name == "sqlite":
                done, taken = self._snapshot_batch(now, batch, share)
            else:
                with self.db.begin() as conn:
                    done, taken = self._locked_batch(conn, now, batch, share)
            report.add(done)
            metrics.emails_prepared(done.queued, done.held)
            if not taken:
                return report

    def _locked_batch(
        self, conn: Connection, now: datetime, size: int, share: Share
    ) -> tuple[StepReport, int]:
        """PostgreSQL: the batch's enrollments locked (skipping those another runner holds)
        from reading to writing."""
        if self._lz4(conn):
            # An email's parts are compressed as they are stored (a row over ~2 kB): lz4 does
            # it with about a fifth less of the server's CPU per message than pglz, the
            # default. Stored values read back the same either way.
            conn.exec_driver_sql("SET LOCAL default_toast_compression = 'lz4'")
        loaded = self._load(conn, now, size, share)
        if loaded is None:
            return StepReport(), 0
        plan = self._plan(loaded, now)
        self._write(conn, plan)
        return plan.report, len(loaded.rows)

    def _lz4(self, conn: Connection) -> bool:
        """Whether the PostgreSQL server can compress with lz4 (built with it), asked once."""
        if self.lz4 is None:
            query = "SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'"
            self.lz4 = "lz4" in (conn.exec_driver_sql(query).scalar() or ())
        return self.lz4

    def _snapshot_batch(self, now: datetime, size: int, share: Share) -> tuple[StepReport, int]:
        """SQLite, one write lock for the whole database: the batch is read, decided and
        rendered in a snapshot, without the lock, so runners of other shares do the same side
        by side; it is written under the lock only if what it read is as it was (its
        enrollments, its leads' versions, their recent emails), else read and decided again."""
        while True:
            with reading(self.db) as conn, conn.begin():
                loaded = self._load(conn, now, size, share)
            if loaded is None:
                return StepReport(), 0
            plan = self._plan(loaded, now)
            with self.db.begin() as conn:
                if self._unchanged(conn, loaded, now):
                    self._write(conn, plan)
                    return plan.report, len(loaded.rows)
            log.info("a batch of due steps changed while it was rendered: taken again")

    def _load(self, conn: Connection, now: datetime, size: int, share: Share) -> _Loaded | None:
        """A batch of due enrollments, their leads and the leads' recent emails; None when
        nothing is due."""
        params: dict[str, Any] = {"active": EnrollmentStatus.ACTIVE, "now": now, "size": size}
        if share.of > 1:
            params |= {"of": share.of, "slot": share.slot}
        due = _due_query(conn.dialect.name, share.of > 1)
        rows = list(map(_Due._make, fetch_rows(conn, due, params)))
        if not rows:
            return None
        leads = self._leads(conn, {row.lead_id for row in rows})
        return _Loaded(rows, leads, self._recent(conn, leads, now))

    def _plan(self, loaded: _Loaded, now: datetime) -> _Plan:
        """Each enrollment decided and the emails rendered: the batch's rows, not yet written."""
        report = StepReport()
        # Decisions count the emails they queue against the cap; the loaded times stay as read.
        sent = defaultdict(list, {lead: list(at) for lead, at in loaded.sent.items()})
        pending: list[Pending] = []
        moves: list[dict[str, Any]] = []
        for row in loaded.rows:
            lead = loaded.leads[row.lead_id]
            campaign = self.campaigns.campaigns.get(row.campaign)
            moves.append(self._decide(row, lead, campaign, sent[row.lead_id], now, pending, report))
        return _Plan(report, self._render(pending, report), moves)

    def _unchanged(self, conn: Connection, loaded: _Loaded, now: datetime) -> bool:
        """Whether the batch's enrollments (still due at the step read), leads (their versions)
        and recent emails are as ``loaded`` read them, in the write transaction, so nothing
        moves them before it commits. A write that moves none of them (a decay lowering scores
        leaves versions as they are) reads nothing a batch writes: the batch stands as if it
        had committed first."""
        read = {(row.id, row.step, loaded.leads[row.lead_id]["version"]) for row in loaded.rows}
        params = {"ids": [row.id for row in loaded.rows], "active": EnrollmentStatus.ACTIVE,
                  "now": now}  # fmt: skip
        if set(fetch_rows(conn, _unchanged_query(conn.dialect.name), params)) != read:
            return False
        return self._recent(conn, loaded.leads, now) == loaded.sent

    def _write(self, conn: Connection, plan: _Plan) -> None:
        """The batch's outbox rows and its enrollments' next steps."""
        if plan.messages:
            # The enrollments are locked (or checked unchanged under SQLite's write lock) and
            # move past these steps in this transaction, so no other runner can write the same
            # (enrollment, step): a plain append is safe, and the unique idempotency key would
            # fail the batch rather than let a duplicate in.
            append_rows(conn, OUTBOX, plan.messages)
        # On PostgreSQL one UPDATE for the batch: the server ran one statement per enrollment.
        update_rows(conn, ENROLLMENTS, plan.moves, match=["id"])

    def _leads(self, conn: Connection, ids: set[int]) -> dict[int, dict[str, Any]]:
        leads: dict[int, dict[str, Any]] = {}
        dialect, params = conn.dialect.name, {"ids": list(ids)}
        for row in fetch_rows(conn, _leads_query(dialect), params):
            leads[row[0]] = dict(zip(_LEAD_COLUMNS, row, strict=True), scores={})
        for lead_id, component, value in fetch_rows(conn, _scores_query(dialect), params):
            leads[lead_id]["scores"][component] = value
        return leads

    def _recent(
        self, conn: Connection, leads: Mapping[int, Any], now: datetime
    ) -> dict[int, list[datetime]]:
        """Times of each lead's emails within the longest frequency-cap period, ascending."""
        caps = [c.frequency_cap.per for c in self.campaigns.campaigns.values() if c.frequency_cap]
        sent: dict[int, list[datetime]] = defaultdict(list)
        if not caps:
            return sent
        params = {"ids": list(leads), "since": now - max(caps)}
        for lead_id, at, status in fetch_rows(conn, _recent_query(conn.dialect.name), params):
            if status in COUNTED:
                sent[lead_id].append(at)
        return sent

    def _decide(
        self,
        row: _Due,
        lead: dict[str, Any],
        campaign: Campaign | None,
        sent: list[datetime],
        now: datetime,
        pending: list[Pending],
        report: StepReport,
    ) -> dict[str, Any]:
        """What happens to one due enrollment (its row as written); appends the email to send to
        ``pending``."""

        def end(status: str, reason: str) -> dict[str, Any]:
            if status == EnrollmentStatus.EXITED:
                report.exited += 1
            else:
                report.completed += 1
            return {"id": row.id, "step": row.step, "status": status, "next_due_at": None,
                    "ended_at": now, "reason": reason}  # fmt: skip

        def advance(step: int) -> dict[str, Any]:
            if campaign is None or step >= len(campaign.steps):
                return end(EnrollmentStatus.COMPLETED, "all steps done")
            due = now + campaign.steps[step].wait
            return {"id": row.id, "step": step, "status": EnrollmentStatus.ACTIVE,
                    "next_due_at": due, "ended_at": None, "reason": None}  # fmt: skip

        def wait_until(moment: datetime) -> dict[str, Any]:
            report.deferred += 1
            return {"id": row.id, "step": row.step, "status": EnrollmentStatus.ACTIVE,
                    "next_due_at": moment, "ended_at": None, "reason": None}  # fmt: skip

        if campaign is None:
            return end(EnrollmentStatus.EXITED, "campaign removed")
        if not lead["subscribed"]:
            return end(EnrollmentStatus.EXITED, "unsubscribed")
        if row.step >= len(campaign.steps):
            return end(EnrollmentStatus.COMPLETED, "all steps done")
        state = LeadState(lead["attributes"], lead["scores"], lead["stage"], lead["tags"])
        holding = self.campaigns.holding(state)
        if self.campaigns.exits(campaign.name, holding):
            return end(EnrollmentStatus.EXITED, "exit_when")
        if not self.campaigns.step_holds(campaign.name, row.step, holding):
            report.skipped += 1
            return advance(row.step + 1)
        if campaign.send_window is not None:
            zone = lead_zone(lead["attributes"], self.settings.default_timezone)
            opening = _opening(campaign.send_window, now, zone)
            if opening > now:
                return wait_until(opening)
        if campaign.frequency_cap is not None:
            frees = cap_frees_at(campaign.frequency_cap, sent, now)
            if frees is not None:
                return wait_until(frees)
        pending.append(self._message(row, lead, campaign, state, now))
        sent.append(now)
        return advance(row.step + 1)

    def _message(
        self, row: _Due, lead: dict[str, Any], campaign: Campaign, state: LeadState, now: datetime
    ) -> Pending:
        step = campaign.steps[row.step]
        url, variables = self._variables(lead, campaign.name, row.step, state, now)
        message: dict[str, Any] = {
            "idempotency_key": f"enrollment:{row.id}:step:{row.step}",
            "kind": "campaign",
            "lead_id": lead["id"],
            "enrollment_id": row.id,
            "campaign": campaign.name,
            "step": row.step,
            "template": step.template,
            "to_email": lead["email"],
            "from_email": campaign.from_email,
            "from_name": campaign.from_name,
            "headers": list_unsubscribe_headers(url),
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
        }
        return Pending(message, step.template, variables)

    def _variables(
        self, lead: dict[str, Any], campaign: str, step: int, state: LeadState, now: datetime
    ) -> tuple[str, dict[str, Any]]:
        """The lead's unsubscribe link and what the template of its ``step`` sees."""
        url = unsubscribe_url(self.settings.public_url, self.key, lead["id"], lead["created_at"])
        profile = lead_context(
            lead["email"],
            lead["attributes"],
            score=state.score,
            scores=state.scores,
            temperature=self.campaigns.ruleset.band(state.score),
            stage=state.stage,
            tags=state.tags,
        )
        variables = context(profile, campaign=campaign, step=step + 1, unsubscribe_url=url, now=now)
        return url, variables

    def release(self, outbox_id: int, now: datetime) -> dict[str, Any]:
        """A held message rendered again from its template, for the lead as it is now: queued
        (due now, or at the campaign's next send-window opening) or held again with the new
        error. The message as it is afterwards; NoSuchMessage or WrongState when it is not
        held."""
        with self.db.begin() as conn:
            query = select(OUTBOX).where(OUTBOX.c.id == outbox_id)
            if conn.dialect.name == "postgresql":
                query = query.with_for_update()
            row = conn.execute(query).first()
            if row is None or row.status != OutboxStatus.HELD:
                raise not_in(conn, outbox_id, OutboxStatus.HELD)
            lead = self._leads(conn, {row.lead_id})[row.lead_id]
            state = LeadState(lead["attributes"], lead["scores"], lead["stage"], lead["tags"])
            url, variables = self._variables(lead, row.campaign, row.step, state, now)
            [result] = self.renderer.render_many([(row.template, variables)])
            if isinstance(result, TemplateError):
                values: dict[str, Any] = {"last_error": str(result)}
            else:
                values = {"status": OutboxStatus.QUEUED, "subject": result.subject,
                          "html": result.html, "text": result.text, "last_error": None,
                          "headers": list_unsubscribe_headers(url), "attempts": 0,
                          "next_attempt_at": self._due(row.campaign, lead, now)}  # fmt: skip
            conn.execute(update(OUTBOX).where(OUTBOX.c.id == outbox_id).values(**values))
            released = message(conn, outbox_id)
        metrics.emails_prepared(int(released["status"] == OutboxStatus.QUEUED), 0)
        return released

    def _due(self, campaign: str, lead: dict[str, Any], now: datetime) -> datetime:
        """When a released message may go: now, or the next opening of its send window."""
        found = self.campaigns.campaigns.get(campaign)
        if found is None or found.send_window is None:
            return now
        zone = lead_zone(lead["attributes"], self.settings.default_timezone)
        return next_opening(found.send_window, now, zone)

    def _render(self, pending: list[Pending], report: StepReport) -> list[dict[str, Any]]:
        """The outbox rows of a batch: rendered and queued, or held with the template error."""
        results = self.renderer.render_many([(p.template, p.variables) for p in pending])
        rows: list[dict[str, Any]] = []
        for item, result in zip(pending, results, strict=True):
            message = item.message
            if isinstance(result, TemplateError):
                report.held += 1
                report.errors.append(f"{message['campaign']} step {message['step'] + 1}: {result}")
                message |= {"status": OutboxStatus.HELD, "last_error": str(result),
                            "subject": None, "html": None, "text": None}  # fmt: skip
            else:
                report.queued += 1
                message |= {"status": OutboxStatus.QUEUED, "last_error": None,
                            "subject": result.subject, "html": result.html,
                            "text": result.text}  # fmt: skip
            rows.append(message)  # each pending email's own, completed in place
        return rows
