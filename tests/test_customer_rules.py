"""Customer scoring in the pure core: named scores with their own bands, the `sum` and
`days_since` aggregates (and `rules check` errors for their shapes, with file and line), which
rules a time evaluation can fire and when a lead's time-dependent inputs next change, and one
lead replayed with its clock (decay and time evaluations) as event-log backtests do it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.errors import ProblemsError
from engine.rules import spec
from engine.rules.decay import decayed, next_move, rise
from engine.rules.evaluate import Event, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset
from engine.rules.testing import compare, replay
from engine.rules.timeline import Timeline
from engine.rules.timing import crossings, fires_on_time, next_change
from tests.helpers import compiled

CUSTOMERS = """\
ruleset: customers
components:
  fit:        {min: 0, max: 60}
  engagement: {min: 0, max: 100, decay: {half_life: 30d}}
  value:      {min: 0, max: 50}
  loyalty:    {min: 0, max: 50, decay: {points: 5, every: 30d}}
temperature: {cold: 0, warm: 40, hot: 70}
scores:
  health: {components: [value, loyalty], bands: {at_risk: 0, steady: 30, loyal: 60}}
rules:
  - name: buyer
    when: {event.type: purchase}
    then: {score: {loyalty: 20, engagement: 5}, stage: customer}
  - name: big-spender
    when: {event.type: purchase, sum: {type: purchase, property: amount, within: 365d, gte: 500}}
    then: {score: {value: 20}}
    limit: {times: 1, per: 365d}
  - name: lapsing
    when: {lead.stage: customer, days_since: {type: purchase, gte: 90}}
    then: {score: {loyalty: -20}, alert: account-manager}
    limit: {times: 1, per: 90d}
  - name: healthy
    when: {lead.bands.health: loyal}
    then: {tag: loyal}
  - name: valuable
    when: {lead.scores.health: {gte: 40}, lead.stage: customer}
    then: {tag: valuable}
"""


def at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


def purchase(id: str, day: str, amount: object) -> Event:
    return Event(id, "purchase", at(day), {"amount": amount})


# -- loading -------------------------------------------------------------------------------------


def test_named_scores_load_and_claim_their_components() -> None:
    ruleset = parse_ruleset(CUSTOMERS, "c.yaml")
    (health,) = ruleset.scores
    assert (health.name, health.components) == ("health", ("value", "loyalty"))
    assert health.bands == (("at_risk", 0), ("steady", 30), ("loyal", 60))
    assert ruleset.lead_components == ("fit", "engagement")
    scores = {"fit": 30, "engagement": 15, "value": 20, "loyalty": 45}
    assert ruleset.lead_score(scores) == 45  # fit + engagement only
    assert ruleset.band(ruleset.lead_score(scores)) == "warm"
    assert ruleset.totals(scores) == {"health": 65}
    assert ruleset.named_bands({"health": 65}) == {"health": "loyal"}
    assert ruleset.named_bands({"health": 29}) == {"health": "at_risk"}


def test_a_ruleset_without_scores_keeps_every_component_in_the_lead_score() -> None:
    ruleset = parse_ruleset(CUSTOMERS.split("scores:")[0] + "rules: []\n", "c.yaml")
    assert ruleset.scores == ()
    assert ruleset.lead_score({"fit": 1, "engagement": 2, "value": 3, "loyalty": 4}) == 10


HEAD = """\
ruleset: shapes
components:
  fit: {min: 0, max: 60}
  value: {min: 0, max: 50}
  loyalty: {min: 0, max: 50}
temperature: {cold: 0, warm: 40, hot: 70}
scores:
  health: {components: [value, loyalty], bands: {at_risk: 0, steady: 30}}
