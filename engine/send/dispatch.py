"""Outbox → mail backend (or the sales webhook): the last step of the flow, exactly once as far
as a provider allows.

A claim takes a small batch of due messages and commits at once: each row turns
``sending`` with a lease (``FOR UPDATE SKIP LOCKED`` on PostgreSQL lets several dispatchers
claim side by side; ``BEGIN IMMEDIATE`` serialises claims on SQLite). Messages to leads who
unsubscribed, bounced or reported spam since the email was rendered are suppressed, the rest
go to the backend concurrently, and each outcome is settled: sent, retried later with backoff
(429, 5xx, timeouts), or failed for good with the reason.

A dispatcher handles the outbox rows of its ``kinds``: campaign emails by default; the alerts
job runs one for sales alerts (``alert`` emails to reps and ``webhook`` POSTs, routed to the
webhook sender), so they go out within a second, past any backlog of campaign emails. Consent
suppression applies to emails to the lead, not to alerts about the lead.

A dispatcher that dies between claim and settle leaves rows ``sending``; once their lease ends
a later claim takes them again. A message the provider had already accepted is then sent a
second time unless a SendGrid ``processed`` event settled it first: at most one batch of such
duplicates per crash.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from queue import SimpleQueue
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    Connection,
    Engine,
    Integer,
    and_,
    bindparam,
    case,
    func,
    literal,
    literal_column,
    or_,
    select,
    union_all,
    update,
)

from engine import metrics
from engine.db.bulk import update_rows
from engine.db.schema import EVENTS, LEADS, OUTBOX
from engine.redact import redact
from engine.send.email import Email, Mailer, PermanentError, TransientError
from engine.send.webhook import WebhookSender
from engine.settings import SALES, Settings
from engine.status import OutboxStatus

log = logging.getLogger(__name__)


# Events after which an address must not be mailed again, whatever the rules say.
SUPPRESSING = ("bounce", "spam_report")
UNSUBSCRIBED = "unsubscribed"  # the reason a suppressed message gives when the lead opted out
BACKOFF_BASE = 60.0  # seconds before the first retry; doubles per attempt
BACKOFF_MAX = 6 * 3600.0
CAMPAIGN = "campaign"  # emails to the lead: the only kind consent suppresses
WEBHOOK = "webhook"  # a JSON POST to an alert target's webhook instead of an email
MAX_ERROR = 2000  # characters of a provider's answer kept in last_error


@dataclass
class DispatchReport:
    sent: int = 0
    retried: int = 0
    failed: int = 0
    suppressed: int = 0
    sent_ids: list[int] = field(default_factory=list)  # outbox rows sent, for metrics

    def as_json(self) -> dict[str, int]:
        return {k: v for k, v in vars(self).items() if isinstance(v, int)}


def backoff(attempts: int, retry_after: float | None) -> timedelta:
    """Wait before try ``attempts + 1``: the provider's Retry-After when it gave one, else
    exponential from a minute, capped at six hours."""
    if retry_after is not None and retry_after > 0:
        return timedelta(seconds=min(retry_after, BACKOFF_MAX))
    return timedelta(seconds=min(BACKOFF_BASE * 2 ** max(attempts - 1, 0), BACKOFF_MAX))


def mail_host(public_url: str) -> str:
    """Our domain for Message-IDs: NURTURE_PUBLIC_URL's host name."""
    host = urlsplit(public_url).hostname or ""
    return host if re.fullmatch(r"[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", host) else "localhost"


def message_id(idempotency_key: str, host: str) -> str:
    """``<nurture.enrollment.12.step.0@host>``: one id per outbox message, the same on every
    try, so that a message sent twice after a lost answer is recognisably one message."""
    atoms = [atom for atom in re.split(r"[^A-Za-z0-9_-]+", idempotency_key) if atom]
    return f"<{'.'.join(['nurture', *atoms])}@{host}>"


