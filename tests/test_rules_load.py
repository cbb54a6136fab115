"""What a marketer sees when a ruleset is wrong: every problem, with file, line and a sentence."""

from __future__ import annotations

import pytest

from engine.errors import Problem, ProblemsError
from engine.rules import spec
from engine.rules.load import parse_ruleset

# Lines 1-8 of every ruleset below; rules start on line 9.
HEAD = """\
ruleset: loader-test
components:
  fit: {min: 0, max: 60}
  engagement: {min: 0, max: 100}
temperature: {cold: 0, warm: 40, hot: 70}
stages: [subscriber, lead, mql, sql]
exits: [unsubscribed]
rules:
"""
FIRST_RULE_LINE = 9


def problems(rules: str, head: str = HEAD) -> list[Problem]:
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(head + rules, "x.yaml")
    found = caught.value.problems
    assert found, "a ProblemsError must carry at least one problem"
    assert all(p.file == "x.yaml" for p in found)
    # str(error) lists every problem as file:line: message, one per line.
    assert str(caught.value).splitlines() == [str(p) for p in found]
    return found


def only(rules: str, head: str = HEAD) -> Problem:
    found = problems(rules, head)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


def test_a_valid_ruleset_loads() -> None:
    ruleset = parse_ruleset(
        HEAD
        + """\
  - name: pricing
    when: {event.type: page_view, event.properties.url: {contains: /pricing}}
    then: {score: {engagement: 10}}
    limit: {times: 3, per: 30d}
""",
        "x.yaml",
    )
    assert ruleset.name == "loader-test"
    assert [r.name for r in ruleset.rules] == ["pricing"]
    assert ruleset.rules[0].line == FIRST_RULE_LINE
    assert ruleset.path == "x.yaml"


def test_unknown_operator_names_the_line_and_lists_the_operators() -> None:
    problem = only(
        """\
  - name: big-budget
    when:
      event.type: page_view
      lead.budget: {bigger: 10000}
    then: {score: {fit: 10}}
"""
    )
    assert problem.line == 12
    assert "unknown operator 'bigger'" in problem.message
    assert "big-budget" in problem.message
    assert "gte" in problem.message  # tells what to use instead
    assert str(problem).startswith("x.yaml:12: ")


def test_unknown_score_component_in_then() -> None:
    problem = only(
        """\
  - name: pricing
    when: {event.type: page_view}
    then:
      tag: seen
      score: {engagment: 10}
"""
    )
    assert problem.line == 13
    assert "unknown score component 'engagment'" in problem.message


def test_unknown_score_component_in_lead_scores_path() -> None:
    problem = only(
        """\
  - name: ok
    when: {event.type: page_view}
    then: {score: {fit: 1}}
  - name: engaged
    when:
      lead.scores.engagment: {gte: 30}
    then: {tag: engaged}
"""
    )
    assert problem.line == 14
    assert "unknown score component 'engagment'" in problem.message
    assert "lead.scores.engagment" in problem.message


def test_unknown_stage_in_then_and_in_when() -> None:
    found = problems(
        """\
  - name: qualify
    when: {lead.score: {gte: 60}}
    then: {stage: MQL-stage}
  - name: from-opportunity
    when: {lead.stage: opportunity}
    then: {tag: x}
"""
    )
    assert [(p.line, "unknown stage" in p.message) for p in found] == [(11, True), (13, True)]
    assert "'MQL-stage'" in found[0].message
    assert "'opportunity'" in found[1].message  # not among this ruleset's stages
    # The message lists the stages the marketer may use.
    assert "subscriber, lead, mql, sql, unsubscribed" in found[0].message


def test_unknown_stage_inside_an_in_list() -> None:
    problem = only(
        """\
  - name: late
    when: {lead.stage: {in: [mql, sqll]}}
    then: {tag: late}
"""
    )
    assert problem.line == 10
    assert "unknown stage 'sqll'" in problem.message


def test_unknown_temperature_band() -> None:
    problem = only(
        """\
  - name: boiling
    when:
      any:
        - {event.type: demo_request}
        - {lead.temperature: boiling}
    then: {tag: x}
"""
    )
    assert problem.line == 13
    assert "unknown temperature 'boiling'" in problem.message
    assert "cold, warm, hot" in problem.message


def test_invalid_regex() -> None:
    problem = only(
        """\
  - name: senior
    when:
      not:
        lead.job_title: {matches: '(?i)(vp|chief'}
    then: {score: {fit: 20}}
"""
    )
    assert problem.line == 12
    assert "invalid regex" in problem.message
    assert "(?i)(vp|chief" in problem.message


