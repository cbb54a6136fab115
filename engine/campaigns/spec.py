"""The parsed form of a campaign (``campaigns/*.yaml``): what ``load`` produces and the enrollment
and step scheduling consume."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time, timedelta

from engine.rules.spec import Condition

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class SendWindow:
    """Hours a step may go out, in the lead's timezone: ``days`` are weekday numbers (0 = mon)."""

    days: frozenset[int]
    start: time
    end: time


@dataclass(frozen=True)
class FrequencyCap:
    """At most ``max`` emails to one lead within ``per``, counting every campaign's emails."""

    max: int
    per: timedelta


@dataclass(frozen=True)
class Step:
    template: str
    wait: timedelta  # after enrollment (first step) or after the previous step went out
    when: Condition | None
    line: int


@dataclass(frozen=True)
class Campaign:
    name: str
    path: str
    audience: Condition
    exit_when: Condition | None
    from_email: str
    from_name: str | None
    steps: tuple[Step, ...]
    send_window: SendWindow | None = None
    frequency_cap: FrequencyCap | None = None
    # Lines of `audience:` and `exit_when:`, for problems the rules engine finds in them.
    audience_line: int = 1
    exit_line: int = 1
