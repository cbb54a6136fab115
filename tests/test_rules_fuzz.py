"""Whatever arrives (an event, a ruleset), the answer is a result or a clear error, never a
traceback. Rulesets are kept small: each valid one registers for good with durable-rules."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from engine.errors import InvalidRecord, ProblemsError
from engine.home import load_ruleset
from engine.ingest.parse import (
    COMPUTED,
    EventRecord,
    LeadRecord,
    Rejection,
    parse_jsonl,
    record,
)
from engine.rules.compile import CompiledRuleset, CompileError, compile_ruleset
from engine.rules.evaluate import ChainError, Event, LeadState, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset

ROOT = Path(__file__).resolve().parent.parent
B2B = compile_ruleset(load_ruleset(ROOT / "rulesets" / "b2b-saas.yaml"))
T0 = datetime(2026, 1, 5, 10, tzinfo=UTC)
FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

# ------------------------------------------------------------------------- events

odd_text = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\ud800",  # a lone surrogate, as json.loads makes of "\ud800"
        "Software\udfff",
        "🙂",
        "ü",
        "\u2028",
        "(?i)vp",
        "/pricing",
        "VP Marketing",
        "12000",
        "1e5",
        "NaN",
        "-0",
        "x" * 5000,
    ]
)
floats = st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(
    [1e-05, 1e16, -1e16, 1e300, 5e-324, -0.0, 1e15, 999999999999999.9]
)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | floats
    | st.text(max_size=20)
    | odd_text
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6) | odd_text, inner, max_size=3)
    ),
    max_leaves=10,
)
attribute_names = st.sampled_from(
    [
        "job_title",
        "industry",
        "company_size",
        "country",
        "budget",
        "domain",
        "subscribed",
        "score",
        "stage",
        "trial_status",
    ]
) | st.text(max_size=8)
times = (
    st.sampled_from(
        [
            "2026-01-05T10:00:00Z",
            "2026-01-05",
            "0001-01-01T00:00:00Z",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "9999-12-31T23:59:59Z",
            "yesterday",
            "",
        ]
    )
    | st.integers()
    | st.none()
)
event_types = (
    st.sampled_from(
        [
            "page_view",
            "demo_request",
            "webinar_attended",
            "form_submit",
            "trial_signup",
            "unsubscribe",
            "bounce",
            "profile_update",
            "",
            " ",
            "x" * 65,
        ]
    )
    | st.text(max_size=10)
    | values
)


# Well-formed records (valid email and type, attributes that are scalars) reach the engine;
# anything else exercises the validation. Hypothesis does not weight `one_of`: two strategies.
well_formed = st.fixed_dictionaries(
    {
        "email": st.sampled_from(["ana@acme.io", "Bo@Gmail.com", " x@y.z "]),
        "type": event_types.filter(lambda t: isinstance(t, str) and 0 < len(t.strip()) <= 64),
    },
    optional={
        "id": st.text(max_size=10) | st.integers(),
        "occurred_at": st.sampled_from(["2026-01-05T10:00:00Z", "2026-02-01", "0001-01-01"]),
        "properties": st.dictionaries(
            st.sampled_from(["url", "utm", "amount"]) | st.text(), values
        ),
        "lead": st.dictionaries(attribute_names.filter(lambda n: n not in COMPUTED), scalars),
    },
)
profiles = st.fixed_dictionaries(
    {"email": st.sampled_from(["ana@acme.io", "bo@rivalsoft.com"])},
    optional={name: scalars for name in ["job_title", "industry", "company_size", "budget"]},
)
anything = st.fixed_dictionaries(
    {"email": st.sampled_from(["ana@acme.io", "bad", ""]) | values},
    optional={
        "type": event_types,
        "id": values,
        "occurred_at": times,
        "properties": values,
        "lead": st.dictionaries(attribute_names, values, max_size=5) | values,
    },
) | st.dictionaries(st.text(max_size=10), values, max_size=6)
events = well_formed | profiles | anything


def score_record(parsed: EventRecord | LeadRecord, compiled: CompiledRuleset) -> LeadState:
    """Evaluate a parsed record as ingest does: a new lead with its attributes, then the event."""
    ruleset = compiled.ruleset
    state = new_lead(ruleset, parsed.attributes)
    at = parsed.occurred_at or T0
    kind = parsed.type if isinstance(parsed, EventRecord) else "profile_update"
    properties = parsed.properties if isinstance(parsed, EventRecord) else {}
    history = MemoryHistory()
    history.add_event(kind, at)
    outcome = evaluate(compiled, state, Event(parsed.id, kind, at, properties), history)
    # Whatever came in, the result is a lead the rest of the system can store.
    assert outcome.state.stage in ruleset.all_stages
    for name, component in ruleset.components.items():
        assert component.min <= outcome.state.scores[name] <= component.max
    assert sum(c.delta for c in outcome.score_changes) == outcome.state.score - state.score
    assert len(set(outcome.fired)) == len(outcome.fired)
    return outcome.state


@FUZZ
@given(events)
@example({"email": "a@b.io", "type": "page_view", "occurred_at": "0001-01-01T00:00:00Z"})
@example({"email": "a@b.io", "type": "page_view", "occurred_at": "0001-01-01T00:00:00+14:00"})
@example({"email": "a@b.io", "type": "page_view", "lead": {"industry": "\ud800"}})
@example({"email": "a@b.io", "type": "page_view", "lead": {"budget": 1e16, "company_size": 1e-05}})
@example({"email": "a@b.io", "type": "page_view", "properties": {"url": ["/pricing", 1e16]}})
@example({"email": "a@b.io", "job_title": "VP", "budget": math.nan, "country": math.inf})
def test_any_event_is_scored_or_rejected_with_a_reason(raw: Any) -> None:
    try:
        parsed = record(1, raw)
    except InvalidRecord as error:
        assert str(error)  # a reason a person can read
        return
    score_record(parsed, B2B)


@FUZZ
@given(events)
def test_any_json_line_is_scored_or_rejected_with_a_reason(raw: Any) -> None:
    line = json.dumps(raw)  # NaN / Infinity / "\ud800" escapes as Python writes them
    (parsed,) = list(parse_jsonl([line]))
    if isinstance(parsed, Rejection):
        assert parsed.line == 1 and parsed.error
        return
    score_record(parsed, B2B)


def test_an_out_of_range_time_is_a_rejection_not_a_crash() -> None:
    with pytest.raises(InvalidRecord, match="occurred_at"):
        record(1, {"email": "a@b.io", "type": "x", "occurred_at": "0001-01-01T00:00:00+14:00"})
    parsed = record(1, {"email": "a@b.io", "type": "page_view", "occurred_at": "0001-01-01"})
    assert isinstance(parsed, EventRecord)
    score_record(parsed, B2B)  # counts and limits look back from year 1 without overflowing


# ------------------------------------------------------------------------- rulesets


class RawYaml:
    """A YAML fragment written as is (JSON cannot say .nan, an unquoted date, or a typo)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"RawYaml({self.text!r})"


