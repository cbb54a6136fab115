"""The bounds every number, name, text and list of a ruleset or campaign keeps to.

Each is chosen so that what passes ``nurture rules check`` can also be stored and evaluated: a
lead's total score stays far inside the database's 32-bit integers, names fit their columns,
numbers stay in the range the rules engine compares exactly. docs/design.md lists them.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TypeGuard

# A component's min and max, a rule's points, decay points and band lower bounds.
MAX_POINTS = 1_000_000
POINTS = (-MAX_POINTS, MAX_POINTS)
# With MAX_POINTS, a lead's total stays within ±10^8 (PostgreSQL's integer holds ±2.1×10^9).
MAX_COMPONENTS = 100
# Limit times, count thresholds, frequency caps.
MAX_TIMES = 1_000_000
MAX_CHAIN = 1_000
# Numbers compared or set: the rules engine compares integers exactly up to about 9×10^15.
MAX_NUMBER = 10**15
# Characters of a text compared or set.
MAX_TEXT = 1_000
# Characters of a name (rule, component, stage, tag, alert, campaign, attribute); a temperature
# band's name goes into a column of 32.
MAX_NAME = 64
MAX_BAND_NAME = 32
# Values of an `in` / `not_in` list.
MAX_LIST = 1_000
# `any`, `all` and `not` inside each other.
MAX_NESTING = 32
# A decay's period or half-life (see load._decay_period).
MIN_DECAY_PERIOD = timedelta(hours=1)
# Steps of one campaign.
MAX_STEPS = 100
# durable-rules hangs at 512 rules in one ruleset (docs/durable-rules.md).
MAX_RULES = 400


def whole(value: object, low: int, high: int) -> TypeGuard[int]:
    """``value`` is an integer (not a bool) within ``low``..``high``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def span(low: int, high: int) -> str:
    return f"a whole number from {low:,} to {high:,}"


def number_problem(value: object) -> str | None:
    """Why a number cannot be compared or stored, or None (also None for non-numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return f"numbers must be finite, got {value!r}"
    if abs(value) > MAX_NUMBER:
        return f"numbers are at most 10^15 in size, got {value!r}"
    return None


def text_problem(value: object) -> str | None:
    if isinstance(value, str) and len(value) > MAX_TEXT:
        return f"a text has at most {MAX_TEXT:,} characters, got {len(value):,}"
    return None


def value_problem(value: object) -> str | None:
    """Why a scalar cannot be compared with or stored, or None."""
    return number_problem(value) or text_problem(value)


def name_problem(name: object, what: str, longest: int = MAX_NAME) -> str | None:
    """Why ``name`` cannot name a ``what``, or None."""
    if not isinstance(name, str) or not name:
        return f"{what} needs a name"
    if len(name) > longest:
        return f"{what} name {name[:20]!r}… is {len(name)} characters; at most {longest} characters"
    return None
