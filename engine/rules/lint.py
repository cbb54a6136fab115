"""Warnings about rulesets that are valid but probably not what the marketer meant, or slow."""

from __future__ import annotations

from collections.abc import Iterator

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


def _tests(condition: spec.Condition) -> Iterator[spec.Test]:
    if isinstance(condition, spec.Not):
        yield from _tests(condition.item)
    elif isinstance(condition, spec.All | spec.AnyOf):
        for item in condition.items:
            yield from _tests(item)
    elif isinstance(condition, spec.Test):
        yield condition


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
