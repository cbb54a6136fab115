"""Time passing is an evaluation (``event.type: time``): which rules a time evaluation can fire,
and when a lead's time-dependent inputs next change. Pure; the scheduler (``nurture tick``),
ingest (which stores each lead's next instant) and event-log backtests all decide with it.

A lead's time-dependent inputs are what the rules that can fire on a ``time`` event read and
what changes with the clock alone:

- a ``days_since`` crossing one of the thresholds the rules compare it with (``gte: 90`` flips
  90 whole days after the event);
- an event leaving a ``count`` or ``sum`` window, or a firing leaving a ``limit`` window;
- decay lowering a score (the scheduler's decay job marks those leads itself).

A rule can fire on a ``time`` event unless its ``when`` requires another event type or an event
property (a time event has none). :func:`next_change` gives the first instant after a given
one at which any of these inputs changes; a time evaluation at or after that instant sees it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.rules import spec
from engine.rules.compile import CompiledRuleset, window_start
from engine.rules.decay import DecayState, next_move
from engine.rules.history import MemoryHistory

TIME = spec.TIME_EVENT
DAY = timedelta(days=1)
# State tokens whose change by decay matters to a rule that reads them.
SCORE_TOKENS = ("score", "temperature", "scores.", "bands.", "account.score")


def fires_on_time(condition: spec.Condition) -> bool:
    """False when ``condition`` cannot hold for a ``time`` event (it needs another event type
    or an event property); True when it might."""
    match condition:
        case spec.All(items=items):
            return all(fires_on_time(item) for item in items)
        case spec.AnyOf(items=items):
            return any(fires_on_time(item) for item in items)
        case spec.Test(path="event.type", op="eq", value=value):
            return str(value).strip().casefold() == TIME
        case spec.Test(path="event.type", op="in", value=list() as values):
            return any(str(v).strip().casefold() == TIME for v in values)
        case spec.Test(path=path, op=op, value=value) if path.startswith("event.properties."):
            # A time event has no properties: only tests that hold for a missing value pass.
            return op in ("ne", "not_in") or (op == "exists" and value is False) or value is None
    return True


def crossings(op: str, value: float) -> list[int]:
    """The whole-day counts at which ``days <op> value`` changes truth (each > 0)."""
    if op == "gte" or op == "lt":
        found = [math.ceil(value)]
    elif op == "gt" or op == "lte":
        found = [math.floor(value) + 1]
    elif float(value).is_integer():  # eq, ne: true on one day, false either side
        found = [int(value), int(value) + 1]
    else:
        found = []
    return [days for days in found if days > 0]


@dataclass(frozen=True)
class TimeInputs:
    """What the rules that can fire on a time event read that moves with the clock."""

    days: tuple[tuple[str, bool, tuple[int, ...]], ...]  # (type, first, day counts that flip)
    counts: tuple[tuple[str, timedelta], ...]  # (type, window)
    sums: tuple[tuple[str, str, timedelta], ...]  # (type, property, window)
    limits: tuple[tuple[str, timedelta], ...]  # (rule, window)
    reads_scores: bool  # a score, band or temperature: decay moving one matters

    @property
    def any(self) -> bool:
        return bool(self.days or self.counts or self.sums or self.limits)


_INPUTS: dict[int, tuple[CompiledRuleset, TimeInputs]] = {}


def time_inputs(compiled: CompiledRuleset) -> TimeInputs:
    """The time-dependent inputs of ``compiled`` (computed once per compiled ruleset)."""
    known = _INPUTS.get(id(compiled))
    if known is not None and known[0] is compiled:
        return known[1]
    days: dict[tuple[str, bool], set[int]] = {}
    counts, sums, limits = set(), set(), set()
    reads_scores = False
    for compiled_rule in compiled.rules:
        rule = compiled_rule.rule
        if not fires_on_time(rule.when):
            continue
        reads_scores = reads_scores or any(
            token.startswith(SCORE_TOKENS) for token in compiled_rule.reads
        )
        if rule.limit is not None and rule.limit.per is not None:
            limits.add((rule.name, rule.limit.per))
        for part in spec.leaves(rule.when):
            if isinstance(part, spec.DaysSince):
                days.setdefault((part.type, part.first), set()).update(
                    crossings(part.op, float(part.value))
                )
            elif isinstance(part, spec.Count):
                counts.add((part.type, part.within))
            elif isinstance(part, spec.Sum) and part.within is not None:
                sums.add((part.type, part.property, part.within))
    inputs = TimeInputs(
        tuple((type, first, tuple(sorted(n))) for (type, first), n in sorted(days.items())),
        tuple(sorted(counts)),
        tuple(sorted(sums)),
        tuple(sorted(limits)),
        reads_scores,
    )
    _INPUTS[id(compiled)] = (compiled, inputs)
    return inputs


def next_change(
    compiled: CompiledRuleset,
    history: MemoryHistory,
    after: datetime,
    decay: Mapping[str, DecayState] | None = None,
    scores: Mapping[str, int] | None = None,
) -> datetime | None:
    """The first instant after ``after`` at which one of the lead's time-dependent inputs
    changes, or None. With ``decay`` and ``scores`` (the lead's decay states and component
    values), decay lowering a score counts too when a time-capable rule reads scores; that
    instant may lie at or before ``after`` when decay is due and not applied yet."""
    inputs = time_inputs(compiled)
    found: list[datetime] = []
    for type, first, flips in inputs.days:
        reference = history.event_time(type, first, after)
        if reference is not None:
            found += [c for c in (reference + n * DAY for n in flips) if c > after][:1]
    for type, within in inputs.counts:
        found += [t + within for t in history.times_after(type, window_start(after, within))][:1]
    for type, key, within in inputs.sums:
        leaving = history.amount_times_after(type, key, window_start(after, within))
        found += [t + within for t in leaving][:1]
    for rule, within in inputs.limits:
        found += [t + within for t in history.firings_after(rule, window_start(after, within))][:1]
    if decay is not None and scores is not None and inputs.reads_scores:
        for name, component in compiled.ruleset.components.items():
            moment = next_move(component, scores.get(name, 0), decay.get(name))
            if moment is not None:
                found.append(moment)
    return min(found, default=None)
