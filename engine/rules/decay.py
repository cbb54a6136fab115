"""Score decay as pure arithmetic on one component: what ``nurture tick``'s SQL
(:mod:`engine.schedule.decay`) does to every row at once, for the places that hold a lead in
memory (event-log backtests) and for knowing when a component will next move.

A component's decay state is ``[rose_at, peak, steps]``: when it last rose (epoch seconds), its
value right after that rise, and the whole ``every`` periods already taken off since. ``{points:
P, every: D}`` takes P off per whole D since the rise (never below the minimum);
``{half_life: H}`` brings what rose back toward the minimum, halving every H (rounded half away
from zero, as SQLite's ROUND; PostgreSQL's may round an exact half to even).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from engine.rules import spec
from engine.timeutil import epoch

# [rose_at (epoch seconds) or None, peak, steps], as lead_score stores them.
DecayState = list[int | None]


def rise(state: DecayState | None, at: datetime, value: int, delta: int) -> DecayState:
    """The decay state after the component rose by ``delta`` to ``value`` at ``at``. A late
    rise (before the last one) adds its points to what half-life decay halves from the last
    rise, instead of being taken back by the next tick."""
    rose_at = None if state is None else state[0]
    if rose_at is None or epoch(at) >= rose_at:
        return [epoch(at), value, 0]
    assert state is not None
    return [rose_at, (state[1] or 0) + delta, state[2]]


def decayed(
    component: spec.Component, value: int, state: DecayState, now: datetime
) -> tuple[int, int]:
    """(value, steps) of the component at ``now``: the SQL job's arithmetic, one row."""
    decay, (rose_at, peak, steps) = component.decay, state
    if decay is None or rose_at is None:
        return value, steps or 0
    now_s = epoch(now)
    if isinstance(decay, spec.PointsDecay):
        due = _periods(now_s - rose_at, int(decay.every.total_seconds())) - (steps or 0)
        if due <= 0:
            return value, steps or 0
        return max(value - decay.points * due, component.min), (steps or 0) + due
    if rose_at > now_s:
        return value, steps or 0
    target = component.min + _round(
        ((peak or 0) - component.min) * _halving(now_s - rose_at, decay)
    )
    return min(value, target), steps or 0


def next_move(component: spec.Component, value: int, state: DecayState | None) -> datetime | None:
    """When decay next lowers the component from ``value`` (None: it never will). May lie in
    the past when decay is due and not applied yet."""
    decay = component.decay
    if decay is None or state is None or state[0] is None or value <= component.min:
        return None
    rose_at, peak, steps = state[0], state[1] or 0, state[2] or 0
    if isinstance(decay, spec.PointsDecay):
        every = int(decay.every.total_seconds())
        return _instant(rose_at + (steps + 1) * every)
    # The first whole second at which round((peak - min) · ½^(t/H)) < value - min.
    span, room = peak - component.min, value - component.min - 0.5
    if span <= 0:
        return None
    if span < room:  # above the curve (points added after the rise): due from the rise on
        return _instant(rose_at)
    half_life = decay.half_life.total_seconds()
    moment = rose_at + max(0, math.floor(half_life * math.log2(span / room)) - 2)
    while _round(span * _halving(moment - rose_at, decay)) >= value - component.min:
        moment += 1
    return _instant(moment)


def _periods(seconds: int, every: int) -> int:
    """Whole periods, truncated toward zero as SQL's integer division does."""
    return int(seconds / every) if seconds < 0 else seconds // every


def _halving(seconds: float, decay: spec.HalfLifeDecay) -> float:
    return float(0.5 ** (seconds / decay.half_life.total_seconds()))


def _round(value: float) -> int:
    return math.floor(value + 0.5) if value >= 0 else -math.floor(-value + 0.5)


def _instant(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)
