"""How rules fire: what a marketer sees when a lead's events are scored."""

from __future__ import annotations

from datetime import timedelta

import pytest

from engine.rules.compile import CompiledRuleset
from engine.rules.evaluate import ChainError
from tests.helpers import T0, Lead, compiled

BASE = """
ruleset: {name}
components:
  fit: {{min: 0, max: 60}}
  engagement: {{min: 0, max: 100}}
temperature: {{cold: 0, warm: 40, hot: 70}}
rules:
{rules}
"""


def rules(name: str, body: str) -> CompiledRuleset:
    return compiled(BASE.format(name=name, rules=body))


def test_two_rules_matching_one_event_both_fire() -> None:
    ruleset = rules(
        "two",
        """
  - name: pricing
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
  - name: any-page
    when: {event.type: page_view}
    then: {score: {engagement: 1}}
""",
    )
    lead = Lead(ruleset, email="a@x.io")
    outcome = lead.event("page_view", url="/Pricing?plan=pro")
    assert outcome.fired == ["pricing", "any-page"]
    assert lead.state.scores["engagement"] == 11


def test_forward_chaining_stage_rule_sees_this_events_points_and_temperature() -> None:
    ruleset = rules(
        "chain",
        """
  - name: demo
    when: {event.type: demo_request}
    then: {score: {engagement: 75}}
  - name: qualify
    when: {lead.stage: subscriber, lead.score: {gte: 60}}
    then: {stage: mql}
  - name: hot-alert
    when: {lead.temperature: hot, lead.stage: mql}
    then: {stage: sql, alert: sales}
""",
    )
    lead = Lead(ruleset)
    outcome = lead.event("demo_request")
    assert outcome.fired == ["demo", "qualify", "hot-alert"]
    assert [(c.from_stage, c.to_stage) for c in outcome.stage_changes] == [
        ("subscriber", "mql"),
        ("mql", "sql"),
    ]
    assert [(i.kind, i.target) for i in outcome.intents] == [("alert", "sales")]
    # A rule fires once per evaluation: the next event re-evaluates from the new state.
    assert lead.event("page_view").fired == []


def test_scores_clamp_and_the_ledger_records_what_was_applied() -> None:
    ruleset = rules(
        "clamp",
        """
  - name: big
    when: {event.type: webinar_attended}
    then: {score: {engagement: 70}}
  - name: bounce
    when: {event.type: bounce}
    then: {score: {engagement: -500}}
""",
    )
    lead = Lead(ruleset)
    lead.event("webinar_attended")
    second = lead.event("webinar_attended")
    assert [c.delta for c in second.score_changes] == [30]
    assert lead.state.scores["engagement"] == 100
    assert [c.delta for c in lead.event("bounce").score_changes] == [-100]
    assert lead.state.score == 0


def test_missing_fields_ne_not_in_exists_and_not() -> None:
    ruleset = rules(
        "missing",
        """
  - name: not-us
    when: {lead.country: {ne: US}}
    then: {tag: not-us}
  - name: not-listed
    when: {lead.industry: {not_in: [retail]}}
    then: {tag: not-retail}
  - name: no-budget
    when: {lead.budget: {exists: false}}
    then: {tag: no-budget}
  - name: not-big
    when: {not: {lead.budget: {gte: 10000}}}
    then: {tag: not-big}
""",
    )
    empty = Lead(ruleset)
    empty.event("profile_update")
    assert set(empty.state.tags) == {"not-us", "not-retail", "no-budget", "not-big"}
    full = Lead(ruleset, country="us", industry="Retail", budget="12,000")
    full.event("profile_update")
    assert full.state.tags == []


def test_numbers_in_text_compare_as_numbers_and_text_never_does() -> None:
    ruleset = rules(
        "numbers",
        """
  - name: budget
    when: {lead.budget: {gte: 10000}}
    then: {tag: budget}
  - name: unknown-budget
    when: {not: {lead.budget: {gte: 10000}}}
    then: {tag: small-or-unknown}
""",
    )
    text_number = Lead(ruleset, budget="12000")
    text_number.event("profile_update")
    assert text_number.state.tags == ["budget"]
    words = Lead(ruleset, budget="abc")
    words.event("profile_update")
    assert words.state.tags == ["small-or-unknown"]


