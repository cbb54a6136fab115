"""Email addresses: the one syntax check and normal form, for records, campaigns and the API."""

from __future__ import annotations

import re

from engine.errors import InvalidRecord

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_LENGTH = 320


def is_address(text: str) -> bool:
    return len(text) <= MAX_LENGTH and _EMAIL.match(text) is not None


def normalise_email(value: object) -> str:
    """The lead key: trimmed, lower-cased; InvalidRecord naming ``email`` when it is not one."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("email: missing")
    email = value.strip().lower()
    if not is_address(email):
        raise InvalidRecord("email: not an email address")
    return email