def yaml_value(value: Any) -> str:
    if isinstance(value, RawYaml):
        return value.text
    return json.dumps(value, ensure_ascii=False)  # JSON is YAML flow style


def leaf_text(path: str, op: str, operand: Any) -> str:
    return f"{json.dumps(path)}: {{{op}: {yaml_value(operand)}}}"


# Numbers a ruleset may compare with or set (docs/design.md, "Bounds"); beyond are refused.
finite = st.integers(min_value=-(10**15), max_value=10**15) | st.floats(
    min_value=-1e15, max_value=1e15, allow_nan=False, allow_infinity=False
)
# What an attacker or a slip of the keyboard writes where a number or a duration goes.
hostile_numbers = (
    st.sampled_from(
        [
            RawYaml(t)
            for t in [
                "3000000000",
                "-3000000000",
                "99999999999999999999",
                "1000000000000001",
                ".nan",
                "-.inf",
                "1e309",
                "1_000_000_000_000",
            ]
        ]
    )
    | st.builds(lambda n: RawYaml("9" * n), st.just(5000))
    | st.builds(lambda n: RawYaml("0x" + "f" * n), st.just(5000))
)
# Texts and patterns refused where a value or a `matches` pattern goes.
hostile_texts = st.sampled_from(
    [RawYaml(t) for t in ("'(a+)+$'", "'a{99999}'", "'[[:alpha:]]'", "'(?:ab){e<=1}'")]
) | st.builds(lambda n: RawYaml("'" + "x" * n + "'"), st.just(1001))
hostile_durations = st.sampled_from(["99999999999999999d", "3651d", "0d", "-1d", "1e9d", "7"])
words = st.sampled_from(
    ["page_view", "demo_request", "/pricing", "vip", "VP Sales", "Ünïcode 🙂", "", "on", "12000"]
)
regexes = st.sampled_from(["(?i)\\bvp\\b", "^a", "pricing|demo", ".*", "\\d+", "[a-z]{2,}"])
stages = st.sampled_from(["subscriber", "lead", "mql", "sql", "unsubscribed"])
bands = st.sampled_from(["cold", "warm", "hot"])
valid_leaves = st.one_of(
    st.builds(
        leaf_text,
        st.sampled_from(
            [
                "lead.score",
                "lead.scores.fit",
                "lead.scores.engagement",
                "lead.budget",
                "event.properties.amount",
            ]
        ),
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
        finite | st.sampled_from([RawYaml("1e-05"), RawYaml("1.0e+14")]),
    ),
    st.builds(
        leaf_text,
        st.sampled_from(
            ["lead.job_title", "lead.flag", "lead.tags", "event.type", "event.properties.url"]
        ),
        st.sampled_from(["eq", "ne", "contains"]),
        words,
    ),
    st.builds(
        leaf_text,
        st.sampled_from(["lead.job_title", "event.properties.url"]),
        st.just("matches"),
        regexes,
    ),
    st.builds(
        leaf_text,
        st.sampled_from(["lead.flag", "lead.budget", "event.type", "lead.tags"]),
        st.sampled_from(["in", "not_in"]),
        st.lists(words | finite | st.booleans(), min_size=1, max_size=3),
    ),
    st.builds(
        leaf_text,
        st.sampled_from(["lead.flag", "event.properties.url"]),
        st.just("exists"),
        st.booleans(),
    ),
    st.builds(leaf_text, st.just("lead.stage"), st.sampled_from(["eq", "ne"]), stages),
    st.builds(
        leaf_text,
        st.just("lead.stage"),
        st.sampled_from(["in", "not_in"]),
        st.lists(stages, min_size=1),
    ),
    st.builds(leaf_text, st.just("lead.temperature"), st.sampled_from(["eq", "ne"]), bands),
    st.builds(
        lambda kind, within, bound, n: f"count: {{type: {kind}, within: {within}, {bound}: {n}}}",
        st.sampled_from(["page_view", "email_open"]),
        st.sampled_from(["7d", "30d", "1h", "2w"]),
        st.sampled_from(["at_least", "at_most"]),
        st.integers(min_value=0, max_value=5),
    ),
    st.sampled_from(
        [
            "lead.flag: null",
            "lead.flag: true",
            "lead.renewal: 2026-01-01",
            "event.type: page_view",
            "lead.budget: 12000",
            "lead.tags: vip",
        ]
    ),
)
invalid_leaves = st.one_of(
    st.builds(
        leaf_text,
        st.sampled_from(
            ["lead", "lead.scores", "lead.scores.nope", "event.url", "account.size", "lead.stage"]
        ),
        st.sampled_from(["eq", "gte", "in"]),
        words | finite,
    ),
    st.builds(
        leaf_text,
        st.sampled_from(["lead.budget", "lead.stage", "lead.temperature", "event.type"]),
        st.sampled_from(["bigger", "regex", "EQ", "", "in", "gte", "matches", "exists"]),
        words
        | st.none()
        | st.lists(words, max_size=2)
        | hostile_numbers
        | hostile_texts
        | st.sampled_from(
            [
                RawYaml(t)
                for t in (".nan", ".inf", "{}", "[]", "'(vp'", "boiling", "nowhere", "!!int 5")
            ]
        ),
    ),
    st.builds(
        lambda within, n: f"count: {{type: page_view, within: {within}, at_least: {n}}}",
        hostile_durations | st.just("7d"),
        hostile_numbers.map(yaml_value) | st.just("1"),
    ),
    st.builds(
        lambda n: f"lead.flag: {{in: [{', '.join(map(str, range(n)))}]}}",
        st.sampled_from([600, 1001]),
    ),
    st.sampled_from(
        [
            "count: {type: page_view, within: 7x, at_least: 3}",
            "count: {type: page_view, within: 7d}",
            "count: {type: page_view, within: 7d, at_least: -1}",
            "count: 3",
            "lead.flag: {}",
            "lead.flag: [a, b]",
            "any: []",
            "not: 5",
            "lead.flag: {eq: 1, bigger: 2}",
            "{",
        ]
    ),
)
valid_actions = st.sampled_from(
    [
        "score: {fit: 10}",
        "score: {engagement: -5}",
        "score: {engagement: 200, fit: -100}",
        "stage: mql",
        "stage: unsubscribed",
        "set: {flag: on}",
        "set: {flag: 2026-01-01}",
        "set: {budget: 1e-05}",
        "tag: vip",
        "tag: [a, b]",
        "alert: sales",
        "enroll: warm-nurture",
        "exit: warm-nurture",
    ]
)
invalid_actions = st.sampled_from(
    [
        "score: {nope: 1}",
        "score: {fit: 1.5}",
        "score: 5",
        "stage: nowhere",
        "set: {score: 5}",
        "set: {flag: [1]}",
        "tag: []",
        "launch: rockets",
        "tag: " + "t" * 65,
    ]
) | st.builds(
    lambda action, n: action.format(n=n),
    st.sampled_from(["score: {{fit: {n}}}", "set: {{flag: {n}}}"]),
    hostile_numbers.map(yaml_value),
)
valid_limits = st.sampled_from(["", "once", "{times: 2, per: 30d}", "{times: 1, per: 1h}"])
invalid_limits = st.sampled_from(
    ["twice", "{times: 0, per: 1d}", "{times: 1, per: 7x}", "{}"]
) | st.builds(
    lambda times, per: f"{{times: {times}, per: {per}}}",
    hostile_numbers.map(yaml_value) | st.just("1"),
    hostile_durations | st.just("1d"),
)


