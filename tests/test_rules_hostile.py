"""Rulesets, campaigns and ruleset tests written by an attacker or a careless hand: each is
refused with file, line and a sentence, quickly, in bounded memory, without running anything it
names, and the ruleset in force keeps scoring (issue 13, items 1, 2, 3 and 13)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from engine.api.app import create_app
from engine.campaigns.load import parse_campaign, parse_campaigns
from engine.errors import Problem, ProblemsError
from engine.home import model_loader
from engine.rules.compile import compile_ruleset
from engine.rules.evaluate import Event, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset
from engine.rules.testing import parse_cases
from engine.settings import Settings, get_settings
from tests.helpers import ROOT, compiled, nurture

TOKEN = "hostile-token-0123456789abcdefghijklmnop"
HEAD = """\
ruleset: hostile
components:
  fit: {min: 0, max: 100}
rules:
"""
RULE_LINE = 5  # the `- name:` line of the first rule after HEAD


def rule(when: str = "{lead.x: 1}", then: str = "{score: {fit: 1}}", extra: str = "") -> str:
    return HEAD + f"  - name: r\n    when: {when}\n    then: {then}\n" + extra


def problems_of(text: str, path: str = "x.yaml") -> list[Problem]:
    with pytest.raises(ProblemsError) as caught:
        parse_ruleset(text, path)
    assert caught.value.problems and all(p.file == path for p in caught.value.problems)
    return caught.value.problems


def one_problem(text: str) -> Problem:
    found = problems_of(text)
    assert len(found) == 1, [str(p) for p in found]
    return found[0]


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    monkeypatch.delenv("NURTURE_RULESET", raising=False)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def api(tmp_path: Path) -> Iterator[TestClient]:
    home = tmp_path / "api-home"
    (home / "rulesets").mkdir(parents=True)
    (home / "rulesets" / "live.yaml").write_text(rule())
    settings = Settings(home=home, database_url=f"sqlite:///{tmp_path / 'api.db'}", api_token=TOKEN)
    with TestClient(create_app(settings), headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        yield client


def validate(api: TestClient, text: str) -> dict[str, object]:
    started = time.monotonic()
    response = api.post("/api/rulesets/validate", content=text.encode())
    assert time.monotonic() - started < 5
    assert response.status_code == 200, response.text
    answer: dict[str, object] = response.json()
    return answer


def home_with(tmp_path: Path, ruleset: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    (home / "rulesets").mkdir(parents=True, exist_ok=True)
    (home / "models").mkdir(exist_ok=True)
    (home / "rulesets" / "live.yaml").write_text(ruleset)
    monkeypatch.setenv("NURTURE_HOME", str(home))
    get_settings.cache_clear()
    return home


# ---------------------------------------------------------------- 1. model files: no code runs


class _SideEffect:
    """Unpickling this creates ``marker``: proof that a file was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[object, ...]]:
        return (Path.touch, (self.marker,))


def evil_pickle(path: Path, marker: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_SideEffect(marker)))
    return path


def with_model(path: str) -> str:
    """HEAD with a second component fed by the model at ``path`` (line MODEL_LINE)."""
    component = f"  guess: {{min: 0, max: 100, model: {json.dumps(path)}}}\n"
    return HEAD.replace("rules:\n", "") + component + rule()[len(HEAD) - len("rules:\n") :]


MODEL_LINE = 4


