"""Hot-lead alerts end to end on real databases: an event that makes a lead hot → one Slack-style
POST to a real HTTP receiver on 127.0.0.1 and one email through the file backend, naming the
lead and the rules behind its score; duplicates, flapping and cooldowns page nobody twice;
owners from the rules or the roster; failed deliveries retried, with their state visible."""

from __future__ import annotations

import json
import re
import threading
import time
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine.alerts.job import AlertRunner
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.schedule.jobs import Jobs
from engine.settings import Settings, get_settings
from engine.timeutil import utcnow
from tests.helpers import compiled, nurture, ruleset_text, side_by_side
from tests.mail_support import Receiver

RULESET = ruleset_text("alert-test")
pytestmark = pytest.mark.home(rulesets=["alert-test"])
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def settings_for(home: Path, db_url: str, receiver: Receiver | None, **extra: Any) -> Settings:
    return Settings(
        home=home,
        database_url=db_url,
        outbox_dir=home / "outbox",
        public_url="https://nurture.example",
        sales_webhook_url=receiver.url if receiver else None,
        **{"sales_email": "sales@acme.io", **extra},
    )


def events(db: sa.Engine, *items: tuple[str, str, datetime], **profile: Any) -> Any:
    """Score events (each with an id of its content); ``profile`` first, as a profile record."""
    records = [{"email": items[0][0], **profile}] if profile else []
    records += [
        {"id": f"{email}:{kind}:{at.isoformat()}", "email": email, "type": kind}
        | {"occurred_at": at.isoformat()}
        for email, kind, at in items
    ]
    return ingest(db, compiled(RULESET), parse_jsonl(json.dumps(r) for r in records))


def hot(db: sa.Engine, email: str, at: datetime = T0, **profile: Any) -> Any:
    """Two events that take a lead from 0 to 75: hot."""
    return events(
        db, (email, "page_view", at - timedelta(minutes=1)), (email, "demo_request", at), **profile
    )