def key_of(fragment: str) -> str:
    """The mapping key a fragment sets: one key twice in a mapping is a YAML error."""
    return fragment.split(":")[0].strip('"')


def mappings(entries: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The body of a flow mapping: 1-3 entries with distinct keys."""
    return st.lists(entries, min_size=1, max_size=3, unique_by=key_of).map(", ".join)


def conditions(leaves: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    def nest(inner: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        mapping = mappings(inner)
        return st.builds(lambda m: f"not: {{{m}}}", mapping) | st.builds(
            lambda key, items: f"{key}: [" + ", ".join("{" + i + "}" for i in items) + "]",
            st.sampled_from(["any", "all"]),
            st.lists(mapping, min_size=1, max_size=3),
        )

    return st.recursive(leaves, nest, max_leaves=5)


# Built once: building a recursive strategy per draw costs more than running the engine.
valid_when = mappings(conditions(valid_leaves))
any_when = mappings(conditions(valid_leaves | invalid_leaves))
valid_then = mappings(valid_actions)
any_then = mappings(valid_actions | invalid_actions)


@st.composite
def ruleset_texts(draw: st.DrawFn, valid: bool) -> str:
    def pick(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> Any:
        return draw(good if valid or draw(st.integers(0, 3)) else bad)

    lines = [
        "ruleset: fuzz",
        "components:",
        "  fit: {min: 0, max: 60}",
        pick(
            st.sampled_from(
                [
                    "  engagement: {min: 0, max: 100}",
                    "  engagement: {min: -10, max: 100, decay: {points: 5, every: 7d}}",
                ]
            ),
            st.sampled_from(
                [
                    "  engagement: {min: 10, max: 0}",
                    "  engagement: {min: 0, max: 100, decay: {half_life: soon}}",
                ]
            ),
        ),
        pick(
            st.sampled_from(["temperature: {cold: 0, warm: 40, hot: 70}", ""]),
            st.sampled_from(["temperature: 5", "temperature: {cold: x}"]),
        ),
        pick(st.sampled_from(["", "max_chain: 1", "max_chain: 3"]), st.just("max_chain: 0")),
        "rules:",
    ]
    for index in range(draw(st.integers(min_value=1, max_value=5))):
        name = pick(st.just(f"r{index}"), st.sampled_from(["r0", "bad name!", "[x]"]))
        when = draw(valid_when if valid else any_when)
        then = draw(valid_then if valid else any_then)
        lines += [f"  - name: {name}", f"    when: {{{when}}}", f"    then: {{{then}}}"]
        limit = pick(valid_limits, invalid_limits)
        if limit:
            lines.append(f"    limit: {limit}")
    return "\n".join(lines) + "\n"


lead_attributes = st.dictionaries(
    st.sampled_from(["job_title", "budget", "flag", "renewal"]),
    st.sampled_from(
        [
            "VP Sales",
            "12000",
            "abc",
            5,
            1e16,
            1e-05,
            None,
            True,
            "on",
            ["x"],
            "\ud800",
            "2026-01-01",
        ]
    ),
    max_size=4,
)
events_for_rules = st.sampled_from(["page_view", "demo_request", "email_open"])
amounts = st.sampled_from([None, 5, 1e-05, 1e16, "12", "abc", math.nan])


def check_ruleset(
    text: str,
    attributes: dict[str, Any],
    kinds: list[str],
    amount: Any,
    *,
    well_formed: bool = False,
) -> bool:
    """Load, compile and run TEXT; True when it was valid. Any other exception fails the test.
    A ``well_formed`` ruleset may still be refused for rules with more and/or groups than
    durable-rules takes (their number is known only once ``not`` and lists are expanded):
    True too, when that is every problem."""
    try:
        ruleset = parse_ruleset(text, "fuzz.yaml")
    except ProblemsError as error:
        assert error.problems
        lines = text.count("\n") + 1
        for problem in error.problems:
            assert problem.file == "fuzz.yaml"
            assert 1 <= problem.line <= lines, (str(problem), text)
            assert problem.message
        return well_formed and all(
            "too complex for the rules engine" in problem.message for problem in error.problems
        )
    try:
        compiled = compile_ruleset(ruleset)
    except CompileError as error:
        assert str(error) and 0 <= error.line <= text.count("\n") + 1
        return True
    state = new_lead(ruleset, attributes)
    history = MemoryHistory()
    for minute, kind in enumerate(kinds):
        at = T0.replace(minute=minute)
        history.add_event(kind, at)
        properties = {} if amount is None else {"amount": amount, "url": amount}
        try:
            outcome = evaluate(compiled, state, Event(f"e{minute}", kind, at, properties), history)
        except ChainError as error:
            assert error.rules
            assert ruleset.max_chain < len(ruleset.rules)
            return True
        for rule in outcome.fired:
            history.add_firing(rule, at)
        for name, component in ruleset.components.items():
            assert component.min <= outcome.state.scores[name] <= component.max
        assert outcome.state.stage in ruleset.all_stages
        state = outcome.state
    return True


def nested(kind: str, depth: int) -> str:
    inner = "{lead.flag: 1}"
    for _ in range(depth):
        inner = f"{{not: {inner}}}" if kind == "not" else f"{{any: [{inner}]}}"
    return inner


# Whole lines an attacker splices into a ruleset: aliases, tags, deep or wide structures.
hostile_lines = st.one_of(
    st.builds(lambda depth: f"    when: {nested('not', depth)}", st.integers(30, 3000)),
    st.builds(lambda depth: f"    when: {nested('any', depth)}", st.integers(30, 300)),
    st.sampled_from(
        [
            "    when: &w {lead.flag: 1}",
            "    when: *w",
            "    when: !!map {lead.flag: 1}",
            "    when: {<<: *w}",
            "    when: {lead.flag: {eq: 2026-13-45}}",
        ]
    ),
    # Built when drawn: a strategy holding megabytes makes hypothesis print megabytes.
    st.builds(lambda n: "    when: " + "[" * n, st.just(20_000)),
    st.builds(lambda n: "#" * n, st.just(1_000_001)),
)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(ruleset_texts(valid=True), st.lists(hostile_lines, min_size=1, max_size=3), st.data())
def test_hostile_yaml_is_refused_quickly_with_its_line(
    text: str, hostile: list[str], data: st.DataObject
) -> None:
    lines = text.splitlines()
    for line in hostile:
        lines.insert(data.draw(st.integers(7, len(lines))), line)
    spliced = "\n".join(lines) + "\n"
    started = time.monotonic()
    try:
        ruleset = parse_ruleset(spliced, "fuzz.yaml")
    except ProblemsError as error:
        for problem in error.problems:
            assert problem.file == "fuzz.yaml" and problem.message
            assert 1 <= problem.line <= len(lines), str(problem)
    else:
        compile_ruleset(ruleset)
    assert time.monotonic() - started < 20


@pytest.mark.slow
@FUZZ
@given(
    ruleset_texts(valid=True),
    lead_attributes,
    st.lists(events_for_rules, min_size=1, max_size=3),
    amounts,
)
def test_any_well_formed_ruleset_compiles_and_runs(
    text: str, attributes: dict[str, Any], kinds: list[str], amount: Any
) -> None:
    assert check_ruleset(text, attributes, kinds, amount, well_formed=True), text


@pytest.mark.slow
@FUZZ
@given(
    ruleset_texts(valid=False),
    lead_attributes,
    st.lists(events_for_rules, min_size=1, max_size=2),
    amounts,
)
def test_any_ruleset_is_loaded_or_rejected_with_file_and_line(
    text: str, attributes: dict[str, Any], kinds: list[str], amount: Any
) -> None:
    check_ruleset(text, attributes, kinds, amount)