rules:
"""  # rules start on line 10


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        (
            "{event.type: purchase, sum: {type: purchase, within: 30d, gte: 5}}",
            "sum property: the event property to add up",
        ),
        ("{sum: {type: purchase, property: amount}}", "sum needs {type, property, within"),
        ("{sum: {type: purchase, property: amount, over: 5}}", "sum has unknown key 'over'"),
        ("{sum: {type: purchase, property: amount, gte: lots}}", "sum gte: needs a number"),
        ("{sum: {type: purchase, property: amount, within: soon, gte: 1}}", "sum within: bad"),
        ("{sum: [purchase]}", "sum needs {type, property"),
        ("{days_since: {type: purchase}}", "days_since needs {type, first"),
        ("{days_since: {type: purchase, first: maybe, gte: 3}}", "first: needs true or false"),
        ("{days_since: {type: purchase, gte: .inf}}", "days_since gte: needs a number"),
        ("{days_since: {gte: 3}}", "days_since needs {type"),
        ("{lead.bands.health: gold}", "unknown band 'gold' of health; its bands are at_risk"),
        ("{lead.bands.fit: at_risk}", "unknown named score 'fit' in lead.bands.fit"),
        ("{lead.scores.wealth: {gte: 1}}", "unknown score component 'wealth'"),
    ],
)
def test_wrong_shapes_are_errors_with_file_and_line(rule: str, message: str) -> None:
    text = HEAD + f"  - name: r\n    when: {rule}\n    then: {{tag: x}}\n"
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(text, "shapes.yaml")
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("shapes.yaml", 11)
    assert message in problem.message


@pytest.mark.parametrize(
    ("scores", "message"),
    [
        (
            "{health: {components: [value], bands: {a: 0}}, "
            "more: {components: [value], bands: {b: 0}}}",
            "component 'value' already counts toward 'health'",
        ),
        ("{health: {components: [nope], bands: {a: 0}}}", "unknown component 'nope'"),
        ("{fit: {components: [value], bands: {a: 0}}}", "has the name of a component"),
        ("{health: {components: [value]}}", "needs {components: [..], bands"),
        ("{health: {components: [value], bands: {a: high}}}", "band 'a' needs an integer"),
        ("[health]", "`scores:` maps each named score"),
    ],
)  # fmt: skip
def test_named_score_mistakes_are_errors(scores: str, message: str) -> None:
    text = HEAD.split("scores:")[0] + f"scores: {scores}\nrules:\n"
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(text + "  - {name: r, when: {event.type: x}, then: {tag: y}}\n", "s.yaml")
    assert any(message in p.message and p.line == 7 for p in caught.value.problems), [
        str(p) for p in caught.value.problems
    ]


def test_points_go_to_components_not_to_a_named_score() -> None:
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(HEAD + "  - {name: r, when: {event.type: x}, then: {score: {health: 5}}}\n")
    (problem,) = caught.value.problems
    assert "'health' is a named score; add points to one of its components (value, loyalty)" in (
        problem.message
    )


# -- evaluating ----------------------------------------------------------------------------------


def test_named_scores_change_their_own_total_and_band_not_the_lead_score() -> None:
    rules = compiled(CUSTOMERS)
    state = new_lead(rules.ruleset, {"email": "c@x.io"})
    history = MemoryHistory()
    fired: list[str] = []
    for event in [purchase("p1", "2026-01-01", 300), purchase("p2", "2026-01-02", 250)]:
        history.add_event(
            event.type, event.occurred_at, rules.amounts(event.type, event.properties)
        )
        outcome = evaluate(rules, state, event, history)
        fired += outcome.fired
        state = outcome.state
    # Two purchases: loyalty 40, and 550 spent within a year: value 20 → health 60, loyal.
    assert state.scores == {"fit": 0, "engagement": 10, "value": 20, "loyalty": 40}
    assert rules.ruleset.lead_score(state.scores) == 10
    assert fired == ["buyer", "buyer", "big-spender", "healthy", "valuable"]
    assert "loyal" in state.tags and "valuable" in state.tags
    # The ledger's score_after is the total of the score the component counts toward.
    assert [(c.rule, c.component, c.score_after) for c in outcome.score_changes] == [
        ("buyer", "loyalty", 40),
        ("buyer", "engagement", 10),
        ("big-spender", "value", 60),
    ]


def test_sum_skips_what_is_not_a_number_and_looks_only_inside_its_window() -> None:
    rules = compiled(CUSTOMERS)

    def buys(*purchases: tuple[str, object]) -> list[dict[str, object]]:
        return [
            {"type": "purchase", "occurred_at": f"{day}T00:00:00Z", "properties": {"amount": a}}
            for day, a in purchases
        ]

    done = replay(
        rules,
        {"email": "c@x.io"},
        buys(("2025-01-01", 400), ("2026-01-02", "n/a"), ("2026-01-03", "99.5")),
    )
    # 400 is more than 365 days before the last purchase; "n/a" adds nothing: 99.5 < 500.
    assert "big-spender" not in done.fired
    again = replay(rules, {"email": "c@x.io"}, buys(("2025-06-01", 400.5), ("2026-01-03", "99.5")))
    assert again.fired.count("big-spender") == 1


def test_days_since_is_whole_days_and_missing_without_an_event() -> None:
    rules = compiled(
        """\
