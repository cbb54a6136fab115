"""The fast evaluation path (``evaluate.evaluate``: durable-rules' C core called directly, facts
built from remembered pieces, rounds skipped when nothing unfired reads a change) gives the same
outcome as the plain one (``reference.evaluate``: dict facts through durable's Python host) on
generated leads and events: every shape of condition and action, odd values, account peers,
rulesets with named scores, sums, counts, days_since and limits."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from engine.rules import reference
from engine.rules.account import Peers
from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.evaluate import ChainError, Event, LeadState, Outcome, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset
from tests.helpers import compiled, ruleset_text

SHIPPED = Path(__file__).resolve().parents[2] / "rulesets" / "b2b-saas.yaml"
START = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
TITLES = [
    "VP Sales",
    "Head of Growth",
    "Marketing Manager",
    "Student",
    "student intern",
    "General Manager & VP",
    "Chief Executive Officer",
    "engineer",
    "",
    None,
    42,
    ["vp", "manager"],
    "Directeur Général",
    "  Founder ",
]
INDUSTRIES = ["Software", "saas", "Fintech ", "Retail", "", None, 7, ["Software"], "Ünïcode"]
SIZES: list[Any] = [5, 20, 21, "250", "1,200", 199.5, 200, 199.6, -3, None, "big", 1e20, 3.0]
COUNTRIES = ["US", "us", "GB", "DE", "", None, True, "FR"]
EVENTS = [
    "page_view",
    "page_view",
    "page_view",
    "email_open",
    "email_click",
    "content_download",
    "webinar",
    "webinar_attended",
    "form_submit",
    "trial_signup",
    "demo_request",
    "bounce",
    "purchase",
    "purchase",
    "crm_meeting",
    "crm_won",
    "crm_lost",
    "unsubscribe",
]
# Numbers and booleans beside strings that spell them: the engine compares them as text.
PLANS: list[Any] = [42, "42", 42.0, True, False, "true", 7.5, "7.50", 7.500001, 7, -3, "-3.0"]
PLANS += ["Pro", " PRO ", 4.2, 420, None, ["pro"], "", "false", 1000, 1e3, "1E3", 1, 0, "t", -0.5]
URLS = ["/pricing", "/PRICING/plans", "/careers", "/blog", "", None, ["/pricing"]]
AMOUNTS: list[Any] = [10, 99.99, 500, 1500, "2,500", 1e-7, 0.0005, 2e6, -40, None, float("inf")]
# Attributes named as the values the ``lead.*`` view puts beside them, which must hide them.
SHADOWING: list[tuple[str, Any]] = [
    ("score", 999),
    ("temperature", "hot"),
    ("stage", "customer"),
    ("tags", ["student"]),
    ("scores", {"health": 99, "engagement": 99}),
    ("bands", {"health": "loyal"}),
    ("account.leads", 10),
    ("account.score", 99),
    ("event.type", "purchase"),
]


def attributes(rng: random.Random, shadowing: bool = False) -> dict[str, Any]:
    fields = {
        "job_title": rng.choice(TITLES),
        "industry": rng.choice(INDUSTRIES),
        "company_size": rng.choice(SIZES),
        "country": rng.choice(COUNTRIES),
        "budget": rng.choice([None, 5000, 10000, "15000", 2.5e4]),
        "domain": rng.choice(["gmail.com", "acme.io", "hubspot.com", "initech.com"]),
        "phone": rng.choice([None, "", "+1 555 0100"]),
        "vip": rng.choice([None, True, False, "true", 1]),
        "plan": rng.choice(PLANS),
    }
    if shadowing:
        fields.update(rng.sample(SHADOWING, 3))
    return {key: value for key, value in fields.items() if rng.random() < 0.7}


def properties(rng: random.Random, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    if kind == "page_view" or rng.random() < 0.1:
        found["url"] = rng.choice(URLS)
    if kind == "purchase" or rng.random() < 0.1:
        found["amount"] = rng.choice(AMOUNTS)
    if rng.random() < 0.3:
        found["utm"] = {"source": rng.choice(["google", "bing", "BING", "mail", None])}
    if rng.random() < 0.05:
        found["utm.source"] = "google"  # a dotted key wins over the nested one
    return found


def records(
    seed: int, count: int, leads: int, shadowing: bool = False
) -> Iterator[tuple[int, Event, dict[str, Any]]]:
    """(lead, event, attributes to merge first): profile updates and events in time order
    (``shadowing``: profiles also set attributes named as ``lead.*`` values, see SHADOWING)."""
    rng = random.Random(seed)
    at = START
    for index in range(count):
        at += timedelta(minutes=rng.choice([1, 30, 600, 3000, 20000]))
        lead = rng.randrange(leads)
        if rng.random() < 0.15:
            yield lead, Event(f"e{index}", "profile_update", at), attributes(rng, shadowing)
        else:
            kind = rng.choice(EVENTS)
            yield lead, Event(f"e{index}", kind, at, properties(rng, kind)), {}


def outcome_or_error(
    path: Any, rules: CompiledRuleset, state: LeadState, event: Event, history: MemoryHistory
) -> Outcome | str:
    try:
        result: Outcome = path(rules, state, event, history)
    except ChainError as error:
        return str(error)
    return result


def compare(
    rules: CompiledRuleset, seed: int, count: int, leads: int, shadowing: bool = False
) -> int:
    """Evaluate ``count`` generated records both ways; returns how many fired something."""
    rng = random.Random(seed + 1)
    states: dict[int, LeadState] = {}
    histories: dict[int, MemoryHistory] = {}
    fired = 0
    for lead, event, changes in records(seed, count, leads, shadowing):
        state = states.get(lead) or new_lead(rules.ruleset, {"email": f"l{lead}@x.io"})
        state.attributes.update(changes)
        if rng.random() < 0.3:
            top = rng.choice([None, 10, 80])
            state.account = Peers(rng.randrange(5), rng.randrange(200), top)
        history = histories.setdefault(lead, MemoryHistory())
        if event.type in rules.history_types:
            history.add_event(
                event.type, event.occurred_at, rules.amounts(event.type, event.properties)
            )
        expected = outcome_or_error(reference.evaluate, rules, state.copy(), event, history)
        got = outcome_or_error(evaluate, rules, state.copy(), event, history)
        assert got == expected, (lead, event, state)
        if isinstance(got, Outcome):
            for rule in got.fired:
                history.add_firing(rule, event.occurred_at)
            states[lead] = replace(got.state, account=None)
            fired += bool(got.fired)
    return fired


@pytest.fixture(scope="module")
def shapes() -> CompiledRuleset:
    return compiled(ruleset_text("evaluator-shapes"), "evaluator-shapes.yaml")


def test_fast_and_plain_paths_agree_on_every_rule_shape(shapes: CompiledRuleset) -> None:
    fired = compare(shapes, seed=1, count=600, leads=40)
    assert fired > 200  # the data exercise the rules, not just their absence


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3])
def test_fast_and_plain_paths_agree_on_tens_of_thousands_of_records(
    shapes: CompiledRuleset, seed: int
) -> None:
    assert compare(shapes, seed=seed, count=15000, leads=400) > 5000


@pytest.mark.slow
def test_fast_and_plain_paths_agree_on_the_shipped_ruleset() -> None:
    rules = compiled(SHIPPED.read_text(encoding="utf-8"), str(SHIPPED))
    assert compare(rules, seed=4, count=15000, leads=500) > 5000


def test_rounds_that_could_fire_nothing_new_are_skipped_on_the_engines_word(
    shapes: CompiledRuleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The residual conditions (``compile._residuals``) spare rounds, and the outcomes still
    agree with the plain path's (``compare`` asserts it) with and without them."""
    asked = 0
    match = shapes.match_text

    def counting(members: str) -> list[int]:
        nonlocal asked
        asked += 1
        return match(members)

    monkeypatch.setattr(shapes, "match_text", counting)
    compare(shapes, seed=5, count=400, leads=30)
    with_residuals, asked = asked, 0
    monkeypatch.setattr(shapes, "residual", {})
    compare(shapes, seed=5, count=400, leads=30)
    assert with_residuals < asked * 0.9


