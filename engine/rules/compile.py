"""A :class:`~engine.rules.spec.Ruleset` → a durable-rules ruleset plus the fact encoder it needs.

durable-rules decides which rules match. We feed it one flat fact per evaluation round and read
back the rules whose actions ran. The fact is built only from what the rules reference, with
values put in the shape the engine compares soundly (see ``docs/durable-rules.md``):

* ``v<i>``  the value of a field, strings folded to lower case (comparisons ignore case);
* ``e<i>``  the same value under a key of one string a condition compares the field with, sent
  only when the value may equal it (see ``_one_hot``: the engine compares a key's tests in turn);
* ``n<i>``  its numeric value, only when it is a number (the engine orders ``'abc' >= 5`` true);
* ``h<i>`` / ``hn<i>``  whether the field / its number is present (``$nex`` hangs the engine, and
  negations need "missing" to count as "not equal");
* ``x<i>``  the result of a ``matches`` or ``contains`` test, computed in Python (see
  ``patterns``) because marketers write Python regexes that the engine's own dialect cannot parse;
* ``c<i>``  an event count over a window; ``l<i>`` a rule's firings within its limit window;
* ``a<i>`` / ``ha<i>``  a ``sum`` or ``days_since`` over the lead's events, and whether it has one
  (``days_since`` is missing without an event of its type).

``not`` is pushed down to the leaves (the engine has no negation operator).
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from typing import Any, Protocol

import durable_rules_engine as c_engine

from engine.errors import NurtureError
from engine.rules import patterns, spec
from engine.rules.history import Place, Tallies
from engine.rules.history import window_start as window_start  # its users import it from here

# durable-rules refuses facts with more than ~253 properties (error 302).
MAX_FACT_FIELDS = 240
# durable-rules keeps a rule's and/or groups in one sequence of at most 31 entries, two per group
# (error 113 beyond). Each any/all, `in` list, negated test (ne, not) and limit makes a group.
MAX_GROUPS = 15
# durable-rules builds a network of tests (rete.c, createAlpha): the tests that follow one node
# sit in a hash set of 512 slots, and looking a test up in a full one loops for ever; the rules
# ending at one node have 256 slots, the `$or` joins leaving one 128 (errors 108 and 107).
MAX_FANOUT = 500
MAX_ENDINGS = 250
MAX_JOINS = 120
# Rules plus residuals (see `_residuals`) in one engine ruleset: 512 hang its creation.
MAX_RULES = 400
# Remembered serialisations of field values (see CompiledRuleset.text) before starting afresh.
MEMO_SIZE = 50_000
# json.dumps with arguments builds an encoder per call; facts are serialised many times a record.
_to_json = json.JSONEncoder(ensure_ascii=False, check_circular=False).encode
# Stands in for a value no rule can equal: rule values are stripped, this one is not.
UNCOMPARABLE = " (no comparable value) "


class History(Protocol):
    """What the evaluator may ask about a lead's past; the caller answers from memory or SQL."""

    def count_events(self, type: str, start: datetime, end: datetime) -> int:
        """Events of ``type`` with start < occurred_at ≤ end."""
        ...

    def count_firings(self, rule: str, start: datetime | None, end: datetime) -> int:
        """Firings of ``rule`` with start < at ≤ end (``start`` None: ever)."""
        ...

    def sum_values(self, type: str, key: str, start: datetime | None, end: datetime) -> float:
        """The sum of the numeric ``properties[key]`` of events of ``type`` with start <
        occurred_at ≤ end (``start`` None: ever); values that are not numbers are skipped."""
        ...

    def event_time(self, type: str, first: bool, end: datetime) -> datetime | None:
        """The latest (``first``: the first) time of an event of ``type`` at or before ``end``."""
        ...

    def tally(self, tallies: Tallies, windows: Sequence[timedelta], end: datetime) -> list[int]:
        """:meth:`count_events` and :meth:`count_firings` for every count of ``tallies``, each
        from ``end - windows[window]`` (window None: ever) to ``end``, in their places."""
        ...

    def has_events(self, type: str) -> bool:
        """Whether the lead has an event of ``type`` (at any time)."""
        ...


class CompileError(NurtureError):
    """The rules engine cannot take a ruleset; ``line`` is the rule's (0: the whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


def normalise(value: Any) -> Any:
    """A value the engine can take: no exponent-form floats (error 204), strings folded."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return max(min(value, 2**53), -(2**53))
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value.is_integer() and abs(value) < 2**53:
            return int(value)
        if abs(value) >= 1e15:
            return math.copysign(999999999999999.0, value)
        rounded = round(value, 6)
        return 0 if abs(rounded) < 1e-4 else rounded
    if isinstance(value, str):
        text = value.strip().casefold()
        if not text.isascii():
            # A lone surrogate (JSON may write "\ud800") makes the engine fail: replace it.
            text = text.encode("utf-8", "replace").decode("utf-8")
        return text
    return None


