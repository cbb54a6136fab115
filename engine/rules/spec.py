"""The parsed form of a ruleset: what ``load`` produces and ``compile`` consumes."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache, cached_property
from typing import Any, Literal, Protocol

from engine.rules.account import Aggregate as AccountAggregate


def version_of(source: str) -> str:
    """The version of a ruleset or of a campaigns folder: a hash of its source text."""
    return hashlib.sha256(source.encode("utf-8", "surrogateescape")).hexdigest()[:12]


# Names of rules, components, bands, stages, tags and campaigns.
NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
# Lead fields the ruleset computes: neither an import nor a rule's `set:` writes them.
COMPUTED_FIELDS = frozenset({"score", "scores", "temperature", "stage", "tags"})
# What `lead.<name>` reads besides attributes.
BUILT_IN_FIELDS = ("score", "temperature", "stage", "tags", "email")

# The event type of a time evaluation (the scheduler's; records may not use it).
TIME_EVENT = "time"

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
class Sum:
    """The sum of a numeric ``property`` over the lead's events of ``type`` in the window of
    ``within`` ending at the evaluation (None: every event), compared ``op`` ``value``."""

    type: str
    property: str
    within: timedelta | None
    op: str
    value: int | float
    line: int


@dataclass(frozen=True)
class DaysSince:
    """Whole days from the lead's latest (``first``: first) event of ``type`` to the evaluation,
    compared ``op`` ``value``; missing (no comparison holds, ``not`` does) without such an event."""

    type: str
    first: bool
    op: str
    value: int | float
    line: int


# Conditions on the lead's event history, computed in Python before the engine matches.
Aggregate = Sum | DaysSince


@dataclass(frozen=True)
class All:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Test | Count | Sum | DaysSince | All | AnyOf | Not


def leaves(condition: Condition) -> Iterator[Condition]:
    """The tests, counts and aggregates of a condition, through any/all/not."""
    if isinstance(condition, Not):
        yield from leaves(condition.item)
    elif isinstance(condition, All | AnyOf):
        for item in condition.items:
            yield from leaves(item)
    else:
        yield condition


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
class NamedScore:
    """A score besides the lead score (``scores:``): the sum of ``components``, banded by
    ``bands`` ((band, lower bound), ascending)."""

    name: str
    components: tuple[str, ...]
    bands: tuple[tuple[str, int], ...]
    line: int

    def band(self, total: int) -> str:
        return _band(self.ranked_bands, total)

    @cached_property
    def total(self) -> Callable[[Mapping[str, int]], int]:
        """The score's total in a table of component scores."""
        return adder(self.components)

    @cached_property
    def ranked_bands(self) -> tuple[list[tuple[str, int]], str]:
        """The bands as :func:`band_of` searches them, worked out once: scores are banded
        several times per evaluation."""
        return _ranked(self.bands)


def band_of(bands: tuple[tuple[str, int], ...], total: int) -> str:
    """The band of ``total`` among ``bands`` (lower bounds inclusive; below them all, the
    lowest band)."""
    return _band(_ranked(bands), total)


def adder(names: Sequence[str]) -> Callable[[Mapping[str, int]], int]:
    """Adds up the scores of ``names`` in a table of component scores (a missing one counts 0):
    totals are worked out several times an evaluation round, so in C (``map`` over the table's
    ``get``): a lead often has no row for a component (no points yet), where an ``itemgetter``
    raised a KeyError costing four times the sum."""
    if not names:
        return lambda _: 0
    if len(names) == 1:
        [name] = names
        return lambda scores: scores.get(name, 0)
    names, zeros = tuple(names), (0,) * len(names)

    def total(scores: Mapping[str, int]) -> int:
        return sum(map(scores.get, names, zeros))

    return total


def _band(ranked: tuple[list[tuple[str, int]], str], total: int) -> str:
    bands, bottom = ranked
    for name, lower in bands:
        if total >= lower:
            return name
    return bottom


@cache
def _ranked(bands: tuple[tuple[str, int], ...]) -> tuple[list[tuple[str, int]], str]:
    return bands_from_top(bands), lowest_band(bands)


def bands_from_top(bands: Sequence[tuple[str, int]]) -> list[tuple[str, int]]:
    """The bands above the lowest, highest first: a total is in the first whose lower bound it
    reaches, else in the lowest. SQL banding (decay) is built from the same list."""
    bottom = lowest_band(bands)
    ranked = sorted(bands, key=lambda band: band[1], reverse=True)
    return [band for band in ranked if band[0] != bottom]


def lowest_band(bands: Sequence[tuple[str, int]]) -> str:
    return min(bands, key=lambda band: band[1])[0]


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
    account_aggregate: AccountAggregate = "sum"  # `account: {aggregate: ...}`: scores → account
    # Scores besides the lead score (`scores:`); the lead score sums the components they leave.
    scores: tuple[NamedScore, ...] = ()

    @property
    def all_stages(self) -> tuple[str, ...]:
        return self.stages + self.exits

    def band(self, score: int) -> str:
        """The temperature band of a lead score (lower bounds inclusive)."""
        return _band(self.ranked_temperature, score)

    @cached_property
    def ranked_temperature(self) -> tuple[list[tuple[str, int]], str]:
        """The temperature bands as :func:`band_of` searches them, worked out once."""
        return _ranked(self.temperature)

    @cached_property
    def modelled(self) -> tuple[Component, ...]:
        """The components a predictive model feeds."""
        return tuple(c for c in self.components.values() if c.model is not None)

    def bands_from_top(self) -> list[tuple[str, int]]:
        """The temperature bands above the lowest, highest first (see :func:`bands_from_top`)."""
        return bands_from_top(self.temperature)

    @property
    def bottom(self) -> str:
        """The lowest band: where every score below all other bounds falls."""
        return lowest_band(self.temperature)

    # -- named scores ------------------------------------------------------------------------
    @cached_property
    def claimed(self) -> dict[str, NamedScore]:
        """Component → the named score that counts it; the others make the lead score."""
        return {component: score for score in self.scores for component in score.components}

    @cached_property
    def lead_components(self) -> tuple[str, ...]:
        return tuple(name for name in self.components if name not in self.claimed)

    @cached_property
    def _lead_total(self) -> Callable[[Mapping[str, int]], int]:
        return adder(self.lead_components)

    def lead_score(self, scores: Mapping[str, int]) -> int:
        """The lead score: the sum of the components no named score claims."""
        if not self.scores:
            return sum(scores.values())
        return self._lead_total(scores)

    def totals(self, scores: Mapping[str, int]) -> dict[str, int]:
        """Each named score's total."""
        return {s.name: s.total(scores) for s in self.scores}

    def named_bands(self, totals: Mapping[str, int]) -> dict[str, str]:
        """Each named score's band, from :meth:`totals`."""
        return {s.name: _band(s.ranked_bands, totals[s.name]) for s in self.scores}

    def total_of(self, component: str, scores: Mapping[str, int]) -> int:
        """The total ``component`` counts toward: its named score's, else the lead score."""
        named = self.claimed.get(component)
        if named is None:
            return self.lead_score(scores)
        return named.total(scores)
