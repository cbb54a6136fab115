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