def email_of(row: Any, host: str, now: datetime) -> Email:
    return Email(
        outbox_id=row.id,
        to=row.to_email,
        from_email=row.from_email,
        from_name=row.from_name,
        subject=row.subject,
        html=row.html,
        text=row.text,
        headers=dict(row.headers or {}),
        category=row.campaign,
        message_id=message_id(row.idempotency_key, host),
        date=now,
    )


class _Senders:
    """``count`` threads sending the rows :meth:`give` hands them, each row's outcome kept for
    :meth:`take`. Plain threads and queues rather than an executor: a future per send (its
    condition, its callbacks) and a wake-up of the main thread per send cost the GIL the
    senders run on."""

    def __init__(self, dispatcher: Dispatcher, now: datetime, count: int) -> None:
        self._work: SimpleQueue[Any] = SimpleQueue()
        self._back: list[tuple[Any, str | Exception | None]] = []
        self._wanted = 0  # outcomes the main thread waits for (0: it does not wait)
        self._ready = threading.Condition(threading.Lock())
        self._send = dispatcher._send_one
        self._now = now
        self._count = max(1, count)
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> _Senders:
        return self

    def __exit__(self, *_: object) -> None:
        # Rows not handed to a sender yet (the run failed) stay unsent, claimed until their
        # lease ends.
        while not self._work.empty():
            self._work.get()
        for _thread in self._threads:
            self._work.put(None)
        for thread in self._threads:
            thread.join()

    def give(self, row: Any) -> None:
        """``row`` to send; a thread more while fewer than ``count`` run (a run that sends a
        few messages starts a few)."""
        self._work.put(row)
        if len(self._threads) < self._count:
            thread = threading.Thread(target=self._sender, daemon=True)
            thread.start()
            self._threads.append(thread)

    def take(self, at_least: int) -> list[tuple[Any, str | Exception | None]]:
        """The outcomes back so far, once there are at least ``at_least`` of them."""
        with self._ready:
            while len(self._back) < at_least:
                self._wanted = at_least
                self._ready.wait()
            self._wanted = 0
            back, self._back = self._back, []
        return back

    def _sender(self) -> None:
        work, ready, send, now = self._work, self._ready, self._send, self._now
        while (row := work.get()) is not None:
            outcome = send(row, now)
            with ready:
                back = self._back
                back.append((row, outcome))
                if len(back) == self._wanted:
                    ready.notify()


