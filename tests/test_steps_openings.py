"""A send window's next opening, remembered per (window, moment and its zone, lead's zone)
(``engine.schedule.steps._opening``), is what :func:`next_opening` works out, value and zone,
on generated windows, moments and zones, asked again and again."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from engine.campaigns.spec import SendWindow
from engine.schedule.steps import _opening, next_opening

NAMES = ["UTC", "Europe/Lisbon", "America/New_York", "Asia/Kolkata", "Pacific/Chatham"]
ZONES = [ZoneInfo(name) for name in [*NAMES, "Australia/Lord_Howe"]]
NOW_ZONES = [UTC, timezone(timedelta(hours=2)), ZoneInfo("Europe/Berlin"), ZoneInfo("UTC")]
WINDOWS = st.builds(
    lambda days, start, length: SendWindow(
        frozenset(days),
        time(start // 60, start % 60),
        time(min(start + length, 1439) // 60, min(start + length, 1439) % 60),
    ),
    st.sets(st.integers(0, 6), min_size=1),
    st.integers(0, 1400),
    st.integers(1, 600),
)
MOMENTS = st.builds(
    lambda minutes, zone: (datetime(2026, 3, 20, tzinfo=UTC) + timedelta(minutes=minutes))
    .astimezone(zone),
    st.integers(0, 60 * 24 * 240),
    st.sampled_from(NOW_ZONES),
)  # fmt: skip


@given(st.lists(st.tuples(WINDOWS, MOMENTS, st.sampled_from(ZONES)), min_size=1, max_size=30))
def test_a_remembered_opening_is_the_one_worked_out(
    cases: list[tuple[SendWindow, datetime, ZoneInfo]],
) -> None:
    for window, now, zone in cases + cases:
        got, want = _opening(window, now, zone), next_opening(window, now, zone)
        assert got == want
        assert got.tzinfo is want.tzinfo
        assert got.utcoffset() == want.utcoffset()
