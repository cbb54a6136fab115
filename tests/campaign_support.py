"""Campaigns end to end in the tests (test_campaigns, test_outbox, test_metrics, test_webhooks):
leads scored by tests/rulesets/camp-test.yaml with the campaigns of a home, due steps rendered,
and an outbox seeded set-based."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.campaigns.compile import CompiledCampaigns
from engine.home import load_campaigns
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.render.templates import Renderer
from engine.schedule.steps import StepRunner
from engine.settings import Settings
from tests.helpers import compiled, ruleset_text

CAMPAIGNS = ("warm-nurture", "hot-followup", "vip-track")
# A home with the camp-test ruleset, its three campaigns and their templates.
CAMPAIGN_HOME = pytest.mark.home(rulesets=["camp-test"], campaigns=CAMPAIGNS, templates=True)
RULESET = ruleset_text("camp-test")
T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday


def settings_for(home: Path, db_url: str, **extra: Any) -> Settings:
    return Settings(
        home=home,
        database_url=db_url,
        outbox_dir=home / "outbox",
        secret_key="test-secret-0123456789abcdef0123456789",
        public_url="https://nurture.example",
        **extra,
    )


def campaigns_in(home: Path) -> CompiledCampaigns:
    ruleset = compiled(RULESET).ruleset
    return CompiledCampaigns(ruleset, load_campaigns(home / "campaigns", ruleset))


def score(db: sa.Engine, home: Path, *items: tuple[str, str, datetime], **lead: Any) -> None:
    lines = [
        json.dumps(
            {"email": email, "type": kind, "occurred_at": at.isoformat(), "lead": lead}
            | {"id": f"{email}:{kind}:{at.isoformat()}"}
        )
        for email, kind, at in items
    ]
    ingest(db, compiled(RULESET), parse_jsonl(lines), campaigns=campaigns_in(home))


def warm(db: sa.Engine, home: Path, email: str, at: datetime = T0, **lead: Any) -> None:
    """Two page views: a score of 40, warm."""
    score(
        db, home, (email, "page_view", at - timedelta(minutes=1)), (email, "page_view", at), **lead
    )


def run_steps(db: sa.Engine, home: Path, now: datetime, settings: Settings) -> Any:
    return StepRunner(db, settings, campaigns_in(home), Renderer(home / "templates")).run(now)


def seed_outbox(db: sa.Engine, count: int, at: datetime = T0) -> None:
    """``count`` queued messages to as many leads, written set-based."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, attributes, score, temperature, stage, "
                "stage_entered_at, tags, subscribed, version, created_at, updated_at) "
                "VALUES (:email, '{}', 0, 'cold', 'lead', :now, '[]', :yes, 0, :now, :now)"
            ),
            [{"email": f"l{i}@example.com", "now": at, "yes": True} for i in range(count)],
        )
        ids: dict[str, int] = dict(conn.execute(sa.text("SELECT email, id FROM lead")).all())
        conn.execute(
            sa.text(
                "INSERT INTO outbox_message (idempotency_key, kind, lead_id, campaign, step, "
                "template, to_email, from_email, subject, html, text, headers, status, attempts, "
                "next_attempt_at, created_at) VALUES (:key, 'campaign', :lead, 'c', 0, 't', "
                ":to, 'hello@acme.io', 'Hi', '<p>Hi</p>', 'Hi', '{}', 'queued', 0, :now, :now)"
            ),
            [
                {
                    "key": f"k{i}",
                    "lead": ids[f"l{i}@example.com"],
                    "to": f"l{i}@example.com",
                    "now": at,
                }
                for i in range(count)
            ],
        )


def outbox(db: sa.Engine) -> list[dict[str, Any]]:
    with db.connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM outbox_message ORDER BY id"))
        return [r._asdict() for r in rows]


def lead(db: sa.Engine, email: str) -> dict[str, Any]:
    with db.connect() as conn:
        row = conn.execute(sa.text("SELECT * FROM lead WHERE email = :e"), {"e": email}).first()
    assert row is not None
    return row._asdict()