class Dispatcher:
    def __init__(
        self,
        db: Engine,
        settings: Settings,
        mailer: Mailer,
        kinds: Collection[str] = (CAMPAIGN,),
        webhooks: Mapping[str, WebhookSender] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.mailer = mailer
        self.kinds = tuple(kinds)
        # Alert target → its webhook; a webhook row's `to_email` names the target.
        self.webhooks = dict(webhooks or {})
        self.host = mail_host(settings.public_url)

    def run(self, now: datetime, limit: int | None = None) -> DispatchReport:
        """Send what is due at ``now`` until nothing due is left (or ``limit`` messages were
        claimed). At most ``dispatch_batch`` messages are claimed and not yet settled (what a
        crash may send twice); each outcome is settled as its send returns, and once at least a
        quarter of that window is free a claim takes all of it, in the transaction that writes
        the outcomes gathered meanwhile, so the senders always have claimed messages queued.

        A claim that fails stops the run: the sends already out are awaited, their outcomes
        and those the failed transaction held are written in a transaction of their own, and
        then the claim's error is raised (rolled back with it, messages already sent would be
        claimed and sent again once their lease ends)."""
        report = DispatchReport()
        window = max(1, self.settings.dispatch_batch)
        quarter = -(-window // 4)
        claimed = out = 0  # claimed so far; claimed and not yet back from the senders
        more = True  # whether the last claim found anything
        settled: list[dict[str, Any]] = []  # outcomes not written yet
        # One connection for the run and one transaction per claim: checking a connection out
        # of the pool and each transaction cost the main thread, which the senders wait on for
        # the GIL, more than the statements.
        with (
            _Senders(self, now, self.settings.send_concurrency) as senders,
            self.db.connect() as conn,
        ):
            while True:
                free = window - out
                if limit is not None and claimed >= limit:
                    more = False
                if more and free >= quarter:
                    size = free if limit is None else min(free, limit - claimed)
                    try:
                        with conn.begin():
                            write_outcomes(conn, settled)
                            rows = self._claim(conn, now, size)
                    except Exception:
                        self._rescue(settled, senders, out, now, report)
                        raise
                    self._counted(settled)
                    settled = []
                    more = bool(rows)
                    claimed += len(rows)
                    for row in rows:
                        if row.blocked is None:
                            senders.give(row)
                            out += 1
                        else:
                            report.suppressed += 1
                            settled.append(_settled(row, OutboxStatus.SUPPRESSED, row.blocked))
                    continue
                if out and (more or len(settled) < quarter):
                    # Woken once per claim's (or write's) worth of outcomes rather than by each
                    # send: a wake-up costs the GIL every sender needs.
                    wanted = quarter - free if more else min(out, quarter - len(settled))
                    back = senders.take(wanted)
                    out -= len(back)
                    settled += [self._settlement(row, result, now, report) for row, result in back]
                    continue
                if settled:  # nothing left to claim: outcomes written a quarter at a time
                    with conn.begin():
                        write_outcomes(conn, settled)
                    self._counted(settled)
                    settled = []
                if not out:
                    break
        return report

    def _rescue(
        self,
        settled: list[dict[str, Any]],
        senders: _Senders,
        out: int,
        now: datetime,
        report: DispatchReport,
    ) -> None:
        """After a failed claim: the outcomes of every send already made, in a transaction of
        their own."""
        back = senders.take(out) if out else []
        settled = settled + [self._settlement(row, outcome, now, report) for row, outcome in back]
        if settled:
            with self.db.begin() as conn:
                write_outcomes(conn, settled)
            self._counted(settled)

    def due(self, now: datetime) -> Any:
        """The condition of a message this dispatcher should take at ``now`` (queued and due, or
        sending with a lapsed lease)."""
        return and_(
            OUTBOX.c.kind.in_(self.kinds),
            or_(
                and_(OUTBOX.c.status == OutboxStatus.QUEUED, OUTBOX.c.next_attempt_at <= now),
                and_(OUTBOX.c.status == OutboxStatus.SENDING, OUTBOX.c.lease_until < now),
            ),
        )

    def claim(self, now: datetime, size: int) -> list[Any]:
        """Take up to ``size`` due messages, committed at once (:meth:`run` claims in the
        transaction that settles an older round instead)."""
        with self.db.begin() as conn:
            return self._claim(conn, now, size)

    def _claim(self, conn: Connection, now: datetime, size: int) -> list[Any]:
        """Up to ``size`` due messages taken in ``conn``'s transaction, by due time: one
        ``UPDATE … RETURNING`` of the columns a send reads and ``blocked``, why a campaign email
        must not go out (None when it may). The statements a round costs are a good part of a
        message's CPU, so the suppression check is part of the claim, and the statement is
        built once per process for a dialect and kinds, its size a parameter (:data:`_CLAIMS`)."""
        key = (self.db.dialect.name, self.kinds)
        claim = _CLAIMS.get(key)
        if claim is None:
            claim = _CLAIMS[key] = (
                update(OUTBOX)
                .where(OUTBOX.c.id.in_(self._due_ids()))
                .values(
                    status=OutboxStatus.SENDING,
                    lease_until=bindparam("lease"),
                    attempts=OUTBOX.c.attempts + 1,
                )
                .returning(*_CLAIMED, _BLOCKED)
            )
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        rows = conn.execute(claim, {"now": now, "lease": lease, "size": size}).all()
        return sorted(rows, key=_DUE_ORDER)

    def _due_ids(self) -> Any:
        """The ids of the first ``:size`` messages :meth:`due` at ``:now``, by due time: the first
        ``:size`` of the queued ones and of those whose lease lapsed, each an ordered range of the
        (kind, status, due) index. One condition with OR read every row of the kind and sorted
        them, so that each claim cost as much as the outbox was long."""
        now: BindParameter[Any] = bindparam("now")
        size: BindParameter[int] = bindparam("size", type_=Integer)
        parts = []
        for status, lapsed in (
            (OutboxStatus.QUEUED, OUTBOX.c.next_attempt_at <= now),
            (OutboxStatus.SENDING, OUTBOX.c.lease_until < now),
        ):
            part = (
                select(OUTBOX.c.id, OUTBOX.c.next_attempt_at)
                .where(OUTBOX.c.kind.in_(_fixed(self.kinds)), OUTBOX.c.status == status, lapsed)
                .order_by(OUTBOX.c.next_attempt_at)
                .limit(size)
            )
            if self.db.dialect.name == "postgresql":
                part = part.with_for_update(skip_locked=True)
            parts.append(select(part.subquery()))
        both = union_all(*parts).subquery()
        return select(both.c.id).order_by(both.c.next_attempt_at).limit(size).scalar_subquery()

    def _counted(self, settled: list[dict[str, Any]]) -> None:
        """Committed outcomes into the metrics."""
        if settled and CAMPAIGN in self.kinds:  # alert deliveries have metrics of their own
            metrics.emails_settled(s["status"] for s in settled)

    def _send_one(self, row: Any, now: datetime) -> str | Exception | None:
        try:
            if row.kind != WEBHOOK:
                return self.mailer.send(email_of(row, self.host, now))
            target = row.to_email or SALES  # rows from before alert targets are sales'
            webhook = self.webhooks.get(target)
            if webhook is None:
                setting = (
                    "NURTURE_SALES_WEBHOOK_URL" if target == SALES else "NURTURE_ALERT_TARGETS"
                )
                raise PermanentError(f"no webhook URL for alert target {target!r} ({setting})")
            webhook.post(row.payload)
            return None
        except (TransientError, PermanentError) as error:
            return error
        except Exception as error:  # a backend bug must not strand the batch as `sending`
            log.exception("outbox %s: unexpected error from the mail backend", row.id)
            return TransientError(f"unexpected: {type(error).__name__}: {error}")

    def _settlement(
        self, row: Any, outcome: str | Exception | None, now: datetime, report: DispatchReport
    ) -> dict[str, Any]:
        if not isinstance(outcome, Exception):
            report.sent += 1
            report.sent_ids.append(row.id)
            return _settled(row, OutboxStatus.SENT, provider_id=outcome, sent_at=now)
        # Providers quote the recipient in their errors: kept and logged without it.
        reason = redact(_reason(outcome))
        if isinstance(outcome, TransientError) and row.attempts < self.settings.max_attempts:
            report.retried += 1
            wait = backoff(row.attempts, outcome.retry_after)
            log.info(
                "outbox %s: try %s failed (%s); retry in %s", row.id, row.attempts, reason, wait
            )
            return _settled(row, OutboxStatus.QUEUED, reason, next_attempt_at=now + wait)
        report.failed += 1
        log.warning("outbox %s: failed after %s tries: %s", row.id, row.attempts, reason)
        return _settled(row, OutboxStatus.FAILED, reason)


_DUE_ORDER = attrgetter("next_attempt_at", "id")  # claimed rows by due time
# The claim statement by database dialect and kinds, its size a parameter: built once per
# process, not per dispatcher and round size. A round's size is whatever room is free (it took
# 21-24 sizes in a 3,000-message run), and building and compiling one more statement cost the
# main thread ~12 ms holding the GIL the senders wait on, against ~4 ms to run a claim.
_CLAIMS: dict[tuple[str, tuple[str, ...]], Any] = {}


def _fixed(values: Collection[str]) -> list[Any]:
    """``values`` for an ``IN`` of a statement kept for every round: one parameter each rather
    than one list, which SQLAlchemy expands into the statement's text on every execution
    (a third of a claim's own Python)."""
    return [literal(value) for value in values]


# The statements of every round, built once (building one costs more than running it).
# What a send reads of a claimed row (the rest would only be converted and dropped).
_CLAIMED = tuple(
    OUTBOX.c[name]
    for name in (
        "id",
        "idempotency_key",
        "kind",
        "lead_id",
        "campaign",
        "to_email",
        "from_email",
        "from_name",
        "subject",
        "html",
        "text",
        "headers",
        "attempts",
        "next_attempt_at",
        "payload",
    )
)
# Why a claimed campaign email must not go out: its lead unsubscribed, else bounced or reported
# spam (the first of those by name), else None. Alerts about the lead are not suppressed.
# SQLite's RETURNING names columns without their table, so the outbox's own lead is spelt out:
# unqualified, ``lead_id`` in the events subquery would be the event's.
_CLAIMED_LEAD: ColumnClause[int] = literal_column(f"{OUTBOX.name}.lead_id")
_BLOCKED = case(
    (
        OUTBOX.c.kind == CAMPAIGN,
        func.coalesce(
            select(literal(UNSUBSCRIBED))
            .where(LEADS.c.id == _CLAIMED_LEAD, LEADS.c.subscribed.is_(False))
            .scalar_subquery(),
            select(EVENTS.c.type)
            .where(EVENTS.c.lead_id == _CLAIMED_LEAD, EVENTS.c.type.in_(_fixed(SUPPRESSING)))
            .order_by(EVENTS.c.type)
            .limit(1)
            .scalar_subquery(),
        ),
    ),
).label("blocked")
# What every settlement writes besides a row's outcome, and the rows it may write.
_LEASE_ENDS = {"lease_until": None}
_STILL_SENDING = {"status": OutboxStatus.SENDING}


def write_outcomes(conn: Connection, outcomes: Sequence[Mapping[str, Any]]) -> None:
    """Settlements (:func:`_settled`'s) into their rows, those still ``sending`` (a
    ``processed`` event may have settled one meanwhile), in ``conn``'s transaction, their
    leases ended: on PostgreSQL one ``UPDATE … FROM unnest(arrays)``, on SQLite one
    ``executemany``."""
    if outcomes:
        update_rows(
            conn, OUTBOX, outcomes, match=("id",), constants=_LEASE_ENDS, where=_STILL_SENDING
        )


def _reason(error: Exception) -> str:
    """A failure as ``last_error`` keeps it: what the provider said, which may hold anything,
    without NUL (PostgreSQL refuses it, and the whole batch's settlement with it) and bounded."""
    text = (str(error) or type(error).__name__).replace("\x00", "\ufffd")
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def _settled(
    row: Any,
    status: str,
    error: str | None = None,
    provider_id: str | None = None,
    sent_at: datetime | None = None,
    next_attempt_at: datetime | None = None,
) -> dict[str, Any]:
    """A claimed row's outcome as the columns it writes, every key present (one statement for
    all). Only a retry moves the due time; a settled row keeps the one it was claimed with."""
    return {
        "id": row.id,
        "status": status,
        "last_error": error,
        "provider_id": provider_id,
        "sent_at": sent_at,
        "next_attempt_at": next_attempt_at or row.next_attempt_at,
    }


def settle_processed(db: Engine, outbox_ids: list[int], provider_ids: dict[int, str]) -> int:
    """SendGrid's ``processed`` events: the provider has these messages, so rows a crash left
    ``sending`` are sent, not due for another try. Returns how many rows were settled."""
    if not outbox_ids:
        return 0
    with db.begin() as conn:
        result = conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == bindparam("b_id"), OUTBOX.c.status == OutboxStatus.SENDING)
            .values(
                status=OutboxStatus.SENT, provider_id=bindparam("b_provider"), lease_until=None
            ),
            [{"b_id": i, "b_provider": provider_ids.get(i)} for i in outbox_ids],
        )
        return int(result.rowcount or 0)
