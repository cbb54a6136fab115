"""What rules do to a lead, evaluation by evaluation: the semantics DESIGN.md pins down."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.evaluate import ChainError, Event, LeadState, Outcome, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)

HEAD = """\
ruleset: {name}
components:
  fit: {{min: 0, max: 60}}
  engagement: {{min: 0, max: 100}}
temperature: {{cold: 0, warm: 40, hot: 70}}
stages: [subscriber, lead, mql, sql]
exits: [unsubscribed]
{extra}rules:
"""


def rules(body: str, name: str = "eval", extra: str = "") -> CompiledRuleset:
    text = HEAD.format(name=name, extra=extra) + body
    return compile_ruleset(parse_ruleset(text, f"{name}.yaml"))


class Lead:
    """One lead scored in memory the way ``rules test`` does: history first, then evaluate."""

    def __init__(
        self, compiled: CompiledRuleset, tags: list[str] | None = None, **attributes: Any
    ) -> None:
        self.compiled = compiled
        self.state: LeadState = new_lead(compiled.ruleset, attributes)
        self.state.tags = list(tags or [])
        self.history = MemoryHistory()
        self.clock = T0
        self.ledger: list[int] = []

    def event(self, type: str, at: datetime | None = None, **properties: Any) -> Outcome:
        self.clock = at or self.clock + timedelta(minutes=1)
        event = Event(f"e-{self.clock.isoformat()}", type, self.clock, properties)
        self.history.add_event(type, self.clock)
        outcome = evaluate(self.compiled, self.state, event, self.history)
        for rule in outcome.fired:
            self.history.add_firing(rule, self.clock)
        self.ledger += [change.delta for change in outcome.score_changes]
        self.state = outcome.state
        return outcome

    @property
    def temperature(self) -> str:
        return self.compiled.ruleset.band(self.state.score)


def fires(compiled: CompiledRuleset, event: str = "page_view", **attributes: Any) -> bool:
    """Whether the rule named ``r`` fires for a fresh lead with ``attributes``."""
    return "r" in Lead(compiled, **attributes).event(event).fired


# ------------------------------------------------------------------------- firing and chaining


def test_two_rules_matching_the_same_event_both_fire() -> None:
    compiled = rules(
        """\
  - name: pricing
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
  - name: any-page
    when: {event.type: page_view}
    then: {score: {engagement: 2}}
"""
    )
    lead = Lead(compiled)
    outcome = lead.event("page_view", url="/pricing")
    assert outcome.fired == ["pricing", "any-page"]
    assert [(c.rule, c.delta) for c in outcome.score_changes] == [("pricing", 10), ("any-page", 2)]
    assert lead.state.scores["engagement"] == 12


def test_a_stage_rule_sees_the_points_this_event_added() -> None:
    """The stage rule comes first in the file yet sees the score after the demo's points."""
    compiled = rules(
        """\
  - name: qualify
    when: {lead.stage: subscriber, lead.score: {gte: 60}}
    then: {stage: mql}
  - name: engaged
    when: {lead.scores.engagement: {gte: 50}}
    then: {tag: engaged}
    limit: once
  - name: demo
    when: {event.type: demo_request}
    then: {score: {engagement: 65}}
"""
    )
    lead = Lead(compiled)
    assert lead.event("page_view").fired == []
    outcome = lead.event("demo_request")
    assert outcome.fired[0] == "demo"
    assert set(outcome.fired) == {"demo", "qualify", "engaged"}
    assert lead.state.stage == "mql"
    assert "engaged" in lead.state.tags
    assert [(c.rule, c.from_stage, c.to_stage) for c in outcome.stage_changes] == [
        ("qualify", "subscriber", "mql")
    ]