def test_validate_never_unpickles_a_model_wherever_it_is(api: TestClient, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    home = tmp_path / "api-home"
    for target, written in [
        (tmp_path / "evil.joblib", str(tmp_path / "evil.joblib")),
        (home / "models" / "evil.joblib", "models/evil.joblib"),
        (tmp_path / "evil.joblib", "../evil.joblib"),
        (tmp_path / "evil.joblib", "models/../../evil.joblib"),
    ]:
        evil_pickle(target, marker)
        validate(api, with_model(written))
        assert not marker.exists(), written


def test_rules_check_loads_models_only_from_home_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    outside = evil_pickle(tmp_path / "outside" / "evil.joblib", marker)
    home = home_with(tmp_path, rule(), monkeypatch)
    (home / "models" / "link.joblib").symlink_to(outside)
    (home / "models" / "escape").symlink_to(outside.parent, target_is_directory=True)
    for written in [
        str(outside),
        "../outside/evil.joblib",
        "models/../../outside/evil.joblib",
        "models/link.joblib",
        "models/escape/evil.joblib",
        "/etc/passwd",
        "models/\x00.joblib",
    ]:
        (home / "rulesets" / "live.yaml").write_text(with_model(written))
        result = nurture("rules", "check", str(home / "rulesets"))
        assert result.exit_code == 1, (written, result.output)
        assert not marker.exists(), written
        assert f"live.yaml:{MODEL_LINE}: component 'guess': model " in result.output, result.output
        assert "refused" in result.output
        assert "Traceback" not in result.output


def test_a_refused_model_path_says_the_same_whatever_is_there(tmp_path: Path) -> None:
    """No probing: a path outside models/ gives one message, whether it names a pickle, a
    missing file, a folder or an unreadable file."""
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    evil_pickle(tmp_path / "there.joblib", tmp_path / "pwned")
    (tmp_path / "folder").mkdir()
    secret = tmp_path / "secret.joblib"
    secret.write_bytes(b"x")
    secret.chmod(0)
    load = model_loader(home)
    messages = set()
    for name in ("there.joblib", "missing.joblib", "folder", "secret.joblib"):
        for written in (str(tmp_path / name), f"../{name}", f"models/../../{name}"):
            with pytest.raises(ProblemsError) as caught:
                parse_ruleset(with_model(written), "m.yaml", load)
            (problem,) = caught.value.problems
            assert (problem.file, problem.line) == ("m.yaml", MODEL_LINE)
            messages.add(problem.message.replace(repr(written), "PATH"))
    assert len(messages) == 1, messages
    assert not (tmp_path / "pwned").exists()


def test_the_pure_parser_refuses_the_shape_of_a_path_outside_models() -> None:
    """Validation (no loader) says so too, without touching the filesystem."""
    for written in ("/etc/passwd", "../x.joblib", "models/../x.joblib", "notmodels/x.joblib"):
        problem = one_problem(with_model(written))
        assert problem.line == MODEL_LINE and "refused" in problem.message, problem
    parse_ruleset(with_model("models/plans-v1.joblib"), "x.yaml")  # fine: loaded at runtime


# ---------------------------------------------------------------- 2. regular expressions

SLOW = "(a|aa)+$"
SLOW_TITLE = "a" * 60 + "!"


FREEZER = """\
import sys
from datetime import UTC, datetime
from engine.rules.evaluate import Event, evaluate, new_lead
from engine.rules.history import MemoryHistory
from tests.helpers import compiled
ruleset = compiled(sys.argv[1])
lead = new_lead(ruleset.ruleset, {"job_title": sys.argv[2]})
event = Event("e", "page_view", datetime(2026, 1, 5, tzinfo=UTC))
print(evaluate(ruleset, lead, event, MemoryHistory()).fired)
"""


def test_a_catastrophic_pattern_cannot_freeze_scoring() -> None:
    """Run where a hang can be cut off: with Python's `re` this takes hours."""
    text = rule(f"{{lead.job_title: {{matches: '{SLOW}'}}}}") + (
        "  - name: other\n    when: {lead.job_title: {contains: a}}\n    then: {tag: a}\n"
    )
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", FREEZER, text, SLOW_TITLE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['other']"
    assert time.monotonic() - started < 30


def timeouts() -> float:
    return REGISTRY.get_sample_value("nurture_regex_timeouts_total") or 0.0


def test_a_timed_out_match_is_no_match_counted_and_logged_once_without_the_lead(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ruleset = compiled(rule(f"{{lead.job_title: {{matches: '{SLOW}'}}}}"), "slow.yaml")
    before = timeouts()
    title = "a" * 50 + "-secret-title!"
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            outcome = evaluate(
                ruleset,
                new_lead(ruleset.ruleset, {"job_title": title}),
                Event("e", "page_view", __import__("datetime").datetime(2026, 1, 5)),
                MemoryHistory(),
            )
            assert outcome.fired == []
    assert timeouts() - before == 3
    records = [r for r in caplog.records if "timed out" in r.getMessage()]
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    message = records[0].getMessage()
    assert "secret" not in message and "aaaa" not in message
    assert f"slow.yaml:{RULE_LINE + 1}" in message and SLOW in message


def test_only_the_first_thousand_characters_are_searched() -> None:
    ruleset = compiled(rule("{lead.notes: {matches: needle}}"))

    def fires(notes: str) -> bool:
        state = new_lead(ruleset.ruleset, {"notes": notes})
        event = Event("e", "page_view", __import__("datetime").datetime(2026, 1, 5))
        return evaluate(ruleset, state, event, MemoryHistory()).fired == ["r"]

    assert fires("x" * 990 + "needle")
    assert not fires("x" * 1000 + "needle")


CATASTROPHIC = ["(a+)+$", "(a|aa)*b", "(.*)*x", r"^(\w+\s?)+$", "(x+x+)+y"]
SAFE = [r"(?i)\b(vp|vice president|chief|head of)\b", r"^(\d+,)*\d+$", "(ab|cd)+", "[a-z]+@"]


def test_rules_check_warns_about_catastrophic_patterns_with_file_and_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = "".join(
        f"  - name: p{i}\n    when: {{lead.t: {{matches: '{pattern}'}}}}\n"
        "    then: {score: {fit: 1}}\n    limit: once\n"
        for i, pattern in enumerate(CATASTROPHIC + SAFE)
    )
    home = home_with(tmp_path, HEAD + rules, monkeypatch)
    result = nurture("rules", "check", str(home / "rulesets"), "--json")
    assert result.exit_code == 0, result.output
    warned = {w["line"]: w["warning"] for w in json.loads(result.stdout)["warnings"]}
    expected = {RULE_LINE + 1 + 4 * i for i in range(len(CATASTROPHIC))}
    assert set(warned) == expected, warned
    assert all("p" in w and "exponential" in w for w in warned.values())


def test_rules_check_warns_about_a_catastrophic_pattern_in_a_campaign(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_with(tmp_path, rule(extra="    limit: once\n"), monkeypatch)
    (home / "campaigns").mkdir()
    (home / "templates").mkdir()
    (home / "templates" / "t.j2").write_text(
        "{% block subject %}Hi{% endblock %}{% block html %}Hi{% endblock %}"
    )
    audience = "{lead.title: {matches: '(x+x+)+y'}}"
    (home / "campaigns" / "c.yaml").write_text(CAMPAIGN.replace("{lead.x: 1}", audience))
    result = nurture("rules", "check", str(home / "rulesets"), "--json")
    assert result.exit_code == 0, result.output
    (warning,) = json.loads(result.stdout)["warnings"]
    assert (warning["file"], warning["line"]) == (str(home / "campaigns" / "c.yaml"), 2)
    assert "exponential" in warning["warning"]


def test_validate_warns_about_a_catastrophic_pattern(api: TestClient) -> None:
    answer = validate(api, rule("{lead.t: {matches: '(a+)+$'}}", extra="    limit: once\n"))
    assert answer["valid"] is True
    assert [w["line"] for w in answer["warnings"]] == [RULE_LINE + 1]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("a" * 501, "at most 500 characters"),
        ("a{4294967294}", "repeats"),
        ("(?:(?:a{1000}){1000}){1000}", "repeats"),
        ("(?:abc){e<=3}", "invalid regex"),  # the `regex` package's fuzzy matching: not Python's
    ],
)
def test_oversized_patterns_are_refused_quickly(pattern: str, words: str) -> None:
    started = time.monotonic()
    problem = one_problem(rule(f"{{lead.t: {{matches: '{pattern}'}}}}"))
    assert time.monotonic() - started < 1
    assert problem.line == RULE_LINE + 1 and words in problem.message, problem


# ---------------------------------------------------------------- 3. YAML: aliases, size, depth


def alias_bomb(levels: int) -> str:
    lines = [
        "ruleset: bomb",
        "components: {fit: {min: 0, max: 10}}",
        "rules:",
        "- name: r0",
        "  when: &a0 {lead.x: 1}",
        "  then: {score: {fit: 1}}",
    ]
    for i in range(1, levels):
        nine = ", ".join([f"*a{i - 1}"] * 9)
        lines += [f"- name: r{i}", f"  when: &a{i} {{any: [{nine}]}}", "  then: {score: {fit: 1}}"]
    return "\n".join(lines) + "\n"


def test_an_alias_bomb_is_refused_at_once() -> None:
    for levels in (6, 12):
        text = alias_bomb(levels)
        assert len(text) < 1300
        started = time.monotonic()
        found = problems_of(text)
        assert time.monotonic() - started < 1
        assert found[0].line == 8 and "alias" in found[0].message, [str(p) for p in found]


def test_validate_refuses_an_alias_bomb(api: TestClient) -> None:
    answer = validate(api, alias_bomb(12))
    assert answer["valid"] is False
    assert answer["problems"][0]["line"] == 8  # type: ignore[index]


def test_aliases_and_merge_keys_are_refused_in_campaigns_and_test_files() -> None:
    ruleset = parse_ruleset(rule(), "r.yaml")
    campaign = textwrap.dedent(
        """\
        campaign: c
        audience: &who {lead.x: 1}
        exit_when: *who
        from: {email: a@b.io}
        steps: [{template: t}]
        """
    )
    with pytest.raises(ProblemsError) as caught:
        parse_campaign(campaign, "c.yaml", ruleset)
    assert [(p.file, p.line) for p in caught.value.problems] == [("c.yaml", 3)]
    cases = "- &base {name: a, expect: {score: 1}}\n- {<<: *base, name: b}\n"
    with pytest.raises(ProblemsError) as caught:
        parse_cases(cases, "t.yaml")
    assert [(p.file, p.line) for p in caught.value.problems] == [("t.yaml", 2)]


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (HEAD + "#" * 1_000_001 + "\n", 1, "at most 1,000,000"),
        ("rules: " + "[" * 50_000 + "]" * 50_000 + "\n", 1, "nested more than"),
        ("rules:\n" + "".join(f"{'  ' * i}- \n" for i in range(200)), 101, "nested more than"),
        ("rules: [" + "1," * 40_000 + "1]\n", 1, "more than 30,000 values"),
        (rule("{lead.x: " + "9" * 5000 + "}"), RULE_LINE + 1, "number"),
        (rule("{lead.x: 0x" + "f" * 5000 + "}"), RULE_LINE + 1, "number"),
    ],
)
def test_oversized_or_too_deep_yaml_is_a_problem_not_a_crash(
    text: str, line: int, words: str
) -> None:
    started = time.monotonic()
    found = problems_of(text)
    assert time.monotonic() - started < 15
    assert found[0].line == line and words in found[0].message, [str(p) for p in found]