def cli_alerts(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> list[dict[str, Any]]:
    monkeypatch.setenv("NURTURE_HOME", str(settings.home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    result = nurture("alerts", "--json")
    assert result.exit_code == 0, result.output
    rows: list[dict[str, Any]] = json.loads(result.stdout)
    return rows


def sent_metric() -> float:
    return REGISTRY.get_sample_value("nurture_alerts_sent_total", {"channel": "webhook"}) or 0.0


def emails(home: Path) -> list[Any]:
    parse = BytesParser(policy=policy.default).parsebytes
    return [parse(path.read_bytes()) for path in sorted((home / "outbox").glob("*.eml"))]


def test_a_lead_turning_hot_pages_sales_once_with_the_reasons(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver
) -> None:
    jobs = Jobs(db, settings_for(home, db_url, receiver))
    sent_before = sent_metric()
    hot(db, "ana@globex.io", first_name="Ana", company="Globex")
    report = jobs.alerts(T0 + timedelta(seconds=1))
    assert (report.created, report.suppressed) == (1, 0)
    assert sent_metric() == sent_before + 1
    [post] = receiver.posts
    text = json.dumps(post)
    assert "ana@globex.io" in post["text"] and "Globex" in post["text"]
    assert "demo-request +50" in post["text"] and "pricing-page +25" in post["text"]
    assert post["blocks"][0]["type"] == "header"
    assert "https://nurture.example/leads/ana@globex.io" in text
    assert "demo_request" in text  # the latest events
    # The email went to the sales address through the file backend, naming lead and reasons.
    [message] = emails(home)
    assert message["To"] == "sales@acme.io"
    assert "ana@globex.io" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert "demo-request +50" in body and "pricing-page +25" in body
    assert "https://nurture.example/leads/ana@globex.io" in body

    # The same events again are duplicates: nothing new to alert about.
    again = hot(db, "ana@globex.io", first_name="Ana", company="Globex")
    assert (again.accepted, again.duplicates) == (0, 3)  # the profile too
    assert jobs.alerts(T0 + timedelta(seconds=2)).created == 0
    assert len(receiver.posts) == 1 and len(emails(home)) == 1


def test_flapping_within_the_cooldown_pages_once_and_again_after_it(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(home, db_url, receiver)
    jobs = Jobs(db, settings)
    email = "bo@initech.io"
    hot(db, email)  # 75: alert
    jobs.alerts(T0 + timedelta(minutes=1))
    # A day later it cools (35) and heats up again (85): within the 7-day cooldown.
    day = T0 + timedelta(days=1)
    events(db, (email, "careers", day), (email, "demo_request", day + timedelta(minutes=1)))
    assert jobs.alerts(day + timedelta(minutes=2)).suppressed == 1
    assert len(receiver.posts) == 1
    # Eight days on it cools again (45) and turns hot (70): cooldown over, re-armed: page.
    later = T0 + timedelta(days=8)
    events(db, (email, "careers", later), (email, "page_view", later + timedelta(minutes=1)))
    assert jobs.alerts(later + timedelta(minutes=2)).created == 1
    assert len(receiver.posts) == 2
    # Another week later, still hot all along (95): not a new transition.
    still = T0 + timedelta(days=16)
    events(db, (email, "page_view", still))
    assert jobs.alerts(still + timedelta(minutes=1)).suppressed == 1
    assert len(receiver.posts) == 2

    rows = cli_alerts(monkeypatch, settings)
    assert [row["status"] for row in rows] == ["suppressed", "sent", "suppressed", "sent"]
    assert rows[0]["suppressed"].startswith("not re-armed")
    assert rows[2]["suppressed"].startswith("cooldown")
    assert rows[1]["webhook"]["status"] == "sent" and rows[1]["email"]["to"] == "sales@acme.io"


def test_the_owner_set_by_a_rule_gets_the_email(db: sa.Engine, db_url: str, home: Path) -> None:
    jobs = Jobs(db, settings_for(home, db_url, None, sales_roster="ana@acme.io,bo@acme.io"))
    events(db, ("cy@umbrella.io", "assign", T0 - timedelta(minutes=5)))
    hot(db, "cy@umbrella.io")
    jobs.alerts(T0 + timedelta(minutes=1))
    assert [m["To"] for m in emails(home)] == ["rep@acme.io"]


def test_leads_without_an_owner_go_round_the_roster_and_keep_their_rep(
    db: sa.Engine, db_url: str, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(home, db_url, None, sales_roster="ana@acme.io, bo@acme.io")
    jobs = Jobs(db, settings)
    for i, email in enumerate(["l1@a.io", "l2@b.io", "l3@c.io"]):
        hot(db, email, T0 + timedelta(minutes=i))
        jobs.alerts(T0 + timedelta(minutes=i, seconds=30))
    assert [m["To"] for m in emails(home)] == ["ana@acme.io", "bo@acme.io", "ana@acme.io"]
    with db.connect() as conn:
        stored: dict[str, Any] = dict(
            conn.execute(sa.text("SELECT email, attributes FROM lead")).all()
        )
    owners = {e: (a if isinstance(a, dict) else json.loads(a))["owner"] for e, a in stored.items()}
    assert owners == {"l1@a.io": "ana@acme.io", "l2@b.io": "bo@acme.io", "l3@c.io": "ana@acme.io"}
    # l2 cools and turns hot again after the cooldown: the same rep hears about it.
    later = T0 + timedelta(days=9)
    events(db, ("l2@b.io", "careers", later), ("l2@b.io", "demo_request", later))
    jobs.alerts(later + timedelta(minutes=1))
    assert [m["To"] for m in emails(home)][-1] == "bo@acme.io"
    assert [row["owner_source"] for row in cli_alerts(monkeypatch, settings)] == [
        "owner", "roster", "roster", "roster"
    ]  # fmt: skip


def test_a_failing_webhook_is_retried_and_its_state_is_visible(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(home, db_url, receiver)
    jobs = Jobs(db, settings)
    receiver.answers = [500]
    hot(db, "dee@hooli.io")
    first = jobs.alerts(T0 + timedelta(seconds=1))
    assert first.delivery is not None and first.delivery.retried == 1
    assert receiver.posts == []
    [row] = cli_alerts(monkeypatch, settings)
    assert row["status"] == "sending" and row["email"]["status"] == "sent"
    webhook = row["webhook"]
    assert (webhook["status"], webhook["tries"]) == ("queued", 1)
    assert webhook["error"] == "webhook 500: no_service"
    assert receiver.url not in json.dumps(row)  # the URL is a credential
    # Not before its backoff; then delivered.
    assert jobs.alerts(T0 + timedelta(seconds=30)).delivery is None
    jobs.alerts(T0 + timedelta(seconds=62))
    assert len(receiver.posts) == 1 and "dee@hooli.io" in receiver.posts[0]["text"]
    [row] = cli_alerts(monkeypatch, settings)
    assert (row["status"], row["webhook"]["tries"], row["webhook"]["error"]) == ("sent", 2, None)


def test_a_rejected_webhook_fails_for_good_with_the_reason(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings_for(home, db_url, receiver)
    receiver.answers = [404]
    hot(db, "eve@acme.io")
    report = Jobs(db, settings).alerts(T0 + timedelta(seconds=1))
    assert report.delivery is not None and report.delivery.failed == 1
    [row] = cli_alerts(monkeypatch, settings)
    assert row["status"] == "failed"
    assert (row["webhook"]["status"], row["webhook"]["error"]) == (
        "failed",
        "webhook 404: no_service",
    )
    assert Jobs(db, settings).alerts(T0 + timedelta(hours=1)).delivery is None


def test_a_backfill_of_old_events_pages_nobody(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver
) -> None:
    jobs = Jobs(db, settings_for(home, db_url, receiver))
    hot(db, "old@acme.io", T0 - timedelta(days=30))
    report = jobs.alerts(T0)
    assert (report.created, report.suppressed) == (0, 1) and receiver.posts == []


def test_ingest_in_this_process_wakes_the_alerts_job(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver
) -> None:
    """The runner polls every 30 s here, so only the wake-up after ingest's commit can deliver
    the alert within seconds."""
    jobs = Jobs(db, settings_for(home, db_url, receiver))
    jobs.alerts(utcnow())  # warm up: the first run loads the ruleset
    runner = AlertRunner(lambda: jobs.alerts(utcnow()), interval=30)
    runner.start()
    try:
        time.sleep(0.2)  # the runner's first run is done; it now waits
        started = time.monotonic()
        hot(db, "fay@acme.io", utcnow())
        assert receiver.received.wait(10), "no alert within 10 s"
        assert time.monotonic() - started < 10
    finally:
        runner.stop()
    assert len(receiver.posts) == 1 and "fay@acme.io" in receiver.posts[0]["text"]


def test_nurture_tick_delivers_alerts_and_the_lead_shows_them(
    db: sa.Engine, cli_home: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    hot(db, "gus@acme.io")
    monkeypatch.setenv("NURTURE_OUTBOX_DIR", str(cli_home / "outbox"))
    monkeypatch.setenv("NURTURE_SALES_WEBHOOK_URL", receiver.url)
    get_settings.cache_clear()
    tick = nurture("tick", "--now", "2026-11-02T10:01:00Z", "--json")
    lead = nurture("lead", "gus@acme.io", "--json")
    text = nurture("lead", "gus@acme.io")
    assert tick.exit_code == 0, tick.output
    alerts = json.loads(tick.stdout)["alerts"]
    assert (alerts["created"], alerts["sent"]) == (1, 1)
    assert len(receiver.posts) == 1
    [alert] = json.loads(lead.stdout)["alerts"]
    assert (alert["rule"], alert["status"], alert["webhook"]["status"]) == (
        "hot-lead",
        "sent",
        "sent",
    )
    assert alert["email"] is None  # no owner, roster or sales address: the webhook only
    assert "hot-lead" in text.stdout and "sent (1 tries)" in text.stdout


def test_several_processes_page_each_lead_once_and_share_the_roster_evenly(
    db: sa.Engine, db_url: str, home: Path, receiver: Receiver
) -> None:
    """Four schedulers' alerts jobs at once (threads, each its own connections): each alert is
    decided once and the round-robin hands out each turn once."""
    settings = settings_for(home, db_url, receiver, sales_roster="ana@acme.io,bo@acme.io")
    leads = [f"lead{i}@corp{i}.io" for i in range(12)]
    for i, email in enumerate(leads):
        hot(db, email, T0 + timedelta(seconds=i))
    now = T0 + timedelta(minutes=1)
    barrier = threading.Barrier(4)

    def run() -> None:
        jobs = Jobs(db, settings)
        barrier.wait()
        jobs.alerts(now)

    assert side_by_side(run, 4) == []
    paged = [re.search(r"lead\d+@corp\d+\.io", p["text"]) for p in receiver.posts]
    assert sorted(found.group(0) for found in paged if found) == sorted(leads)
    recipients = [m["To"] for m in emails(home)]
    assert sorted(recipients) == ["ana@acme.io"] * 6 + ["bo@acme.io"] * 6
    with db.connect() as conn:
        turns = conn.execute(sa.text("SELECT roster_turn FROM alert ORDER BY roster_turn")).all()
    assert [t for (t,) in turns] == list(range(12))
