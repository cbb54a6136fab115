"""`nurture rules check` and `nurture rules test`: what a marketer runs before a ruleset goes live.
No database: both commands read files only."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from engine.settings import get_settings
from tests.helpers import ROOT, nurture, ruleset_text

RULESETS = ROOT / "rulesets"

GOOD = ruleset_text("cli-test")

CASES = """\
- name: a VP who views pricing
  lead: {email: ana@acme.io, job_title: VP Marketing}
  events: [{type: page_view, properties: {url: /pricing}}]
  expect: {score: 25, scores: {fit: 15, engagement: 10}, temperature: cold, stage: subscriber}
"""


def folder(tmp_path: Path, ruleset: str, cases: str | None = None, name: str = "cli") -> Path:
    root = tmp_path / "rulesets"
    (root / "tests").mkdir(parents=True, exist_ok=True)
    (root / f"{name}.yaml").write_text(ruleset, encoding="utf-8")
    if cases is not None:
        (root / "tests" / f"{name}.yaml").write_text(cases, encoding="utf-8")
    return root


# ------------------------------------------------------------------------- rules check


def test_check_the_repository_rulesets_passes() -> None:
    result = nurture("rules", "check", str(RULESETS))
    assert result.exit_code == 0, result.output
    assert "ok" in result.output
    assert "b2b-saas" in result.output
    assert "error" not in result.output


def test_check_a_broken_ruleset_fails_with_file_and_line(tmp_path: Path) -> None:
    broken = GOOD.replace("{contains: /pricing}", "{includes: /pricing}").replace(
        "{fit: 15}", "{fitness: 15}"
    )
    root = folder(tmp_path, broken)
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 1
    path = str(root / "cli.yaml")
    assert f"{path}:9: " in result.output  # the unknown score component
    assert f"{path}:12: " in result.output  # the unknown operator
    assert "unknown score component 'fitness'" in result.output
    assert "unknown operator 'includes'" in result.output


def test_check_a_yaml_syntax_error(tmp_path: Path) -> None:
    root = folder(
        tmp_path, GOOD.replace("    then: {score: {fit: 15}}", "    then: {score: {fit: 15}")
    )
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 1
    assert re.search(re.escape(str(root / "cli.yaml")) + r":\d+: YAML syntax", result.output)


def test_check_reports_every_broken_file(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD.replace("{contains: /pricing}", "{includes: /pricing}"))
    (root / "other.yaml").write_text(GOOD.replace("ruleset: cli-test", "ruleset: other\nbogus: 1"))
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 1
    assert f"{root / 'cli.yaml'}:12: " in result.output
    assert f"{root / 'other.yaml'}:2: " in result.output


def test_check_a_broken_test_file(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD, "- name: no expectations\n  lead: {email: a@b.io}\n")
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 1
    assert f"{root / 'tests' / 'cli.yaml'}:1: " in result.output


def test_check_json_lists_problems(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD.replace("limit: once", "limit: twice"))
    result = nurture("rules", "check", str(root), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["problems"] == [
        {
            "file": str(root / "cli.yaml"),
            "line": 10,
            "error": "rule 'senior': limit is `once` or {times: N, per: 30d}",
        }
    ]


def test_check_an_empty_folder_fails(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = nurture("rules", "check", str(empty))
    assert result.exit_code == 1
    assert "no ruleset files" in result.output


def test_check_defaults_to_nurture_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder(tmp_path, GOOD, CASES)
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    get_settings.cache_clear()
    result = nurture("rules", "check")
    assert result.exit_code == 0, result.output
    assert "ruleset cli-test, 2 rules" in result.output
    assert "1 test cases" in result.output


def test_check_warns_about_unlimited_profile_rules(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD.replace("    limit: once\n", ""))
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 0  # a warning, not an error
    assert "warning" in result.output
    assert "'senior'" in result.output
    assert "limit: once" in result.output


# ------------------------------------------------------------------------- rules test


def test_the_repository_ruleset_tests_pass() -> None:
    cases = RULESETS / "tests" / "b2b-saas.yaml"
    count = len(re.findall(r"^- name:", cases.read_text(encoding="utf-8"), re.MULTILINE))
    result = nurture("rules", "test", str(RULESETS))
    assert result.exit_code == 0, result.output
    assert f"{count} cases passed, 0 cases failed" in result.output
    assert "FAIL" not in result.output


def test_a_passing_folder(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD, CASES)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 0, result.output
    assert "PASS a VP who views pricing" in result.output
    assert "1 cases passed, 0 cases failed" in result.output


def test_a_wrong_expectation_fails_with_expected_and_actual(tmp_path: Path) -> None:
    wrong = CASES.replace("score: 25", "score: 99").replace("stage: subscriber", "stage: mql")
    wrong += """\
