"""Held and failed messages are visible and can be put right: ``nurture outbox`` and
``/api/outbox`` list them with their errors, release a held one once its template is fixed
(rendered again now) and retry a failed one; the lead page shows a held message's error; and
``/metrics`` gauges the backlog, held and failed messages and how long the oldest has waited."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from engine.cli import app
from engine.send.dispatch import Dispatcher
from engine.send.file import FileMailer
from engine.send.sendgrid import SendGridMailer
from engine.settings import Settings, get_settings
from engine.timeutil import parse_instant, utcnow
from tests.campaign_support import CAMPAIGNS, T0, outbox, run_steps, warm
from tests.fake_sendgrid import FakeSendGrid
from tests.helpers import email_template

pytestmark = pytest.mark.home(campaigns=CAMPAIGNS, templates=True)  # service adds the ruleset

runner = CliRunner()
BROKEN = email_template("Hi {{ lead.frist_name }}", "<p>Hello</p>")
FIXED = email_template("Hi {{ lead.first_name or 'you' }}", "<p>Hello</p>")


def held_message(db: sa.Engine, home: Path, settings: Settings, email: str) -> int:
    (home / "templates/warm/a.j2").write_text(BROKEN)
    warm(db, home, email, first_name="Bo")
    run_steps(db, home, T0, settings)
    [row] = [r for r in outbox(db) if r["to_email"] == email]
    assert row["status"] == "held"
    return int(row["id"])


def failed_message(db: sa.Engine, home: Path, settings: Settings, email: str) -> int:
    warm(db, home, email)
    run_steps(db, home, T0, settings)
    with FakeSendGrid() as fake:
        fake.fail_next(400)
        Dispatcher(db, settings, SendGridMailer("SG.test", fake.url, timeout=5)).run(T0)
    [row] = [r for r in outbox(db) if r["to_email"] == email]
    assert row["status"] == "failed"
    return int(row["id"])


@pytest.fixture
def cli(service: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    _client, settings, _db = service
    for name in ("home", "database_url", "secret_key", "public_url", "outbox_dir"):
        monkeypatch.setenv(f"NURTURE_{name.upper()}", str(getattr(settings, name)))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


def nurture(*args: str) -> Any:
    return runner.invoke(app, ["outbox", *args], env={"COLUMNS": "200"})


def test_the_cli_lists_held_and_failed_messages_with_their_errors(
    service: Any, home: Path, cli: Settings
) -> None:
    _client, settings, db = service
    held = held_message(db, home, settings, "bo@example.com")
    (home / "templates/warm/a.j2").write_text(FIXED)
    failed = failed_message(db, home, settings, "cy@example.com")
    listed = nurture("--json")
    assert listed.exit_code == 0, listed.output
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert rows[held]["status"] == "held" and "frist_name" in rows[held]["last_error"]
    assert rows[held]["subject"] is None and rows[held]["template"] == "warm/a"
    assert rows[failed]["status"] == "failed" and "400" in rows[failed]["last_error"]
    only_held = json.loads(nurture("--status", "held", "--json").stdout)
    assert [row["id"] for row in only_held] == [held]
    table = nurture("--status", "held")
    assert "frist_name" in table.stdout and "bo@example.com" in table.stdout
    assert nurture("--status", "sent").exit_code != 0


def test_release_renders_a_held_message_again_and_queues_it(
    service: Any, home: Path, cli: Settings
) -> None:
    _client, settings, db = service
    held = held_message(db, home, settings, "bo@example.com")
    (home / "templates/warm/a.j2").write_text(email_template("Hi {{ lead.nope }}", "<p>x</p>"))
    still = nurture("--release", str(held))
    assert still.exit_code == 1 and "nope" in still.output
    [row] = outbox(db)
    assert row["status"] == "held" and "nope" in row["last_error"]  # the new error
    (home / "templates/warm/a.j2").write_text(FIXED)
    done = nurture("--release", str(held), "--json")
    assert done.exit_code == 0, done.output
    [row] = outbox(db)
    assert (row["status"], row["subject"], row["last_error"]) == ("queued", "Hi Bo", None)
    assert "/unsubscribe?token=" in row["html"]
    due = parse_instant(json.loads(done.stdout)["next_attempt_at"])  # in the send window
    assert due >= utcnow() - timedelta(minutes=1) and 9 <= due.hour < 17 and due.weekday() < 5
    assert Dispatcher(db, settings, FileMailer(settings.outbox_dir)).run(due).sent == 1
    again = nurture("--release", str(held))
    assert again.exit_code == 1 and "not held" in again.output
    assert nurture("--release", "999999").exit_code == 1


def test_retry_puts_a_failed_message_back_in_the_queue(
    service: Any, home: Path, cli: Settings
) -> None:
    _client, settings, db = service
    failed = failed_message(db, home, settings, "cy@example.com")
    done = nurture("--retry", str(failed))
    assert done.exit_code == 0, done.output
    [row] = outbox(db)
    assert (row["status"], row["attempts"]) == ("queued", 0)
    assert Dispatcher(db, settings, FileMailer(settings.outbox_dir)).run(utcnow()).sent == 1
    assert nurture("--retry", str(failed)).exit_code == 1  # sent: nothing to retry


def test_the_api_lists_releases_and_retries_with_the_token(service: Any, home: Path) -> None:
    client, settings, db = service
    held = held_message(db, home, settings, "bo@example.com")
    (home / "templates/warm/a.j2").write_text(FIXED)
    failed = failed_message(db, home, settings, "cy@example.com")
    bearer = {"Authorization": f"Bearer {settings.access_token()}"}
    assert client.get("/api/outbox").status_code == 401
    assert client.post(f"/api/outbox/{held}/release").status_code == 401
    listed = client.get("/api/outbox", params={"status": "held"}, headers=bearer)
    assert listed.status_code == 200
    [row] = listed.json()
    assert row["id"] == held and "frist_name" in row["last_error"]
    assert client.get("/api/outbox", params={"status": "nope"}, headers=bearer).status_code == 422
    released = client.post(f"/api/outbox/{held}/release", headers=bearer)
    assert released.status_code == 200 and released.json()["status"] == "queued"
    assert client.post(f"/api/outbox/{held}/release", headers=bearer).status_code == 409
    retried = client.post(f"/api/outbox/{failed}/retry", headers=bearer)
    assert retried.status_code == 200 and retried.json()["status"] == "queued"
    assert client.post(f"/api/outbox/{failed}/retry", headers=bearer).status_code == 409
    assert client.post("/api/outbox/999999/retry", headers=bearer).status_code == 404
    queued = client.get("/api/outbox", params={"status": "queued"}, headers=bearer).json()
    assert {row["id"] for row in queued} == {held, failed}


def test_the_lead_page_shows_why_a_message_is_held(service: Any, home: Path) -> None:
    client, settings, db = service
    held_message(db, home, settings, "bo@example.com")
    bearer = {"Authorization": f"Bearer {settings.access_token()}"}
    page = client.get("/leads/bo@example.com", headers=bearer)
    assert page.status_code == 200
    emails = page.text.split('id="emails"', 1)[1]
    assert "frist_name" in emails and ">None<" not in emails and "None<br>" not in emails


def gauge(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_metrics_gauge_the_backlog_held_failed_and_the_oldest_wait(
    service: Any, home: Path
) -> None:
    client, settings, db = service
    held_message(db, home, settings, "bo@example.com")
    (home / "templates/warm/a.j2").write_text(FIXED)
    failed_message(db, home, settings, "cy@example.com")
    warm(db, home, "di@example.com")
    warm(db, home, "ed@example.com")
    run_steps(db, home, T0, settings)
    due = utcnow() - timedelta(hours=1)
    with db.begin() as conn:
        conn.execute(
            sa.text("UPDATE outbox_message SET next_attempt_at = :due WHERE status = 'queued'"),
            {"due": due},
        )
    text = client.get("/metrics").text
    assert gauge(text, 'nurture_outbox_messages{status="queued"}') == 2
    assert gauge(text, 'nurture_outbox_messages{status="held"}') == 1
    assert gauge(text, 'nurture_outbox_messages{status="failed"}') == 1
    assert 3600 <= gauge(text, "nurture_outbox_oldest_queued_seconds") < 3700
