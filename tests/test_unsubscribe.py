"""The unsubscribe link of every email, through the FastAPI app: a page that asks before it acts
(link scanners follow GET), one click by POST (RFC 8058), tokens that say nothing about the
address, old links still honoured, and every click after a re-subscribe counted."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from itsdangerous import URLSafeSerializer

from engine.db.schema import LEADS
from engine.send.unsubscribe import make_token
from engine.settings import Settings
from tests.campaign_support import CAMPAIGNS, T0, lead, outbox, run_steps, warm

pytestmark = pytest.mark.home(campaigns=CAMPAIGNS, templates=True)  # service adds the ruleset

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def emailed_link(db: sa.Engine, home: Path, settings: Settings, email: str) -> str:
    """The path of the unsubscribe link in the email the lead was sent."""
    warm(db, home, email)
    run_steps(db, home, T0, settings)
    [row] = [r for r in outbox(db) if r["to_email"] == email]
    headers = row["headers"] if isinstance(row["headers"], dict) else json.loads(row["headers"])
    url = headers["List-Unsubscribe"].strip("<>")
    assert url in row["html"]
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


def token_of(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def subscribed(db: sa.Engine, email: str) -> bool:
    return bool(lead(db, email)["subscribed"])


def unsubscribe_events(db: sa.Engine) -> int:
    with db.connect() as conn:
        query = "SELECT count(*) FROM event WHERE type = 'unsubscribe'"
        return int(conn.execute(sa.text(query)).scalar() or 0)


def test_the_link_asks_first_and_one_click_unsubscribes(service: Any, home: Path) -> None:
    client, settings, db = service
    link = emailed_link(db, home, settings, "zoe@example.com")
    page = client.get(link)  # what a link scanner or a preview does
    assert page.status_code == 200
    assert '<form method="post"' in page.text and "<button" in page.text
    assert subscribed(db, "zoe@example.com")
    done = client.post(link, data=ONE_CLICK)  # the button, or a mail client's one click
    assert done.status_code == 200 and "You are unsubscribed" in done.text
    assert not subscribed(db, "zoe@example.com")
    assert client.get(link).status_code == 200  # following the link again is harmless
    assert client.post(link, data=ONE_CLICK).status_code == 200
    assert unsubscribe_events(db) == 1


def test_tokens_say_nothing_about_the_address(service: Any, home: Path) -> None:
    _client, settings, db = service
    email = "zoe@example.com"
    token = token_of(emailed_link(db, home, settings, email))
    zoe = lead(db, email)
    decoded = base64.urlsafe_b64decode(token.split(".")[0] + "=" * (-len(token) % 4))
    digest = hashlib.sha256(email.encode()).hexdigest()[:16]
    for secret in (email, "zoe", digest, f"[{zoe['id']},"):
        assert secret not in token and secret.encode() not in decoded
    created = datetime(2026, 1, 1, tzinfo=UTC)
    key = settings.signing_key()
    # Nothing links two emails to the same person either.
    assert make_token(key, zoe["id"], created) != make_token(key, zoe["id"], created)


def test_forged_altered_and_stale_tokens_are_refused(service: Any, home: Path) -> None:
    client, settings, db = service
    link = emailed_link(db, home, settings, "zoe@example.com")
    token = token_of(link)
    zoe = lead(db, "zoe@example.com")
    altered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    # Signed with another key; and one for a lead with the same id created at another time
    # (an erased lead whose id came back): neither is Zoe's.
    other_key = make_token("another-secret", zoe["id"], datetime(2026, 1, 1, tzinfo=UTC))
    other_lead = make_token(settings.signing_key(), zoe["id"], datetime(2020, 1, 1, tzinfo=UTC))
    for bad in (altered, other_key, other_lead, "", "x" * 5000):
        assert client.get("/unsubscribe", params={"token": bad}).status_code == 400
        response = client.post("/unsubscribe", params={"token": bad}, data=ONE_CLICK)
        assert response.status_code == 400
    assert subscribed(db, "zoe@example.com")


def test_links_sent_before_tokens_became_opaque_still_work(service: Any, home: Path) -> None:
    client, settings, db = service
    emailed_link(db, home, settings, "zoe@example.com")
    zoe = lead(db, "zoe@example.com")
    old = URLSafeSerializer(settings.signing_key(), salt="nurture.unsubscribe")
    digest = hashlib.sha256(b"zoe@example.com").hexdigest()[:16]
    wrong = old.dumps([zoe["id"], hashlib.sha256(b"eve@example.com").hexdigest()[:16]])
    assert client.post("/unsubscribe", params={"token": wrong}, data=ONE_CLICK).status_code == 400
    response = client.post("/unsubscribe", params={"token": old.dumps([zoe["id"], digest])})
    assert response.status_code == 200
    assert not subscribed(db, "zoe@example.com")


def test_fernet_links_sent_before_the_cheaper_tokens_still_work(service: Any, home: Path) -> None:
    client, settings, db = service
    emailed_link(db, home, settings, "zoe@example.com")
    with db.connect() as conn:
        query = sa.select(LEADS.c.id, LEADS.c.created_at).where(LEADS.c.email == "zoe@example.com")
        lead_id, created = conn.execute(query).one()
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    # The token as it was made before: Fernet under a key derived from the secret.
    derived = hashlib.sha256(f"nurture.unsubscribe\0{settings.signing_key()}".encode()).digest()
    payload = struct.pack(">qq", lead_id, (created - EPOCH) // timedelta(microseconds=1))
    old = Fernet(base64.urlsafe_b64encode(derived)).encrypt(payload).decode().rstrip("=")
    assert len(old) > 100 and old.startswith("gAAAAA")
    tampered = old[:-3] + ("AAA" if not old.endswith("AAA") else "BBB")
    assert (
        client.post("/unsubscribe", params={"token": tampered}, data=ONE_CLICK).status_code == 400
    )
    assert subscribed(db, "zoe@example.com")
    response = client.post("/unsubscribe", params={"token": old}, data=ONE_CLICK)
    assert response.status_code == 200
    assert not subscribed(db, "zoe@example.com")


def test_a_click_after_a_resubscribe_unsubscribes_again(service: Any, home: Path) -> None:
    client, settings, db = service
    link = emailed_link(db, home, settings, "zoe@example.com")
    bearer = {"Authorization": f"Bearer {settings.access_token()}"}
    for _ in range(2):  # within the same hour
        assert client.post(link, data=ONE_CLICK).status_code == 200
        assert not subscribed(db, "zoe@example.com")
        again = client.post("/api/leads", json={"email": "zoe@example.com", "subscribed": True},
                            headers=bearer)  # fmt: skip
        assert again.status_code == 200 and subscribed(db, "zoe@example.com")
    assert unsubscribe_events(db) == 2
