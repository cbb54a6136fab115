"""Whatever arrives, the answer is a score or a clear error, never a traceback."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.ingest.parse import EventRecord, InvalidRecord, LeadRecord, parse_jsonl, record
from engine.rules.compile import CompileError, compile_ruleset
from engine.rules.evaluate import ChainError, Event, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import RulesetError, load_ruleset, parse_ruleset
from tests.conftest import ROOT

B2B = compile_ruleset(load_ruleset(ROOT / "rulesets" / "b2b-saas.yaml"))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
keys = st.sampled_from(
    [
        "id",
        "email",
        "type",
        "occurred_at",
        "properties",
        "lead",
        "job_title",
        "budget",
        "company_size",
        "subscribed",
        "score",
        "url",
    ]
) | st.text(max_size=10)
records = st.dictionaries(keys, values, max_size=8) | st.fixed_dictionaries(
    {
        "email": st.sampled_from(["ana@acme.io", "x@y.z", "bad", ""]),
        "type": st.sampled_from(["page_view", "demo_request", "unsubscribe", ""]) | st.text(),
        "occurred_at": st.sampled_from(["2026-01-05T10:00:00Z", "2026-01-05", "nope", ""]),
        "properties": st.dictionaries(st.sampled_from(["url", "asset"]), values, max_size=2),
        "lead": st.dictionaries(st.sampled_from(["job_title", "budget", "industry"]), scalars),
    }
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=records)
def test_any_record_scores_or_is_rejected_with_a_field(raw: dict[str, object]) -> None:
    try:
        parsed = record(1, raw)
    except InvalidRecord as error:
        assert str(error).split(":")[0]  # names the field or the problem
        return
    state = new_lead(B2B.ruleset, {"email": parsed.email})
    at = parsed.occurred_at or datetime(2026, 1, 5, tzinfo=UTC)
    if isinstance(parsed, LeadRecord):
        state.attributes.update(parsed.attributes)
        event = Event(parsed.id, "profile_update", at)
    else:
        assert isinstance(parsed, EventRecord)
        state.attributes.update(parsed.attributes)
        event = Event(parsed.id, parsed.type, at, parsed.properties)
    history = MemoryHistory()
    history.add_event(event.type, at)
    try:
        outcome = evaluate(B2B, state, event, history)
    except ChainError:
        return
    assert outcome.state.score == sum(outcome.state.scores.values())


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(st.text(max_size=40) | records.map(json.dumps), max_size=5))
def test_any_line_parses_or_is_rejected_with_its_number(lines: list[str]) -> None:
    for parsed in parse_jsonl(lines):
        assert 1 <= parsed.line <= len(lines)


paths = st.sampled_from(
    [
        "lead.score",
        "lead.scores.fit",
        "lead.scores.nope",
        "lead.stage",
        "lead.temperature",
        "lead.job_title",
        "event.type",
        "event.properties.url",
        "event",
        "lead",
        "account.x",
        "x",
    ]
)
operators = st.sampled_from(
    [
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "not_in",
        "contains",
        "matches",
        "exists",
        "equals",
        "[",
    ]
)
operands = scalars | st.lists(scalars, max_size=3) | st.sampled_from(["(unclosed", "mql", "hot"])
conditions = st.dictionaries(
    paths,
    st.dictionaries(operators, operands, min_size=1, max_size=2) | scalars,
    min_size=1,
    max_size=3,
)
thens = st.dictionaries(
    st.sampled_from(["score", "stage", "set", "tag", "alert", "enroll", "exit", "launch"]),
    st.sampled_from([{"fit": 5}, {"nope": 1}, "mql", "sales", {"owner": "bob"}, [], 3, None]),
    min_size=1,
    max_size=3,
)
limits = st.sampled_from([None, "once", {"times": 2, "per": "30d"}, {"times": 0, "per": "x"}, 7])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=st.lists(
        st.fixed_dictionaries({"when": conditions, "then": thens, "limit": limits}),
        min_size=1,
        max_size=4,
    ),
    window=st.sampled_from(["7d", "0d", "7x", 3]),
)
def test_any_ruleset_compiles_or_names_its_problems(
    rules: list[dict[str, object]], window: object
) -> None:
    body = {
        "ruleset": "fuzz",
        "components": {"fit": {"min": 0, "max": 60}},
        "rules": [
            {"name": f"r{i}", **{k: v for k, v in rule.items() if v is not None}}
            for i, rule in enumerate(rules)
        ]
        + [
            {
                "name": "counted",
                "when": {"count": {"type": "x", "within": window, "at_least": 1}},
                "then": {"tag": "c"},
            }
        ],
    }
    text = json.dumps(body, allow_nan=True)  # JSON is YAML
    try:
        compiled = compile_ruleset(parse_ruleset(text, "fuzz.yaml"))
    except RulesetError as error:
        assert all(p.file == "fuzz.yaml" and p.line >= 1 and p.message for p in error.problems)
        return
    except CompileError:
        return
    state = new_lead(compiled.ruleset, {"job_title": "VP", "email": "a@b.io"})
    history = MemoryHistory()
    event = Event("e", "page_view", datetime(2026, 1, 5, tzinfo=UTC), {"url": "/pricing"})
    with contextlib.suppress(ChainError):
        evaluate(compiled, state, event, history)