ruleset: recency
components: {engagement: {min: -100, max: 100}}
rules:
  - name: first-visit-long-ago
    when: {event.type: ping, days_since: {type: visit, first: true, gte: 10}}
    then: {tag: veteran}
  - name: lapsed
    when: {event.type: ping, days_since: {type: visit, gt: 2}}
    then: {score: {engagement: -1}}
  - name: never-visited
    when: {event.type: ping, not: {days_since: {type: visit, gte: 0}}}
    then: {tag: stranger}
"""
    )
    first = replay(rules, {"email": "a@x.io"}, [{"type": "ping"}])
    assert first.state.tags == ["stranger"]  # no visit: days_since is missing, `not` holds
    events = [
        {"type": "visit", "occurred_at": "2026-01-01T12:00:00Z"},
        {"type": "visit", "occurred_at": "2026-01-09T12:00:00Z"},
        {"type": "ping", "occurred_at": "2026-01-12T11:59:59Z"},  # 2 days 23:59 after: 2
        {"type": "ping", "occurred_at": "2026-01-12T12:00:00Z"},  # 3 whole days: lapsed
    ]
    done = replay(rules, {"email": "a@x.io"}, events)
    assert done.fired.count("lapsed") == 1
    assert done.state.tags == ["veteran"]  # 11 days since the first visit


def test_ruleset_tests_compare_named_totals_and_bands() -> None:
    rules = compiled(CUSTOMERS)
    done = replay(rules, {"email": "c@x.io"}, [{"type": "purchase", "properties": {"amount": 9}}])
    expect = {"score": 5, "totals": {"health": 20}, "bands": {"health": "steady"}}
    assert compare(rules.ruleset, expect, done.state, done.fired) == [
        "bands.health: expected 'steady', got 'at_risk'"
    ]


# -- time ----------------------------------------------------------------------------------------


def test_which_rules_a_time_evaluation_can_fire() -> None:
    ruleset = parse_ruleset(
        """\
ruleset: t
components: {x: {min: 0, max: 9}}
rules:
  - {name: on-purchase, when: {event.type: purchase}, then: {tag: a}}
  - {name: on-time, when: {event.type: time}, then: {tag: b}}
  - {name: lead-only, when: {lead.stage: customer}, then: {tag: c}}
  - {name: either, when: {event.type: {in: [purchase, time]}}, then: {tag: d}}
  - {name: property, when: {event.properties.url: {contains: /x}}, then: {tag: e}}
  - {name: no-property, when: {event.properties.url: {exists: false}}, then: {tag: f}}
  - {name: any, when: {any: [{event.type: visit}, {lead.score: {gte: 3}}]}, then: {tag: g}}