def test_any_all_in_and_case_insensitive_text() -> None:
    ruleset = rules(
        "logic",
        """
  - name: buyer
    when:
      lead.industry: {in: [saas, fintech]}
      any:
        - {lead.job_title: {matches: '(?i)\\bvp\\b'}}
        - all: [{lead.company_size: {gte: 200}}, {lead.country: GB}]
    then: {score: {fit: 20}}
""",
    )
    vp = Lead(ruleset, industry="SaaS", job_title="VP Sales")
    vp.event("profile_update")
    big = Lead(ruleset, industry="FinTech", company_size=500, country="gb")
    big.event("profile_update")
    small = Lead(ruleset, industry="fintech", company_size=20, country="GB")
    small.event("profile_update")
    assert (vp.state.score, big.state.score, small.state.score) == (20, 20, 0)


def test_count_window_ends_at_the_event_and_includes_it() -> None:
    ruleset = rules(
        "count",
        """
  - name: busy-week
    when: {event.type: page_view, count: {type: page_view, within: 7d, at_least: 3}}
    then: {score: {engagement: 5}}
""",
    )
    spread = Lead(ruleset)
    for day in (0, 8, 16):
        spread.event("page_view", at=T0 + timedelta(days=day))
    assert spread.fired == []
    busy = Lead(ruleset)
    for day in (0, 2, 4):
        busy.event("page_view", at=T0 + timedelta(days=day))
    assert busy.fired == ["busy-week"]
    # A late event from long ago does not see the later visits.
    assert busy.event("page_view", at=T0 - timedelta(days=30)).fired == []


def test_limits_once_and_times_per_window() -> None:
    ruleset = rules(
        "limits",
        """
  - name: title
    when: {lead.job_title: {contains: director}}
    then: {score: {fit: 10}}
    limit: once
  - name: pricing
    when: {event.type: page_view}
    then: {score: {engagement: 10}}
    limit: {times: 2, per: 30d}
""",
    )
    lead = Lead(ruleset, job_title="Marketing Director")
    for day in (0, 1, 2, 31, 32, 33):
        lead.event("page_view", at=T0 + timedelta(days=day))
    assert lead.fired.count("title") == 1
    assert lead.fired.count("pricing") == 4  # two in the first 30 days, two in the next


def test_runaway_chain_is_an_error_naming_the_rules() -> None:
    chain = "\n".join(
        f"""  - name: step-{i}
    when: {{lead.step: {i}}}
    then: {{set: {{step: {i + 1}}}}}"""
        for i in range(5)
    )
    ruleset = compiled(
        BASE.format(name="runaway", rules=chain).replace("rules:\n", "max_chain: 3\nrules:\n")
    )
    lead = Lead(ruleset, step=0)
    with pytest.raises(ChainError) as error:
        lead.event("profile_update")
    assert "step-0 → step-1 → step-2" in str(error.value)
    assert lead.state.attributes["step"] == 0  # nothing applied


def test_odd_values_never_crash_the_engine() -> None:
    ruleset = rules(
        "odd",
        """
  - name: size
    when: {lead.company_size: {gt: 0.00001}}
    then: {tag: sized}
  - name: url
    when: {event.properties.url: {contains: x}}
    then: {tag: url}
""",
    )
    for value in (1e-05, 1e16, float("nan"), float("inf"), 10**30, [1, 2], {"a": 1}, "", None):
        lead = Lead(ruleset, company_size=value)
        lead.event("page_view", url=value)
    small = Lead(ruleset, company_size=1e-05)
    small.event("profile_update")
    assert small.state.tags == []  # 0.00001 is not greater than 0.00001


def test_more_than_1024_leads_in_one_process() -> None:
    """durable-rules crashes past 1,024 live sessions; the evaluator keeps none between calls."""
    ruleset = rules(
        "many",
        """
  - name: visit
    when: {event.type: page_view}
    then: {score: {engagement: 3}}
""",
    )
    leads = [Lead(ruleset, email=f"lead-{i}@x.io") for i in range(1500)]
    for lead in leads:
        lead.event("page_view")
    assert {lead.state.score for lead in leads} == {3}
