"""Prometheus counters are incremented where the work is done (ingest, step runner,
dispatcher), once per committed outcome: what an operator's dashboard would show."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from prometheus_client import REGISTRY

from engine.send.dispatch import Dispatcher
from engine.send.file import FileMailer
from tests.campaign_support import CAMPAIGN_HOME, T0, run_steps, score, settings_for, warm

pytestmark = CAMPAIGN_HOME
OUTCOMES = ("queued", "held", "sent", "retried", "failed", "suppressed")


def emails() -> dict[str, float]:
    return {
        outcome: REGISTRY.get_sample_value("nurture_emails_total", {"outcome": outcome}) or 0.0
        for outcome in OUTCOMES
    }


def test_emails_are_counted_by_outcome(db: sa.Engine, db_url: str, home: Path) -> None:
    settings = settings_for(home, db_url)
    before = emails()
    warm(db, home, "gus@example.com")
    warm(db, home, "hal@example.com")
    run_steps(db, home, T0, settings)
    score(db, home, ("hal@example.com", "unsubscribe", T0))
    Dispatcher(db, settings, FileMailer(home / "outbox")).run(T0)
    Dispatcher(db, settings, FileMailer(home / "outbox")).run(T0)  # nothing left: no counts
    after = emails()
    changed = {k: after[k] - before[k] for k in OUTCOMES if after[k] != before[k]}
    assert changed == {"queued": 2, "sent": 1, "suppressed": 1}
