"""Warnings about rulesets that are valid but probably not what the marketer meant, or slow."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from engine.errors import Problem
from engine.rules import patterns, spec


def _reads_event(condition: spec.Condition) -> bool:
    if isinstance(condition, spec.Not):
        return _reads_event(condition.item)
    if isinstance(condition, spec.All | spec.AnyOf):
        return any(_reads_event(item) for item in condition.items)
    if isinstance(condition, spec.Sum | spec.DaysSince):
        return False  # the lead's history: a rule that reads only it fires on every event
    return isinstance(condition, spec.Count) or condition.path.startswith("event.")


def _leaves(condition: spec.Condition) -> Iterator[spec.Test | spec.Count | spec.Aggregate]:
    if isinstance(condition, spec.Not):
        yield from _leaves(condition.item)
    elif isinstance(condition, spec.All | spec.AnyOf):
        for item in condition.items:
            yield from _leaves(item)
    else:
        yield condition


def _tests(condition: spec.Condition) -> Iterator[spec.Test]:
    return (leaf for leaf in _leaves(condition) if isinstance(leaf, spec.Test))


def pattern_cautions(path: str, label: str, condition: spec.Condition) -> list[Problem]:
    """A caution for each ``matches`` pattern in ``condition`` that can take exponential time."""
    found = []
    for test in _tests(condition):
        why = patterns.caution(str(test.value)) if test.op == "matches" else None
        if why:
            found.append(
                Problem(
                    path,
                    test.line,
                    f"{label}: the pattern {test.value!r} can take exponential time on some "
                    f"texts ({why}); a match is given up after "
                    f"{patterns.TIMEOUT * 1000:.0f} ms and counts as no match: rewrite it",
                )
            )
    return found


def warnings(ruleset: spec.Ruleset) -> list[Problem]:
    found = []
    for rule in ruleset.rules:
        if rule.then.score and rule.limit is None and not _reads_event(rule.when):
            found.append(
                Problem(
                    ruleset.path,
                    rule.line,
                    f"rule {rule.name!r} reads only the lead and has no limit: it adds its "
                    "points on every event of the lead; add `limit: once`",
                )
            )
        found += pattern_cautions(ruleset.path, f"rule {rule.name!r}", rule.when)
    return found


# `lead.<name>` reads that are no stored attribute: the ruleset's own fields and views.
NOT_ATTRIBUTES = spec.COMPUTED_FIELDS | set(spec.BUILT_IN_FIELDS) | {"bands", "account"}


@dataclass(frozen=True)
class Read:
    """A rule's read of a lead attribute or of an event type, where it is written."""

    rule: str
    line: int
    name: str


def attribute_reads(ruleset: spec.Ruleset) -> list[Read]:
    """Each lead attribute a rule reads, but those the ruleset computes or a rule sets."""
    own = {name for rule in ruleset.rules for name, _ in rule.then.set}
    found = []
    for rule in ruleset.rules:
        for test in _tests(rule.when):
            if test.path.startswith("lead."):
                name = test.path.split(".")[1]
                if name not in NOT_ATTRIBUTES and name not in own:
                    found.append(Read(rule.name, test.line, name))
    return found


def event_type_reads(ruleset: spec.Ruleset) -> list[Read]:
    """Each event type a rule reads: ``event.type`` compared to it (``eq``, ``in``), and the
    types of ``count``, ``sum`` and ``days_since``."""
    found = []
    for rule in ruleset.rules:
        for leaf in _leaves(rule.when):
            if isinstance(leaf, spec.Test):
                if leaf.path != "event.type" or leaf.op not in ("eq", "in"):
                    continue
                values = leaf.value if isinstance(leaf.value, list | tuple) else [leaf.value]
                types = [str(value) for value in values]
            else:
                types = [leaf.type]
            found += [Read(rule.name, leaf.line, kind) for kind in types if kind != spec.TIME_EVENT]
    return found