def as_number(value: Any) -> int | float | None:
    """The numeric reading of a field: numbers, and strings that spell one ("12000")."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        result = normalise(value)
        return result if isinstance(result, int | float) else None
    if isinstance(value, str):
        try:
            return as_number(float(value.replace(",", "").strip()))
        except ValueError:
            return None
    return None


Getter = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]


def _field(path: str) -> str | None:
    """The key of the ``lead.*`` view (see ``evaluate.state_fields``) a rule path reads, when
    reading it is one lookup there (not a named score or band, nor an event property)."""
    if path == "event.type":
        return path
    parts = path.split(".")
    if parts[0] != "lead" or (parts[1] in ("scores", "bands") and len(parts) == 3):
        return None
    return path.removeprefix("lead.") if parts[1] == "account" and len(parts) == 3 else parts[1]


@functools.lru_cache(maxsize=4096)
def getter(path: str) -> Getter:
    """Reads the value at a rule path from (``lead.*`` view, event properties); a path is
    parsed once, not per fact."""
    parts = path.split(".")
    field = _field(path)
    if field is not None:
        return lambda fields, _: fields.get(field)
    if parts[0] == "lead":  # a named score or band
        table, name = parts[1], parts[2]
        return lambda fields, _: fields.get(table, {}).get(name)
    key, steps = ".".join(parts[2:]), parts[2:]

    def from_event(_: Mapping[str, Any], properties: Mapping[str, Any]) -> Any:
        if key in properties:
            return properties[key]
        node: Any = properties
        for part in steps:
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    return from_event


def lookup(state_fields: Mapping[str, Any], properties: Mapping[str, Any], path: str) -> Any:
    """The value at a rule path: ``lead.*`` from ``state_fields``, ``event.properties.*``."""
    return getter(path)(state_fields, properties)


def _feature(test: spec.Test, path: str) -> Callable[[Any], bool]:
    if test.op == "matches":
        search = patterns.search(str(test.value), f"{path}:{test.line}")
        # Each search may take its whole time bound: a list is searched in its first items.
        return lambda v: _any_item(v, lambda item: search(str(item)), patterns.MAX_ITEMS)
    needle = str(test.value).casefold()
    return lambda v: _any_item(
        v,
        lambda item: needle in str(item).casefold() if isinstance(v, str) else needle == item,
    )


def _any_item(value: Any, check: Callable[[Any], bool], limit: int | None = None) -> bool:
    """``check`` holds for ``value``, or for one of its first ``limit`` items (all: None)."""
    if value is None:
        return False
    if isinstance(value, list | tuple | set):
        items = itertools.islice(value, limit)
        return any(check(normalise(item) if isinstance(item, str) else item) for item in items)
    return check(value)


@dataclass
class _Encoder:
    """Assigns fact keys and remembers how to fill them."""

    values: dict[str, str] = field(default_factory=dict)  # path → v<i>
    numbers: dict[str, str] = field(default_factory=dict)  # path → n<i>
    present: dict[str, str] = field(default_factory=dict)  # path → h<i>
    number_present: dict[str, str] = field(default_factory=dict)  # path → hn<i>
    features: list[tuple[str, str, Callable[[Any], bool]]] = field(default_factory=list)
    counts: list[tuple[str, spec.Count]] = field(default_factory=list)
    limits: list[tuple[str, spec.Rule]] = field(default_factory=list)
    tests: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (path, op, value) → x<i>
    path: str = "<ruleset>"  # names the ruleset in what `matches` tests log
    # (value key, present key, the aggregate): one pair per distinct sum / days_since
    aggregates: list[tuple[str, str, spec.Aggregate]] = field(default_factory=list)
    _next: int = 0

    def _key(self, table: dict[str, str], prefix: str, path: str) -> str:
        if path not in table:
            table[path] = f"{prefix}{self._next}"
            self._next += 1
        return table[path]

    def value(self, path: str) -> str:
        return self._key(self.values, "v", path)

    def number(self, path: str) -> str:
        return self._key(self.numbers, "n", path)

    def has(self, path: str) -> str:
        return self._key(self.present, "h", path)

    def has_number(self, path: str) -> str:
        return self._key(self.number_present, "hn", path)

    def feature(self, test: spec.Test) -> str:
        """The key of a ``matches`` / ``contains`` test; the same test elsewhere (a title
        pattern and its negation) shares it: one search per value, one key less per fact."""
        known = (test.path, test.op, str(test.value))
        key = self.tests.get(known)
        if key is None:
            key = self.tests[known] = f"x{self._next}"
            self._next += 1
            self.features.append((key, test.path, _feature(test, self.path)))
        return key

    def count(self, count: spec.Count) -> str:
        for key, known in self.counts:
            if (known.type, known.within) == (count.type, count.within):
                return key
        key = f"c{self._next}"
        self._next += 1
        self.counts.append((key, count))
        return key

    def limit(self, rule: spec.Rule) -> str:
        key = f"l{self._next}"
        self._next += 1
        self.limits.append((key, rule))
        return key

    def aggregate(self, aggregate: spec.Aggregate) -> tuple[str, str]:
        """The (value, present) keys of an aggregate; equal aggregates share them."""
        for value, present, known in self.aggregates:
            if aggregate_key(known) == aggregate_key(aggregate):
                return value, present
        value, present = f"a{self._next}", f"ha{self._next}"
        self._next += 2
        self.aggregates.append((value, present, aggregate))
        return value, present

    @property
    def size(self) -> int:
        return self._next + 1  # + the fact id

    def assigned(self) -> list[tuple[str, str]]:
        """(path, key) of every key a field fills."""
        tables = (self.values, self.numbers, self.present, self.number_present)
        found = [(path, key) for table in tables for path, key in table.items()]
        return found + [(path, key) for key, path, _ in self.features]


@dataclass(frozen=True)
class _Plan:
    """The fact keys one field fills (None where no rule needs that shape of it)."""

    path: str
    get: Getter
    present: str | None
    value: str | None
    number: str | None
    number_present: str | None
    features: tuple[tuple[str, Callable[[Any], bool]], ...]
    # The key of the ``lead.*`` view the value sits under when ``get`` only looks it up there:
    # read without a call, as facts are built many times a record.
    view_key: str | None = None
    # A string, int or None value → its members (see CompiledRuleset.text): none of them equals
    # a value of another of these types (True == 1, but a bool is not an int here), so the
    # value alone is the key, with no tuple to build and hash.
    parts: dict[str | int | None, str] = field(default_factory=dict, compare=False)
    # The value's string equalities on keys of their own (see `_one_hot`): constant → key, and
    # the keys by the first character of their constant.
    equals: Mapping[str, str] = field(default_factory=dict, compare=False)
    by_first: Mapping[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    # (key, boolean) pairs no condition tests for: left out of the fact (see `_plans`).
    omit: frozenset[tuple[str, bool]] = frozenset()


def _plans(
    enc: _Encoder,
    read: frozenset[str] | None = None,
    equalities: Mapping[str, Mapping[str, str]] | None = None,
    tested: Mapping[str, set[bool]] | None = None,
) -> list[_Plan]:
    """What each field fills: every key the encoder assigned, or (``read``) only the keys some
    condition reads (the encoder assigns presence keys that only negations use, and each key
    costs the engine a hash probe at every node a fact passes), with the string equalities of
    ``equalities`` (value key → constant → key, see `_one_hot`). ``tested``: boolean key → the
    values conditions compare it with; a value none compares it with is left out, since a
    missing key fails an equality test as any other value does (``{"x3": true}`` when the
    title matches no pattern: most facts)."""

    def only(key: str | None) -> str | None:
        return key if read is None or key in read else None

    def omitted(*keys: str | None) -> frozenset[tuple[str, bool]]:
        if tested is None:
            return frozenset()
        return frozenset(
            (key, value)
            for key in keys
            if key is not None
            for value in (False, True)
            if value not in tested.get(key, ())
        )

    tables = (enc.present, enc.values, enc.numbers, enc.number_present)
    paths = sorted({p for table in tables for p in table} | {p for _, p, _ in enc.features})
    plans = []
    for path in paths:
        present, number_present = only(enc.present.get(path)), only(enc.number_present.get(path))
        features = tuple((key, check) for key, p, check in enc.features if p == path and only(key))
        equals = dict((equalities or {}).get(enc.values.get(path, ""), {}))
        by_first: dict[str, tuple[str, ...]] = {}
        for constant, key in equals.items():
            by_first[constant[:1]] = (*by_first.get(constant[:1], ()), key)
        plans.append(
            _Plan(
                path,
                getter(path),
                present,
                only(enc.values.get(path)),
                only(enc.numbers.get(path)),
                number_present,
                features,
                _field(path),
                equals=equals,
                by_first=by_first,
                omit=omitted(present, number_present, *(key for key, _ in features)),
            )
        )
    return [
        p
        for p in plans
        if p.present or p.value or p.number or p.number_present or p.features or p.equals
    ]


def _one_hot(
    conditions: Sequence[dict[str, Any]], value_keys: Mapping[str, str]
) -> tuple[list[dict[str, Any]], dict[str, dict[str, str]]]:
    """The conditions with each test of a field's value for equality with a string
    (``{"v11": "us"}``) on a key of its own (``{"e3": "us"}``), and value key → constant →
    its key. durable-rules tests every node on a key in turn (a hash set probed by the key's
    name, then each test compared: rete.c, handleAlpha), so fourteen countries cost fourteen
    comparisons on every fact; on keys of their own, a fact carries only the keys its value
    may equal (see `_equal_keys`) and reaches one node, and the engine still compares it.
    Negated tests (``$neq``) stay on the value key: a missing key does not match them."""
    keys: dict[str, dict[str, str]] = {}
    fresh = itertools.count()

    def rewrite(condition: dict[str, Any]) -> dict[str, Any]:
        ((key, value),) = condition.items()
        if key in ("$and", "$or"):
            return {key: [rewrite(item) for item in value]}
        if key in value_keys and type(value) is str:
            table = keys.setdefault(key, {})
            if value not in table:
                table[value] = f"e{next(fresh)}"
            return {table[value]: value}
        return condition

    return [rewrite(condition) for condition in conditions], keys


def _equal_keys(plan: _Plan, value: Any, fact: dict[str, Any]) -> None:
    """Fill the keys of ``plan``'s string equalities (see `_one_hot`) that the normalised
    ``value`` may equal: a string, the key of that very string (durable-rules compares strings
    byte for byte over the longer length, and both sides are written by the same JSON encoder);
    a number or boolean, which the engine compares with a string as its text (``%lld``,
    ``%f``, "true "), the keys whose constant starts with that text's first character. The
    engine tests the value against each key's constant, as it tests the value key."""
    if type(value) is str:
        key = plan.equals.get(value)
        if key is not None:
            fact[key] = value
        return
    if isinstance(value, bool):
        text = "true" if value else "false"
    else:
        text = str(value) if isinstance(value, int) else f"{value:f}"
    for key in plan.by_first.get(text[:1], ()):
        fact[key] = value


