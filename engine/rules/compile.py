"""A :class:`~engine.rules.spec.Ruleset` → a durable-rules ruleset plus the fact encoder it needs.

durable-rules decides which rules match. We feed it one flat fact per evaluation round and read
back the rules whose actions ran. The fact is built only from what the rules reference, with
values put in the shape the engine compares soundly (see ``docs/durable-rules.md``):

* ``v<i>``  the value of a field, strings folded to lower case (comparisons ignore case);
* ``n<i>``  its numeric value, only when it is a number (the engine orders ``'abc' >= 5`` true);
* ``h<i>`` / ``hn<i>``  whether the field / its number is present (``$nex`` hangs the engine, and
  negations need "missing" to count as "not equal");
* ``x<i>``  the result of a ``matches`` or ``contains`` test, computed with Python's ``re`` and
  ``in`` because marketers write Python regexes that the engine's own regex dialect cannot parse;
* ``c<i>``  an event count over a window; ``l<i>`` a rule's firings within its limit window.

``not`` is pushed down to the leaves (the engine has no negation operator).
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from durable import engine as durable

from engine.errors import NurtureError
from engine.rules import spec

# durable-rules refuses facts with more than ~253 properties (error 302).
MAX_FACT_FIELDS = 240
# durable-rules keeps a rule's and/or groups in one sequence of at most 31 entries, two per group
# (error 113 beyond). Each any/all, `in` list, negated test (ne, not) and limit makes a group.
MAX_GROUPS = 15
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


class CompileError(NurtureError):
    """A ruleset durable-rules cannot take (too many rules, an expression it refuses)."""


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


def window_start(at: datetime, span: timedelta) -> datetime:
    """``at - span``, or the earliest time there is when that would be before year 1."""
    try:
        return at - span
    except OverflowError:
        return datetime.min.replace(tzinfo=at.tzinfo)


def lookup(state_fields: Mapping[str, Any], properties: Mapping[str, Any], path: str) -> Any:
    """The value at a rule path: ``lead.*`` from ``state_fields``, ``event.properties.*``."""
    parts = path.split(".")
    if parts[0] == "lead":
        if parts[1] == "scores":
            return state_fields["scores"].get(parts[2])
        if parts[1] == "account" and len(parts) == 3:
            return state_fields.get(path.removeprefix("lead."))
        return state_fields.get(parts[1])
    if path == "event.type":
        return state_fields["event.type"]
    key = ".".join(parts[2:])
    if key in properties:
        return properties[key]
    node: Any = properties
    for part in parts[2:]:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _feature(test: spec.Test) -> Callable[[Any], bool]:
    if test.op == "matches":
        pattern = re.compile(str(test.value))
        return lambda v: _any_item(v, lambda item: pattern.search(str(item)) is not None)
    needle = str(test.value).casefold()
    return lambda v: _any_item(
        v,
        lambda item: needle in str(item).casefold() if isinstance(v, str) else needle == item,
    )


def _any_item(value: Any, check: Callable[[Any], bool]) -> bool:
    if value is None:
        return False
    if isinstance(value, list | tuple | set):
        return any(check(normalise(item) if isinstance(item, str) else item) for item in value)
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
        key = f"x{self._next}"
        self._next += 1
        self.features.append((key, test.path, _feature(test)))
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

    @property
    def size(self) -> int:
        return self._next + 1  # + the fact id


@dataclass(frozen=True)
class _Plan:
    """The fact keys one field fills (None where no rule needs that shape of it)."""

    path: str
    present: str | None
    value: str | None
    number: str | None
    number_present: str | None
    features: tuple[tuple[str, Callable[[Any], bool]], ...]


def _plans(enc: _Encoder) -> list[_Plan]:
    tables = (enc.present, enc.values, enc.numbers, enc.number_present)
    paths = sorted({p for table in tables for p in table} | {p for _, p, _ in enc.features})
    return [
        _Plan(
            path,
            enc.present.get(path),
            enc.values.get(path),
            enc.numbers.get(path),
            enc.number_present.get(path),
            tuple((key, check) for key, p, check in enc.features if p == path),
        )
        for path in paths
    ]


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
        key, present = self.enc.number(path), self.enc.has_number(path)
        number = normalise(value)
        engine_op = {"eq": "", "gt": "$gt", "gte": "$gte", "lt": "$lt", "lte": "$lte"}[op]
        if negate:
            opposite = {"": "$neq", "$gt": "$lte", "$gte": "$lt", "$lt": "$gte", "$lte": "$gt"}
            return _either({opposite[engine_op]: {key: number}}, {present: False})
        return {engine_op: {key: number}} if engine_op else {key: number}

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


def _rule_condition(compiler: _ConditionCompiler, rule: spec.Rule) -> dict[str, Any]:
    condition = compiler.compile(rule.when)
    if rule.limit is not None:
        condition = _both(condition, {"$lt": {compiler.enc.limit(rule): rule.limit.times}})
    return condition


def _groups(condition: Mapping[str, Any]) -> int:
    return sum(
        1 + sum(_groups(item) for item in value)
        for key, value in condition.items()
        if key in ("$and", "$or")
    )


def rule_groups(rule: spec.Rule) -> int:
    """How many and/or groups the engine needs for ``rule`` (at most MAX_GROUPS)."""
    return _groups(_rule_condition(_ConditionCompiler(_Encoder()), rule))


def _reads(condition: spec.Condition) -> set[str]:
    """State tokens a condition depends on (see ``writes`` in evaluate)."""
    if isinstance(condition, spec.Not):
        return _reads(condition.item)
    if isinstance(condition, spec.All | spec.AnyOf):
        return set().union(*(_reads(item) for item in condition.items))
    if isinstance(condition, spec.Test) and condition.path.startswith("lead."):
        token = condition.path.removeprefix("lead.")
        # The account's score counts the lead's own score, so it moves when that does.
        return {token, "score"} if token == "account.score" else {token}
    return set()


@dataclass(frozen=True)
class CompiledRule:
    rule: spec.Rule
    reads: frozenset[str]


class _Host(durable.Host):  # type: ignore[misc]
    """durable-rules host with its background dispatch thread off: we call it synchronously,
    and the thread races ``delete_state`` into a segfault."""

    def _run(self) -> None:
        pass


_HOST = _Host()
_LOCK = threading.Lock()
_REGISTERED: dict[str, CompiledRuleset] = {}


class CompiledRuleset:
    """A ruleset registered with durable-rules, and the encoder that builds its facts."""

    def __init__(self, ruleset: spec.Ruleset) -> None:
        self.ruleset = ruleset
        self.enc = _Encoder()
        compiler = _ConditionCompiler(self.enc)
        self.rules: list[CompiledRule] = []
        definition: dict[str, Any] = {}
        self._matched: list[int] = []
        for index, rule in enumerate(ruleset.rules):
            condition = _rule_condition(compiler, rule)
            if _groups(condition) > MAX_GROUPS:
                raise CompileError(
                    f"{ruleset.path}:{rule.line}: rule {rule.name!r} is too complex for the "
                    f"rules engine; split it into simpler rules"
                )
            definition[f"r{index}"] = {"all": [{"m": condition}], "run": self._action(index)}
            self.rules.append(CompiledRule(rule, frozenset(_reads(rule.when))))
        if self.enc.size > MAX_FACT_FIELDS:
            raise CompileError(
                f"{ruleset.path}: the rules read {self.enc.size} distinct fields and tests; "
                f"durable-rules takes at most {MAX_FACT_FIELDS}: split the ruleset"
            )
        self.all_reads = frozenset().union(*(rule.reads for rule in self.rules))
        self.engine_name = re.sub(r"\W", "_", f"{ruleset.name}_{ruleset.version}")
        try:
            _HOST.set_rulesets({self.engine_name: definition})
        except Exception as error:  # the C core reports what it refuses as a bare error code
            raise CompileError(
                f"{ruleset.path}: the rules engine refused the ruleset: {error}"
            ) from None
        self._fact_id = 0
        plans = _plans(self.enc)
        self.lead_plan = [plan for plan in plans if plan.path.startswith("lead.")]
        self.event_plan = [plan for plan in plans if not plan.path.startswith("lead.")]

    def _action(self, index: int) -> Callable[[Any], None]:
        def run(_closure: Any) -> None:
            self._matched.append(index)

        return run

    def encode(
        self,
        fields: Mapping[str, Any],
        properties: Mapping[str, Any],
        plans: list[_Plan],
        fact: dict[str, Any],
    ) -> None:
        """Fill the fact keys of ``plans`` from the current lead and event values."""
        for plan in plans:
            raw = lookup(fields, properties, plan.path)
            if plan.present:
                fact[plan.present] = raw not in (None, "", [], {})
            if plan.value and raw is not None:
                value = None if isinstance(raw, list | dict) else normalise(raw)
                # A present value with no scalar reading (a list, NaN) equals nothing, so its
                # negations hold: the engine's `$neq` against None would not match.
                fact[plan.value] = UNCOMPARABLE if value is None else value
            if plan.number or plan.number_present:
                number = as_number(raw)
                if plan.number_present:
                    fact[plan.number_present] = number is not None
                if plan.number and number is not None:
                    fact[plan.number] = number
            for key, check in plan.features:
                fact[key] = check(raw)

    def history_fields(self, history: History, at: datetime) -> dict[str, Any]:
        fact: dict[str, Any] = {}
        for key, count in self.enc.counts:
            fact[key] = history.count_events(count.type, window_start(at, count.within), at)
        for key, rule in self.enc.limits:
            assert rule.limit is not None
            start = window_start(at, rule.limit.per) if rule.limit.per is not None else None
            fact[key] = history.count_firings(rule.name, start, at)
        return fact

    def match(self, fact: dict[str, Any]) -> list[int]:
        """Indices of the rules whose conditions hold for ``fact``, in file order."""
        with _LOCK:
            self._fact_id += 1
            fact["id"] = self._fact_id
            self._matched.clear()
            try:
                _HOST.assert_fact(self.engine_name, fact)
            except durable.MessageNotHandledException:
                return []
            finally:
                # Retract so the engine holds nothing between evaluations.
                with contextlib.suppress(durable.MessageNotHandledException):
                    _HOST.retract_fact(self.engine_name, fact)
            return sorted(set(self._matched))

    @property
    def count_windows(self) -> list[spec.Count]:
        return [count for _, count in self.enc.counts]

    @property
    def limited_rules(self) -> list[spec.Rule]:
        return [rule for _, rule in self.enc.limits]


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
    """How far back counts and limits look: the history a batch must load."""
    spans = [count.within for count in compiled.count_windows]
    spans += [r.limit.per for r in compiled.limited_rules if r.limit and r.limit.per]
    return max(spans, default=timedelta(0))
