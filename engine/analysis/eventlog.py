"""What a ruleset would have said about leads at a past time, from an event log (the JSON Lines
or CSV ``nurture ingest`` reads), and how that ranked what they did next: the event-log
backtest. No database.

Each lead's records up to ``until`` are played in time order through the ruleset in memory, with
decay and time evaluations (:class:`~engine.rules.timeline.Timeline`), from a new lead; the lead
converted when it has an ``outcome`` event in (``until``, ``until + within``]. Leads with no
record up to ``until`` were not known then and are left out. The report is the CSV backtest's
(:func:`~engine.analysis.backtest.report`), for the lead score or a named score.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from engine.analysis.backtest import BacktestError, Scored, ranked_by, report
from engine.ingest.parse import EventRecord, LeadRecord, Parsed, Record, Rejection, parse_stream
from engine.rules.compile import CompiledRuleset
from engine.rules.evaluate import ChainError, Event
from engine.rules.timeline import Timeline
from engine.timeutil import isoformat


@dataclass(frozen=True)
class EventLog:
    path: str
    records: dict[str, list[Record]]  # by lead email, in file order


def read_event_log(path: Path) -> EventLog:
    try:
        with path.open(encoding="utf-8", errors="surrogateescape", newline="") as stream:
            return collect(parse_stream(stream, str(path)), str(path))
    except OSError as error:
        raise BacktestError(f"{path}: cannot read: {error.strerror or error}") from None


def collect(parsed: Iterable[Parsed], path: str) -> EventLog:
    """Records by lead; a bad line, or one without ``occurred_at``, is an error naming it."""
    records: dict[str, list[Record]] = {}
    for item in parsed:
        if isinstance(item, Rejection):
            raise BacktestError(f"{path}:{item.line}: {item.error}")
        if item.occurred_at is None:
            raise BacktestError(f"{path}:{item.line}: occurred_at: a backtest needs every time")
        records.setdefault(item.email, []).append(item)
    if not records:
        raise BacktestError(f"{path}: no records")
    return EventLog(path, records)


def _event(record: Record) -> tuple[Event, dict[str, Any]]:
    """The event a record is evaluated as, and the profile attributes it sets first."""
    assert record.occurred_at is not None
    if isinstance(record, LeadRecord):
        return Event(record.id, "profile_update", record.occurred_at), record.attributes
    assert isinstance(record, EventRecord)
    event = Event(record.id, record.type, record.occurred_at, record.properties)
    return event, record.attributes


def play(compiled: CompiledRuleset, email: str, records: list[Record], until: datetime) -> Timeline:
    """One lead's records up to ``until`` (in time order, ties in file order), the clock run to
    ``until``."""
    timeline = Timeline.start(compiled, email)
    for record in sorted(records, key=lambda r: r.occurred_at or until):
        if record.occurred_at is None or record.occurred_at > until:
            continue
        event, attributes = _event(record)
        timeline.record(event, {k: v for k, v in attributes.items() if k != "subscribed"})
    timeline.run_clock(until)
    return timeline


def backtest_events(
    compiled: CompiledRuleset,
    log: EventLog,
    until: datetime,
    outcome: str,
    within: timedelta,
    score: str | None = None,
) -> dict[str, Any]:
    ranked = ranked_by(compiled.ruleset, score)
    totals, labels, stages, outcomes = [], [], [], []
    end = until + within
    for email, records in log.records.items():
        if not any(r.occurred_at is not None and r.occurred_at <= until for r in records):
            continue
        try:
            state = play(compiled, email, records, until).state
        except ChainError as error:
            raise BacktestError(f"{log.path}: lead {email}: {error}") from None
        total = ranked.total(state.scores)
        totals.append(total)
        labels.append(ranked.band(total))
        stages.append(state.stage)
        converted = any(
            isinstance(r, EventRecord) and r.type == outcome and r.occurred_at is not None
            and until < r.occurred_at <= end
            for r in records
        )  # fmt: skip
        outcomes.append(int(converted))
    if not outcomes:
        raise BacktestError(f"{log.path}: no lead has a record up to {isoformat(until)}")
    scored = Scored(np.asarray(totals), np.zeros(len(totals), dtype=int), labels, stages)
    label = f"{outcome} within {_days(within)}"
    found = report(compiled.ruleset, scored, outcomes, label, ranked.bands)
    return {"score": score or "score", "until": isoformat(until), **found}


def _days(span: timedelta) -> str:
    return f"{span.days}d" if span == timedelta(days=span.days) else str(span)