def _derived(ruleset: spec.Ruleset, path: str) -> bool:
    """``path`` may read a value ``evaluate.own_fields`` leaves out: anything under
    ``lead.bands``, ``lead.account`` or ``lead.scores`` but a component's score."""
    parts = path.split(".")
    if parts[0] != "lead" or parts[1] not in ("scores", "bands", "account"):
        return False
    return parts[1] != "scores" or len(parts) != 3 or parts[2] not in ruleset.components


def _read(condition: Mapping[str, Any]) -> set[str]:
    """The fact keys a compiled condition tests."""
    keys: set[str] = set()
    for key, value in condition.items():
        if key in ("$and", "$or"):
            keys = keys.union(*(_read(item) for item in value))
        elif key.startswith("$"):
            keys.update(value)
        else:
            keys.add(key)
    return keys


def _equalities(condition: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """The (key, value) of each equality test in a compiled condition."""
    for key, value in condition.items():
        if key in ("$and", "$or"):
            for item in value:
                yield from _equalities(item)
        elif not key.startswith("$"):
            yield key, value


def _widest_fact(
    conditions: Sequence[Mapping[str, Any]], equalities: Mapping[str, Mapping[str, str]]
) -> int:
    """The most keys a fast-path fact can carry (with its id): each key the conditions read,
    but of a value's string equalities only those its value may equal (see `_equal_keys`)."""
    read = set().union(*(_read(condition) for condition in conditions))
    widest = len(read) + 1
    for table in equalities.values():
        firsts = Counter(constant[:1] for constant in table)
        widest += max(firsts.values()) - len(table)
    return widest


def _encode_value(plan: _Plan, raw: Any, fact: dict[str, Any]) -> None:
    """Fill the fact keys of one field's ``plan`` from its value ``raw``."""
    if plan.present:
        fact[plan.present] = raw not in (None, "", [], {})
    if (plan.value or plan.equals) and raw is not None:
        value = None if isinstance(raw, list | dict) else normalise(raw)
        # A present value with no scalar reading (a list, NaN) equals nothing, so its
        # negations hold: the engine's `$neq` against None would not match.
        value = UNCOMPARABLE if value is None else value
        if plan.value:
            fact[plan.value] = value
        if plan.equals:
            _equal_keys(plan, value, fact)
    if plan.number or plan.number_present:
        number = as_number(raw)
        if plan.number_present:
            fact[plan.number_present] = number is not None
        if plan.number and number is not None:
            fact[plan.number] = number
    for key, check in plan.features:
        fact[key] = check(raw)
    for key, value in plan.omit:
        if fact.get(key) is value:
            del fact[key]


def _members(plan: _Plan, raw: Any, memo: dict[Any, str] | None, key: Any) -> str:
    """The fact keys of ``plan`` for the value ``raw`` as JSON members (see
    ``CompiledRuleset.text``), remembered in ``memo`` under ``key`` (no memo: not remembered)."""
    values: dict[str, Any] = {}
    timeouts = patterns.timeouts
    _encode_value(plan, raw, values)
    part = _to_json(values)[1:-1] + ", " if values else ""
    # A search that timed out counts as no match, and as a timeout each time.
    if memo is not None and patterns.timeouts == timeouts:
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = part
    return part


def _either(*parts: dict[str, Any]) -> dict[str, Any]:
    return parts[0] if len(parts) == 1 else {"$or": list(parts)}


def _both(*parts: dict[str, Any]) -> dict[str, Any]:
    return parts[0] if len(parts) == 1 else {"$and": list(parts)}


class _ConditionCompiler:
    def __init__(self, encoder: _Encoder) -> None:
        self.enc = encoder

    def compile(self, condition: spec.Condition, negate: bool = False) -> dict[str, Any]:
        if isinstance(condition, spec.Not):
            return self.compile(condition.item, not negate)
        if isinstance(condition, spec.All | spec.AnyOf):
            parts = [self.compile(item, negate) for item in condition.items]
            conjunctive = isinstance(condition, spec.All) != negate
            return _both(*parts) if conjunctive else _either(*parts)
        if isinstance(condition, spec.Count):
            return self.count(condition, negate)
        if isinstance(condition, spec.Sum | spec.DaysSince):
            key, present = self.enc.aggregate(condition)
            return _compare(key, present, condition.op, normalise(condition.value), negate)
        return self.test(condition, negate)

    def count(self, count: spec.Count, negate: bool) -> dict[str, Any]:
        key = self.enc.count(count)
        bounds = []
        if count.at_least is not None:
            bounds.append(("$lt", "$gte", count.at_least))
        if count.at_most is not None:
            bounds.append(("$gt", "$lte", count.at_most))
        if negate:
            return _either(*({op: {key: n}} for op, _, n in bounds))
        return _both(*({op: {key: n}} for _, op, n in bounds))

    def test(self, test: spec.Test, negate: bool) -> dict[str, Any]:
        op, value, path = test.op, test.value, test.path
        if path == "lead.tags" and op in ("eq", "ne", "in", "not_in"):
            # Tags are a set: equality means membership.
            names = value if isinstance(value, list) else [value]
            parts = [spec.Test(path, "contains", str(name), test.line) for name in names]
            inner: spec.Condition = parts[0] if len(parts) == 1 else spec.AnyOf(tuple(parts))
            return self.compile(inner, negate != (op in ("ne", "not_in")))
        if op in ("ne", "not_in"):
            return self.test(
                spec.Test(path, "eq" if op == "ne" else "in", value, test.line), not negate
            )
        if op == "in":
            assert isinstance(value, list)
            if negate:
                return self.none_of(path, value)
            options = [self.test(spec.Test(path, "eq", item, test.line), False) for item in value]
            return _either(*options)
        if op == "exists":
            return {self.enc.has(path): bool(value) != negate}
        if op in ("contains", "matches"):
            return {self.enc.feature(test): not negate}
        if value is None:  # `field: null` means "is missing"
            return {self.enc.has(path): negate}
        if isinstance(value, bool) or not isinstance(value, int | float):
            key, present = self.enc.value(path), self.enc.has(path)
            expected = normalise(value)
            if negate:
                return _either({"$neq": {key: expected}}, {present: False})
            return {key: expected}
        return _compare(
            self.enc.number(path), self.enc.has_number(path), op, normalise(value), negate
        )

    def none_of(self, path: str, values: list[Any]) -> dict[str, Any]:
        """``not_in``: each comparison fails, or the field is missing. "Missing" is factored out
        so a long list costs two groups, not one per value (see MAX_GROUPS)."""
        parts: list[dict[str, Any]] = []
        comparisons: dict[str, list[dict[str, Any]]] = {}  # missing flag → its comparisons
        for item in values:
            if item is None:
                parts.append({self.enc.has(path): True})
            elif isinstance(item, bool) or not isinstance(item, int | float):
                key, missing = self.enc.value(path), self.enc.has(path)
                comparisons.setdefault(missing, []).append({"$neq": {key: normalise(item)}})
            else:
                key, missing = self.enc.number(path), self.enc.has_number(path)
                comparisons.setdefault(missing, []).append({"$neq": {key: normalise(item)}})
        for missing, group in comparisons.items():
            parts.append(_either(_both(*group), {missing: False}))
        return _both(*parts)


def _compare(key: str, present: str, op: str, number: Any, negate: bool) -> dict[str, Any]:
    """A numeric comparison of fact key ``key``; negated, it also holds when the value is
    missing (``present`` false)."""
    if op == "ne":
        return _compare(key, present, "eq", number, not negate)
    engine_op = {"eq": "", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}[op]
    if negate:
        opposite = {"": "$neq", "$gt": "$lte", "$gte": "$lt", "$lt": "$gte", "$lte": "$gt"}
        return _either({opposite[engine_op]: {key: number}}, {present: False})
    return {engine_op: {key: number}} if engine_op else {key: number}


def aggregate_key(aggregate: spec.Aggregate) -> tuple[object, ...]:
    """What an aggregate computes, whatever it is compared with."""
    if isinstance(aggregate, spec.Sum):
        return ("sum", aggregate.type, aggregate.property, aggregate.within)
    return ("days_since", aggregate.type, aggregate.first)


def aggregate_value(aggregate: spec.Aggregate, history: History, at: datetime) -> Any:
    """The value of an aggregate at ``at``: a sum (0 without events), or whole days (None
    without an event of the type)."""
    if isinstance(aggregate, spec.Sum):
        start = None if aggregate.within is None else window_start(at, aggregate.within)
        return normalise(float(history.sum_values(aggregate.type, aggregate.property, start, at)))
    moment = history.event_time(aggregate.type, aggregate.first, at)
    return None if moment is None else (at - moment).days


def _rule_condition(compiler: _ConditionCompiler, rule: spec.Rule) -> dict[str, Any]:
    condition = compiler.compile(rule.when)
    if rule.limit is not None:
        condition = _both(condition, {"$lt": {compiler.enc.limit(rule): rule.limit.times}})
    return condition


def _limit_first(condition: dict[str, Any], rule: spec.Rule) -> dict[str, Any]:
    """A limited rule's condition with its limit (last, see `_rule_condition`) first.
    durable-rules looks up a node's tests by each key of a fact, probing from slot `hash & 31`
    of the node's table through the run its tests fill (rete.c, handleAlpha), so every test
    moved off the first node, which every fact passes, shortens every fact's lookups; the
    limit's own node is passed only by leads under the limit."""
    if rule.limit is None:
        return condition
    *tests, limit = condition["$and"]
    return {"$and": [limit, *tests]}


def _groups(condition: Mapping[str, Any]) -> int:
    return sum(
        1 + sum(_groups(item) for item in value)
        for key, value in condition.items()
        if key in ("$and", "$or")
    )


def _crowded(conditions: Sequence[Mapping[str, Any]]) -> int | None:
    """The index of the first condition with which durable-rules' network overfills a node
    (see MAX_FANOUT), built as its createAlpha builds it: a test is shared by every rule that
    reaches it through the same tests, ``$and`` chains tests, and ``$or`` puts its options after
    the same node and joins them in a node of its own."""
    after: dict[tuple[str, ...], set[str]] = {}  # node → the tests that follow it
    endings: Counter[tuple[str, ...]] = Counter()
    joins: Counter[tuple[str, ...]] = Counter()
    fresh = itertools.count()
    full = False

    def build(expression: Mapping[str, Any], node: tuple[str, ...]) -> tuple[str, ...]:
        nonlocal full
        if "$and" in expression:
            for item in expression["$and"]:
                node = build(item, node)
            return node
        if "$or" in expression:
            for item in expression["$or"]:
                option = build(item, node)
                joins[option] += 1
                full = full or joins[option] > MAX_JOINS
            return (f"or{next(fresh)}",)
        test = json.dumps(expression, sort_keys=True)
        tests = after.setdefault(node, set())
        tests.add(test)
        full = full or len(tests) > MAX_FANOUT
        return (*node, test)

    for index, condition in enumerate(conditions):
        end = build(condition, ())
        endings[end] += 1
        if full or endings[end] > MAX_ENDINGS:
            return index
    return None


def engine_problems(rules: Sequence[spec.Rule]) -> list[tuple[spec.Rule | None, str]]:
    """What durable-rules would refuse in ``rules``, or hang on, as (the rule, or None for the
    whole ruleset; a sentence): found without registering anything (the engine keeps every
    ruleset it is given)."""
    encoder = _Encoder()
    compiler = _ConditionCompiler(encoder)
    conditions = [_rule_condition(compiler, rule) for rule in rules]
    found: list[tuple[spec.Rule | None, str]] = []
    for rule, condition in zip(rules, conditions, strict=True):
        groups = _groups(condition)
        if groups > MAX_GROUPS:
            found.append(
                (
                    rule,
                    f"rule {rule.name!r} is too complex for the rules engine: {groups} and/or "
                    "groups (any, all, not, ne, in, limit and conditions side by side each make "
                    f"one), at most {MAX_GROUPS}; split it into simpler rules",
                )
            )
    if encoder.size > MAX_FACT_FIELDS:
        found.append(
            (
                None,
                f"the rules read {encoder.size} distinct fields and tests; the rules engine "
                f"takes at most {MAX_FACT_FIELDS}: split the ruleset",
            )
        )
    crowded = _crowded(conditions)
    if crowded is not None:
        rule = rules[crowded]
        found.append(
            (
                rule,
                f"rule {rule.name!r}: the rules engine cannot take this many tests of one kind: "
                f"at most {MAX_FANOUT} values of one field after the same conditions (an `in` "
                f"list, or rules comparing one field with many values), at most {MAX_ENDINGS} "
                "rules with the same conditions, and one condition in at most "
                f"{MAX_JOINS} `any` lists; shorten the lists or split the ruleset",
            )
        )
    return found


def _reads(condition: spec.Condition) -> set[str]:
    """State tokens a condition depends on (see ``apply`` in evaluate)."""
    if isinstance(condition, spec.Not):
        return _reads(condition.item)
    if isinstance(condition, spec.All | spec.AnyOf):
        return set().union(*(_reads(item) for item in condition.items))
    if isinstance(condition, spec.Test):
        return _tokens(condition.path)
    return set()


def _tokens(path: str) -> set[str]:
    """The state tokens the value at ``path`` depends on (none for the event's)."""
    if not path.startswith("lead."):
        return set()
    token = path.removeprefix("lead.")
    # The account's score counts the lead's own score, so it moves when that does.
    return {token, "score"} if token == "account.score" else {token}


def token_class(token: str) -> str:
    """State tokens that change together (a score's points move its total, the lead score, the
    temperature and bands) make one class; any other token is a class of its own."""
    if token in ("score", "temperature", "account.score"):
        return "score"
    if token.startswith(("scores.", "bands.")):
        return "score"
    return token


def _written(rules: Sequence[spec.Rule]) -> set[str]:
    """The token classes some rule's action can change mid-evaluation."""
    found: set[str] = set()
    for rule in rules:
        then = rule.then
        found.update(["score"] if then.score else [])
        found.update(["stage"] if then.stage is not None else [])
        found.update(["tags"] if then.tags else [])
        found.update(token_class(attribute) for attribute, _ in then.set)
    return found


def _conjuncts(condition: dict[str, Any]) -> list[dict[str, Any]]:
    if list(condition) == ["$and"]:
        return [part for item in condition["$and"] for part in _conjuncts(item)]
    return [condition]


def _residuals(
    conditions: Sequence[dict[str, Any]], written: set[str], key_tokens: Mapping[str, set[str]]
) -> tuple[list[dict[str, Any]], dict[tuple[int, str], int]]:
    """Conditions the engine matches beside the rules, so that a round that could fire nothing
    new is skipped on its word: for rule i whose condition is a conjunction, and a class c of
    tokens that an action can change, the conjuncts reading no token of c. When only tokens of c
    that rule i reads have changed since a fact on which that residual did not hold, rule i
    cannot hold on the next fact either (the residual's inputs are the same, and rule i implies
    it). Returns the residual conditions and (i, c) → the residual's index among them."""
    found: dict[str, int] = {}
    residuals: list[dict[str, Any]] = []
    index: dict[tuple[int, str], int] = {}
    for i, condition in enumerate(conditions):
        parts = _conjuncts(condition)
        classes = [
            {token_class(t) for key in _read(part) for t in key_tokens.get(key, ())}
            for part in parts
        ]
        for kind in sorted(written & set().union(*classes)):
            kept = [part for part, read in zip(parts, classes, strict=True) if kind not in read]
            if kept and len(kept) < len(parts):
                residual = _both(*kept)
                text = json.dumps(residual, sort_keys=True)
                if text not in found:
                    found[text] = len(residuals)
                    residuals.append(residual)
                index[(i, kind)] = found[text]
    return residuals, index


@dataclass(frozen=True)
class CompiledRule:
    rule: spec.Rule
    reads: frozenset[str]


_LOCK = threading.Lock()
_REGISTERED: dict[str, CompiledRuleset] = {}
# The engine's answers to assert_fact (rules.h): matched, nothing matched, id seen before.
_MATCHED, _NOT_HANDLED, _OBSERVED = 0, 1, 2


class CompiledRuleset:
    """A ruleset registered with durable-rules, and the encoder that builds its facts."""

    def __init__(self, ruleset: spec.Ruleset) -> None:
        self.ruleset = ruleset
        problems = engine_problems(ruleset.rules)
        if problems:
            rule, message = problems[0]
            raise CompileError(message, rule.line if rule else 0)
        self.enc = _Encoder(path=ruleset.path)
        compiler = _ConditionCompiler(self.enc)
        self.rules: list[CompiledRule] = []
        # Rule i is `r<i>`: the engine names the matched rule in each action it queues.
        self.definition: dict[str, Any] = {}
        for index, rule in enumerate(ruleset.rules):
            condition = _rule_condition(compiler, rule)
            self.definition[f"r{index}"] = {"all": [{"m": condition}]}
            self.rules.append(CompiledRule(rule, frozenset(_reads(rule.when))))
        plain = [rule["all"][0]["m"] for rule in self.definition.values()]
        # The engine's conditions test limits first (`_limit_first`) and string equalities on
        # keys of their own (`_one_hot`), unless a fact could then carry more keys than the
        # engine takes, or the reshaped network would overfill a node the loader checked only
        # in the plain shape. The plain path (reference.py) keeps `definition`.
        shaped = [_limit_first(c, rule) for c, rule in zip(plain, ruleset.rules, strict=True)]
        value_paths = {key: path for path, key in self.enc.values.items()}
        conditions, equalities = _one_hot(shaped, value_paths)
        if _widest_fact(conditions, equalities) > MAX_FACT_FIELDS:
            conditions, equalities = shaped, {}
        if _crowded(conditions) is not None:
            conditions, equalities = plain, {}
        # The fact keys some condition tests: the fast path sends only these.
        self.read = frozenset().union(*(_read(condition) for condition in conditions))
        self.all_reads = frozenset().union(*(rule.reads for rule in self.rules))
        # state token → the indices of the rules whose conditions read it
        self.readers = {
            token: frozenset(i for i, rule in enumerate(self.rules) if token in rule.reads)
            for token in self.all_reads
        }
        key_tokens = {key: _tokens(path) for path, key in self.enc.assigned()}
        for value_key, table in equalities.items():
            key_tokens.update((key, _tokens(value_paths[value_key])) for key in table.values())
        residuals, self.residual = _residuals(conditions, _written(ruleset.rules), key_tokens)
        if len(conditions) + len(residuals) > MAX_RULES or _crowded(conditions + residuals):
            residuals, self.residual = [], {}  # the engine could not take them: never skip
        # What the engine is given: the rules, then the residuals (r<len(rules) + j>).
        engine = {f"r{i}": {"all": [{"m": c}]} for i, c in enumerate(conditions + residuals)}
        self.engine_name = re.sub(r"\W", "_", f"{ruleset.name}_{ruleset.version}")
        try:
            # The C core itself, not durable's Python host: the host serialises every message
            # and action twice more and runs a Python callback per match, 5x the engine's cost.
            self._handle = c_engine.create_ruleset(
                self.engine_name, json.dumps(engine, ensure_ascii=False)
            )
        except Exception as error:  # the C core reports what it refuses as a bare error code
            raise CompileError(f"the rules engine refused the ruleset: {error}") from None
        self._fact_id = 0
        # The counts and limits of `history_values` as one `History.tally`: its windows, and a
        # query per value.
        windows = [count.within for _, count in self.enc.counts]
        windows += [r.limit.per for _, r in self.enc.limits if r.limit and r.limit.per]
        self._windows = list(dict.fromkeys(windows))
        slot = {window: i for i, window in enumerate(self._windows)}
        events: dict[str, tuple[Place, ...]] = {}
        firings: dict[str, tuple[Place, ...]] = {}
        for place, (_, count) in enumerate(self.enc.counts):
            events[count.type] = (*events.get(count.type, ()), (place, slot[count.within]))
        for place, (_, rule) in enumerate(self.enc.limits, len(self.enc.counts)):
            assert rule.limit is not None
            per = None if rule.limit.per is None else slot[rule.limit.per]
            firings[rule.name] = (*firings.get(rule.name, ()), (place, per))
        self._tallies = Tallies(events, firings, len(self.enc.counts) + len(self.enc.limits))

        # Each history value's JSON member name ('"c3": '), None where no condition reads it.
        def member(key: str) -> str | None:
            return f'"{key}": ' if key in self.read else None

        # A limited rule's firings are sent only while under its limit: a missing key fails the
        # limit's `$lt` test as a full count does, and each key costs the engine a hash probe at
        # every node a fact reaches (see `_plans`). None: no bound (a count).
        counted: list[tuple[str, int | None]] = [(key, None) for key, _ in self.enc.counts]
        counted += [
            (key, rule.limit.times if rule.limit else None) for key, rule in self.enc.limits
        ]
        self._tallied = [(member(key), bound) for key, bound in counted]
        self._aggregated = [(member(key), member(has)) for key, has, _ in self.enc.aggregates]
        # Each aggregate's value for a lead with no event of its type: a sum of nothing, no day.
        self._aggregate_empty = [
            (aggregate, 0 if isinstance(aggregate, spec.Sum) else None)
            for aggregate in self.aggregates
        ]
        # (path, type, value) → the JSON members of a field's fact keys (see `text`); the
        # history's items → its members (see `history_text`).
        self._texts: dict[tuple[Any, ...], str] = {}
        # Every key (the plain path's facts), and the keys read split into the lead's part
        # (each round) and the event's (once per evaluation).
        self.plans = _plans(self.enc)
        tested: dict[str, set[bool]] = {}
        for condition in conditions:
            for key, value in _equalities(condition):
                if type(value) is bool:
                    tested.setdefault(key, set()).add(value)
        plans = _plans(self.enc, self.read, equalities, tested)
        self.lead_plan = [plan for plan in plans if plan.path.startswith("lead.")]
        self.event_plan = [plan for plan in plans if not plan.path.startswith("lead.")]
        # Whether a round's fact needs what ``evaluate.state_fields`` derives beyond the lead's
        # own values (``evaluate.own_fields``): named scores' totals and bands, the account's
        # figures. Most rulesets read none of them, and working them out costs every round.
        self.reads_derived = any(_derived(ruleset, plan.path) for plan in self.lead_plan)

    def encode(
        self,
        fields: Mapping[str, Any],
        properties: Mapping[str, Any],
        plans: list[_Plan],
        fact: dict[str, Any],
    ) -> None:
        """Fill the fact keys of ``plans`` from the current lead and event values."""
        for plan in plans:
            _encode_value(plan, plan.get(fields, properties), fact)

    def text(
        self, fields: Mapping[str, Any], properties: Mapping[str, Any], plans: list[_Plan]
    ) -> str:
        """The fact keys of ``plans`` as JSON members, each followed by ", " (see
        :meth:`match_text`). A plan's members depend on its field's value alone, so each value's
        are serialised once and remembered: most leads share titles, countries, stages."""
        memo, text = self._texts, ""
        for plan in plans:
            view_key = plan.view_key
            raw = fields.get(view_key) if view_key is not None else plan.get(fields, properties)
            kind = type(raw)
            if kind is str or kind is int or raw is None:
                part = plan.parts.get(raw)
                if part is None:
                    part = _members(plan, raw, plan.parts, raw)
            else:
                remember: dict[Any, str] | None = memo
                try:
                    # The type is part of the key: True == 1 == 1.0, but they encode differently.
                    key = (plan.path, kind, raw)
                    part = memo.get(key)
                except TypeError:  # a list or dict: not hashable, encode it every time
                    remember, part = None, None
                if part is None:
                    part = _members(plan, raw, remember, key)
            text += part
        return text

    def history_values(self, history: History, at: datetime) -> tuple[Any, ...]:
        """The counts, the limited rules' firings and the aggregates (None: none) at ``at``."""
        count_events, count_firings = history.count_events, history.count_firings
        starts: dict[timedelta, datetime] = {}  # the windows repeat: work each start out once
        values: list[Any] = []
        for _, count in self.enc.counts:
            start = starts.get(count.within) or starts.setdefault(
                count.within, window_start(at, count.within)
            )
            values.append(count_events(count.type, start, at))
        for _, rule in self.enc.limits:
            assert rule.limit is not None
            per = rule.limit.per
            if per is None:
                values.append(count_firings(rule.name, None, at))
            else:
                start = starts.get(per) or starts.setdefault(per, window_start(at, per))
                values.append(count_firings(rule.name, start, at))
        values.extend(aggregate_value(aggregate, history, at) for aggregate in self.aggregates)
        return tuple(values)

    def history_fields(
        self, history: History, at: datetime, values: tuple[Any, ...] | None = None
    ) -> dict[str, Any]:
        """The fact keys of counts, limits and aggregates (of ``values`` when given)."""
        found = iter(values if values is not None else self.history_values(history, at))
        fact: dict[str, Any] = {}
        for key, _ in self.enc.counts:
            fact[key] = next(found)
        for key, _ in self.enc.limits:
            fact[key] = next(found)
        for key, present, _ in self.enc.aggregates:
            value = next(found)
            fact[present] = value is not None
            if value is not None:
                fact[key] = value
        return fact

    def history_text(self, history: History, at: datetime) -> str:
        """:meth:`history_fields` as JSON members (see :meth:`text`), the counts asked in one
        :meth:`History.tally`."""
        found: list[Any] = history.tally(self._tallies, self._windows, at)
        has_events = history.has_events
        for aggregate, empty in self._aggregate_empty:
            # Most leads have no event of an aggregate's type: its value is then known.
            found.append(
                aggregate_value(aggregate, history, at) if has_events(aggregate.type) else empty
            )
        values = tuple(found)
        # Most leads' counts are alike (mostly 0). Each place holds one type of value (a count,
        # a normalised number, None), so the values make a sound key.
        text = self._texts.get(values)
        if text is None:
            # The members straight from the values (counts are ints, as JSON writes them).
            counted, parts = len(self._tallied), []
            for (name, bound), value in zip(self._tallied, values, strict=False):
                if name and (bound is None or value < bound):
                    parts.append(f"{name}{value}, ")
            for (name, present), value in zip(self._aggregated, values[counted:], strict=True):
                if present:
                    parts.append(f"{present}{'false' if value is None else 'true'}, ")
                if name and value is not None:
                    parts.append(f"{name}{_to_json(value)}, ")
            text = "".join(parts)
            if len(self._texts) >= MEMO_SIZE:
                self._texts.clear()
            self._texts[values] = text
        return text

    def match(self, fact: Mapping[str, Any]) -> list[int]:
        """Indices of the rules whose conditions hold for ``fact``, in file order."""
        body = _to_json({k: v for k, v in fact.items() if k != "id"})
        return self.match_text(body[1:-1] + ", " if len(body) > 2 else "")

    def match_text(self, members: str) -> list[int]:
        """:meth:`match` for a fact given as JSON members, each followed by ", " (as
        :meth:`text` writes them), and of the residuals that hold for it (numbered after the
        rules: ``len(rules) + j``; see ``_residuals``). The fact is asserted in the one session
        the engine keeps for a ruleset (sid "0": live sessions are capped at 1,024), every
        action the match queued is taken and completed without running anything, and the fact
        is retracted so the engine holds nothing between evaluations."""
        handle, matched = self._handle, []
        with _LOCK:  # one session: an assert, its actions and its retract must not interleave
            for _ in range(3):
                self._fact_id += 1
                identity = f'"id": {self._fact_id}}}'  # the fact's last member, and its end
                code, state = c_engine.assert_fact(handle, f"{{{members}{identity}")
                # Message ids are 32-bit hashes: a collision is a false "seen"; take another id.
                if code != _OBSERVED:
                    break
            else:  # never seen here; answering "nothing matched" would be a wrong answer
                raise RuntimeError("durable-rules took three fresh fact ids for ones it had seen")
            try:
                if code == _MATCHED:
                    action = c_engine.start_action_for_state(handle, state)
                    message = action[1] if action is not None else None
                    while message is not None:
                        # '{"r12":{"m":…}}': the rule's index sits between '{"r' and '"'.
                        matched.append(int(message[3 : message.index('"', 3)]))
                        message = c_engine.complete_and_start_action(handle, state)
            except BaseException:
                c_engine.abandon_action(handle, state)
                raise
            finally:
                # The engine finds a fact to retract by its id alone: parsing the whole fact
                # again would cost as much as asserting it.
                c_engine.retract_fact(handle, "{" + identity)
        return sorted(set(matched))

    @property
    def count_windows(self) -> list[spec.Count]:
        return [count for _, count in self.enc.counts]

    @property
    def limited_rules(self) -> list[spec.Rule]:
        return [rule for _, rule in self.enc.limits]

    @cached_property
    def aggregates(self) -> list[spec.Aggregate]:
        """The distinct sums and days_since the rules read."""
        return [aggregate for _, _, aggregate in self.enc.aggregates]

    @cached_property
    def history_types(self) -> frozenset[str]:
        """Event types whose times the evaluator asks about (counts, sums, days_since)."""
        return frozenset([c.type for c in self.count_windows] + [a.type for a in self.aggregates])

    def amounts(self, type: str, properties: Mapping[str, Any]) -> dict[str, float]:
        """The numeric values of ``properties`` that a ``sum`` over ``type`` adds up."""
        found: dict[str, float] = {}
        for aggregate in self.aggregates:
            if isinstance(aggregate, spec.Sum) and aggregate.type == type:
                number = as_number(lookup({}, properties, f"event.properties.{aggregate.property}"))
                if number is not None:
                    found[aggregate.property] = float(number)
        return found


def compile_ruleset(ruleset: spec.Ruleset) -> CompiledRuleset:
    """Compile once per ruleset version: durable-rules cannot register a name twice."""
    key = f"{ruleset.name}_{ruleset.version}"
    with _LOCK:
        cached = _REGISTERED.get(key)
    if cached is not None:
        return cached
    compiled = CompiledRuleset(ruleset)
    with _LOCK:
        return _REGISTERED.setdefault(key, compiled)


def longest_window(compiled: CompiledRuleset) -> timedelta:
    """How far back counts, windowed sums and limits look: the history a batch must load."""
    spans = [count.within for count in compiled.count_windows]
    spans += [a.within for a in compiled.aggregates if isinstance(a, spec.Sum) and a.within]
    spans += [r.limit.per for r in compiled.limited_rules if r.limit and r.limit.per]
    return max(spans, default=timedelta(0))
