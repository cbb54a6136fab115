"""The scheduled half of the flow on real databases: due steps → rendered outbox rows →
dispatch through a real backend (file, fake SendGrid over HTTP), exactly once, inside send
windows and caps, never to the unsubscribed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from email import policy
from email.parser import BytesParser
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.send.dispatch import Dispatcher, settle_processed
from engine.send.file import FileMailer
from engine.send.sendgrid import SendGridMailer
from engine.send.smtp import SmtpMailer
from tests.campaign_support import (
    CAMPAIGN_HOME,
    T0,
    outbox,
    run_steps,
    score,
    seed_outbox,
    settings_for,
    warm,
)
from tests.fake_sendgrid import FakeSendGrid
from tests.helpers import ROOT, email_template
from tests.mail_support import SMTP_CONNECTION_KEPT, Inbox

pytestmark = CAMPAIGN_HOME


def test_a_due_step_is_rendered_into_the_outbox_once(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "ada@example.com", first_name="Ada")
    first = run_steps(db, home, T0, settings)
    again = run_steps(db, home, T0, settings)
    rows = outbox(db)
    assert (first.queued, again.queued) == (1, 0)
    [row] = rows
    assert row["status"] == "queued" and row["template"] == "warm/a"
    assert row["subject"] == "warm/a for Ada"
    headers = row["headers"] if isinstance(row["headers"], dict) else json.loads(row["headers"])
    assert headers["List-Unsubscribe"].startswith("<https://nurture.example/unsubscribe?token=")
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert "https://nurture.example/unsubscribe?token=" in row["html"]
    # The next step is due two days later, not before.
    assert run_steps(db, home, T0 + timedelta(days=1), settings).queued == 0
    assert run_steps(db, home, T0 + timedelta(days=2), settings).queued == 1


def test_a_template_error_holds_the_email_with_the_reason(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    (home / "templates/warm/a.j2").write_text(
        email_template("Hi {{ lead.frist_name }}", "<p>Hello</p>")
    )
    settings = settings_for(home, db_url)
    warm(db, home, "bo@example.com")
    report = run_steps(db, home, T0, settings)
    [row] = outbox(db)
    assert report.held == 1 and row["status"] == "held"
    assert "warm/a.j2" in row["last_error"] and "frist_name" in row["last_error"]
    assert row["subject"] is None and row["html"] is None
    sent = Dispatcher(db, settings, FileMailer(home / "outbox")).run(T0)
    assert sent.sent == 0 and not (home / "outbox").exists()


@pytest.mark.parametrize(
    "body",
    [
        # recursion only this lead's data sets off
        "{% macro down(n) %}{% if lead.company == 'Loop' %}{{ down(n + 1) }}{% endif %}"
        "{% endmacro %}<p>{{ down(0) }}</p>",
        # a value css-inline cannot parse fails its whole call
        '<style>p { margin: 0 }</style><p style="color: {{ lead.company }}">Hi</p>',
    ],
    ids=["recursion", "css"],
)
def test_one_bad_email_is_held_and_the_rest_of_the_batch_goes(
    db: sa.Engine, db_url: str, home: Path, body: str
) -> None:
    (home / "templates/warm/a.j2").write_text(email_template("Hi", body))
    settings = settings_for(home, db_url)
    warm(db, home, "bad@example.com", company="Loop" if "down" in body else "red; {")
    warm(db, home, "good@example.com", company="blue")
    report = run_steps(db, home, T0, settings)
    assert (report.queued, report.held) == (1, 1)
    status = {r["to_email"]: (r["status"], r["last_error"]) for r in outbox(db)}
    assert status["good@example.com"] == ("queued", None)
    held, error = status["bad@example.com"]
    assert held == "held" and "warm/a.j2" in error


def test_send_window_defers_to_the_leads_morning(db: sa.Engine, db_url: str, home: Path) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "cy@example.com", timezone="America/New_York")
    report = run_steps(db, home, T0, settings)  # 05:00 in New York
    assert (report.queued, report.deferred) == (0, 1)
    assert run_steps(db, home, datetime(2026, 11, 2, 13, 59, tzinfo=UTC), settings).queued == 0
    assert run_steps(db, home, datetime(2026, 11, 2, 14, 0, tzinfo=UTC), settings).queued == 1


def test_frequency_cap_counts_every_campaign(db: sa.Engine, db_url: str, home: Path) -> None:
    settings = settings_for(home, db_url)
    email = "di@example.com"
    warm(db, home, email)
    assert run_steps(db, home, T0, settings).queued == 1  # warm/a
    score(db, home, (email, "vip", T0))  # enrolls in vip-track, due an hour later
    assert run_steps(db, home, T0 + timedelta(hours=1), settings).queued == 1  # vip: hot/a
    # warm/b is due two days later but two emails went out this week: cap of 2 per 7 days.
    report = run_steps(db, home, T0 + timedelta(days=2), settings)
    assert (report.queued, report.deferred) == (0, 1)
    assert run_steps(db, home, T0 + timedelta(days=7, hours=1), settings).queued == 1


def test_a_step_whose_when_fails_is_skipped(db: sa.Engine, db_url: str, home: Path) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "ed@example.com")  # score 40: warm/c wants 55
    for day in (0, 2, 3, 4):
        run_steps(db, home, T0 + timedelta(days=day), settings)
    assert [r["template"] for r in outbox(db)] == ["warm/a", "warm/b"]
    with db.connect() as conn:
        status = conn.execute(sa.text("SELECT status FROM enrollment")).scalar()
    assert status == "completed"


def test_turning_hot_before_a_step_is_due_sends_nothing_more(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url)
    email = "fay@example.com"
    warm(db, home, email)
    run_steps(db, home, T0, settings)
    score(db, home, (email, "demo_request", T0 + timedelta(days=1)))
    run_steps(db, home, T0 + timedelta(days=3), settings)
    assert [r["template"] for r in outbox(db)] == ["warm/a", "hot/a"]


def test_dispatch_sends_each_message_once_to_the_file_outbox(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "gus@example.com", first_name="Gus")
    run_steps(db, home, T0, settings)
    mailer = FileMailer(home / "outbox")
    first = Dispatcher(db, settings, mailer).run(T0)
    again = Dispatcher(db, settings, mailer).run(T0 + timedelta(hours=1))
    assert (first.sent, again.sent) == (1, 0)
    [row] = outbox(db)
    assert row["status"] == "sent" and row["attempts"] == 1
    [eml] = (home / "outbox").glob("*.eml")
    message = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
    assert message["To"] == "gus@example.com" and message["Subject"] == "warm/a for Gus"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_every_try_of_a_message_has_the_same_message_id_in_our_domain(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "gus@example.com")
    run_steps(db, home, T0, settings)
    mailer = FileMailer(home / "outbox")
    ids = []
    for at in (T0, T0 + timedelta(minutes=5)):
        assert Dispatcher(db, settings, mailer).run(at).sent == 1
        [eml] = (home / "outbox").glob("*.eml")
        message = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
        ids.append(message["Message-ID"])
        assert parsedate_to_datetime(message["Date"]) == at
        with db.begin() as conn:  # as if the provider's answer had been lost: sent again
            conn.execute(sa.text("UPDATE outbox_message SET status = 'queued'"))
    assert ids[0] == ids[1] and ids[0].endswith("@nurture.example>")


def test_a_nul_in_a_template_holds_that_email_only(db: sa.Engine, db_url: str, home: Path) -> None:
    # PostgreSQL stores no NUL in text: one such email used to fail the batch's transaction.
    (home / "templates/warm/a.j2").write_text(
        email_template("Hi{% if lead.company == 'Nul' %}\x00{% endif %}", "<p>Hello</p>")
    )
    settings = settings_for(home, db_url)
    warm(db, home, "bad@example.com", company="Nul")
    warm(db, home, "good@example.com", company="Acme")
    assert (run_steps(db, home, T0, settings).queued, len(outbox(db))) == (1, 2)
    status = {r["to_email"]: (r["status"], r["last_error"]) for r in outbox(db)}
    assert status["bad@example.com"][0] == "held" and "NUL" in status["bad@example.com"][1]


@SMTP_CONNECTION_KEPT
def test_a_provider_answer_with_a_nul_fails_that_message_only(
    db: sa.Engine, db_url: str, home: Path, smtp_server: tuple[Inbox, str]
) -> None:
    inbox, url = smtp_server
    inbox.refuse = {"gone@example.com": "550 no\x00such user"}
    settings = settings_for(home, db_url)
    warm(db, home, "gone@example.com")
    warm(db, home, "here@example.com")
    run_steps(db, home, T0, settings)
    report = Dispatcher(db, settings, SmtpMailer(url, timeout=5)).run(T0)
    assert (report.sent, report.failed) == (1, 1)
    status = {r["to_email"]: (r["status"], r["last_error"]) for r in outbox(db)}
    failed, error = status["gone@example.com"]
    assert failed == "failed" and "550" in error and "\x00" not in error
    assert status["here@example.com"][0] == "sent"


def test_unsubscribing_between_render_and_dispatch_sends_nothing(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url)
    warm(db, home, "hal@example.com")
    warm(db, home, "ivy@example.com")
    warm(db, home, "jo@example.com")
    assert run_steps(db, home, T0, settings).queued == 3
    score(db, home, ("hal@example.com", "unsubscribe", T0))
    score(db, home, ("ivy@example.com", "bounce", T0))
    report = Dispatcher(db, settings, FileMailer(home / "outbox")).run(T0)
    assert (report.sent, report.suppressed) == (1, 2)
    status = {r["to_email"]: (r["status"], r["last_error"]) for r in outbox(db)}
    assert status["hal@example.com"] == ("suppressed", "unsubscribed")
    assert status["ivy@example.com"] == ("suppressed", "bounce")
    assert len(list((home / "outbox").glob("*.eml"))) == 1


def test_provider_errors_retry_with_backoff_then_fail_for_good(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    settings = settings_for(home, db_url, max_attempts=3)
    warm(db, home, "kim@example.com")
    run_steps(db, home, T0, settings)
    with FakeSendGrid() as fake:
        mailer = SendGridMailer("SG.test", fake.url, timeout=5)
        fake.fail_next(429, headers={"Retry-After": "120"})
        fake.fail_next(500)
        fake.fail_next(503)
        first = Dispatcher(db, settings, mailer).run(T0)
        assert first.retried == 1
        [row] = outbox(db)
        assert row["status"] == "queued" and "429" in row["last_error"]
        due = datetime.fromisoformat(str(row["next_attempt_at"]))
        assert due.replace(tzinfo=UTC) == T0 + timedelta(seconds=120)
        assert Dispatcher(db, settings, mailer).run(T0 + timedelta(seconds=119)).retried == 0
        assert Dispatcher(db, settings, mailer).run(T0 + timedelta(seconds=120)).retried == 1
        last = Dispatcher(db, settings, mailer).run(T0 + timedelta(hours=1))
        assert last.failed == 1
        [row] = outbox(db)
        assert (row["status"], row["attempts"]) == ("failed", 3)
        assert "503" in row["last_error"]
        assert fake.messages == []


def outbox_ids_sent(fake: FakeSendGrid) -> Counter[str]:
    return Counter(str(m["custom_args"]["outbox_id"]) for m in fake.messages)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_dispatchers_on_one_postgresql_send_each_message_once(pg_url: str, home: Path) -> None:
    database.upgrade(pg_url)
    seed_outbox(database.connect(pg_url), 2000)
    with FakeSendGrid() as fake:
        settings = settings_for(home, pg_url, dispatch_batch=25)
        reports = []

        def dispatcher() -> None:
            engine = sa.create_engine(database.normalise_url(pg_url))
            mailer = SendGridMailer("SG.test", fake.url, timeout=5)
            reports.append(Dispatcher(engine, settings, mailer).run(T0))
            engine.dispose()

        threads = [threading.Thread(target=dispatcher) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        sent = outbox_ids_sent(fake)
    assert fake.calls == 2000 and len(sent) == 2000
    assert max(sent.values()) == 1
    assert all(r.sent > 0 for r in reports)  # both took part
    assert {r["status"] for r in outbox(database.connect(pg_url))} == {"sent"}


DISPATCH_SCRIPT = """
import sys
from datetime import datetime
from engine.send.dispatch import Dispatcher
from engine.send.sendgrid import SendGridMailer
from engine.send.smtp import SmtpMailer
from engine.settings import Settings
from engine import db
settings = Settings(database_url=sys.argv[1], dispatch_batch=int(sys.argv[3]), lease_seconds=60)
Dispatcher(db.connect(sys.argv[1]), settings, SendGridMailer("SG.k", sys.argv[2], 5)).run(
    datetime.fromisoformat(sys.argv[4])
)
"""


@pytest.mark.slow
def test_a_dispatcher_killed_mid_batch_loses_nothing(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    seed_outbox(db, 300)
    batch = 20
    with FakeSendGrid() as fake:
        fake.delay = 0.01
        command = [sys.executable, "-c", DISPATCH_SCRIPT, db_url, fake.url, str(batch)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen([*command, T0.isoformat()], env=env)
        deadline = time.monotonic() + 60
        while fake.calls < 100 and time.monotonic() < deadline:
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        process.wait()
        before = fake.calls
        assert 100 <= before < 300, "the dispatcher should die mid-run"
        fake.delay = 0
        # After the lease ends a new dispatcher takes over what the dead one held.
        later = (T0 + timedelta(minutes=2)).isoformat()
        subprocess.run([*command, later], env=env, check=True, timeout=120)
        sent = outbox_ids_sent(fake)
    assert len(sent) == 300, "every message reached the provider"
    duplicates = sum(n - 1 for n in sent.values())
    assert duplicates <= batch
    assert {r["status"] for r in outbox(db)} == {"sent"}


def test_processed_events_settle_what_a_crash_left_uncertain(
    db: sa.Engine, db_url: str, home: Path
) -> None:
    seed_outbox(db, 3)
    settings = settings_for(home, db_url, lease_seconds=60)
    with FakeSendGrid() as fake:
        mailer = SendGridMailer("SG.test", fake.url, timeout=5)
        claimed = Dispatcher(db, settings, mailer).claim(T0, 3)  # then the process "dies"
        ids = [row.id for row in claimed]
        assert settle_processed(db, ids[:2], {ids[0]: "sg-1"}) == 2
        report = Dispatcher(db, settings, mailer).run(T0 + timedelta(minutes=5))
    assert report.sent == 1  # only the one no processed event vouched for
    assert [r["status"] for r in outbox(db)] == ["sent", "sent", "sent"]
