"""Dashboard sessions: what signing in opens, instead of the API token kept in a cookie. The
browser holds a random id (cookie ``nurture_session``: HttpOnly, SameSite=Strict, Secure over
https); the database holds only its SHA-256, the fingerprint of the API token it was opened with
(a new token ends every session) and when it expires. Signing out deletes the row, so a copied
cookie dies with the session. Sessions open the dashboard's pages only: ``/api/...`` takes the
bearer token alone (``engine.api.auth``)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from sqlalchemy import Engine, delete, insert, select

from engine.db import reading
from engine.db.schema import SESSIONS
from engine.timeutil import utcnow

COOKIE = "nurture_session"
LIFETIME = timedelta(days=14)
_LONGEST_ID = 100  # ours are 43 characters; longer is not one of ours (and not worth a hash)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def open_session(db: Engine, token: str) -> str:
    """A new session for someone who gave the API ``token``; its id, for the cookie."""
    session = secrets.token_urlsafe(32)
    now = utcnow()
    with db.begin() as conn:
        conn.execute(delete(SESSIONS).where(SESSIONS.c.expires_at <= now))  # the expired go
        conn.execute(
            insert(SESSIONS).values(
                id_hash=_digest(session),
                credential=_digest(token),
                created_at=now,
                expires_at=now + LIFETIME,
            )
        )
    return session


def is_open(db: Engine, session: str | None, token: str) -> bool:
    """Whether ``session`` is a live session opened with the API token now in force."""
    if not session or len(session) > _LONGEST_ID:
        return False
    with reading(db) as conn:
        credential = conn.execute(
            select(SESSIONS.c.credential).where(
                SESSIONS.c.id_hash == _digest(session), SESSIONS.c.expires_at > utcnow()
            )
        ).scalar()
    return credential is not None and hmac.compare_digest(credential, _digest(token))


def close_session(db: Engine, session: str | None) -> None:
    if session and len(session) <= _LONGEST_ID:
        with db.begin() as conn:
            conn.execute(delete(SESSIONS).where(SESSIONS.c.id_hash == _digest(session)))
