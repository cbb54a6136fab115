"""A seeded database for the dashboard tests: the example ruleset scoring sample leads, a lead
whose name is markup, and campaign emails with opens, clicks and an unsubscribe fed back the way
SendGrid's webhook reports them (``outbox_id`` / ``category`` in the event's properties)."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from engine import db as database
from engine.active import ruleset_in_force
from engine.db.schema import LEADS, OUTBOX
from engine.demo.sample import DEFAULT_END, sample_records
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.settings import Settings
from tests.helpers import ROOT

TOKEN = "dashboard-token-0123456789abcdef01234"
CAMPAIGN = "spring-launch"
MARKUP_EMAIL = "mallory@evil.example"
MARKUP_NAME = "<script>alert(1)</script>"
# Recipients of the campaign and what each did: two opened, one clicked, one unsubscribed.
MAILED = {
    "m1@camp.example": ["email_open", "email_click"],
    "m2@camp.example": ["email_open"],
    "m3@camp.example": ["unsubscribe"],
    "m4@camp.example": [],
}


def seed(home: Path, db_url: str, leads: int = 300) -> Settings:
    """Sample leads scored by rulesets/b2b-saas.yaml in ``home``, plus the campaign above."""
    (home / "rulesets").mkdir(parents=True)
    shutil.copy(ROOT / "rulesets" / "b2b-saas.yaml", home / "rulesets")
    settings = Settings(home=home, database_url=db_url, api_token=TOKEN)
    database.upgrade(db_url)
    db = database.connect(db_url)
    compiled = ruleset_in_force(db, settings).compiled
    records: list[dict[str, Any]] = list(sample_records(leads=leads, seed=7))
    records.append({"email": MARKUP_EMAIL, "first_name": MARKUP_NAME, "company": "<b>Evil</b>"})
    records += [{"email": email, "first_name": "Mailed"} for email in MAILED]
    _ingest(db, compiled, records)
    sent_at = DEFAULT_END + timedelta(days=1)
    with db.begin() as conn:
        ids = dict(
            conn.execute(
                sa.select(LEADS.c.email, LEADS.c.id).where(LEADS.c.email.in_(list(MAILED)))
            ).all()
        )
        outbox_ids = {}
        for email in MAILED:
            outbox_ids[email] = conn.execute(
                OUTBOX.insert()
                .values(
                    idempotency_key=f"test:{email}",
                    kind="campaign",
                    lead_id=ids[email],
                    campaign=CAMPAIGN,
                    step=0,
                    template="spring/launch",
                    to_email=email,
                    from_email="hello@acme.io",
                    subject="Spring is here",
                    html="<p>hi</p>",
                    text="hi",
                    headers={},
                    status="sent",
                    attempts=1,
                    next_attempt_at=sent_at,
                    created_at=sent_at,
                    sent_at=sent_at,
                )
                .returning(OUTBOX.c.id)
            ).scalar_one()
    feedback: list[dict[str, Any]] = []
    for email, kinds in MAILED.items():
        for n, kind in enumerate(kinds):
            # SendGrid echoes custom args (outbox_id) as text; without one the category tells
            # the campaign, as a list or a plain name.
            link: dict[str, Any] = {"outbox_id": str(outbox_ids[email])}
            if kind == "email_click":
                link = {"category": [CAMPAIGN]}
            elif email == "m2@camp.example":
                link = {"category": CAMPAIGN}
            feedback.append(
                {
                    "id": f"fb-{email}-{n}",
                    "email": email,
                    "type": kind,
                    "occurred_at": (sent_at + timedelta(hours=n + 1)).isoformat(),
                    "properties": link,
                }
            )
    _ingest(db, compiled, feedback)
    return settings


def _ingest(db: sa.Engine, compiled: Any, records: list[dict[str, Any]]) -> None:
    result = ingest(db, compiled, parse_jsonl(json.dumps(r) for r in records))
    assert not result.rejected, result.rejected


def stage_counts(db: sa.Engine) -> dict[str, int]:
    """Leads per stage, counted independently of the dashboard's queries."""
    with db.connect() as conn:
        return dict(conn.execute(sa.text("SELECT stage, COUNT(*) FROM lead GROUP BY stage")).all())
