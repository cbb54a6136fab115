"""The parsed form of a ruleset: what ``load`` produces and ``compile`` consumes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal

from engine.rules.account import Aggregate

# Operators a `when` leaf may use, as DESIGN.md lists them.
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "matches", "exists")
NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class PointsDecay:
    points: int
    every: timedelta


@dataclass(frozen=True)
class HalfLifeDecay:
    half_life: timedelta


@dataclass(frozen=True)
class Component:
    name: str
    min: int
    max: int
    decay: PointsDecay | HalfLifeDecay | None = None


@dataclass(frozen=True)
class Test:
    """One comparison: ``path`` ``op`` ``value`` (e.g. lead.score gte 60)."""

    path: str
    op: str
    value: object
    line: int


@dataclass(frozen=True)
class Count:
    """How many of the lead's events of ``type`` lie in the window ending at this event."""

    type: str
    within: timedelta
    at_least: int | None
    at_most: int | None
    line: int


@dataclass(frozen=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Test | Count | All | AnyOf | Not


@dataclass(frozen=True)
class Effects:
    score: tuple[tuple[str, int], ...] = ()
    stage: str | None = None
    set: tuple[tuple[str, object], ...] = ()
    tags: tuple[str, ...] = ()
    alert: tuple[str, ...] = ()
    enroll: tuple[str, ...] = ()
    exit: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limit:
    """``times`` firings per lead within ``per``; ``per`` None means ever (``limit: once``)."""

    times: int
    per: timedelta | None


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    then: Effects
    limit: Limit | None
    line: int


ActionKind = Literal["alert", "enroll", "exit"]


@dataclass(frozen=True)
class Ruleset:
    name: str
    version: str  # short hash of the source text: ledger rows name the version that wrote them
    path: str
    components: dict[str, Component]
    temperature: tuple[tuple[str, int], ...]  # (band, lower bound), ascending
    stages: tuple[str, ...]
    exits: tuple[str, ...]
    rules: tuple[Rule, ...]
    max_chain: int = 20
    source: str = field(default="", repr=False)
    account_aggregate: Aggregate = "sum"  # `account: {aggregate: ...}`: leads' scores → account

    @property
    def all_stages(self) -> tuple[str, ...]:
        return self.stages + self.exits

    def band(self, score: int) -> str:
        """The temperature band of a total score (lower bounds inclusive)."""
        name = self.temperature[0][0]
        for band, lower in self.temperature:
            if score >= lower:
                name = band
        return name
