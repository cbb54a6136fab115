"""A lead's past as the evaluator needs it (event times per type, the numbers a ``sum`` adds up,
firing times per rule), in memory. Ingest fills it from SQL for a batch of leads and appends as it
evaluates; ruleset tests and event-log backtests start it empty."""

from __future__ import annotations

from bisect import bisect_right, insort
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# Where `tally` puts a count: (its place among the counts, the index of its window's start; None:
# ever).
Place = tuple[int, int | None]


@dataclass(frozen=True)
class Tallies:
    """The counts :meth:`MemoryHistory.tally` makes: event type → the places of its counts,
    rule → the places of its firing counts, and how many places there are."""

    events: Mapping[str, tuple[Place, ...]]
    firings: Mapping[str, tuple[Place, ...]]
    size: int


class MemoryHistory:
    def __init__(self) -> None:
        self.events: defaultdict[str, list[datetime]] = defaultdict(list)
        self.firings: defaultdict[str, list[datetime]] = defaultdict(list)
        # (type, property) → (time, value) in time order: what `sum` conditions add up.
        self.amounts: defaultdict[tuple[str, str], list[tuple[datetime, float]]] = defaultdict(list)
        # What `tally` walks for the last Tallies it was given: (place, window, times) of each
        # count whose key this history has. A key's list of times is kept for good (an event
        # taken back leaves it, maybe empty), so only a new key makes it stale (None).
        self._counted: tuple[Tallies, list[tuple[int, int | None, list[datetime]]]] | None = None

    def _times(self, table: dict[str, list[datetime]], key: str) -> list[datetime]:
        times = table.get(key)
        if times is None:
            times = table[key] = []
            self._counted = None
        return times

    def add_event(
        self, type: str, at: datetime, amounts: Mapping[str, float] | None = None
    ) -> None:
        insort(self._times(self.events, type), at)
        for key, value in (amounts or {}).items():
            insort(self.amounts[(type, key)], (at, value))

    def remove_event(
        self, type: str, at: datetime, amounts: Mapping[str, float] | None = None
    ) -> None:
        """Take back an :meth:`add_event` (an evaluation that was rejected)."""
        self._times(self.events, type).remove(at)
        for key, value in (amounts or {}).items():
            self.amounts[(type, key)].remove((at, value))

    def add_firing(self, rule: str, at: datetime) -> None:
        insort(self._times(self.firings, rule), at)

    def count_events(self, type: str, start: datetime, end: datetime) -> int:
        return _between(self.events.get(type, []), start, end)

    def count_firings(self, rule: str, start: datetime | None, end: datetime) -> int:
        times = self.firings.get(rule, [])
        if start is None:
            return len(times)
        return _between(times, start, end)

    def tally(self, tallies: Tallies, windows: Sequence[timedelta], end: datetime) -> list[int]:
        """:meth:`count_events` and :meth:`count_firings` of every count of ``tallies`` at once,
        a windowed one from ``window_start(end, windows[window])``: the evaluator asks a dozen
        per record, and most find nothing, so the lead's few event types and fired rules are
        walked, not the counts (and only the windows they use are worked out). Which of the
        lead's keys are counted is remembered until it has a new one: most of its keys (rules
        without a limit) are not, and walking them costs a cache miss each."""
        counted = self._counted
        if counted is None or counted[0] is not tallies:
            tables = ((self.events, tallies.events), (self.firings, tallies.firings))
            walk = [
                (place, window, times)
                for table, places in tables
                for key, times in table.items()
                for place, window in places.get(key, ())
            ]
            counted = self._counted = (tallies, walk)
        found = [0] * tallies.size
        starts: dict[int, datetime] = {}
        for place, window, times in counted[1]:
            if window is None:
                found[place] = len(times)
                continue
            start = starts.get(window)
            if start is None:
                start = starts[window] = window_start(end, windows[window])
            found[place] = _between(times, start, end)
        return found

    def has_events(self, type: str) -> bool:
        return bool(self.events.get(type))

    def sum_values(self, type: str, key: str, start: datetime | None, end: datetime) -> float:
        values = self.amounts.get((type, key))
        if not values:
            return 0
        times = [at for at, _ in values]
        low = 0 if start is None else bisect_right(times, start)
        return sum(value for _, value in values[low : bisect_right(times, end)])

    def event_time(self, type: str, first: bool, end: datetime) -> datetime | None:
        times = self.events.get(type, [])
        if first:
            return times[0] if times and times[0] <= end else None
        index = bisect_right(times, end)
        return times[index - 1] if index else None

    def times_after(self, type: str, start: datetime) -> list[datetime]:
        """Times of events of ``type`` after ``start``, ascending."""
        times = self.events.get(type, [])
        return times[bisect_right(times, start) :]

    def firings_after(self, rule: str, start: datetime) -> list[datetime]:
        times = self.firings.get(rule, [])
        return times[bisect_right(times, start) :]

    def amount_times_after(self, type: str, key: str, start: datetime) -> list[datetime]:
        """Times of the values a ``sum`` of ``key`` over ``type`` adds up, after ``start``."""
        return [at for at, _ in self.amounts.get((type, key), []) if at > start]


def window_start(at: datetime, span: timedelta) -> datetime:
    """``at - span``, or the earliest time there is when that would be before year 1."""
    try:
        return at - span
    except OverflowError:
        return datetime.min.replace(tzinfo=at.tzinfo)


def _between(times: list[datetime], start: datetime, end: datetime) -> int:
    return bisect_right(times, end) - bisect_right(times, start)
