"""Imports never page sales for the past: profile records and `nurture ingest --backfill` score
leads hot without alerting anyone (their alerts are stored as `past`, which the alerts job
ignores), events older than NURTURE_ALERT_MAX_AGE are suppressed as stale; the same leads made
hot by events now are alerted. `nurture ingest` says how many alerts a run queued."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.schedule.jobs import Jobs
from engine.timeutil import utcnow
from tests.campaign_support import settings_for
from tests.helpers import nurture

pytestmark = pytest.mark.home(rulesets=["import-test"])
LEADS = 150


def statuses(db_url: str) -> dict[str, int]:
    with database.connect(db_url).connect() as conn:
        rows = conn.execute(
            sa.text("SELECT status, count(*) FROM lead_action WHERE kind = 'alert' GROUP BY status")
        ).all()
    return {status: count for status, count in rows}


def ingest(path: Path, *flags: str) -> dict[str, object]:
    result = nurture("ingest", str(path), "--json", *flags)
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_profiles_and_backfills_page_nobody_events_now_do(cli_home: Path, db_url: str) -> None:
    jobs = Jobs(database.connect(db_url), settings_for(cli_home, db_url, sales_email="s@acme.io"))
    now = utcnow().isoformat()

    # A CRM export of hot leads: every lead is hot, nobody is paged.
    profiles = cli_home / "crm.csv"
    profiles.write_text(
        "Email,Job Title\n" + "".join(f"p{n}@acme.io,VP Sales\n" for n in range(LEADS))
    )
    assert ingest(profiles) == {"accepted": LEADS, "duplicates": 0, "rejected": [], "alerts": 0}
    hot = json.loads(nurture("leads", "--temperature", "hot", "--json", "--limit", "1000").stdout)
    assert len(hot) == LEADS
    assert jobs.alerts(utcnow()).created == 0
    assert statuses(db_url) == {"past": LEADS}

    # The same history as a backfill of events (happening now or not): nobody is paged.
    backfill = cli_home / "backfill.jsonl"
    backfill.write_text(
        "".join(
            json.dumps({"email": f"b{n}@acme.io", "type": "demo_request", "occurred_at": now})
            + "\n"
            for n in range(LEADS)
        )
    )
    assert ingest(backfill, "--backfill")["alerts"] == 0
    assert jobs.alerts(utcnow()).created == 0
    assert statuses(db_url) == {"past": 2 * LEADS}

    # Last month's events, without --backfill: stale at dispatch, and not counted as alerts.
    stale = cli_home / "stale.jsonl"
    month_ago = (utcnow() - timedelta(days=30)).isoformat()
    stale.write_text(backfill.read_text().replace('"b', '"s').replace(now, month_ago))
    assert ingest(stale)["alerts"] == 0
    report = jobs.alerts(utcnow())
    assert (report.created, report.suppressed) == (0, LEADS)
    assert statuses(db_url) == {"past": 2 * LEADS, "suppressed": LEADS}

    # Leads made hot by events now: each pages sales once, and ingest says so.
    news = cli_home / "news.jsonl"
    news.write_text(backfill.read_text().replace('"b', '"e'))
    assert ingest(news)["alerts"] == LEADS
    assert jobs.alerts(utcnow()).created == LEADS
    assert statuses(db_url) == {"past": 2 * LEADS, "suppressed": LEADS, "applied": LEADS}
    text = nurture("ingest", str(news))
    assert text.stdout.strip() == f"accepted 0, duplicates {LEADS}, rejected 0, alerts 0"
