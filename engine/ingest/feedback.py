"""The ``outbox_id`` and ``campaign`` columns of an event, from its properties: which email and
campaign a piece of feedback (an open, a click, an unsubscribe) is about, kept as columns so the
dashboard's campaign figures read them instead of every feedback event's JSON.

SendGrid's webhook echoes our ``custom_args.outbox_id`` as text and the email's category (a
name, or a list of them whose first counts); other sources may name a ``campaign``. Migration
0009 fills the columns of events stored before with the same rules in SQL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MAX_ROW_ID = 2**31 - 1  # outbox ids are 32-bit integers
MAX_CAMPAIGN = 200  # characters, as the campaign columns elsewhere


def outbox_id(properties: Mapping[str, Any]) -> int | None:
    """``properties.outbox_id`` when it is an outbox row id (digits, as text or a number)."""
    value = properties.get("outbox_id")
    if isinstance(value, bool):
        return None
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    return value if isinstance(value, int) and 0 < value <= MAX_ROW_ID else None


def campaign(properties: Mapping[str, Any]) -> str | None:
    """The campaign the event names: its ``category`` (the first of a list), else ``campaign``."""
    category = properties.get("category")
    if isinstance(category, list):
        category = category[0] if category else None
    for value in (category, properties.get("campaign")):
        if value is not None and not isinstance(value, list | dict | bool):
            return str(value)[:MAX_CAMPAIGN]
    return None


def columns(properties: Mapping[str, Any]) -> dict[str, Any]:
    """The event row's feedback columns."""
    return {"outbox_id": outbox_id(properties), "campaign": campaign(properties)}
