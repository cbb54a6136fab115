"""Crashes and races: a SIGKILLed ingest resumes to the state of a clean run, and two ingests of
the same leads at once lose no update."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.sample import sample_records, write_jsonl
from engine.store import db as database
from engine.store.scoring import EVENTS, LEADS, LEDGER, SCORES, STAGES
from tests.conftest import ROOT

NURTURE = str(Path(sys.executable).with_name("nurture"))


def run_ingest(url: str, path: Path, batch: int = 500) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NURTURE_DATABASE_URL": url,
        "NURTURE_HOME": str(ROOT),
        "NURTURE_BATCH_SIZE": str(batch),
    }
    return subprocess.Popen(
        [NURTURE, "ingest", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def events_stored(url: str) -> int:
    engine = database.connect(url)
    try:
        with database.reading(engine) as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() or 0)
    except sa.exc.OperationalError:
        return 0  # the schema is not there yet


def state(url: str) -> dict[str, Any]:
    engine = database.connect(url)
    with database.reading(engine) as conn:
        email = LEADS.c.email
        return {
            "leads": conn.execute(
                sa.select(
                    email,
                    LEADS.c.score,
                    LEADS.c.stage,
                    LEADS.c.temperature,
                    LEADS.c.subscribed,
                    LEADS.c.attributes,
                    LEADS.c.tags,
                ).order_by(email)
            ).all(),
            "scores": conn.execute(
                sa.select(email, SCORES.c.component, SCORES.c.value, SCORES.c.rose_at)
                .join(LEADS, LEADS.c.id == SCORES.c.lead_id)
                .order_by(email, SCORES.c.component)
            ).all(),
            "ledger": sorted(
                conn.execute(
                    sa.select(
                        email,
                        LEDGER.c.rule,
                        LEDGER.c.delta,
                        LEDGER.c.score_after,
                        LEDGER.c.event_id,
                        LEDGER.c.at,
                    ).join(LEADS, LEADS.c.id == LEDGER.c.lead_id)
                ).all()
            ),
            "stages": sorted(
                conn.execute(
                    sa.select(
                        email, STAGES.c.from_stage, STAGES.c.to_stage, STAGES.c.rule, STAGES.c.at
                    ).join(LEADS, LEADS.c.id == STAGES.c.lead_id)
                ).all(),
                key=str,
            ),
            "events": conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar(),
        }


@pytest.mark.slow
def test_sigkill_mid_ingest_then_rerun_equals_one_clean_run(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    records = write_jsonl(sample_records(leads=1500, events_per_lead=10, seed=3), data)
    killed, clean = (f"sqlite:///{tmp_path / name}.db" for name in ("killed", "clean"))

    process = run_ingest(killed, data)
    deadline = time.monotonic() + 120
    while events_stored(killed) < 2000 and process.poll() is None:
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.05)
    assert process.poll() is None, "ingest finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    partial = events_stored(killed)
    assert 0 < partial < records

    resumed = run_ingest(killed, data)
    assert resumed.wait(timeout=300) == 0, resumed.stderr.read() if resumed.stderr else ""
    out = resumed.stdout.read().decode() if resumed.stdout else ""
    assert f"duplicates {partial}" in out
    assert run_ingest(clean, data).wait(timeout=300) == 0
    assert state(killed) == state(clean)


@pytest.mark.postgres
@pytest.mark.slow
def test_two_ingests_of_the_same_leads_at_once_lose_no_update(pg_url: str, tmp_path: Path) -> None:
    database.upgrade(pg_url)
    emails = [f"lead{i}@acme.io" for i in range(400)]
    files = []
    for part in range(2):
        path = tmp_path / f"part{part}.jsonl"
        lines = [
            json.dumps(
                {
                    "id": f"p{part}-{n}",
                    "email": emails[n % len(emails)],
                    "type": "email_click",
                    "occurred_at": f"2026-01-{1 + n % 28:02d}T{part:02d}:00:00Z",
                }
            )
            for n in range(4000)
        ]
        path.write_text("\n".join(lines) + "\n")
        files.append(path)
    processes = [run_ingest(pg_url, path, batch=200) for path in files]
    for process in processes:
        assert process.wait(timeout=300) == 0, process.stderr.read() if process.stderr else ""
    engine = database.connect(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() == 8000
        ledger = dict(
            conn.execute(
                sa.select(LEDGER.c.lead_id, sa.func.sum(LEDGER.c.delta)).group_by(LEDGER.c.lead_id)
            ).all()
        )
        components = dict(
            conn.execute(
                sa.select(SCORES.c.lead_id, sa.func.sum(SCORES.c.value)).group_by(SCORES.c.lead_id)
            ).all()
        )
        leads = dict(conn.execute(sa.select(LEADS.c.id, LEADS.c.score)).all())
    assert len(leads) == 400
    # Every click scored (+3 each, 20 per lead), none lost to a race between the writers.
    assert set(leads.values()) == {60}
    assert (
        leads
        == {k: int(v) for k, v in ledger.items()}
        == {k: int(v) for k, v in components.items()}
    )
