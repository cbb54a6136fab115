"""Email addresses: the one syntax check and normal form, for records, the API, campaigns'
``from:``, the sales settings and alert owners.

The syntax is email-validator's (RFC 5322 and 6531 as mail servers accept them), without DNS
look-ups, quoted local parts, IP literals or display names, and with an ASCII local part: no
zero-width, control, markup (``<>"``) or look-alike characters anywhere. An internationalised
domain is kept in its ASCII (``xn--``) form, so one mailbox has one key; a domain written with
fullwidth or other compatibility characters, which IDNA would quietly map to ASCII, is refused
rather than turned into the address it imitates.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from email_validator import EmailNotValidError, validate_email

from engine.errors import InvalidRecord

MAX_LENGTH = 320


@lru_cache(maxsize=1 << 16)  # a lead's address comes again with each of its events
def normal_address(text: str) -> str:
    """``text`` as a lead key (trimmed, lower-cased, ASCII domain), or ValueError saying why."""
    text = text.strip()
    if len(text) > MAX_LENGTH:
        raise ValueError(f"longer than {MAX_LENGTH} characters")
    if unicodedata.normalize("NFKC", text) != unicodedata.normalize("NFC", text):
        raise ValueError("look-alike characters (fullwidth or compatibility forms)")
    try:
        found = validate_email(
            text,
            allow_smtputf8=False,
            check_deliverability=False,
            allow_quoted_local=False,
            allow_domain_literal=False,
            allow_display_name=False,
        )
    except EmailNotValidError as error:
        raise ValueError(str(error)) from None
    return (found.ascii_email or found.normalized).lower()


def address_or_none(value: object) -> str | None:
    """``value`` as a normal address, or None when it is not one (e.g. an owner's name)."""
    try:
        return normal_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def normalise_email(value: object) -> str:
    """The lead key: trimmed, lower-cased; InvalidRecord naming ``email`` when it is not one."""
    if not isinstance(value, str) or not value.strip():
        raise InvalidRecord("email: missing")
    try:
        return normal_address(value)
    except ValueError:
        raise InvalidRecord("email: not an email address") from None