def test_temperature_follows_the_score_at_once() -> None:
    compiled = rules(
        """\
  - name: hot-alert
    when: {lead.temperature: hot}
    then: {alert: sales, tag: hot}
    limit: once
  - name: warm-nurture
    when: {lead.temperature: warm}
    then: {enroll: warm-nurture}
    limit: once
  - name: webinar
    when: {event.type: webinar_attended}
    then: {score: {engagement: 40}}
  - name: demo
    when: {event.type: demo_request}
    then: {score: {engagement: 30}}
"""
    )
    lead = Lead(compiled)
    outcome = lead.event("webinar_attended")  # 40: warm (lower bounds are inclusive)
    assert lead.temperature == "warm"
    assert [(i.kind, i.target) for i in outcome.intents] == [("enroll", "warm-nurture")]
    outcome = lead.event("demo_request")  # 70: hot, in the same evaluation
    assert lead.temperature == "hot"
    assert outcome.fired == ["demo", "hot-alert"]
    assert [(i.rule, i.kind, i.target) for i in outcome.intents] == [
        ("hot-alert", "alert", "sales")
    ]


def test_a_rule_fires_at_most_once_per_evaluation() -> None:
    """A rule that keeps enabling itself adds its points once per event, and does not loop."""
    compiled = rules(
        """\
  - name: snowball
    when: {lead.score: {gte: 0}}
    then: {score: {engagement: 1}}
"""
    )
    lead = Lead(compiled)
    assert lead.event("page_view").fired == ["snowball"]
    assert lead.state.score == 1
    assert lead.event("page_view").fired == ["snowball"]
    assert lead.state.score == 2


def test_two_rules_undoing_each_other_stop_after_one_firing_each() -> None:
    compiled = rules(
        """\
  - name: set-one
    when: {lead.flag: {ne: one}}
    then: {set: {flag: one}}
  - name: set-two
    when: {lead.flag: one}
    then: {set: {flag: two}}
"""
    )
    lead = Lead(compiled)
    outcome = lead.event("page_view")
    assert outcome.fired == ["set-one", "set-two"]
    assert lead.state.attributes["flag"] == "two"


def test_evaluate_leaves_the_callers_state_untouched() -> None:
    compiled = rules(
        """\
  - name: r
    when: {event.type: page_view}
    then: {score: {engagement: 5}, stage: lead, tag: seen, set: {seen: true}}
"""
    )
    state = new_lead(compiled.ruleset, {"company": "Acme"})
    before = state.copy()
    outcome = evaluate(compiled, state, Event("e1", "page_view", T0), MemoryHistory())
    assert state == before
    assert outcome.state.score == 5
    assert outcome.state.stage == "lead"
    assert outcome.state.tags == ["seen"]
    assert outcome.state.attributes == {"company": "Acme", "seen": True}


# ------------------------------------------------------------------------- scores and stages


def test_scores_clamp_and_the_ledger_records_the_applied_delta() -> None:
    compiled = rules(
        """\
  - name: webinar
    when: {event.type: webinar_attended}
    then: {score: {engagement: 70}}
  - name: bounce
    when: {event.type: bounce}
    then: {score: {engagement: -30}}
"""
    )
    lead = Lead(compiled)
    deltas = []
    for kind in ["webinar_attended", "webinar_attended", "bounce", "bounce", "bounce", "bounce"]:
        outcome = lead.event(kind)
        deltas.append([c.delta for c in outcome.score_changes])
        # score_after is the lead's total after the change
        for change in outcome.score_changes:
            assert change.score_after == lead.state.score
    assert deltas == [[70], [30], [-30], [-30], [-30], [-10]]
    assert lead.state.scores["engagement"] == 0
    assert lead.event("bounce").score_changes == []  # nothing applied, nothing recorded
    assert sum(lead.ledger) == lead.state.score == 0
    lead.event("webinar_attended")
    assert sum(lead.ledger) == lead.state.score == 70


def test_clamping_to_a_negative_minimum() -> None:
    text = HEAD.format(name="negmin", extra="").replace(
        "fit: {min: 0, max: 60}", "fit: {min: -20, max: 60}"
    )
    compiled = compile_ruleset(
        parse_ruleset(
            text
            + """\
  - name: careers
    when: {event.type: page_view, event.properties.url: {contains: /careers}}
    then: {score: {fit: -50}}
""",
            "negmin.yaml",
        )
    )
    lead = Lead(compiled)
    outcome = lead.event("page_view", url="/careers")
    assert [c.delta for c in outcome.score_changes] == [-20]
    assert lead.state.scores["fit"] == -20
    assert lead.state.score == -20
    assert lead.event("page_view", url="/careers").score_changes == []


