"""JSON Lines parsing skips the nesting walk of a record whose text opens fewer objects and
lists than the depth limit: on generated lines, over-deep and hostile ones among them, every
answer equals the one of the full check."""

from __future__ import annotations

import random

from engine import jsontext
from engine.errors import InvalidRecord
from engine.ingest.parse import Parsed, Rejection, parse_jsonl, record

PIECES = [
    '"plain"',
    '"{[ brackets in text ]}"',
    '"nul \\u0000 inside"',
    '"lone \\ud800 surrogate"',
    "NaN",
    "1e400",
    "12",
    "true",
    "null",
    '["a", {"b": 2}]',
]


def nested(depth: int) -> str:
    return '{"d": ' * depth + "1" + "}" * depth


def line(rng: random.Random) -> str:
    depth = rng.randint(20, 40)
    pieces = [*PIECES, nested(depth), "[" * depth + "1" + "]" * depth, '"' + "{" * depth + '"']
    body = ", ".join(f'"k{n}": {rng.choice(pieces)}' for n in range(rng.randint(0, 3)))
    if rng.random() < 0.3:
        return f'{{"email": "a{rng.randint(0, 9)}@x.io", "company": {rng.choice(PIECES)}}}'
    return f'{{"email": "b@y.io", "type": "view", "properties": {{{body}}}}}'


def checked_in_full(number: int, text: str) -> Parsed:
    try:
        return record(number, jsontext.loads(text))
    except jsontext.JsonError as error:
        return Rejection(number, f"not valid JSON: {error}")
    except InvalidRecord as error:
        return Rejection(number, str(error))


def test_parsing_answers_as_the_full_check_does() -> None:
    rng = random.Random(7)
    lines = [line(rng) for _ in range(3000)]
    answers = list(parse_jsonl(lines))
    assert answers == [checked_in_full(n, text) for n, text in enumerate(lines, start=1)]
    refused = [a.error for a in answers if isinstance(a, Rejection)]
    # The generated lines meet the depth limit on both sides, and what else the check refuses.
    assert any("nested deeper" in e for e in refused)
    assert any("NUL" in e for e in refused) and any("finite" in e for e in refused)
    shallow_deep = [t for t in lines if t.count("{") + t.count("[") > jsontext.MAX_DEPTH]
    assert any(not isinstance(parse_one(t), Rejection) for t in shallow_deep)
    assert sum(not isinstance(a, Rejection) for a in answers) > 500


def parse_one(text: str) -> Parsed:
    return next(iter(parse_jsonl([text])))
