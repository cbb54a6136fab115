"""Feedback over HTTP: SendGrid's signed event webhook and the signed unsubscribe link, through
the FastAPI app, scoring through the rules and the same database as everything else."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from tests.campaign_support import CAMPAIGNS, T0, lead, seed_outbox, settings_for
from tests.mail_support import RULES_WITH_EMAIL, signed

# The campaigns and templates of a campaign home, scored by camp-test plus two email rules.
pytestmark = pytest.mark.home(campaigns=CAMPAIGNS, templates=True)


def post_events(client: TestClient, events: list[dict[str, Any]]) -> Any:
    body = json.dumps(events).encode()
    return client.post("/webhooks/sendgrid", content=body, headers=signed(body))


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


@pytest.mark.parametrize(
    "stamp",
    ["-63072000", "-660", "+3600", "not-a-number", "1.7e9", ""],
    ids=["two-years-old", "eleven-minutes-old", "an-hour-ahead", "text", "float", "empty"],
)
def test_a_signed_body_with_a_stale_or_odd_timestamp_is_refused(service: Any, stamp: str) -> None:
    client, _settings, db = service
    if stamp.startswith(("+", "-")):  # an age relative to now: a replayed or post-dated call
        stamp = str(int(time.time()) + int(stamp))
    body = json.dumps([sg("open")]).encode()
    response = client.post("/webhooks/sendgrid", content=body, headers=signed(body, stamp))
    assert response.status_code == 403
    assert "timestamp" in response.json()["detail"]
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 0


def test_without_a_public_key_the_webhook_is_closed_unless_explicitly_opened(
    home: Path, db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    (home / "rulesets").mkdir(exist_ok=True)
    (home / "rulesets/test.yaml").write_text(RULES_WITH_EMAIL)
    database.upgrade(db_url)
    db = database.connect(db_url)
    body = json.dumps([sg("spamreport", "victim@example.com")]).encode()
    with TestClient(create_app(settings_for(home, db_url), db)) as client:
        refused = client.post("/webhooks/sendgrid", content=body, headers=signed(body))
    assert refused.status_code == 403
    assert "NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY" in refused.json()["detail"]
    with db.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM lead")).scalar() == 0
    opened = settings_for(home, db_url, sendgrid_webhook_insecure=True)
    with caplog.at_level(logging.WARNING), TestClient(create_app(opened, db)) as client:
        assert client.post("/webhooks/sendgrid", content=body).json()["accepted"] == 1
        assert client.post("/webhooks/sendgrid", content=body).json()["duplicates"] == 1
    warned = [r.getMessage() for r in caplog.records if "INSECURE" in r.getMessage()]
    assert len(warned) == 1 and "anyone" in warned[0]


def test_hostile_events_are_rejected_one_by_one_never_a_500(service: Any) -> None:
    client, _settings, db = service
    seed_outbox(db, 1)
    odd = [
        {**sg("open", "t1@example.com"), "timestamp": 1e300},
        {**sg("open", "t2@example.com"), "timestamp": -1e18},
        {**sg("open", "t3@example.com"), "timestamp": True},
        sg("processed", "l0@example.com", outbox_id="9" * 30),
        sg("processed", "l0@example.com", outbox_id=1e308),
        sg("processed", "l0@example.com", outbox_id=-1),
        {"event": ["processed"], "outbox_id": 1},
        sg("open", "ok@example.com"),
    ]
    body = json.dumps(odd).encode()
    response = client.post("/webhooks/sendgrid", content=body, headers=signed(body))
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["accepted"] == 1 and answer["settled"] == 0
    assert [r["index"] for r in answer["rejected"]] == [0, 1, 2]
    assert all(r["error"].startswith("timestamp:") for r in answer["rejected"])
    nan = (
        json.dumps([sg("open", "n@example.com")]).replace(str(int(T0.timestamp())), "NaN").encode()
    )
    rejected = client.post("/webhooks/sendgrid", content=nan, headers=signed(nan)).json()
    assert rejected["rejected"][0]["error"].startswith("timestamp:")
    deep = ("[" * 100_000 + "]" * 100_000).encode()
    too_deep = client.post("/webhooks/sendgrid", content=deep, headers=signed(deep))
    assert too_deep.status_code == 400


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