def test_exhausted_limits_and_aggregates_without_events_take_their_shortcuts_and_agree(
    shapes: CompiledRuleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fast path leaves a limited rule's count out of the fact once the rule is at its
    limit, and does not ask the history for an aggregate of a lead with no event of its type;
    the plain path sends every count and asks every aggregate, and ``compare`` asserts the
    outcomes agree on data where both shortcuts are taken often."""
    limits = [key for key, _ in shapes.enc.limits if key in shapes.read]
    omitted = skipped = 0
    match, has_events = shapes.match_text, MemoryHistory.has_events

    def counting(members: str) -> list[int]:
        nonlocal omitted
        omitted += sum(f'"{key}": ' not in members for key in limits)
        return match(members)

    def spying(history: MemoryHistory, type: str) -> bool:
        nonlocal skipped
        found = has_events(history, type)
        skipped += not found
        return found

    monkeypatch.setattr(shapes, "match_text", counting)
    monkeypatch.setattr(MemoryHistory, "has_events", spying)
    compare(shapes, seed=6, count=600, leads=40)
    assert limits and omitted > 100 and skipped > 100, (omitted, skipped)


# The rules of evaluator-shapes that read a value derived beyond the lead's own: a named score's
# band (healthy) or total (at-risk), the account's figures (account-busy).
DERIVED_READERS = {"healthy", "at-risk", "account-busy"}


@pytest.fixture(scope="module")
def own() -> CompiledRuleset:
    """evaluator-shapes without the rules that read derived values; it still has a named score
    and an account aggregate, and reads a component by ``lead.scores.<component>``."""
    shaped = parse_ruleset(ruleset_text("evaluator-shapes"), "evaluator-own.yaml")
    rules = tuple(rule for rule in shaped.rules if rule.name not in DERIVED_READERS)
    assert len(rules) == len(shaped.rules) - len(DERIVED_READERS)
    return compile_ruleset(replace(shaped, name="evaluator-own", rules=rules))


@pytest.mark.parametrize("seed", [7, 8])
def test_a_ruleset_reading_no_derived_value_builds_facts_from_the_leads_own_values_and_agrees(
    own: CompiledRuleset, seed: int
) -> None:
    """The fast path leaves named scores' totals and bands and the account's figures out of the
    lead's view when no rule reads them (``evaluate.own_fields``); the plain path builds the
    whole view each round. Attributes named as view values (SHADOWING) are hidden alike."""
    assert not own.reads_derived
    assert compare(own, seed=seed, count=600, leads=40, shadowing=True) > 200


@pytest.mark.parametrize("seed", [9, 10])
def test_a_ruleset_reading_derived_values_builds_the_whole_view_and_agrees(
    shapes: CompiledRuleset, seed: int
) -> None:
    assert shapes.reads_derived
    assert compare(shapes, seed=seed, count=600, leads=40, shadowing=True) > 200


def test_the_comparison_notices_derived_values_left_out(
    shapes: CompiledRuleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tests above can fail: with the lead's own values alone for a ruleset that reads
    derived ones, the outcomes differ from the plain path's."""
    monkeypatch.setattr(shapes, "reads_derived", False)
    with pytest.raises(AssertionError):
        compare(shapes, seed=9, count=600, leads=40, shadowing=True)


@pytest.mark.parametrize(
    ("when", "derived"),
    [
        ("{lead.score: {gte: 10}, lead.temperature: hot, lead.tags: x, lead.stage: a}", False),
        ("{lead.scores.fit: {gte: 10}}", False),  # a component's own score
        ("{lead.health: {gte: 10}}", False),  # an attribute named as a score
        ("{lead.scores.health: {gte: 10}}", True),  # a named score's total
        ("{lead.bands.health: loyal}", True),
        ("{lead.account.leads: {gte: 2}}", True),
        ("{lead.account.score: {gte: 2}}", True),
    ],
)
def test_which_reads_are_derived(when: str, derived: bool) -> None:
    # One name: a ruleset's version is its text's digest, so each compiles on its own.
    text = f"""
ruleset: derived
components: {{fit: {{min: 0, max: 100}}, value: {{min: 0, max: 100}}}}
temperature: {{cold: 0, hot: 50}}
scores:
  health: {{components: [value], bands: {{at_risk: 0, loyal: 10}}}}
account: {{aggregate: max}}
stages: [a, b]
rules:
  - name: r
    when: {when}
    then: {{stage: b}}
"""
    assert compiled(text).reads_derived is derived
