"""Due steps run by several runners at once (NURTURE_STEP_PROCESSES, or two workers on one
database) give what one runner gives: on generated leads, enrollments and recent emails, each
step is queued once, and the outbox and enrollments equal those of a single runner."""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.active import ruleset_in_force
from engine.render.templates import Renderer
from engine.schedule.jobs import Jobs, step_runner
from engine.schedule.shares import StepProcesses
from engine.send.file import FileMailer
from engine.send.unsubscribe import read_token
from engine.settings import Settings
from tests.campaign_support import CAMPAIGN_HOME, CAMPAIGNS, T0, settings_for
from tests.helpers import PG_URL, side_by_side

pytestmark = CAMPAIGN_HOME

ZONES = ["Europe/Lisbon", "America/New_York", "Asia/Tokyo", "Not/AZone", None]
STAGES = ["subscriber", "lead", "mql", "sql", "customer"]


def seed(db: sa.Engine, count: int, seed: int = 15) -> None:
    """``count`` leads of every kind, in 1–3 campaigns at any step, due now or later, some with
    emails sent in the last days (frequency caps) or unsubscribed."""
    draw = random.Random(seed)
    leads, enrollments, sent = [], [], []
    for i in range(count):
        score = draw.randrange(100)
        zone = draw.choice(ZONES)
        attributes = {
            "first_name": draw.choice(["Ana", "Zoë", "a & b", None]),
            "company": f"Co {i}",
        }
        leads.append({"email": f"lead{i}@example.com", "score": score,
                      "attributes": json.dumps(attributes | ({"timezone": zone} if zone else {})),
                      "temperature": "hot" if score >= 70 else "warm" if score >= 40 else "cold",
                      "stage": draw.choice(STAGES), "subscribed": draw.random() < 0.9})  # fmt: skip
        for campaign in draw.sample(CAMPAIGNS, draw.randint(1, 3)):
            due = T0 - timedelta(minutes=draw.randrange(600)) if draw.random() < 0.85 else None
            enrollments.append({"lead": i + 1, "campaign": campaign, "step": draw.randrange(3),
                                "due": due or T0 + timedelta(hours=1)})  # fmt: skip
        for n in range(draw.choice([0, 0, 1, 2, 3])):
            at = T0 - timedelta(hours=draw.randrange(1, 24 * 9))
            sent.append({"key": f"old:{i}:{n}", "lead": i + 1, "at": at,
                         "status": draw.choice(["sent", "queued", "failed"])})  # fmt: skip
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, attributes, score, temperature, stage, stage_entered_at, "
                "tags, subscribed, version, created_at, updated_at) VALUES (:email, :attributes, "
                ":score, :temperature, :stage, :now, '[]', :subscribed, 0, :now, :now)"
            ),
            [lead | {"now": T0 - timedelta(days=30)} for lead in leads],
        )
        conn.execute(
            sa.text(
                "INSERT INTO lead_score (lead_id, component, value, peak, decay_steps) "
                "SELECT id, 'engagement', score, score, 0 FROM lead"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO enrollment (lead_id, campaign, step, status, enrolled_at, "
                "next_due_at) "
                "VALUES (:lead, :campaign, :step, 'active', :due, :due)"
            ),
            enrollments,
        )
        conn.execute(
            sa.text(
                "INSERT INTO outbox_message (idempotency_key, kind, lead_id, campaign, step, "
                "template, to_email, from_email, subject, html, text, headers, status, attempts, "
                "next_attempt_at, created_at) VALUES (:key, 'campaign', :lead, 'warm-nurture', 0, "
                "'warm/a', 'x@example.com', 'hello@acme.io', 'Hi', '<p>Hi</p>', 'Hi', '{}', "
                ":status, 1, :at, :at)"
            ),
            sent,
        )


def state(db: sa.Engine, settings: Settings) -> dict[str, Any]:
    """Outbox (by idempotency key; unsubscribe tokens, sealed with a random nonce, as the lead
    they name) and enrollments (by id)."""
    key = settings.signing_key()

    def plain(text: Any) -> Any:
        if not isinstance(text, str):
            return text
        return re.sub(r"token=([\w=-]+)", lambda m: f"lead={read_token(key, m[1]).lead_id}", text)

    with db.connect() as conn:
        outbox = {
            row.idempotency_key: {k: plain(v) for k, v in row._asdict().items() if k != "id"}
            for row in conn.execute(sa.text("SELECT * FROM outbox_message"))
        }
        enrollments = [
            r._asdict() for r in conn.execute(sa.text("SELECT * FROM enrollment ORDER BY id"))
        ]
    for message in outbox.values():
        message["headers"] = plain(json.dumps(message["headers"], sort_keys=True))
    return {"outbox": outbox, "enrollments": enrollments}


@pytest.fixture
def twin_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second, empty database of the same kind as ``db_url``."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'twin.db'}"
        return
    with database.scratch_schema(PG_URL, "t") as url:
        yield url


def prepared(url: str, home: Path, **extra: Any) -> tuple[sa.Engine, Settings]:
    database.upgrade(url)
    db = database.connect(url)
    seed(db, 160)
    settings = settings_for(home, url, **extra)
    ruleset_in_force(db, settings)  # adopted once, before any runner (as `nurture worker` does)
    return db, settings


def single(url: str, home: Path) -> dict[str, Any]:
    db, settings = prepared(url, home)
    report = Jobs(db, settings, FileMailer(home / "outbox")).steps(T0)
    assert report.queued > 30 and report.deferred and report.exited and report.skipped
    return state(db, settings)


def test_step_processes_queue_what_one_runner_queues(
    db_url: str, twin_url: str, home: Path
) -> None:
    expected = single(db_url, home)
    db, settings = prepared(twin_url, home, step_processes=2)
    jobs = Jobs(db, settings, FileMailer(home / "outbox"))
    try:
        first = jobs.steps(T0)
        assert jobs.steps(T0).queued == 0  # a second run finds nothing left to queue
    finally:
        assert jobs.step_processes is not None
        jobs.step_processes.close()
    assert first.queued == sum(key.startswith("enrollment:") for key in expected["outbox"])
    assert state(db, settings) == expected


def test_two_runners_racing_over_the_whole_due_set_queue_each_step_once(
    db_url: str, twin_url: str, home: Path
) -> None:
    """Two workers without shares, small batches so they meet: every step queued once and
    nothing due left. On SQLite (batches version-checked under the write lock, redone on a
    conflict) the same rows as one runner; on PostgreSQL two runners can take one lead's
    enrollments of two campaigns at once, so a frequency cap may see only one of them (the
    shares of NURTURE_STEP_PROCESSES keep a lead's enrollments in one runner)."""
    expected = single(db_url, home)
    db, settings = prepared(twin_url, home)

    def runner() -> None:
        step_runner(db, settings, Renderer(settings.templates_dir))[0].run(T0, batch=7)

    assert side_by_side(runner, 2) == []
    with db.connect() as conn:
        due = "SELECT count(*) FROM enrollment WHERE status = 'active' AND next_due_at <= :now"
        assert conn.execute(sa.text(due), {"now": T0}).scalar() == 0
        steps = conn.execute(
            sa.text(
                "SELECT enrollment_id, step FROM outbox_message WHERE enrollment_id IS NOT NULL"
            )
        ).all()
    assert len(steps) == len(set(steps))
    if db_url.startswith("sqlite"):
        assert state(db, settings) == expected


@pytest.mark.postgres
def test_emails_compressed_with_lz4_read_back_as_with_the_default(
    pg_url: str, tmp_path: Path, home: Path
) -> None:
    """On PostgreSQL the step runner stores email parts with lz4 (where the server has it):
    what is read back equals what the server's default compression stores."""
    # Emails long enough to be compressed (a row over ~2 kB).
    layout = home / "templates" / "layout.j2"
    words = " ".join(f"word{i}" for i in range(600))
    layout.write_text(layout.read_text() + f"<p>{words} {{{{ lead.company }}}}</p>")
    states = []
    with database.scratch_schema(PG_URL, "t") as twin:
        for url, lz4 in ((pg_url, False), (twin, None)):
            db, settings = prepared(url, home)
            runner = step_runner(db, settings, Renderer(settings.templates_dir))[0]
            runner.lz4 = lz4  # False: the server's default; None: asked, as in production
            assert runner.run(T0).queued > 30
            with db.connect() as conn:
                methods = (
                    "SELECT DISTINCT pg_column_compression(html) FROM outbox_message "
                    "WHERE enrollment_id IS NOT NULL"
                )
                states.append((conn.execute(sa.text(methods)).scalars().all(), state(db, settings)))
    (plain, expected), (compressed, got) = states
    assert None not in plain and compressed == ["lz4"]
    assert got == expected


def test_a_step_process_that_dies_fails_one_run_and_the_next_starts_new_ones(
    sqlite_url: str, home: Path
) -> None:
    _db, settings = prepared(sqlite_url, home, step_processes=2)
    processes = StepProcesses(settings, 2)
    try:
        assert processes.run(T0 - timedelta(days=30))[0].queued == 0
        died = processes.pool.submit(os._exit, 1)  # as a process killed from outside
        assert isinstance(died.exception(), BrokenProcessPool)
        with pytest.raises(BrokenProcessPool):
            processes.run(T0)
        assert processes.run(T0)[0].queued > 30
    finally:
        processes.close()