def test_moving_to_the_stage_the_lead_is_in_writes_no_history() -> None:
    compiled = rules(
        """\
  - name: became-lead
    when: {event.type: form_submit}
    then: {stage: lead}
"""
    )
    lead = Lead(compiled)
    first = lead.event("form_submit")
    assert [(c.from_stage, c.to_stage) for c in first.stage_changes] == [("subscriber", "lead")]
    second = lead.event("form_submit")
    assert second.fired == ["became-lead"]
    assert second.stage_changes == []
    assert lead.state.stage == "lead"


def test_a_rule_may_move_a_lead_back_or_out() -> None:
    compiled = rules(
        """\
  - name: unsubscribed
    when: {event.type: unsubscribe}
    then: {stage: unsubscribed, exit: warm-nurture}
"""
    )
    lead = Lead(compiled)
    lead.state.stage = "mql"
    outcome = lead.event("unsubscribe")
    assert [(c.from_stage, c.to_stage) for c in outcome.stage_changes] == [("mql", "unsubscribed")]
    assert [(i.kind, i.target) for i in outcome.intents] == [("exit", "warm-nurture")]


# ------------------------------------------------------------------------- conditions


def test_not_any_all_nest() -> None:
    compiled = rules(
        """\
  - name: r
    when:
      any:
        - all: [{lead.country: US}, {lead.company_size: {gte: 200}}]
        - lead.vip: true
          not: {any: [{lead.industry: Retail}, {lead.industry: Gambling}]}
"""
        + "    then: {tag: target}\n"
    )
    assert fires(compiled, country="US", company_size=500)
    assert not fires(compiled, country="US", company_size=50)
    assert not fires(compiled, country="DE", company_size=500)
    assert fires(compiled, vip=True, industry="Software")
    assert fires(compiled, vip=True)  # no industry: not Retail, not Gambling
    assert not fires(compiled, vip=True, industry="Retail")
    assert not fires(compiled, vip=True, industry="gambling")
    assert not fires(compiled, vip=False, industry="Software")
    assert fires(compiled, country="US", company_size=500, vip=True, industry="Retail")


def test_not_of_all_is_any_of_nots() -> None:
    compiled = rules(
        """\
  - name: r
    when:
      not: {all: [{lead.country: US}, {lead.company_size: {gte: 200}}]}
    then: {tag: x}
"""
    )
    assert not fires(compiled, country="US", company_size=200)
    assert fires(compiled, country="US", company_size=199)
    assert fires(compiled, country="FR", company_size=200)
    assert fires(compiled)


@pytest.mark.parametrize(
    ("when", "attributes", "expected"),
    [
        ("{lead.industry: {ne: Retail}}", {}, True),
        ("{lead.industry: {ne: Retail}}", {"industry": "Software"}, True),
        ("{lead.industry: {ne: Retail}}", {"industry": "retail"}, False),
        ("{lead.budget: {ne: 100}}", {}, True),
        ("{lead.budget: {ne: 100}}", {"budget": 100}, False),
        ("{lead.budget: {ne: 100}}", {"budget": "100"}, False),
        ("{lead.country: {not_in: [US, CA]}}", {}, True),
        ("{lead.country: {not_in: [US, CA]}}", {"country": "MX"}, True),
        ("{lead.country: {not_in: [US, CA]}}", {"country": "ca"}, False),
        ("{event.properties.plan: {ne: free}}", {}, True),
        ("{lead.phone: {exists: false}}", {}, True),
        ("{lead.phone: {exists: false}}", {"phone": "+1 555 0100"}, False),
        ("{lead.phone: {exists: true}}", {}, False),
        ("{lead.phone: {exists: true}}", {"phone": "+1 555 0100"}, True),
        ("{lead.phone: null}", {}, True),
        ("{lead.phone: null}", {"phone": "+1 555 0100"}, False),
    ],
)
def test_negations_and_missing_fields(
    when: str, attributes: dict[str, Any], expected: bool
) -> None:
    compiled = rules(f"  - name: r\n    when: {when}\n    then: {{tag: x}}\n")
    assert fires(compiled, **attributes) is expected


