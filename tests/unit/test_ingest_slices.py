"""`nurture ingest --workers`: each worker parses only its slice's lines, finding a line's lead
key off its text where that is plain (:func:`engine.ingest.parse.plain_email`). On hostile and
generated JSON Lines and CSV (escapes, unicode, upper case, duplicate and nested ``email`` keys,
bad lines), the key read off the text is the full parse's, and the workers' answers together are
the single parse's answer: every record and every rejection once, with the same message."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.address import normal_address
from engine.ingest.parallel import slice_keeper, slice_of
from engine.ingest.parse import (
    _PLAIN_ADDRESS,
    Parsed,
    Rejection,
    Slice,
    parse_jsonl,
    parse_stream,
    plain_email,
)

PLAIN = st.from_regex(r"[a-z][a-z0-9._+-]{0,8}@[a-z][a-z0-9-]{0,6}\.(com|io|de)", fullmatch=True)
# Addresses a file may hold, plain or not: each is a lead key, or not one, or spells one in
# another form (case, spaces, unicode, escapes the JSON encoder writes).
EMAILS = st.one_of(
    PLAIN,
    PLAIN.map(str.upper),
    PLAIN.map(lambda e: e[0].upper() + e[1:]),
    PLAIN.map(lambda e: f" {e}\t"),
    st.from_regex(_PLAIN_ADDRESS, fullmatch=True),
    st.sampled_from(
        [
            "ann@bücher.de",
            "ann@xn--bcher-kva.de",
            "ann@xn--zz.de",
            "ännä@x.io",
            "ann@ｘ.io",
            "a\u200bnn@x.io",
            "ann@x..io",
            "ann@localhost",
            "ann@x.io.",
            "ab--cd@x.io",
            "ann@ab--cd.io",
            'a"b@x.io',
            "a\\b@x.io",
            "",
            "@",
            "ann@x.io\x00",
            "ann@\udcff.io",
        ]
    ),
    st.text(max_size=12),
)
VALUES = st.one_of(EMAILS, st.integers(), st.none(), st.booleans(), st.lists(PLAIN, max_size=1))
NOW = "2026-01-02T03:04:05Z"
WHITESPACE = st.sampled_from(["", " ", "\t", " \r ", "  "])


def sometimes(draw: st.DrawFn) -> bool:
    """True one time in four: each oddity is rare enough that many lines hold valid records."""
    return draw(st.sampled_from([False, False, False, True]))


@st.composite
def json_lines(draw: st.DrawFn) -> str:
    """One line: a profile or an event, its email where a record has it or elsewhere too."""
    body: dict[str, object] = {}
    if draw(st.integers(0, 9)) > 0:
        body["email"] = draw(VALUES) if sometimes(draw) else draw(PLAIN)
    if draw(st.booleans()):
        body["type"] = draw(st.sampled_from(["", " \x07"])) if sometimes(draw) else "page_view"
        body["occurred_at"] = draw(st.sampled_from(["someday", None])) if sometimes(draw) else NOW
        if sometimes(draw):
            # Nested and valued "email": another field holds it, as key or text.
            body["properties"] = {
                draw(st.sampled_from(["email", "Email", "page"])): draw(EMAILS),
                "source": draw(st.sampled_from(["email", "ads", 'say "email"'])),
            }
        if sometimes(draw):
            body["lead"] = {"email": draw(EMAILS)}
    else:
        body["company"] = draw(st.sampled_from(["email", 'q"uote'])) if sometimes(draw) else "Acme"
        if sometimes(draw):
            body["score"] = 5  # computed by the rules: refused
    if draw(st.booleans()):
        body = dict(reversed(list(body.items())))  # the email key last, not first
    text = json.dumps(
        body,
        ensure_ascii=draw(st.booleans()),
        separators=(draw(WHITESPACE) + "," + draw(WHITESPACE), draw(WHITESPACE) + ":"),
    )
    change = draw(st.integers(0, 9))
    if change == 0:  # a second "email" key; JSON's reader keeps the last
        text = text.replace("{", '{"email": ' + json.dumps(draw(VALUES)) + ", ", 1)
    elif change == 1:  # the key spelled with an escape, or in upper case
        text = text.replace('"email"', draw(st.sampled_from(['"\\u0065mail"', '"Email"'])), 1)
    elif change == 2:  # broken JSON
        text = text[: draw(st.integers(0, max(0, len(text) - 1)))]
    return text + draw(st.sampled_from(["\n", "\r\n", ""]))


@st.composite
def csv_files(draw: st.DrawFn) -> str:
    """A CSV file: a header naming an email column (or not), rows with hostile cells."""
    header = (
        draw(st.sampled_from(["E-mail,type,page", "x"])) if sometimes(draw) else "Email,type,page"
    )
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        email = draw(EMAILS) if sometimes(draw) else draw(PLAIN)
        quoted = '"' + email.replace('"', '""') + '"' if draw(st.booleans()) else email
        rest = draw(st.sampled_from([",", '"two\nlines"', "a,b,c,d"])) if sometimes(draw) else "v,/"
        rows.append(f"{quoted},{rest}")
    return "\n".join([header, *rows]) + "\n"


def by_line(items: list[Parsed]) -> list[Parsed]:
    return sorted(items, key=lambda item: item.line)


def sliced(lines: list[str], workers: int, by_domain: bool) -> Iterator[tuple[int, Parsed]]:
    for index in range(workers):
        for item in parse_jsonl(lines, slice_keeper(index, workers, by_domain)):
            yield index, item


def owner(item: Parsed, workers: int, by_domain: bool) -> int:
    """The worker the full parse gives an item: by its key, the first for a rejection."""
    if isinstance(item, Rejection):
        return 0
    return slice_of(item.email.rsplit("@", 1)[-1] if by_domain else item.email, workers)


@pytest.mark.slow
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_lines())
def test_the_key_read_off_a_line_is_its_records_email(line: str) -> None:
    key = plain_email(line)
    for parsed in parse_jsonl([line]):
        if key is not None and not isinstance(parsed, Rejection):
            assert parsed.email == key


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(json_lines(), max_size=25), st.integers(2, 4), st.booleans())
def test_the_workers_together_answer_as_one_parse(
    lines: list[str], workers: int, by_domain: bool
) -> None:
    alone = list(parse_jsonl(lines))
    together = list(sliced(lines, workers, by_domain))
    # Every record and every rejection once, the same; each record in its lead's slice.
    assert by_line([item for _, item in together]) == alone
    for index, item in together:
        if not isinstance(item, Rejection):
            assert index == owner(item, workers, by_domain)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(csv_files(), st.integers(2, 3), st.booleans())
def test_csv_workers_together_answer_as_one_parse(text: str, workers: int, by_domain: bool) -> None:
    def parse(mine: Slice | None = None) -> list[Parsed]:
        return list(parse_stream(io.StringIO(text, newline=""), "leads.csv", mine))

    alone = parse()
    together = []
    for index in range(workers):
        for item in parse(slice_keeper(index, workers, by_domain)):
            if not isinstance(item, Rejection):
                assert index == owner(item, workers, by_domain)
            together.append(item)
    assert by_line(together) == alone


@pytest.mark.slow
@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.from_regex(_PLAIN_ADDRESS, fullmatch=True),
        st.from_regex(
            r"[a-z0-9._+-]{1,10}@((xn--)?[a-z0-9-]{1,8}\.){1,3}[a-z]{2,5}", fullmatch=True
        ),
    )
)
def test_a_plain_address_is_its_own_lead_key(text: str) -> None:
    # The shortcut's ground: what the key is read as unvalidated is what validation keeps.
    try:
        key = normal_address(text)
    except ValueError:
        return
    assert key == text


HOSTILE = [
    # Plain: the key read off the text.
    ('{"email":"ann@x.io","company":"Acme"}', "ann@x.io"),
    ('{ "type" : "page_view" ,\t"email" :\t"bob@y.io" }\r\n', "bob@y.io"),
    ('{"email": "ann@x.io", "type": "page_view", "occurred_at": "someday"}', "ann@x.io"),
    # Not plain: parsed in full by every worker.
    ('{"email": "Ann@X.io"}', None),
    ('{"email": " ann@x.io"}', None),
    ('{"email": "ann@b\\u00fccher.de"}', None),
    ('{"email": "ann@bücher.de"}', None),
    ('{"\\u0065mail": "ann@x.io"}', None),
    ('{"email": "ann@x.io", "email": "bob@y.io"}', None),
    ('{"email": "ann@x.io", "company": "say \\"email\\""}', None),
    ('{"email": "ann@x.io", "type": "v", "properties": {"email": "bob@y.io"}}', None),
    ('{"source": "email", "email": "ann@x.io"}', None),
    ('{"Email": "ann@x.io"}', None),
    ('{"email": 5}', None),
    ("not json at all", None),
]


@pytest.mark.parametrize(("line", "key"), HOSTILE)
def test_hostile_lines(line: str, key: str | None) -> None:
    assert plain_email(line) == key


def test_a_nested_email_alone_is_a_bad_line_of_its_slice() -> None:
    # A key is read off the text, and the line (no email of its own) is rejected in its slice,
    # by that worker only.
    nested = '{"type": "v", "lead": {"email": "bob@y.io"}}'
    assert plain_email(nested) == "bob@y.io"
    (alone,) = parse_jsonl([nested])
    assert alone == Rejection(1, "email: missing")
    together = [(index, item) for index, item in sliced([nested], 2, False)]
    assert together == [(slice_of("bob@y.io", 2), alone)]


def test_each_bad_line_is_reported_once_with_its_message() -> None:
    lines = [line for line, _ in HOSTILE] + ["x" * 10, "", "   \n"]
    alone = list(parse_jsonl(lines))
    assert sum(isinstance(p, Rejection) for p in alone) >= 5
    for workers in (2, 3):
        together = [item for _, item in sliced(lines, workers, False)]
        assert by_line(together) == alone


def test_the_bench_lines_are_read_plainly() -> None:
    # The shortcut must hold on the lines ingest mostly sees, or it saves nothing.
    line = json.dumps({"email": "megan.walker.0@primegatehq.com", "type": "page_view"})
    assert plain_email(line) == "megan.walker.0@primegatehq.com"
    assert re.fullmatch(_PLAIN_ADDRESS, "megan.walker.0@primegatehq.com")
