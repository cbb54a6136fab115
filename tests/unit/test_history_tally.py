"""``MemoryHistory.tally`` (every count at once, the counted keys remembered until the lead has
a new one) gives what ``count_events`` and ``count_firings`` give one by one, whatever the order
of events added and taken back, firings, and the rulesets asking."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from engine.rules.history import MemoryHistory, Place, Tallies, window_start

START = datetime(2026, 3, 1, tzinfo=UTC)
WINDOWS = [timedelta(days=3), timedelta(days=30), timedelta.max]
TYPES = ["page_view", "purchase", "bounce", "email_open"]
RULES = ["pricing", "senior", "spender", "untallied"]


def tallies(rng: random.Random) -> Tallies:
    """Some event types and rules counted, each over a window (or ever: None) or two."""
    events: dict[str, tuple[Place, ...]] = {}
    firings: dict[str, tuple[Place, ...]] = {}
    place = 0
    for table, keys in ((events, TYPES[:3]), (firings, RULES[:3])):
        for key in keys:
            for _ in range(rng.randrange(3)):
                window = rng.choice([None, 0, 1, 2])
                table[key] = (*table.get(key, ()), (place, window))
                place += 1
    return Tallies(events, firings, place)


def expected(history: MemoryHistory, counts: Tallies, end: datetime) -> list[int]:
    found = [0] * counts.size
    for key, places in counts.events.items():
        for place, window in places:
            if window is None:
                found[place] = len(history.events.get(key, []))
            else:
                start = window_start(end, WINDOWS[window])
                found[place] = history.count_events(key, start, end)
    for key, places in counts.firings.items():
        for place, window in places:
            since = None if window is None else window_start(end, WINDOWS[window])
            found[place] = history.count_firings(key, since, end)
    return found


def test_tally_agrees_with_the_counts_one_by_one_as_the_history_changes() -> None:
    rng = random.Random(7)
    asking = [tallies(rng) for _ in range(3)]
    for _ in range(40):
        history, added, at = MemoryHistory(), [], START
        for _ in range(60):
            at += timedelta(hours=rng.choice([1, 20, 200]))
            step = rng.random()
            if step < 0.4:
                kind = rng.choice(TYPES)
                history.add_event(kind, at)
                added.append((kind, at))
            elif step < 0.5 and added:
                history.remove_event(*added.pop(rng.randrange(len(added))))
            elif step < 0.8:
                history.add_firing(rng.choice(RULES), at)
            counts = rng.choice(asking)
            end = at - timedelta(hours=rng.choice([0, 0, 50]))
            assert history.tally(counts, WINDOWS, end) == expected(history, counts, end)