@pytest.mark.parametrize("window", ["7x", "seven days", "0d", "-3d", "7.5d"])
def test_bad_count_window(window: str) -> None:
    problem = only(
        f"""\
  - name: busy
    when:
      event.type: page_view
      count: {{type: page_view, within: '{window}', at_least: 3}}
    then: {{score: {{engagement: 5}}}}
"""
    )
    assert problem.line == 12
    assert "bad duration" in problem.message
    assert "7d" in problem.message  # an example of what works


def test_count_without_bounds() -> None:
    problem = only(
        """\
  - name: busy
    when:
      count: {type: page_view, within: 7d}
    then: {score: {engagement: 5}}
"""
    )
    assert problem.line == 11
    assert "at_least" in problem.message


@pytest.mark.parametrize(
    ("limit", "words"),
    [
        ("twice", "`once` or {times: N, per: 30d}"),
        ("{times: 0, per: 30d}", "a whole number from 1"),
        ("{times: two, per: 30d}", "a whole number from 1"),
        ("{times: 2, per: 30x}", "bad duration '30x'"),
        ("{times: 2}", "`once` or {times: N, per: 30d}"),
        ("{times: 2, per: 30d, every: 1d}", "`once` or {times: N, per: 30d}"),
    ],
)
def test_bad_limit(limit: str, words: str) -> None:
    problem = only(
        f"""\
  - name: pricing
    when: {{event.type: page_view}}
    then: {{score: {{engagement: 10}}}}
    limit: {limit}
"""
    )
    assert problem.line == 12
    assert words in problem.message
    assert "pricing" in problem.message


def test_yaml_syntax_error_names_the_line_of_the_error() -> None:
    problem = only(
        """\
  - name: a
    when: {event.type: page_view}
    then: {score: {engagement: 1}}
  - name: b
    when: {event.type: page_view}
     then: {score: {engagement: 1}}
"""
    )
    assert problem.line == 14
    assert problem.message.startswith("YAML syntax:")


def test_yaml_tab_indentation_is_a_syntax_error_with_its_line() -> None:
    problem = only("  - name: a\n    when: {event.type: x}\n\tthen: {score: {fit: 1}}\n")
    assert problem.line == 11
    assert "YAML syntax" in problem.message


def test_duplicate_key_in_a_mapping_is_reported_not_silently_overwritten() -> None:
    problem = only(
        """\
  - name: a
    when: {event.type: page_view, event.type: form_submit}
    then: {score: {engagement: 1}}
"""
    )
    assert problem.line == 10
    assert "duplicate key" in problem.message


def test_duplicate_rule_names() -> None:
    problem = only(
        """\
  - name: pricing
    when: {event.type: page_view}
    then: {score: {engagement: 10}}
  - name: demo
    when: {event.type: demo_request}
    then: {score: {engagement: 25}}
  - name: pricing
    when: {event.type: form_submit}
    then: {score: {engagement: 10}}
"""
    )
    assert problem.line == 15  # the second use
    assert "'pricing' is used twice" in problem.message