- name: a student who views pricing
  lead: {email: bo@acme.io, job_title: Student}
  events: [{type: page_view, properties: {url: /pricing}}]
  expect: {score: 10, fired: [pricing], not_fired: [senior]}
"""
    root = folder(tmp_path, GOOD, wrong)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 1
    assert f"FAIL a VP who views pricing ({root / 'tests' / 'cli.yaml'}:1)" in result.output
    assert "score: expected 99, got 25" in result.output
    assert "stage: expected 'mql', got 'subscriber'" in result.output
    assert "PASS a student who views pricing" in result.output
    assert "1 cases passed, 1 cases failed" in result.output


def test_fired_and_tags_expectations_are_checked(tmp_path: Path) -> None:
    cases = """\
- name: wrong rules
  lead: {email: ana@acme.io}
  events: [{type: page_view, properties: {url: /pricing}}]
  expect: {fired: [senior], not_fired: [pricing], tags: [hot], scores: {engagement: 0}}
"""
    root = folder(tmp_path, GOOD, cases)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 1
    assert "fired: expected 'senior' to fire" in result.output
    assert "not_fired: 'pricing' fired" in result.output
    assert "tags: expected 'hot'" in result.output
    assert "scores.engagement: expected 0, got 10" in result.output


def test_the_repository_case_with_a_wrong_expectation(tmp_path: Path) -> None:
    """The shipped tests, one expectation changed: `score: expected 99, got N`."""
    shutil.copytree(RULESETS, tmp_path / "rulesets")
    cases = tmp_path / "rulesets" / "tests" / "b2b-saas.yaml"
    text = cases.read_text(encoding="utf-8")
    first = re.search(r"^    score: (\d+)$", text, re.MULTILINE)
    assert first is not None
    cases.write_text(text[: first.start()] + "    score: 99" + text[first.end() :])
    result = nurture("rules", "test", str(tmp_path / "rulesets"))
    assert result.exit_code == 1
    assert f"score: expected 99, got {first.group(1)}" in result.output
    assert "1 cases failed" in result.output


def test_a_runaway_chain_fails_the_case_not_the_run(tmp_path: Path) -> None:
    ruleset = GOOD.replace("rules:\n", "max_chain: 1\nrules:\n") + (
        "  - name: follow-up\n    when: {lead.scores.fit: {gte: 15}}\n    then: {tag: senior}\n"
    )
    root = folder(tmp_path, ruleset, CASES)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 1
    assert "runaway chain" in result.output
    assert "senior → follow-up" in result.output


def test_a_broken_ruleset_is_reported_by_rules_test(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD.replace("limit: once", "limit: twice"), CASES)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 1
    assert f"{root / 'cli.yaml'}:10: " in result.output


def test_no_cases_is_a_failure(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 1
    assert "0 cases passed" in result.output


def test_rules_test_json(tmp_path: Path) -> None:
    root = folder(tmp_path, GOOD, CASES.replace("score: 25", "score: 26"))
    result = nurture("rules", "test", str(root), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert (report["passed"], report["failed"], report["errors"]) == (0, 1, [])
    assert report["cases"][0]["failures"] == ["score: expected 26, got 25"]


def test_rules_test_defaults_to_nurture_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder(tmp_path, GOOD, CASES)
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path))
    get_settings.cache_clear()
    result = nurture("rules", "test")
    assert result.exit_code == 0, result.output
    assert "1 cases passed" in result.output


def test_check_a_rule_too_complex_for_the_engine(tmp_path: Path) -> None:
    """Not a traceback from the C core: file, line and what to do."""
    conditions = "".join(f"      lead.a{i}: {{ne: x}}\n" for i in range(16))
    ruleset = GOOD + "  - name: picky\n    when:\n" + conditions + "    then: {tag: picky}\n"
    root = folder(tmp_path, ruleset)
    result = nurture("rules", "check", str(root))
    assert result.exit_code == 1
    assert f"{root / 'cli.yaml'}:14: rule 'picky' is too complex" in result.output
    assert "Traceback" not in result.output


def test_a_case_with_an_event_in_year_one_runs(tmp_path: Path) -> None:
    cases = """\
- name: a very old page view
  lead: {email: ana@acme.io}
  events: [{type: page_view, occurred_at: "0001-01-01T00:00:00Z", properties: {url: /pricing}}]
  expect: {score: 10}
"""
    root = folder(tmp_path, GOOD, cases)
    result = nurture("rules", "test", str(root))
    assert result.exit_code == 0, result.output
    assert "1 cases passed" in result.output
