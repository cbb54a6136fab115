"""Outbox → mail backend (or the sales webhook): the last step of the flow, exactly once as far
as a provider allows.

A round claims a small batch of due messages and commits the claim at once: each row turns
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
another round claims them again. A message the provider had already accepted is then sent a
second time unless a SendGrid ``processed`` event settled it first: at most one batch of such
duplicates per crash.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import attrgetter
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import (
    BindParameter,
    ColumnClause,
    Connection,
    Engine,
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
from engine.db.bulk import execute_many
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
# Rounds out at once, each a quarter of dispatch_batch. With two halves out, the senders ran
# dry while the main thread waited for the slowest send of the older half, settled it and
# claimed the next (1,250–1,470 of the 1,530 sends/s 32 threads sleeping 20 ms made on the
# same machine); with four, three rounds are queued meanwhile, and it kept up (1,530–1,550).
ROUNDS_OUT = 4


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


@dataclass
class _Round:
    """One claimed batch: settlements known at once (suppressed) and sends still out."""

    settled: list[dict[str, Any]] = field(default_factory=list)
    sending: list[tuple[Any, Future[str | Exception | None]]] = field(default_factory=list)


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
        self._claims: dict[int, Any] = {}  # claim statement by round size

    def run(self, now: datetime, limit: int | None = None) -> DispatchReport:
        """Send what is due at ``now`` round by round until nothing due is left (or ``limit``
        messages were claimed). Later rounds are claimed and handed to the senders while the
        oldest one's sends are still out, so no sender waits for the slowest send of a round.
        :data:`ROUNDS_OUT` rounds of an equal share of ``dispatch_batch`` are out at a time: a
        crash leaves at most ``dispatch_batch`` messages sent but not settled, as one round of
        the full size did."""
        report = DispatchReport()
        claimed = 0
        out: deque[_Round] = deque()
        rounds = max(1, min(ROUNDS_OUT, self.settings.dispatch_batch))
        workers = max(1, self.settings.send_concurrency)
        # One connection for the run and one transaction a round (the oldest round's outcomes
        # and the next claim): checking a connection out of the pool and each transaction cost
        # the main thread, which the senders wait on for the GIL, more than the statements.
        with ThreadPoolExecutor(max_workers=workers) as pool, self.db.connect() as conn:
            while limit is None or claimed < limit:
                size = max(1, self.settings.dispatch_batch // rounds)
                if limit is not None:
                    size = min(size, limit - claimed)
                settled = self._outcomes(out.popleft(), now, report) if len(out) >= rounds else []
                with conn.begin():
                    self._write(conn, settled)
                    rows = self._claim(conn, now, size)
                self._counted(settled)
                if not rows:
                    break
                claimed += len(rows)
                out.append(self._start(rows, now, pool, report))
            while out:
                settled = self._outcomes(out.popleft(), now, report)
                with conn.begin():
                    self._write(conn, settled)
                self._counted(settled)
        return report

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
        message's CPU, so the suppression check is part of the claim, and each claim is built
        once and reused."""
        claim = self._claims.get(size)
        if claim is None:
            claim = self._claims[size] = (
                update(OUTBOX)
                .where(OUTBOX.c.id.in_(self._due_ids(size)))
                .values(
                    status=OutboxStatus.SENDING,
                    lease_until=bindparam("lease"),
                    attempts=OUTBOX.c.attempts + 1,
                )
                .returning(*_CLAIMED, _BLOCKED)
            )
        lease = now + timedelta(seconds=self.settings.lease_seconds)
        rows = conn.execute(claim, {"now": now, "lease": lease}).all()
        return sorted(rows, key=_DUE_ORDER)

    def _due_ids(self, size: int) -> Any:
        """The ids of the first ``size`` messages :meth:`due` at ``:now``, by due time: the first
        ``size`` of the queued ones and of those whose lease lapsed, each an ordered range of the
        (kind, status, due) index. One condition with OR read every row of the kind and sorted
        them, so that each claim cost as much as the outbox was long."""
        now: BindParameter[Any] = bindparam("now")
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

    def _start(
        self, rows: list[Any], now: datetime, pool: ThreadPoolExecutor, report: DispatchReport
    ) -> _Round:
        """A claimed round: suppressed messages settled in memory, the rest handed to the
        senders."""
        done = _Round()
        for row in rows:
            if row.blocked is not None:
                report.suppressed += 1
                done.settled.append(_settle(row.id, OutboxStatus.SUPPRESSED, error=row.blocked))
            else:
                done.sending.append((row, pool.submit(self._send_one, row, now)))
        return done

    def _outcomes(
        self, done: _Round, now: datetime, report: DispatchReport
    ) -> list[dict[str, Any]]:
        """Each outcome of a round, once all its sends are back."""
        # Woken once, when the last send is back, rather than by each send in turn: a wake-up
        # costs the GIL every sender thread needs.
        wait([sending for _, sending in done.sending])
        settled = done.settled
        for row, sending in done.sending:
            settled.append(self._settlement(row, sending.result(), now, report))
        return settled

    def _write(self, conn: Connection, settled: list[dict[str, Any]]) -> None:
        """Outcomes into their rows, in ``conn``'s transaction: one ``executemany`` without
        SQLAlchemy's assembly of each row's parameters."""
        if settled:
            execute_many(conn, _SETTLE, settled)

    def _counted(self, settled: list[dict[str, Any]]) -> None:
        """Committed outcomes into the metrics."""
        if settled and CAMPAIGN in self.kinds:  # alert deliveries have metrics of their own
            metrics.emails_settled(s["b_status"] for s in settled)

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
            return _settle(row.id, OutboxStatus.SENT, b_provider=outcome, b_sent=now)
        # Providers quote the recipient in their errors: kept and logged without it.
        reason = redact(_reason(outcome))
        if isinstance(outcome, TransientError) and row.attempts < self.settings.max_attempts:
            report.retried += 1
            wait = backoff(row.attempts, outcome.retry_after)
            log.info(
                "outbox %s: try %s failed (%s); retry in %s", row.id, row.attempts, reason, wait
            )
            return _settle(row.id, OutboxStatus.QUEUED, error=reason, b_next=now + wait)
        report.failed += 1
        log.warning("outbox %s: failed after %s tries: %s", row.id, row.attempts, reason)
        return _settle(row.id, OutboxStatus.FAILED, error=reason)