@pytest.mark.parametrize(
    ("budget", "gte", "not_gte"),
    [
        (12000, True, False),
        ("12000", True, False),
        ("12000.50", True, False),
        (" 12,000 ", True, False),
        (9999, False, True),
        ("9999", False, True),
        ("abc", False, True),
        ("", False, True),
        (None, False, True),
        (True, False, True),
    ],
)
def test_numbers_compare_as_numbers_even_when_written_as_text(
    budget: Any, gte: bool, not_gte: bool
) -> None:
    compiled = rules(
        """\
  - name: r
    when: {lead.budget: {gte: 10000}}
    then: {tag: budget}
  - name: no-budget
    when: {not: {lead.budget: {gte: 10000}}}
    then: {tag: no-budget}
"""
    )
    attributes = {} if budget is None else {"budget": budget}
    fired = Lead(compiled, **attributes).event("page_view").fired
    assert ("r" in fired, "no-budget" in fired) == (gte, not_gte)


def test_numeric_equality_and_ranges_against_text() -> None:
    compiled = rules(
        """\
  - name: r
    when: {lead.company_size: 120, lead.rating: {gt: 3.5, lte: 5}}
    then: {tag: x}
"""
    )
    assert fires(compiled, company_size="120", rating="4")
    assert fires(compiled, company_size=120.0, rating=5)
    assert not fires(compiled, company_size="121", rating="4")
    assert not fires(compiled, company_size="120", rating="3.5")
    assert not fires(compiled, company_size="120", rating="five")


@pytest.mark.parametrize(
    ("industry", "expected"),
    [
        ("Software", True),
        ("SOFTWARE", True),
        ("software", True),
        ("  Software ", True),
        ("Soft", False),
        ("Software & Services", False),
        (None, False),
    ],
)
def test_string_equality_ignores_case(industry: str | None, expected: bool) -> None:
    compiled = rules("  - name: r\n    when: {lead.industry: sOfTwArE}\n    then: {tag: x}\n")
    attributes = {} if industry is None else {"industry": industry}
    assert fires(compiled, **attributes) is expected


def test_event_type_equality_ignores_case() -> None:
    compiled = rules("  - name: r\n    when: {event.type: Demo_Request}\n    then: {tag: x}\n")
    assert fires(compiled, event="demo_request")
    assert fires(compiled, event="DEMO_REQUEST")
    assert not fires(compiled, event="demo_requested")


def test_in_lists() -> None:
    compiled = rules(
        """\
  - name: r
    when: {lead.country: {in: [US, CA, GB]}, lead.company_size: {in: [50, 100]}}
    then: {tag: x}
"""
    )
    assert fires(compiled, country="us", company_size=50)
    assert fires(compiled, country="GB", company_size="100")
    assert not fires(compiled, country="MX", company_size=50)
    assert not fires(compiled, country="CA", company_size=75)
    assert not fires(compiled, company_size=50)


def test_contains_on_the_event_url() -> None:
    compiled = rules(
        """\
  - name: r
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
  - name: not-pricing
    when: {event.type: page_view, not: {event.properties.url: {contains: /pricing}}}
    then: {score: {engagement: 1}}
"""
    )
    lead = Lead(compiled)
    assert lead.event("page_view", url="https://acme.io/Pricing?plan=pro").fired == ["r"]
    assert lead.event("page_view", url="https://acme.io/blog").fired == ["not-pricing"]
    assert lead.event("page_view").fired == ["not-pricing"]  # no url at all
    assert lead.event("email_click", url="/pricing").fired == []
    assert lead.state.score == 12


def test_contains_and_equality_on_tags_mean_membership() -> None:
    compiled = rules(
        """\
  - name: r
    when: {lead.tags: {contains: vip}}
    then: {score: {fit: 10}}
  - name: s
    when: {lead.tags: {in: [partner, reseller]}}
    then: {score: {fit: 1}}
"""
    )
    assert Lead(compiled, tags=["VIP"]).event("page_view").fired == ["r"]
    assert Lead(compiled, tags=["vip-plus"]).event("page_view").fired == []
    assert Lead(compiled, tags=["x", "reseller"]).event("page_view").fired == ["s"]
    assert Lead(compiled).event("page_view").fired == []


