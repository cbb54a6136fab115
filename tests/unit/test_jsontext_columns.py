"""JSON columns: read back by ``jsontext.stored`` (the C scanner alone in the common case), they
are what ``json.loads`` reads, as text and as bytes, with whitespace around them or not, and
text that is not JSON fails as it fails in ``json.loads``; written by ``jsontext.storable``,
they are ``json.dumps``' text, and what it cannot write fails as it fails there."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from engine import jsontext

SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text()
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
# Keys json.dumps turns into text (numbers, booleans, None) beside text ones.
KEYED = st.dictionaries(st.none() | st.booleans() | st.integers() | st.floats() | st.text(), VALUES)
SPACE = st.sampled_from(["", " ", "\n", "\t ", "\r\n"])


def outcome(read: Any, text: Any) -> tuple[str, Any]:
    try:
        return "value", json.dumps(read(text))  # NaN compares unequal to itself; its text does not
    except Exception as error:  # the error is the outcome compared
        return type(error).__name__, str(error)


@given(VALUES, SPACE, SPACE, st.booleans(), st.sampled_from([None, 1]))
def test_a_stored_value_reads_as_json_loads_reads_it(
    value: Any, before: str, after: str, ascii_only: bool, indent: int | None
) -> None:
    text = before + json.dumps(value, ensure_ascii=ascii_only, indent=indent) + after
    for given_as in (text, text.encode()):
        assert outcome(jsontext.stored, given_as) == outcome(json.loads, given_as)


@given(st.text(max_size=30) | st.sampled_from(['{"a": 1} x', "[1,", '{"a" 1}', "", " ", "01"]))
def test_text_that_is_not_json_fails_as_json_loads_fails(text: str) -> None:
    for given_as in (text, text.encode("utf-8", "surrogatepass")):
        assert outcome(jsontext.stored, given_as) == outcome(json.loads, given_as)


def test_bytes_that_are_not_utf8_fail_as_json_loads_fails() -> None:
    for data in (b'"\xff"', b"\xfe\xff\x00[", b'{"a": "\xc3"}'):
        assert outcome(jsontext.stored, data) == outcome(json.loads, data)


@given(VALUES | KEYED)
def test_a_value_is_written_as_json_dumps_writes_it(value: Any) -> None:
    assert jsontext.storable(value) == json.dumps(value)


def test_what_json_dumps_cannot_write_fails_as_it_fails_there() -> None:
    for value in ({"at": object()}, [1, {2, 3}], {(1, 2): "tuple key"}, b"bytes"):
        assert outcome(jsontext.storable, value) == outcome(json.dumps, value)
