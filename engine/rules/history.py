"""A lead's past as the evaluator needs it (event times per type, firing times per rule), in
memory. Ingest fills it from SQL for a batch of leads and appends as it evaluates; ruleset tests
start it empty."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import defaultdict
from datetime import datetime


class MemoryHistory:
    def __init__(self) -> None:
        self.events: defaultdict[str, list[datetime]] = defaultdict(list)
        self.firings: defaultdict[str, list[datetime]] = defaultdict(list)

    def add_event(self, type: str, at: datetime) -> None:
        insort(self.events[type], at)

    def add_firing(self, rule: str, at: datetime) -> None:
        insort(self.firings[rule], at)

    def count_events(self, type: str, start: datetime, end: datetime) -> int:
        return _between(self.events.get(type, []), start, end)

    def count_firings(self, rule: str, start: datetime | None, end: datetime) -> int:
        times = self.firings.get(rule, [])
        if start is None:
            return len(times)
        return _between(times, start, end)


def _between(times: list[datetime], start: datetime, end: datetime) -> int:
    return bisect_right(times, end) - bisect_right(times, start)