_DUE_ORDER = attrgetter("next_attempt_at", "id")  # claimed rows by due time


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
_SETTLE = (
    update(OUTBOX)
    .where(OUTBOX.c.id == bindparam("b_id"), OUTBOX.c.status == OutboxStatus.SENDING)
    .values(
        status=bindparam("b_status"),
        provider_id=bindparam("b_provider"),
        sent_at=bindparam("b_sent"),
        # Only a retry moves the due time; a settled row keeps its last one.
        next_attempt_at=func.coalesce(bindparam("b_next"), OUTBOX.c.next_attempt_at),
        last_error=bindparam("b_error"),
        lease_until=None,
    )
)


def _reason(error: Exception) -> str:
    """A failure as ``last_error`` keeps it: what the provider said, which may hold anything,
    without NUL (PostgreSQL refuses it, and the whole batch's settlement with it) and bounded."""
    text = (str(error) or type(error).__name__).replace("\x00", "\ufffd")
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 1] + "…"


def _settle(
    outbox_id: int,
    status: str,
    error: str | None = None,
    b_provider: str | None = None,
    b_sent: datetime | None = None,
    b_next: datetime | None = None,
) -> dict[str, Any]:
    """A settlement's parameters, every key present (one compiled statement for all)."""
    return {
        "b_id": outbox_id,
        "b_status": status,
        "b_error": error,
        "b_provider": b_provider,
        "b_sent": b_sent,
        "b_next": b_next,
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