def test_a_tag_added_in_this_evaluation_is_seen_by_later_rules() -> None:
    compiled = rules(
        """\
  - name: tagged
    when: {lead.tags: pricing-interest}
    then: {score: {fit: 5}}
    limit: once
  - name: pricing
    when: {event.properties.url: {contains: /pricing}}
    then: {tag: pricing-interest}
"""
    )
    lead = Lead(compiled)
    assert lead.event("page_view", url="/pricing").fired == ["pricing", "tagged"]
    assert lead.state.scores["fit"] == 5


def test_matches_uses_python_regexes() -> None:
    compiled = rules(
        r"""  - name: r
    when: {lead.job_title: {matches: '(?i)\b(vp|vice president|chief)\b'}}
    then: {score: {fit: 20}}
"""
    )
    assert fires(compiled, job_title="VP Marketing")
    assert fires(compiled, job_title="Chief Revenue Officer")
    assert not fires(compiled, job_title="MVP Developer")
    assert not fires(compiled)


def test_nested_event_properties() -> None:
    compiled = rules(
        "  - name: r\n    when: {event.properties.utm.source: google}\n    then: {tag: x}\n"
    )
    assert "r" in Lead(compiled).event("page_view", utm={"source": "Google"}).fired
    dotted: dict[str, Any] = {"utm.source": "google"}
    assert "r" in Lead(compiled).event("page_view", **dotted).fired
    assert Lead(compiled).event("page_view", utm={"source": "bing"}).fired == []
    assert Lead(compiled).event("page_view", utm="google").fired == []


# ------------------------------------------------------------------------- history: counts, limits


BUSY_WEEK = """\
  - name: busy-week
    when:
      event.type: page_view
      count: {type: page_view, within: 7d, at_least: 3}
    then: {score: {engagement: 5}}
"""


def test_count_three_page_views_within_seven_days() -> None:
    compiled = rules(BUSY_WEEK)
    lead = Lead(compiled)
    assert lead.event("page_view", at=T0).fired == []
    assert lead.event("email_open", at=T0 + timedelta(days=1)).fired == []  # other type
    assert lead.event("page_view", at=T0 + timedelta(days=2)).fired == []  # 2 so far
    # The third view (the current event counts) falls within 7 days of the first.
    assert lead.event("page_view", at=T0 + timedelta(days=6)).fired == ["busy-week"]


def test_count_spread_out_never_fires() -> None:
    compiled = rules(BUSY_WEEK)
    lead = Lead(compiled)
    for day in range(0, 40, 4):  # every 4 days: at most 2 in any 7
        assert lead.event("page_view", at=T0 + timedelta(days=day)).fired == []
    assert lead.state.score == 0


def test_count_at_most() -> None:
    compiled = rules(
        """\
  - name: first-download
    when:
      event.type: content_download
      count: {type: content_download, within: 30d, at_most: 1}
    then: {score: {engagement: 8}}
"""
    )
    lead = Lead(compiled)
    assert lead.event("content_download", at=T0).fired == ["first-download"]
    assert lead.event("content_download", at=T0 + timedelta(days=1)).fired == []
    assert lead.event("content_download", at=T0 + timedelta(days=45)).fired == ["first-download"]


def test_limit_once_across_evaluations() -> None:
    compiled = rules(
        """\
  - name: senior
    when: {lead.job_title: {matches: '(?i)vp'}}
    then: {score: {fit: 20}}
    limit: once
"""
    )
    lead = Lead(compiled, job_title="VP Sales")
    assert lead.event("profile_update").fired == ["senior"]
    assert lead.event("page_view").fired == []
    assert lead.event("page_view", at=T0 + timedelta(days=400)).fired == []
    assert lead.state.scores["fit"] == 20


def test_limit_times_per_window_across_evaluations() -> None:
    compiled = rules(
        """\
  - name: pricing
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
    limit: {times: 2, per: 30d}
"""
    )
    lead = Lead(compiled)
    fired = [
        bool(lead.event("page_view", at=T0 + offset, url="/pricing").fired)
        for offset in (
            timedelta(0),
            timedelta(days=1),
            timedelta(days=2),  # 2 in the last 30 days already
            timedelta(days=29),  # still 2
            timedelta(days=30, hours=1),  # the first firing has left the window
            timedelta(days=30, hours=2),  # day 1 and day 30 are within 30 days
            timedelta(days=31, hours=1),  # day 1 has left the window
        )
    ]
    assert fired == [True, True, False, False, True, False, True]
    assert lead.state.scores["engagement"] == 40