def test_unknown_top_level_key() -> None:
    text = HEAD.replace("rules:\n", "rule_set: oops\nrules:\n") + (
        "  - name: a\n    when: {event.type: x}\n    then: {score: {fit: 1}}\n"
    )
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(text, "x.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 8
    assert "unknown key 'rule_set'" in problem.message
    assert "rules" in problem.message  # lists the keys a ruleset has


def test_unknown_key_in_a_rule_and_unknown_action() -> None:
    found = problems(
        """\
  - name: a
    when: {event.type: x}
    then: {score: {fit: 1}, send: welcome}
    priority: 3
"""
    )
    assert sorted((p.line, p.message.split(":")[-1].strip()) for p in found)[0][0] == 11
    messages = {p.line: p.message for p in found}
    assert "unknown action 'send'" in messages[11]
    assert "unknown key 'priority'" in messages[12]


def test_every_problem_in_a_file_is_reported_at_once() -> None:
    found = problems(
        """\
  - name: one
    when: {lead.score: {above: 5}}
    then: {score: {fit: 1}}
  - name: fine
    when: {event.type: page_view}
    then: {score: {engagement: 1}}
  - name: two
    when: {event.type: page_view}
    then: {score: {bogus: 1}}
"""
    )
    assert [p.line for p in found] == [10, 17]
    assert "unknown operator 'above'" in found[0].message
    assert "unknown score component 'bogus'" in found[1].message


def test_problems_in_header_and_rules_are_all_reported() -> None:
    head = """\
ruleset: loader-test
components:
  fit: {min: 10, max: 0}
  engagement: {min: 0, max: 100, decay: {points: 5, every: soon}}
temperature: {cold: 0, warm: forty}
stages: [subscriber, lead]
max_chain: 0
rules:
"""
    found = problems(
        """\
  - name: a
    when: {lead.x: {matches: '['}}
    then: {score: {fit: 1}}
""",
        head,
    )
    lines = [p.line for p in found]
    assert lines == [3, 4, 5, 7, 10], [str(p) for p in found]


def test_empty_operator_mapping_is_a_problem() -> None:
    """`lead.budget: {}` states no test at all: reject it rather than compile an empty rule."""
    problem = only(
        """\
  - name: budget
    when: {lead.budget: {}}
    then: {score: {fit: 10}}
"""
    )
    assert problem.line == 10
    assert "lead.budget" in problem.message


def test_empty_operator_mapping_nested_in_any_is_a_problem() -> None:
    problem = only(
        """\
  - name: budget
    when:
      any:
        - {lead.budget: {}}
    then: {score: {fit: 10}}
"""
    )
    assert problem.line == 12


@pytest.mark.parametrize("bound", [".nan", ".inf", "-.inf"])
def test_numeric_comparison_needs_a_finite_number(bound: str) -> None:
    problem = only(
        f"""\
  - name: budget
    when: {{lead.budget: {{lt: {bound}}}}}
    then: {{score: {{fit: 10}}}}
"""
    )
    assert problem.line == 10
    assert "number" in problem.message


@pytest.mark.parametrize(
    ("when", "words"),
    [
        ("{lead.budget: {gte: '10000'}}", "needs a number"),
        ("{lead.country: {in: US}}", "needs a list"),
        ("{lead.phone: {exists: yes please}}", "needs true or false"),
        ("{event.properties.url: {contains: 5}}", "needs a string"),
        ("{lead.scores: 5}", "unknown field"),
        ("{event.url: /pricing}", "unknown field"),
        ("{account.size: 5}", "unknown field"),
        ("{lead.country: {eq: [US, CA]}}", "in / not_in"),
        ("{lead.country: [US, CA]}", "in / not_in"),
        ("{lead.country: {ne: [US]}}", "in / not_in"),
        ("{lead.country: {in: [[US]]}}", "scalar"),
    ],
)
def test_bad_operands_and_paths(when: str, words: str) -> None:
    problem = only(f"  - name: a\n    when: {when}\n    then: {{score: {{fit: 1}}}}\n")
    assert problem.line == 10
    assert words in problem.message


def test_a_rule_may_not_set_a_computed_field() -> None:
    problem = only(
        """\
  - name: a
    when: {event.type: x}
    then: {set: {score: 100}}
"""
    )
    assert problem.line == 11
    assert "'score' cannot be set" in problem.message


def test_points_must_be_integers() -> None:
    problem = only("  - name: a\n    when: {event.type: x}\n    then: {score: {fit: 2.5}}\n")
    assert problem.line == 11
    assert "points must be a whole number" in problem.message


def test_not_a_mapping_and_empty_file() -> None:
    for text in ("", "- just\n- a list\n", "ruleset\n"):
        with pytest.raises(ProblemsError) as caught:
            parse_ruleset(text, "x.yaml")
        (problem,) = caught.value.problems
        assert problem.line == 1
        assert "mapping" in problem.message


def test_yaml_dates_in_a_rule_are_compared_as_text() -> None:
    """An unquoted 2026-01-01 is a YAML date; rules compare it like the text it looks like."""
    ruleset = parse_ruleset(
        HEAD
        + """\
  - name: renewal
    when: {lead.renewal: 2026-01-01}
    then: {set: {checked_on: 2026-02-01}}
""",
        "x.yaml",
    )
    rule = ruleset.rules[0]
    assert isinstance(rule.when, spec.Test)
    assert rule.when.value == "2026-01-01"
    assert rule.then.set == (("checked_on", "2026-02-01"),)


def test_a_rule_too_complex_for_the_engine_is_a_problem_with_its_line() -> None:
    """durable-rules refuses (error 113) a rule with too many and/or groups; say so plainly."""
    conditions = "\n".join(f"      lead.a{i}: {{ne: x}}" for i in range(16))
    problem = only(
        f"""\
  - name: fine
    when: {{event.type: page_view}}
    then: {{score: {{fit: 1}}}}
  - name: picky
    when:
{conditions}
    then: {{tag: picky}}
"""
    )
    assert problem.line == 12
    assert "'picky' is too complex" in problem.message
    assert "split it" in problem.message


def test_a_long_not_in_list_is_not_too_complex() -> None:
    domains = ", ".join(f"mail{i}.com" for i in range(40))
    ruleset = parse_ruleset(
        HEAD
        + f"""\
  - name: business-domain
    when: {{event.type: form_submit, lead.domain: {{not_in: [{domains}]}}}}
    then: {{score: {{fit: 5}}}}
    limit: once
""",
        "x.yaml",
    )
    assert [r.name for r in ruleset.rules] == ["business-domain"]