# ---------------------------------------------------------------- 13. numbers and nesting


def nested_not(depth: int) -> str:
    return "{" + "not: {" * depth + "lead.x: 1" + "}" * depth + "}"


BAD_NUMBERS = [
    (rule(then="{score: {fit: 3000000000}}"), RULE_LINE + 2, "points"),
    (rule(then="{score: {fit: -3000000000}}"), RULE_LINE + 2, "points"),
    (HEAD.replace("max: 100", "max: 99999999999999") + rule()[len(HEAD) :], 3, "1,000,000"),
    (HEAD.replace("min: 0", "min: -99999999999999") + rule()[len(HEAD) :], 3, "1,000,000"),
    (rule() + "temperature: {cold: 0, hot: 3000000000}\n", RULE_LINE + 3, "1,000,000"),
    (rule(extra="    limit: {times: 99999999999999999999, per: 1d}\n"), RULE_LINE + 3, "times"),
    (rule(extra="    limit: {times: 1, per: 99999999999999999d}\n"), RULE_LINE + 3, "3650d"),
    (rule(extra="    limit: {times: 1, per: 3651d}\n"), RULE_LINE + 3, "3650d"),
    (rule("{count: {type: v, within: 99999999999999999d, at_least: 1}}"), RULE_LINE + 1, "3650d"),
    (rule("{count: {type: v, within: 7d, at_least: 99999999999}}"), RULE_LINE + 1, "at_least"),
    (rule("{lead.x: {gte: 99999999999999999999}}"), RULE_LINE + 1, "10^15"),
    (
        HEAD.replace("max: 100}", "max: 100, decay: {points: 5, every: 99999999999999999d}}")
        + rule()[len(HEAD) :],
        3,
        "3650d",
    ),
    (
        HEAD.replace("max: 100}", "max: 100, decay: {points: 9999999999, every: 1d}}")
        + rule()[len(HEAD) :],
        3,
        "decay points",
    ),
    (
        # Periods since a rise are counted in a 32-bit column: 1s periods since year 1 overflow.
        HEAD.replace("max: 100}", "max: 100, decay: {points: 1, every: 59m}}")
        + rule()[len(HEAD) :],
        3,
        "at least 1h",
    ),
    (rule() + "max_chain: 99999999999\n", RULE_LINE + 3, "max_chain"),
    (rule(nested_not(33)), RULE_LINE + 1, "nested more than 32"),
    (rule().replace("ruleset: hostile", "ruleset: " + "h" * 65), 1, "64 characters"),
    (rule(nested_not(3000)), RULE_LINE + 1, "nested more than"),
]