CHAIN = """\
  - name: step-1
    when: {event.type: go}
    then: {set: {s1: "yes"}}
  - name: step-2
    when: {lead.s1: "yes"}
    then: {set: {s2: "yes"}}
  - name: step-3
    when: {lead.s2: "yes"}
    then: {set: {s3: "yes"}}
  - name: step-4
    when: {lead.s3: "yes"}
    then: {set: {s4: "yes"}}
  - name: step-5
    when: {lead.s4: "yes"}
    then: {set: {s5: "yes"}}
"""


def test_a_runaway_chain_is_an_error_naming_the_rules() -> None:
    compiled = rules(CHAIN, name="chain3", extra="max_chain: 3\n")
    lead = Lead(compiled)
    with pytest.raises(ChainError) as caught:
        lead.event("go")
    assert caught.value.rules[:4] == ["step-1", "step-2", "step-3", "step-4"]
    message = str(caught.value)
    assert "step-1 → step-2 → step-3 → step-4" in message
    assert "3" in message and "max_chain" in message


def test_a_chain_within_max_chain_completes() -> None:
    compiled = rules(CHAIN, name="chain5", extra="max_chain: 5\n")
    lead = Lead(compiled)
    outcome = lead.event("go")
    assert outcome.fired == ["step-1", "step-2", "step-3", "step-4", "step-5"]
    assert lead.state.attributes["s5"] == "yes"


# ------------------------------------------------------------------------- odd values


ODD = """\
  - name: has-budget
    when: {lead.budget: {gte: 10000}}
    then: {score: {fit: 10}}
  - name: small-ratio
    when: {lead.ratio: {lt: 1}}
    then: {score: {fit: 1}}
  - name: big-order
    when: {event.properties.amount: {gt: 100}}
    then: {score: {engagement: 10}}
  - name: industry
    when: {lead.industry: {in: [Software, SaaS]}, not: {lead.industry: Retail}}
    then: {tag: software}
  - name: title
    when: {lead.job_title: {matches: '(?i)vp'}, event.properties.url: {contains: x}}
    then: {tag: vp}
  - name: tagged
    when: {lead.tags: {contains: vip}, lead.country: {ne: US}}
    then: {tag: vip-abroad}
"""


@pytest.mark.parametrize(
    ("budget", "expected"),
    [(1e16, True), (1e-05, False), (-1e16, False), (1.5e300, True), (12345.678901234, True)],
)
def test_exponent_floats_in_attributes_are_compared_not_rejected(
    budget: float, expected: bool
) -> None:
    compiled = rules(ODD, name="odd")
    lead = Lead(compiled, budget=budget, ratio=budget)
    outcome = lead.event("page_view", amount=budget)
    assert ("has-budget" in outcome.fired) is expected
    assert ("big-order" in outcome.fired) is expected
    assert ("small-ratio" in outcome.fired) is (budget < 1)


@pytest.mark.parametrize(
    "value",
    [
        1e-05,
        1e16,
        -1e-300,
        5e-324,
        1.7976931348623157e308,
        math.nan,
        math.inf,
        -math.inf,
        10**30,
        -(10**30),
        [1, "Software", 1e-05],
        {"nested": {"deeper": [1e16]}},
        [],
        {},
        "",
        "ü🙂\u0000",
        True,
    ],
)
def test_odd_attribute_and_property_values_never_crash(value: Any) -> None:
    compiled = rules(ODD, name="odd")
    lead = Lead(
        compiled,
        tags=["vip"],
        budget=value,
        ratio=value,
        industry=value,
        job_title=value,
        country=value,
    )
    outcome = lead.event("page_view", amount=value, url=value)
    assert lead.state.score == sum(c.delta for c in outcome.score_changes)
    # An odd value is not "US", so `ne: US` holds.
    assert "tagged" in outcome.fired


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, [1, "US"], ["DE"], {"a": 1}, 1e-05, 1e16, "", "DE", "US", " us "],
)
def test_a_condition_and_its_negation_never_agree(value: Any) -> None:
    compiled = rules(
        """\
  - name: is-us
    when: {lead.country: US}
    then: {tag: us}
  - name: not-us
    when: {not: {lead.country: US}}
    then: {tag: not-us}
  - name: ne-us
    when: {lead.country: {ne: US}}
    then: {tag: ne-us}
  - name: not-in
    when: {lead.country: {not_in: [US, CA]}}
    then: {tag: not-in}
  - name: in
    when: {lead.country: {in: [US, CA]}}
    then: {tag: in}
""",
        name="negation",
    )
    fired = Lead(compiled, country=value).event("page_view").fired
    assert ("is-us" in fired) != ("not-us" in fired), fired
    assert ("not-us" in fired) == ("ne-us" in fired), fired
    assert ("in" in fired) != ("not-in" in fired), fired


