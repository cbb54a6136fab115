"""Warnings about rulesets that are valid but probably not what the marketer meant."""

from __future__ import annotations

from engine.errors import Problem
from engine.rules import spec


def _reads_event(condition: spec.Condition) -> bool:
    if isinstance(condition, spec.Not):
        return _reads_event(condition.item)
    if isinstance(condition, spec.All | spec.AnyOf):
        return any(_reads_event(item) for item in condition.items)
    if isinstance(condition, spec.Sum | spec.DaysSince):
        return False  # the lead's history: a rule that reads only it fires on every event
    return isinstance(condition, spec.Count) or condition.path.startswith("event.")


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
    return found
