"""The parsed form of a ruleset: what ``load`` produces and ``compile`` consumes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, Protocol

from engine.rules.account import Aggregate


def version_of(source: str) -> str:
    """The version of a ruleset or of a campaigns folder: a hash of its source text."""
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# Names of rules, components, bands, stages, tags and campaigns.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# Lead fields the ruleset computes: neither an import nor a rule's `set:` writes them.
COMPUTED_FIELDS = frozenset({"score", "scores", "temperature", "stage", "tags"})
# What `lead.<name>` reads besides attributes.
BUILT_IN_FIELDS = ("score", "temperature", "stage", "tags", "email")

# Operators a `when` leaf may use, as docs/design.md lists them.
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "matches", "exists")
NUMERIC_OPERATORS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class PointsDecay:
    points: int
    every: timedelta


@dataclass(frozen=True)
class HalfLifeDecay:
    half_life: timedelta


class Predictor(Protocol):
    """A trained model that scores a lead from its attributes (see engine.analysis.predict)."""

    version: str

    def score(self, attributes: Mapping[str, Any]) -> int:
        """The lead's score, 0–100."""
        ...

    def prime(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Score many leads at once, so that ``score`` on each of them is a lookup."""
        ...


# The model at a ``model:`` path (as written in the ruleset); raises NurtureError saying why not.
ModelLoader = Callable[[str], Predictor]


@dataclass(frozen=True)
class Component:
    name: str
    min: int
    max: int
    decay: PointsDecay | HalfLifeDecay | None = None
    # Set, the component is fed by this model (``model:`` in YAML), not by rules.
    model: Predictor | None = field(default=None, compare=False, repr=False)
    model_path: str | None = None


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
        return next((name for name, lower in self.bands_from_top() if score >= lower), self.bottom)

    def bands_from_top(self) -> list[tuple[str, int]]:
        """The bands above the lowest, highest first: a score is in the first whose lower bound
        it reaches, else in :attr:`bottom`. SQL banding (decay) is built from the same list."""
        ranked = sorted(self.temperature, key=lambda band: band[1], reverse=True)
        return [band for band in ranked if band[0] != self.bottom]

    @property
    def bottom(self) -> str:
        """The lowest band: where every score below all other bounds falls."""
        return min(self.temperature, key=lambda band: band[1])[0]
