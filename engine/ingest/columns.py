"""CSV column headers → the names records carry: one rule for ``nurture ingest`` (CSV input)
and ``nurture backtest``, so that what a ruleset is backtested on is what it reads live.

A header becomes snake_case: lower case, runs of anything but letters and digits become ``_``
("Lead Origin" → ``lead_origin``, "What is your current occupation" →
``what_is_your_current_occupation``). A name the ruleset computes (``tags``, ``score``,
``stage``...) gets ``_column`` appended ("Tags" → ``tags_column``): an import must not overwrite
what rules give. In a ``properties.<key>`` header the prefix stays and the key follows the rule
("properties.Page URL" → ``properties.page_url``). The names ingest reads (``id``, ``email``,
``type``, ``occurred_at``, ``subscribed``) are snake_case already, so they read as before. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from engine.errors import NurtureError
from engine.rules.spec import COMPUTED_FIELDS

# Fields of the lead that the ruleset computes; an import may not overwrite them.
COMPUTED = COMPUTED_FIELDS | {"ledger", "stage_history"}
PROPERTIES = "properties."
SUFFIX = "_column"


class ColumnError(NurtureError, ValueError):
    """A header row that cannot name its columns; the message names the columns at fault."""


def snake_case(text: str) -> str:
    """Lower case, runs of anything but letters and digits → ``_``, none at either end."""
    return re.sub(r"[^0-9a-z]+", "_", text.strip().lower()).strip("_")


def attribute_name(header: str) -> str:
    """The name a column header gives its cells (see the module docstring)."""
    text = header.strip()
    if text.lower().startswith(PROPERTIES):
        key = snake_case(text[len(PROPERTIES) :])
        return PROPERTIES + key if key else ""
    name = snake_case(text)
    return name + SUFFIX if name in COMPUTED else name


def column_names(header: Sequence[str]) -> list[str | None]:
    """Each column's name, None for a column without a header (a trailing comma). A header
    with no letter or digit, and two headers with one name, are :class:`ColumnError`."""
    names: list[str | None] = []
    first: dict[str, str] = {}
    for title in header:
        if not title.strip():
            names.append(None)
            continue
        name = attribute_name(title)
        if not name:
            raise ColumnError(f"column {title!r} has no letters or digits to name it")
        if name in first:
            raise ColumnError(
                f"columns {first[name]!r} and {title!r} would both be attribute {name!r}"
            )
        first[name] = title
        names.append(name)
    return names
