"""Durations and instants as rulesets and records write them ("7d", ISO 8601), all in UTC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from engine.errors import NurtureError

_DURATION = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class TimeError(NurtureError, ValueError):
    """A duration or time that does not parse or is out of range; ``str()`` says which."""


def parse_duration(text: object, zero: bool = False) -> timedelta:
    """``"7d"`` → 7 days (``"0d"`` only with ``zero``: a campaign step may wait nothing).
    Raises ValueError with a sentence a marketer can act on."""
    match = _DURATION.match(str(text)) if isinstance(text, str | int) else None
    if not match or (int(match.group(1)) == 0 and not zero):
        raise TimeError(
            f"bad duration {text!r}: write a whole number and a unit (s, m, h, d, w), e.g. 7d"
        )
    return timedelta(seconds=int(match.group(1)) * _UNITS[match.group(2)])


def parse_instant(value: object) -> datetime:
    """An ISO 8601 time (a trailing Z allowed; no zone means UTC) → an aware UTC datetime."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            raise TimeError(f"not an ISO 8601 time: {value!r}") from None
    else:
        raise TimeError(f"not an ISO 8601 time: {value!r}")
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+14:00 is before year 1 in UTC
        raise TimeError(f"time out of range: {value!r}") from None


def utcnow() -> datetime:
    return datetime.now(UTC)


def epoch(moment: datetime) -> int:
    """Whole seconds since 1970 (decay SQL does its arithmetic on these)."""
    return int(moment.timestamp())


def isoformat(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")
