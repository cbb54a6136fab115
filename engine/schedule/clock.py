"""Time evaluations, run by ``nurture tick`` and the scheduler: time passing is an evaluation
(``event.type: time``).

Each lead carries ``time_due_at``, when its time-dependent inputs next change
(:func:`engine.rules.timing.next_change`, stored by every evaluation), or now when decay lowered
one of its scores. The job reads the leads due from that column's index, in id order and in
batches, and evaluates each through the ingest path with a ``time`` event at the tick's time
(id ``time:<lead id>:<time>``): rules fire as on any event, the ledger, stage history and
firings name that event, campaign audiences and exits follow, and the evaluation stores the
lead's next due time. The cost follows the leads that are due, not all leads.

A lead that another scheduler or a newer event evaluated meanwhile is no longer due when its
batch locks it, and is skipped (counted as a duplicate); a tick at the same time again finds the
same event ids stored. Time events are stored like any other, so replaying a lead's events
replays its time evaluations too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select

from engine.campaigns.compile import CompiledCampaigns
from engine.db import reading
from engine.db.schema import LEADS
from engine.ingest.batch import ingest
from engine.ingest.parse import EventRecord, Rejection
from engine.rules.compile import CompiledRuleset
from engine.rules.timing import TIME
from engine.timeutil import isoformat

BATCH = 1000


@dataclass
class TimeReport:
    evaluated: int = 0
    skipped: int = 0  # evaluated meanwhile by another scheduler or a newer event
    rejected: list[Rejection] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "evaluated": self.evaluated,
            "skipped": self.skipped,
            "rejected": [{"lead_id": r.line, "error": r.error} for r in self.rejected],
        }


def time_records(due: list[tuple[int, str]], now: datetime) -> list[EventRecord]:
    """One ``time`` record per (lead id, email) due, its line the lead id."""
    stamp = isoformat(now)
    return [
        EventRecord(lead_id, email, f"{TIME}:{lead_id}:{stamp}", TIME, now)
        for lead_id, email in due
    ]


def evaluate_due(
    db: Engine,
    compiled: CompiledRuleset,
    campaigns: CompiledCampaigns | None,
    now: datetime,
    batch: int = BATCH,
) -> TimeReport:
    """Evaluate every lead due at ``now`` once, a batch per transaction."""
    report = TimeReport()
    after = 0
    while True:
        query = (
            select(LEADS.c.id, LEADS.c.email)
            .where(LEADS.c.time_due_at <= now, LEADS.c.id > after)
            .order_by(LEADS.c.id)
            .limit(batch)
        )
        with reading(db) as conn:
            due = [(lead_id, email) for lead_id, email in conn.execute(query)]
        if not due:
            return report
        after = due[-1][0]
        result = ingest(db, compiled, time_records(due, now), batch, campaigns=campaigns)
        report.evaluated += result.accepted
        report.skipped += result.duplicates
        report.rejected += result.rejected
