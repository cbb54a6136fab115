"""Ruleset tests (``rulesets/tests/*.yaml``): each case scores one lead in memory and compares
what the marketer expected with what the rules did. No database."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import Problem, ProblemsError
from engine.rules.compile import CompiledRuleset, window_start
from engine.rules.evaluate import ChainError, Event, LeadState, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.source import key_line, read_yaml
from engine.rules.spec import Ruleset
from engine.rules.timeline import Timeline
from engine.timeutil import parse_instant

START = datetime.fromisoformat("2026-01-05T10:00:00+00:00")
EXPECT_KEYS = (
    "score",
    "scores",
    "totals",
    "bands",
    "temperature",
    "stage",
    "tags",
    "fired",
    "not_fired",
    "attributes",
)


@dataclass
class CaseResult:
    name: str
    file: str
    line: int
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures


@dataclass
class Case:
    name: str
    file: str
    line: int
    lead: dict[str, Any]
    events: list[dict[str, Any]]
    expect: dict[str, Any]
    # Set, the clock then runs to this time (decay and time evaluations, as the scheduler's).
    until: datetime | None = None


def parse_cases(text: str, path: str) -> list[Case]:
    """The cases of one test file (its text, and its path for problems)."""
    doc = read_yaml(text, path)
    if not isinstance(doc, CommentedSeq):
        raise ProblemsError([Problem(path, 1, "a test file is a list of cases")])
    cases, problems = [], []
    for index, body in enumerate(doc):
        line = key_line(doc, index, 1)
        if not isinstance(body, CommentedMap) or not isinstance(body.get("name"), str):
            problems.append(Problem(path, line, "a case needs name, lead, events, expect"))
            continue
        problem = _case_problem(body)
        if problem:
            problems.append(Problem(path, line, f"case {body['name']!r}: {problem}"))
            continue
        try:
            until = parse_instant(body["until"]) if body.get("until") else None
        except ValueError as error:
            problems.append(Problem(path, line, f"case {body['name']!r}: until: {error}"))
            continue
        cases.append(
            Case(
                body["name"],
                path,
                line,
                dict(body.get("lead") or {}),
                list(body.get("events") or []),
                dict(body["expect"]),
                until,
            )
        )
    if problems:
        raise ProblemsError(problems)
    return cases


def _case_problem(body: CommentedMap) -> str | None:
    """What is wrong with the shape of one case, or None: checked here, so that running the
    cases never meets a value it cannot use."""
    expect = body.get("expect")
    if not isinstance(expect, CommentedMap) or set(expect) - set(EXPECT_KEYS):
        return f"expect takes {', '.join(EXPECT_KEYS)}"
    for key in ("scores", "attributes"):
        if not isinstance(expect.get(key) or {}, dict):
            return f"expect {key} is a mapping"
    for key in ("tags", "fired", "not_fired"):
        if not isinstance(expect.get(key) or [], list):
            return f"expect {key} is a list"
    if not isinstance(body.get("lead") or {}, dict):
        return "lead is a mapping of attributes"
    events = body.get("events") or []
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        return "events is a list of {type, properties, occurred_at}"
    for event in events:
        if not isinstance(event.get("properties") or {}, dict):
            return "an event's properties is a mapping"
        if event.get("occurred_at"):
            try:
                parse_instant(event["occurred_at"])
            except ValueError as error:
                return f"an event's occurred_at: {error}"
    return None


@dataclass
class Replay:
    state: LeadState
    fired: list[str]


def replay(
    compiled: CompiledRuleset,
    lead: dict[str, Any],
    raw_events: list[dict[str, Any]],
    until: datetime | None = None,
) -> Replay:
    """A new lead with attributes ``lead`` evaluated as a profile_update, then each event (one
    minute apart from START unless ``occurred_at`` says otherwise), in memory. With ``until``,
    the lead's clock runs too (:class:`~engine.rules.timeline.Timeline`: decay, and time
    evaluations where its inputs change) up to that time. Raises ChainError on a runaway
    chain."""
    history = MemoryHistory()
    state: LeadState = new_lead(compiled.ruleset, lead)
    if "email" in lead:
        state.attributes.setdefault("domain", str(lead["email"]).rsplit("@", 1)[-1])
    times = [START + timedelta(minutes=i) for i in range(len(raw_events))]
    for i, raw in enumerate(raw_events):
        if raw.get("occurred_at"):
            times[i] = parse_instant(raw["occurred_at"])
    first = min([START, *times])
    events = [Event("profile", "profile_update", window_start(first, timedelta(minutes=1)))]
    events += [
        Event(f"e{i}", str(raw.get("type")), times[i], dict(raw.get("properties") or {}))
        for i, raw in enumerate(raw_events)
    ]
    if until is not None:
        timeline = Timeline(compiled, state)
        for event in events:
            timeline.record(event)
        timeline.run_clock(until)
        return Replay(timeline.state, timeline.fired)
    fired: list[str] = []
    for event in events:
        amounts = compiled.amounts(event.type, event.properties)
        history.add_event(event.type, event.occurred_at, amounts)
        outcome = evaluate(compiled, state, event, history)
        for rule in outcome.fired:
            history.add_firing(rule, event.occurred_at)
        fired += outcome.fired
        state = outcome.state
    return Replay(state, fired)


def run_case(compiled: CompiledRuleset, case: Case) -> CaseResult:
    result = CaseResult(case.name, case.file, case.line)
    try:
        done = replay(compiled, case.lead, case.events, case.until)
    except ChainError as error:
        result.failures.append(str(error))
        return result
    result.failures = compare(compiled.ruleset, case.expect, done.state, done.fired)
    return result


def compare(
    ruleset: Ruleset, expect: dict[str, Any], state: LeadState, fired: list[str]
) -> list[str]:
    failures = []
    score = ruleset.lead_score(state.scores)
    actual: dict[str, Any] = {
        "score": score,
        "temperature": ruleset.band(score),
        "stage": state.stage,
    }
    for key in ("score", "temperature", "stage"):
        if key in expect and expect[key] != actual[key]:
            failures.append(f"{key}: expected {expect[key]!r}, got {actual[key]!r}")
    totals = ruleset.totals(state.scores)
    named: dict[str, Mapping[str, object]] = {
        "scores": state.scores,
        "totals": totals,
        "bands": ruleset.named_bands(totals),
    }
    for key, got in named.items():
        for name, wanted in (expect.get(key) or {}).items():
            if got.get(name) != wanted:
                failures.append(f"{key}.{name}: expected {wanted!r}, got {got.get(name)!r}")
    for tag in expect.get("tags") or []:
        if tag not in state.tags:
            failures.append(f"tags: expected {tag!r} among {state.tags}")
    for rule in expect.get("fired") or []:
        if rule not in fired:
            failures.append(f"fired: expected {rule!r} to fire; fired {fired}")
    for rule in expect.get("not_fired") or []:
        if rule in fired:
            failures.append(f"not_fired: {rule!r} fired")
    for name, value in (expect.get("attributes") or {}).items():
        if state.attributes.get(name) != value:
            failures.append(
                f"attributes.{name}: expected {value!r}, got {state.attributes.get(name)!r}"
            )
    return failures