"""
    )
    can = [rule.name for rule in ruleset.rules if fires_on_time(rule.when)]
    assert can == ["on-time", "lead-only", "either", "no-property", "any"]


def test_thresholds_flip_on_these_whole_days() -> None:
    assert crossings("gte", 90) == [90]
    assert crossings("gt", 90) == [91]
    assert crossings("lt", 30) == [30]
    assert crossings("lte", 30) == [31]
    assert crossings("eq", 7) == [7, 8]
    assert crossings("eq", 7.5) == []
    assert crossings("gte", 0) == []


def test_next_change_follows_thresholds_windows_and_limits() -> None:
    rules = compiled(
        """\
ruleset: t
components: {x: {min: 0, max: 99}}
rules:
  - name: lapsing
    when: {days_since: {type: purchase, gte: 90}}
    then: {tag: lapsing}
    limit: {times: 1, per: 30d}
  - name: busy
    when: {count: {type: visit, within: 7d, at_least: 3}}
    then: {tag: busy}
  - name: only-on-visits
    when: {event.type: visit, count: {type: visit, within: 1d, at_least: 2}}
    then: {tag: ignored}
"""
    )
    history = MemoryHistory()
    assert next_change(rules, history, at("2026-01-01")) is None
    history.add_event("purchase", at("2026-01-01"))
    assert next_change(rules, history, at("2026-01-01")) == at("2026-01-01") + timedelta(days=90)
    history.add_event("visit", at("2026-01-10"))
    # The visit leaves busy's 7-day window first; only-on-visits cannot fire on time: its 1-day
    # window does not count.
    assert next_change(rules, history, at("2026-01-10")) == at("2026-01-17")
    history.add_firing("lapsing", at("2026-04-01"))
    assert next_change(rules, history, at("2026-04-01")) == at("2026-05-01")
    assert next_change(rules, history, at("2026-05-01")) is None


def test_pure_decay_matches_the_rule_of_the_sql_job() -> None:
    loyalty = spec.Component("loyalty", 0, 50, spec.PointsDecay(5, timedelta(days=30)))
    state = rise(None, at("2026-01-01"), 40, 40)
    assert decayed(loyalty, 40, state, at("2026-01-30")) == (40, 0)
    assert decayed(loyalty, 40, state, at("2026-01-31")) == (35, 1)
    assert decayed(loyalty, 40, state, at("2026-12-31")) == (0, 12)
    assert next_move(loyalty, 40, state) == at("2026-01-31")
    assert next_move(loyalty, 40, [state[0], 40, 2]) == at("2026-04-01")  # 3 periods
    assert next_move(loyalty, 0, state) is None
    engagement = spec.Component("e", 0, 100, spec.HalfLifeDecay(timedelta(days=10)))
    state = rise(None, at("2026-01-01"), 40, 40)
    assert decayed(engagement, 40, state, at("2026-01-11")) == (20, 0)
    moment = next_move(engagement, 40, state)
    assert moment is not None
    assert decayed(engagement, 40, state, moment)[0] == 39
    assert decayed(engagement, 40, state, moment - timedelta(seconds=1))[0] == 40


def test_a_timeline_evaluates_time_where_the_inputs_change() -> None:
    rules = compiled(CUSTOMERS)
    timeline = Timeline.start(rules, "c@x.io")
    timeline.record(purchase("p1", "2026-01-01", 300))
    timeline.record(purchase("p2", "2026-02-01", 250))
    ruleset = rules.ruleset
    assert ruleset.named_bands(ruleset.totals(timeline.state.scores)) == {"health": "steady"}
    timeline.run_clock(at("2026-08-01"))
    # 90 days after the last purchase, and 90 more (the limit's window): lapsing twice; loyalty
    # decayed 5 a month in between: health is the 20 of value alone.
    assert timeline.fired.count("lapsing") == 2
    assert timeline.state.scores["loyalty"] == 0
    assert ruleset.totals(timeline.state.scores) == {"health": 20}
    assert ruleset.named_bands({"health": 20}) == {"health": "at_risk"}
