"""`nurture rules apply` as a separate process, on SQLite and PostgreSQL: killed with SIGKILL
midway and run again, it leaves what an uninterrupted apply leaves; with ingest scoring new
events in this process meanwhile, nothing is lost or counted twice (the result equals a fresh
database that scored every event under the new version)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.active import active
from engine.db.schema import LEADS
from engine.demo.sample import DEFAULT_END, sample_records
from engine.home import compile_text
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.schedule.decay import decay
from engine.settings import Settings
from engine.timeutil import isoformat, utcnow
from tests.helpers import ROOT
from tests.store_support import another_database, lead_state

LEADS_N = 250
EDIT = ("then: {score: {engagement: 25}}", "then: {score: {engagement: 40}}")
LATER = DEFAULT_END + timedelta(hours=2)  # after every sample event: what apply or now made


def make_home(folder: Path) -> Path:
    (folder / "rulesets").mkdir(parents=True)
    shutil.copy(ROOT / "rulesets" / "b2b-saas.yaml", folder / "rulesets")
    for name in ("campaigns", "templates"):
        shutil.copytree(ROOT / name, folder / name)
    return folder


def lines(records: list[dict[str, Any]]) -> list[str]:
    return [json.dumps(r) for r in records]


def sample() -> list[str]:
    return lines(list(sample_records(leads=LEADS_N, seed=5)))


def score_in_force(url: str, home: Path, records: list[str]) -> None:
    """Ingest as the API or `nurture ingest` does: with the version in force (and campaigns)."""
    db = database.connect(url)
    found = active(db, Settings(home=home, database_url=url))
    result = ingest(db, found.compiled, parse_jsonl(iter(records)), 500, campaigns=found.campaigns)
    assert not result.rejected
    db.dispose()


def start_apply(url: str, home: Path, batch: int = 25) -> subprocess.Popen[bytes]:
    """`nurture rules apply` in its own process, ``batch`` leads a transaction; its stderr (with
    any error) goes to ``home``/apply.err."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NURTURE_HOME": str(home),
        "NURTURE_DATABASE_URL": url,
        "NURTURE_BATCH_SIZE": str(batch),
    }
    command = [sys.executable, "-m", "engine.cli", "rules", "apply"]
    with (home / "apply.err").open("ab") as errors:
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=errors)


def under(url: str, version: str) -> int:
    db = database.connect(url)
    # A snapshot read: on SQLite a plain connection begins IMMEDIATE and would queue for the
    # write lock behind the apply it is watching (until the apply is done).
    with database.reading(db) as conn:
        query = sa.select(sa.func.count()).where(LEADS.c.ruleset_version == version)
        found = int(conn.execute(query).scalar() or 0)
    db.dispose()
    return found


def comparable(url: str, version: str) -> dict[str, Any]:
    """What scoring decided under ``version``; times a rescore or the clock made (after the
    sample's events) blanked, stages and intents left out (stages only move forward)."""
    db = database.connect(url)
    state = lead_state(db)
    db.dispose()

    def blank(row: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(None if isinstance(v, datetime) and v > LATER else v for v in row)

    return {
        "leads": [(e, s, t, sub, a, tags) for e, s, t, _, _, sub, a, tags in state["leads"]],
        "scores": [blank(row) for row in state["scores"]],
        "ledger": sorted((blank(r) for r in state["ledger"] if r[6] == version), key=repr),
        "firings": state["firings"],
        "events": state["events"],
    }


@pytest.mark.slow
def test_sigkill_midway_then_apply_again_equals_an_uninterrupted_apply(
    db_url: str, tmp_path: Path
) -> None:
    home = make_home(tmp_path / "home")
    database.upgrade(db_url)
    records = sample()
    score_in_force(db_url, home, records)
    ruleset = home / "rulesets" / "b2b-saas.yaml"
    ruleset.write_text(ruleset.read_text().replace(*EDIT))
    v2 = compile_text(ruleset.read_text(), str(ruleset), home).ruleset.version
    with another_database(db_url, tmp_path) as other:
        other_home = make_home(tmp_path / "other")
        (other_home / "rulesets" / "b2b-saas.yaml").write_text(
            ruleset.read_text().replace(EDIT[1], EDIT[0])
        )
        score_in_force(other, other_home, records)
        shutil.copy(ruleset, other_home / "rulesets" / "b2b-saas.yaml")
        uninterrupted = start_apply(other, other_home)

        # One lead a transaction: on a quiet machine a larger batch can finish between two looks.
        killed = start_apply(db_url, home, batch=1)
        deadline = time.monotonic() + 120
        try:
            while under(db_url, v2) < 10 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            killed.send_signal(signal.SIGKILL)
            killed.wait()
        done = under(db_url, v2)
        assert 0 < done < LEADS_N  # killed midway
        again = start_apply(db_url, home)
        assert again.wait(300) == 0, (home / "apply.err").read_text()
        assert uninterrupted.wait(300) == 0
        assert under(db_url, v2) == LEADS_N
        assert comparable(db_url, v2) == comparable(other, v2)


@pytest.mark.slow
def test_ingest_during_apply_loses_nothing_and_counts_nothing_twice(
    db_url: str, tmp_path: Path
) -> None:
    home = make_home(tmp_path / "home")
    database.upgrade(db_url)
    records = sample()
    score_in_force(db_url, home, records)
    ruleset = home / "rulesets" / "b2b-saas.yaml"
    v2_text = ruleset.read_text().replace(*EDIT)
    ruleset.write_text(v2_text)
    v2 = compile_text(v2_text, str(ruleset), home).ruleset.version
    emails = sorted({json.loads(line)["email"] for line in records})
    extra: list[str] = []
    applying = start_apply(db_url, home)
    chunk = 0
    while applying.poll() is None or chunk < 3:
        # Pricing views of existing leads and of new ones, happening now, a chunk at a time.
        now = isoformat(utcnow())
        batch = [
            {"id": f"extra-{chunk}-{i}", "email": email, "type": "page_view",
             "occurred_at": now, "properties": {"url": "/pricing"}}
            for i, email in enumerate([*emails[chunk * 7 % LEADS_N :: 37], f"new{chunk}@acme.io"])
        ]  # fmt: skip
        extra += lines(batch)
        score_in_force(db_url, home, lines(batch))
        chunk += 1
        time.sleep(0.2)
    assert applying.returncode == 0, (home / "apply.err").read_text()
    assert chunk >= 3 and under(db_url, v2) == LEADS_N + chunk
    with another_database(db_url, tmp_path) as other:
        fresh = database.connect(other)
        compiled = compile_text(v2_text, str(ruleset), home)
        ingest(fresh, compiled, parse_jsonl(iter(records)), 500)
        ingest(fresh, compiled, parse_jsonl(iter(extra)), 500)
        decay(fresh, compiled.ruleset, utcnow())  # as apply decayed every lead up to its now
        fresh.dispose()
        assert comparable(db_url, v2) == comparable(other, v2)
