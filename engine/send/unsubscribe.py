"""Signed unsubscribe links: made at render time for every email, read back by the
``/unsubscribe`` endpoint. The token binds the lead's id to a digest of its address, so a link
neither reveals the address nor works for another lead, and any change to it breaks the signature.
Links do not expire: an unsubscribe link must work however old the email is."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from urllib.parse import urlencode

from itsdangerous import BadSignature, URLSafeSerializer

from engine.errors import NurtureError

SALT = "nurture.unsubscribe"


class BadToken(NurtureError, ValueError):
    """An unsubscribe token that was not signed by us (or is damaged)."""


def _digest(email: str) -> str:
    return hashlib.sha256(email.encode()).hexdigest()[:16]


@lru_cache(maxsize=8)
def _serializer(key: str) -> URLSafeSerializer:
    # Built once per key: deriving the signing key is most of the cost of a token.
    return URLSafeSerializer(key, salt=SALT)


def make_token(key: str, lead_id: int, email: str) -> str:
    return str(_serializer(key).dumps([lead_id, _digest(email)]))


def read_token(key: str, token: str) -> tuple[int, str]:
    """(lead id, address digest) of a genuine token; BadToken for a forged or altered one."""
    try:
        payload = _serializer(key).loads(token)
    except BadSignature:
        raise BadToken("the unsubscribe link is not valid (altered or not ours)") from None
    match payload:
        case [int() as lead_id, str() as digest]:
            return lead_id, digest
    raise BadToken("the unsubscribe link is not valid")


def matches(digest: str, email: str) -> bool:
    return _digest(email) == digest


def unsubscribe_url(public_url: str, key: str, lead_id: int, email: str) -> str:
    query = urlencode({"token": make_token(key, lead_id, email)})
    return f"{public_url.rstrip('/')}/unsubscribe?{query}"


def list_unsubscribe_headers(url: str) -> dict[str, str]:
    """RFC 2369 link plus RFC 8058 one-click: mail clients POST to the link, no page to visit."""
    return {
        "List-Unsubscribe": f"<{url}>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
