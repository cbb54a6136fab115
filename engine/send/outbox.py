"""The outbox as operators see it: messages waiting, held (a template error) or failed (the
provider refused them, or every try failed), with their errors; a failed message put back in the
queue; and the figures ``/metrics`` gauges. Releasing a held message renders it again, which is
the step runner's work (:meth:`engine.schedule.steps.StepRunner.release`)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from engine.db import reading
from engine.db.schema import OUTBOX
from engine.errors import NurtureError
from engine.status import OutboxStatus
from engine.timeutil import isoformat, parse_instant

# What `nurture outbox` and `GET /api/outbox` list: the messages that are not done.
LISTED = (OutboxStatus.QUEUED, OutboxStatus.HELD, OutboxStatus.FAILED)


class NoSuchMessage(NurtureError):
    pass


class WrongState(NurtureError):
    """The message is not in the state the action applies to."""


@dataclass(frozen=True)
class Backlog:
    counts: dict[str, int]  # messages per listed status
    oldest_seconds: float  # how long the longest-waiting queued message has been due


def shown(row: Any) -> dict[str, Any]:
    """One message as ``--json`` and the API give it (``step`` counts from 1)."""
    return {
        "id": row.id,
        "status": row.status,
        "kind": row.kind,
        "to": row.to_email or None,
        "campaign": row.campaign,
        "step": None if row.step is None else row.step + 1,
        "template": row.template,
        "subject": row.subject,
        "attempts": row.attempts,
        "created_at": isoformat(row.created_at),
        "next_attempt_at": isoformat(row.next_attempt_at),
        "last_error": row.last_error,
    }


_COLUMNS = (
    OUTBOX.c.id,
    OUTBOX.c.status,
    OUTBOX.c.kind,
    OUTBOX.c.to_email,
    OUTBOX.c.campaign,
    OUTBOX.c.step,
    OUTBOX.c.template,
    OUTBOX.c.subject,
    OUTBOX.c.attempts,
    OUTBOX.c.created_at,
    OUTBOX.c.next_attempt_at,
    OUTBOX.c.last_error,
)


def messages(
    db: Engine, statuses: Collection[str] = LISTED, limit: int = 100
) -> list[dict[str, Any]]:
    """Messages of ``statuses``, the longest due first (the status index serves the order)."""
    query = (
        select(*_COLUMNS)
        .where(OUTBOX.c.status.in_(list(statuses)))
        .order_by(OUTBOX.c.next_attempt_at, OUTBOX.c.id)
        .limit(limit)
    )
    with reading(db) as conn:
        return [shown(row) for row in conn.execute(query)]


def message(conn: Connection, outbox_id: int) -> dict[str, Any]:
    row = conn.execute(select(*_COLUMNS).where(OUTBOX.c.id == outbox_id)).first()
    if row is None:
        raise NoSuchMessage(f"no outbox message {outbox_id}")
    return shown(row)


def not_in(conn: Connection, outbox_id: int, status: str) -> NurtureError:
    """Why an action for ``status`` messages does not apply: there is no such message, or it
    is in another state (it may have moved meanwhile)."""
    found = message(conn, outbox_id)["status"]
    return WrongState(f"outbox message {outbox_id} is {found}, not {status}")


def retry(db: Engine, outbox_id: int, now: datetime) -> dict[str, Any]:
    """A failed message back in the queue, due now with all its tries ahead of it."""
    with db.begin() as conn:
        changed = conn.execute(
            update(OUTBOX)
            .where(OUTBOX.c.id == outbox_id, OUTBOX.c.status == OutboxStatus.FAILED)
            .values(status=OutboxStatus.QUEUED, attempts=0, next_attempt_at=now, lease_until=None)
        )
        if not changed.rowcount:
            raise not_in(conn, outbox_id, OutboxStatus.FAILED)
        return message(conn, outbox_id)


def backlog(db: Engine, now: datetime) -> Backlog:
    """Messages per listed status and the oldest queued message's wait, in one query over the
    (status, next_attempt_at) index."""
    query = (
        select(OUTBOX.c.status, func.count(), func.min(OUTBOX.c.next_attempt_at))
        .where(OUTBOX.c.status.in_(list(LISTED)))
        .group_by(OUTBOX.c.status)
    )
    counts = dict.fromkeys(LISTED, 0)
    oldest = 0.0
    with reading(db) as conn:
        for status, count, earliest in conn.execute(query):
            counts[status] = int(count)
            if status == OutboxStatus.QUEUED and earliest is not None:
                oldest = max((now - parse_instant(earliest)).total_seconds(), 0.0)
    return Backlog({str(status): n for status, n in counts.items()}, oldest)