@pytest.mark.parametrize(("text", "line", "words"), BAD_NUMBERS)
def test_every_number_and_nesting_is_bounded_with_file_and_line(
    text: str, line: int, words: str
) -> None:
    problem = one_problem(text)
    assert problem.line == line and words in problem.message, problem


def test_a_huge_file_on_disk_is_refused_unread(tmp_path: Path) -> None:
    folder = tmp_path / "rulesets"
    folder.mkdir()
    with (folder / "huge.yaml").open("wb") as file:
        file.truncate(50_000_000)  # sparse: no disk used
    result = nurture("rules", "check", str(folder))
    assert result.exit_code == 1
    assert f"{folder / 'huge.yaml'}:1: over 4,000,000 bytes" in result.output


def test_the_bounds_hold_at_their_edges() -> None:
    text = HEAD.replace("min: 0, max: 100", "min: -1000000, max: 1000000") + (
        "  - name: r\n    when: {count: {type: v, within: 3650d, at_least: 1000000}}\n"
        "    then: {score: {fit: 1000000}}\n    limit: {times: 1000000, per: 3650d}\n"
        "  - name: deep\n    when: " + nested_not(32) + "\n    then: {score: {fit: -1000000}}\n"
    )
    assert len(compile_ruleset(parse_ruleset(text, "edge.yaml")).rules) == 2


