"""JSON text → Python values, for every place hostile JSON comes in (ingest lines, API bodies,
the SendGrid webhook): what Python's reader cannot read (nesting past its recursion limit, an
integer of more than 4300 digits, bytes that are not UTF-8) is one :class:`JsonError` whose text
says what, never a RecursionError or a bare ValueError; what it reads is bounded in depth.

Two depths: a document may nest :data:`MAX_DOCUMENT_DEPTH` levels, enough for a list of records
each at most :data:`MAX_DEPTH` deep (which the record parser checks), so one over-deep record of
a request is one rejected item rather than a refused request.
"""

from __future__ import annotations

import json
import sys
from _json import encode_basestring_ascii, make_encoder, make_scanner  # json's C parts
from typing import Any

MAX_DEPTH = 32  # one record: its object, its properties, and what they nest
MAX_DOCUMENT_DEPTH = 2 * MAX_DEPTH


class JsonError(ValueError):
    """Text that is not JSON this service reads; ``str()`` says why and where."""


def loads(text: str | bytes) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise JsonError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise JsonError("not UTF-8 text") from None
    except json.JSONDecodeError as error:
        line = f"line {error.lineno}, " if error.lineno > 1 else ""
        raise JsonError(f"{error.msg} ({line}column {error.colno})") from None
    except ValueError:  # int() refuses an integer of more than so many digits
        raise JsonError(f"a number has more than {sys.get_int_max_str_digits()} digits") from None
    if _openings(text) > MAX_DOCUMENT_DEPTH and too_deep(value, MAX_DOCUMENT_DEPTH):
        raise JsonError(f"nested deeper than {MAX_DOCUMENT_DEPTH} levels")
    return value


def _openings(text: str | bytes) -> int:
    """How many lists and objects the text opens at most: fewer than a limit, no walk needed."""
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{")
    return text.count("[") + text.count("{")


def too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` levels (itself is level 1).
    Iterative: the check must not recurse on what it is checking."""
    level = [(value, 1)]
    while level:
        item, depth = level.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            if depth > limit:
                return True
            level.extend((child, depth + 1) for child in item if isinstance(child, dict | list))
    return False


# What json.loads and json.dumps call, made once (json.dumps makes its encoder anew for each
# value). The encoder is json.dumps' but for the check for a value that contains itself: stored
# values are read from JSON or built as trees, and one that did would fail with a
# RecursionError instead of a ValueError.
_SCAN = make_scanner(json.JSONDecoder())  # type: ignore[arg-type]  # (typeshed: any context)
_ENCODE = make_encoder(
    None, json.JSONEncoder().default, encode_basestring_ascii, None, ": ", ", ", False, False, True
)


def stored(data: str | bytes) -> Any:
    """JSON a database column gives back (written by us, so not bounded here), read as
    ``json.loads`` reads it. The common case, one value with nothing around it, goes straight
    to the decoder's C scanner: ``json.loads`` spent more than half its time on bytes (guessing
    their encoding) and in Python around that scanner, and a step batch reads two such
    columns a lead. Anything else (whitespace around the value, an error) is ``json.loads``'s."""
    try:
        text = data.decode() if isinstance(data, bytes) else data
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError):  # leading whitespace, an error: said as json.loads says
        return json.loads(data)
    return value if end == len(text) else json.loads(data)


def storable(value: Any) -> str:
    """``json.dumps(value)``, the same text, for a JSON column: half the time for a lead's
    attributes, a third for an email's headers."""
    return "".join(_ENCODE(value, 0))