def test_a_list_attribute_matches_by_any_item() -> None:
    compiled = rules(ODD, name="odd")
    outcome = Lead(compiled, job_title=["Engineer", "VP Product"]).event("page_view", url="x")
    assert "title" in outcome.fired


# ------------------------------------------------------------------------- many leads


def test_more_than_1024_leads_in_one_process_each_get_their_points() -> None:
    """durable-rules breaks past 1,024 live sessions; one reused session scores any number."""
    compiled = rules(
        """\
  - name: pricing
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
  - name: large
    when: {lead.company_size: {gte: 750}}
    then: {score: {fit: 5}}
    limit: once
  - name: odd
    when: {lead.parity: odd}
    then: {score: {fit: 1}}
    limit: once
""",
        name="many",
    )
    results = []
    for n in range(1500):
        state = new_lead(
            compiled.ruleset, {"company_size": n, "parity": "odd" if n % 2 else "even"}
        )
        url = "/pricing" if n % 3 else "/blog"
        event = Event(f"lead-{n}", "page_view", T0, {"url": url})
        history = MemoryHistory()
        history.add_event("page_view", T0)
        results.append(evaluate(compiled, state, event, history).state.scores)
    expected = [
        {"fit": (5 if n >= 750 else 0) + n % 2, "engagement": 10 if n % 3 else 0}
        for n in range(1500)
    ]
    assert results == expected


def test_a_long_not_in_list_compiles_and_holds_when_the_value_is_none_of_them() -> None:
    domains = ", ".join([*(f"mail{i}.com" for i in range(30)), "Gmail.com", "404", "12.5"])
    compiled = rules(
        f"""\
  - name: r
    when: {{event.type: form_submit, lead.domain: {{not_in: [{domains}]}}}}
    then: {{score: {{fit: 5}}}}
""",
        name="long-not-in",
    )

    def business(**attributes: Any) -> bool:
        return "r" in Lead(compiled, **attributes).event("form_submit").fired

    assert business(domain="acme.io")
    assert business()  # no domain at all: not one of them
    assert not business(domain="GMAIL.COM ")
    assert not business(domain="mail17.com")
    assert not business(domain=404)
    assert not business(domain="12.50")
    assert business(domain=405)


def test_lone_surrogates_from_json_escapes_do_not_break_the_engine() -> None:
    compiled = rules(ODD, name="odd")
    lead = Lead(compiled, industry="Software\udfff", country="\ud800", budget="\ud800")
    outcome = lead.event("page_view", url="\ud800/x", amount="\udc00")
    assert "tagged" not in outcome.fired  # no tags
    assert "industry" not in outcome.fired  # not "Software"
    assert "software" not in lead.state.tags


def test_counts_and_limits_at_the_start_of_time() -> None:
    """Windows that would reach before year 1 are cut there, not an OverflowError."""
    compiled = rules(
        """\
  - name: busy
    when:
      event.type: page_view
      count: {type: page_view, within: 30d, at_least: 2}
    then: {score: {engagement: 5}}
    limit: {times: 1, per: 30d}
""",
        name="year-one",
    )
    lead = Lead(compiled)
    start = datetime(1, 1, 1, 12, tzinfo=UTC)
    assert lead.event("page_view", at=start).fired == []
    assert lead.event("page_view", at=start + timedelta(days=1)).fired == ["busy"]
    assert lead.event("page_view", at=start + timedelta(days=2)).fired == []  # limit