def test_validate_answers_problems_not_500(api: TestClient) -> None:
    for text, line, _ in BAD_NUMBERS:
        answer = validate(api, text)
        assert answer["valid"] is False
        assert answer["problems"][0]["line"] == line  # type: ignore[index]


@pytest.mark.parametrize(
    "edit",
    [
        rule(then="{score: {fit: 3000000000}}"),
        rule("{count: {type: v, within: 99999999999999999d, at_least: 1}}"),
        rule(nested_not(3000)),
        alias_bomb(12),
    ],
)
def test_rules_check_reports_and_ingest_keeps_the_version_in_force(
    edit: str, tmp_path: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = home_with(tmp_path, rule("{event.type: page_view}"), monkeypatch)
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    view = '{"email": "ana@acme.io", "type": "page_view", "id": "v%d"}'
    assert nurture("ingest", "-", input=view % 1).exit_code == 0
    (home / "rulesets" / "live.yaml").write_text(edit)
    check = nurture("rules", "check", str(home / "rulesets"))
    assert check.exit_code == 1 and isinstance(check.exception, SystemExit), check.output
    assert f"{home / 'rulesets' / 'live.yaml'}:" in check.output
    result = nurture("ingest", "-", input=view % 2)
    assert result.exit_code == 0, result.output
    assert "stays in force" in result.stderr
    lead = json.loads(nurture("lead", "ana@acme.io", "--json").stdout)
    assert lead["score"] == 2


# ---------------------------------------------------------------- the same classes, elsewhere


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        (rule(then="{set: {y: .nan}}"), RULE_LINE + 2, "finite"),
        (rule(then="{set: {y: 1e309}}"), RULE_LINE + 2, "finite"),
        (rule(then="{set: {y: 99999999999999999999}}"), RULE_LINE + 2, "10^15"),
        (rule(then="{set: {y: '" + "x" * 1001 + "'}}"), RULE_LINE + 2, "1,000 characters"),
        (rule(then="{tag: '" + "x" * 65 + "'}"), RULE_LINE + 2, "64 characters"),
        (rule("{lead.x: {eq: .nan}}"), RULE_LINE + 1, "finite"),
        (rule("{lead.x: {eq: '" + "x" * 1001 + "'}}"), RULE_LINE + 1, "1,000 characters"),
        (
            rule("{lead.x: {in: [" + ", ".join(map(str, range(1001))) + "]}}"),
            RULE_LINE + 1,
            "1,000 values",
        ),
        (
            HEAD.replace("fit:", "f" * 65 + ":") + rule()[len(HEAD) :].replace("fit", "f" * 65),
            3,
            "64 characters",
        ),
        (rule() + "stages: [a, '" + "s" * 65 + "']\n", RULE_LINE + 3, "64 characters"),
        (
            rule() + "temperature: {cold: 0, '" + "h" * 33 + "': 70}\n",
            RULE_LINE + 3,
            "32 characters",
        ),
        (
            HEAD + "  - name: " + "r" * 201 + "\n    when: {lead.x: 1}\n    then: {tag: a}\n",
            RULE_LINE,
            "64 characters",
        ),
    ],
)
def test_values_that_the_database_cannot_store_are_refused(
    text: str, line: int, words: str
) -> None:
    problem = one_problem(text)
    assert problem.line == line and words in problem.message, problem


