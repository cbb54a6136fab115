"""Feedback over HTTP: SendGrid's signed event webhook and the signed unsubscribe link, through
the FastAPI app, scoring through the rules and the same database as everything else."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from engine.send.unsubscribe import unsubscribe_url
from engine.settings import Settings
from tests.campaign_support import CAMPAIGNS, RULESET, T0, seed_outbox, settings_for

# The campaigns and templates of a campaign home, scored by camp-test plus two email rules.
pytestmark = pytest.mark.home(campaigns=CAMPAIGNS, templates=True)
RULES_WITH_EMAIL = RULESET + (
    "  - name: opened\n    when: {event.type: email_open}\n    then: {score: {engagement: 3}}\n"
    "  - name: clicked\n    when: {event.type: email_click}\n    then: {score: {engagement: 7}}\n"
)
KEY = ec.generate_private_key(ec.SECP256R1())
PUBLIC = base64.b64encode(
    KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()


@pytest.fixture
def service(home: Path, db_url: str) -> Iterator[tuple[TestClient, Settings, sa.Engine]]:
    (home / "rulesets/test.yaml").write_text(RULES_WITH_EMAIL)
    settings = settings_for(home, db_url, sendgrid_webhook_public_key=PUBLIC)
    database.upgrade(db_url)
    db = database.connect(db_url)
    with TestClient(create_app(settings, db)) as client:
        yield client, settings, db


def signed(body: bytes) -> dict[str, str]:
    stamp = str(int(time.time()))
    signature = KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }


def post_events(client: TestClient, events: list[dict[str, Any]]) -> Any:
    body = json.dumps(events).encode()
    return client.post("/webhooks/sendgrid", content=body, headers=signed(body))


def lead(db: sa.Engine, email: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM lead WHERE email = :e"), {"e": email}).first()
    assert row is not None
    return row._asdict()


def sg(event: str, email: str = "ada@example.com", **extra: Any) -> dict[str, Any]:
    return {"event": event, "email": email, "timestamp": int(T0.timestamp()),
            "sg_event_id": f"{event}-{email}-{len(extra)}", **extra}  # fmt: skip


def test_signed_opens_and_clicks_score_through_the_rules(service: Any) -> None:
    client, _settings, db = service
    response = post_events(client, [sg("open"), sg("click", url="https://acme.io/pricing")])
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 2
    assert lead(db, "ada@example.com")["score"] == 10
    # SendGrid retries deliveries: the same events again score nothing.
    again = post_events(client, [sg("open"), sg("click", url="https://acme.io/pricing")])
    assert again.json()["duplicates"] == 2
    assert lead(db, "ada@example.com")["score"] == 10


def test_a_forged_or_unsigned_webhook_is_refused_and_changes_nothing(service: Any) -> None:
    client, _settings, db = service
    body = json.dumps([sg("open")]).encode()
    headers = signed(body)
    tampered = body.replace(b"ada@", b"eve@")
    assert client.post("/webhooks/sendgrid", content=tampered, headers=headers).status_code == 403
    unsigned = client.post("/webhooks/sendgrid", content=body)
    assert unsigned.status_code == 403
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 0


def test_bounce_spam_and_unsubscribe_events(service: Any) -> None:
    client, _settings, db = service
    response = post_events(
        client,
        [
            sg("spamreport", "spam@example.com"),
            sg("group_unsubscribe", "gone@example.com", asm_group_id=1),
            sg("bounce", "bad@example.com", reason="550 no such user"),
            sg("delivered", "ok@example.com"),
        ],
    )
    assert response.json()["accepted"] == 3
    assert lead(db, "spam@example.com")["subscribed"] in (False, 0)
    assert lead(db, "gone@example.com")["subscribed"] in (False, 0)
    with db.connect() as conn:
        types = conn.execute(sa.text("SELECT type FROM event ORDER BY type")).scalars().all()
    assert types == ["bounce", "spam_report", "unsubscribe"]


def test_a_malformed_body_is_a_clear_400(service: Any) -> None:
    client, _settings, _db = service
    body = b'{"event": "open"}'
    response = client.post("/webhooks/sendgrid", content=body, headers=signed(body))
    assert response.status_code == 400
    assert "JSON array" in response.json()["detail"]


def test_processed_settles_a_message_a_crash_left_sending(service: Any) -> None:
    client, _settings, db = service
    seed_outbox(db, 1)
    with db.begin() as conn:
        conn.execute(sa.text("UPDATE outbox_message SET status = 'sending'"))
        outbox_id = conn.execute(sa.text("SELECT id FROM outbox_message")).scalar()
    response = post_events(
        client, [sg("processed", "l0@example.com", outbox_id=str(outbox_id), sg_message_id="m1")]
    )
    assert response.json()["settled"] == 1
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT status, provider_id FROM outbox_message")).first()
    assert tuple(row) == ("sent", "m1")


def test_the_unsubscribe_link_opts_the_lead_out_and_forgeries_fail(service: Any) -> None:
    client, settings, db = service
    post_events(client, [sg("open", "zoe@example.com")])
    zoe = lead(db, "zoe@example.com")
    url = unsubscribe_url("", settings.signing_key(), zoe["id"], zoe["email"])
    altered = url[:-3] + ("AAA" if not url.endswith("AAA") else "BBB")
    assert client.get(altered).status_code == 400
    other = unsubscribe_url("", "another-secret", zoe["id"], zoe["email"])
    assert client.get(other).status_code == 400
    wrong_lead = unsubscribe_url("", settings.signing_key(), zoe["id"], "someone@else.com")
    assert client.get(wrong_lead).status_code == 400
    assert lead(db, "zoe@example.com")["subscribed"] in (True, 1)
    response = client.post(url, data={"List-Unsubscribe": "One-Click"})
    assert response.status_code == 200 and "unsubscribed" in response.text
    assert lead(db, "zoe@example.com")["subscribed"] in (False, 0)
    assert client.get(url).status_code == 200  # following the link again is harmless