def test_a_ruleset_the_engine_would_hang_on_is_a_problem() -> None:
    """durable-rules loops for ever when one node of its network gets 512 tests: a long `in`
    list, or the same field compared with many values across rules."""
    many = "".join(
        f"  - name: r{i}\n    when: {{lead.x{i}: {{in: [{', '.join(map(str, range(10)))}]}}}}\n"
        "    then: {score: {fit: 1}}\n"
        for i in range(60)
    )
    started = time.monotonic()
    found = problems_of(HEAD + many)
    assert time.monotonic() - started < 5
    assert "rules engine" in found[0].message, [str(p) for p in found]
    same = "".join(
        f"  - name: r{i}\n    when: {{event.type: page_view}}\n    then: {{score: {{fit: 1}}}}\n"
        for i in range(300)
    )
    assert "rules engine" in problems_of(HEAD + same)[0].message


CAMPAIGN = """\
campaign: c
audience: {lead.x: 1}
from: {email: a@b.io}
steps: [{template: t}]
"""


@pytest.mark.parametrize(
    ("edit", "line", "words"),
    [
        (
            ("steps: [{template: t}]", "steps: [{template: t, wait: 99999999999999999d}]"),
            4,
            "3650d",
        ),
        (
            (
                "steps: [{template: t}]",
                "steps: [{template: t}]\nfrequency_cap: {max: 9999999999, per: 7d}",
            ),
            5,
            "frequency_cap",
        ),
        (
            (
                "steps: [{template: t}]",
                "steps: [{template: t}]\nfrequency_cap: {max: 1, per: 99999999999999999d}",
            ),
            5,
            "3650d",
        ),
        (("{lead.x: 1}", nested_not(3000)), 2, "nested more than"),
        (("campaign: c", "campaign: " + "c" * 65), 1, "64 characters"),
        (
            ("steps: [{template: t}]", "steps: [" + ", ".join(["{template: t}"] * 101) + "]"),
            4,
            "100 steps",
        ),
    ],
)
def test_campaign_bounds(edit: tuple[str, str], line: int, words: str) -> None:
    ruleset = parse_ruleset(rule(), "r.yaml")
    with pytest.raises(ProblemsError) as caught:
        parse_campaign(CAMPAIGN.replace(*edit), "c.yaml", ruleset)
    found = caught.value.problems
    assert found[0].line == line and words in found[0].message, [str(p) for p in found]


def test_campaigns_the_engine_cannot_take_are_problems_not_crashes() -> None:
    """Two audiences of 300 values of one field: 600 tests after one node of the network."""
    ruleset = parse_ruleset(rule(), "r.yaml")
    sources = {}
    for i in range(2):
        values = ", ".join(map(str, range(300 * i, 300 * i + 300)))
        audience = f"{{lead.x: {{in: [{values}]}}}}"
        sources[f"c{i}.yaml"] = CAMPAIGN.replace("campaign: c", f"campaign: c{i}").replace(
            "{lead.x: 1}", audience
        )
    with pytest.raises(ProblemsError) as caught:
        parse_campaigns(sources, ruleset)
    (problem,) = caught.value.problems
    assert (problem.file, problem.line) == ("c1.yaml", 2)
    assert "rules engine" in problem.message


@pytest.mark.parametrize(
    ("cases", "words"),
    [
        ("- {name: a, lead: [1, 2], expect: {score: 1}}\n", "lead"),
        ("- {name: a, events: [{type: v, properties: [1]}], expect: {score: 1}}\n", "properties"),
        (
            "- {name: a, events: [{type: v, occurred_at: soon}], expect: {score: 1}}\n",
            "occurred_at",
        ),
        ("- {name: a, expect: {scores: [1]}}\n", "scores"),
        ("- {name: a, expect: {fired: r}}\n", "fired"),
    ],
)
def test_a_malformed_test_file_is_a_problem_not_a_crash(cases: str, words: str) -> None:
    with pytest.raises(ProblemsError) as caught:
        parse_cases(cases, "t.yaml")
    (problem,) = caught.value.problems
    assert problem.line == 1 and words in problem.message, problem
