"""SQLite's writers of scored records take one lock file between processes
(:func:`engine.db.writer_lock`), and ``nurture serve --workers N`` serves SQLite with it.

A second process (or a forked child of the holder) that takes the lock while it is held waits
until it is released; an ingest batch on a thread waits for a lock another process holds, then
commits. Several HTTP processes on one SQLite database score concurrent requests for the same
leads one after another: no count lost, no event stored twice, the ledger adding up to the
scores."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from engine import db as database
from engine.db.connect import WRITER_LOCK_SUFFIX, writer_lock
from engine.db.schema import EVENTS, LEADS, LEDGER
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from tests.helpers import api_home, compiled, ruleset_text, serving_workers
from tests.mail_support import free_port

HOLD = 0.6  # seconds the other process holds the lock


def _hold(path: str, held: str, seconds: float) -> None:
    """Take the lock, say so (a file), hold it ``seconds``."""
    with writer_lock(path):
        Path(held).touch()
        time.sleep(seconds)


def _hold_in_child(path: str, held: str) -> subprocess.Popen[bytes]:
    """Another Python process holding the lock of ``path``, once ``held`` exists."""
    code = f"from tests.test_sqlite_writer_lock import _hold; _hold({path!r}, {held!r}, {HOLD})"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).parent.parent)
    deadline = time.monotonic() + 30
    while not Path(held).exists():
        assert child.poll() is None and time.monotonic() < deadline, "the holder did not start"
        time.sleep(0.01)
    return child


def test_a_process_waits_for_the_lock_another_holds(tmp_path: Path) -> None:
    path = str(tmp_path / "nurture.db")
    child = _hold_in_child(path, str(tmp_path / "held"))
    started = time.monotonic()
    with writer_lock(path):
        waited = time.monotonic() - started
    child.wait(timeout=30)
    assert waited > HOLD / 2, waited
    assert Path(path + WRITER_LOCK_SUFFIX).exists()


def _take_and_report(path: str, took: multiprocessing.queues.Queue[float]) -> None:
    started = time.monotonic()
    with writer_lock(path):
        took.put(time.monotonic() - started)


@pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this system"
)
def test_a_forked_child_does_not_share_the_lock_of_its_parent(tmp_path: Path) -> None:
    """A lock file kept open across a fork would let the child take the lock its parent holds
    (flock belongs to the open file, which the child shares)."""
    path = str(tmp_path / "nurture.db")
    fork = multiprocessing.get_context("fork")
    took: multiprocessing.queues.Queue[float] = fork.Queue()
    with writer_lock(path):
        child = fork.Process(target=_take_and_report, args=(path, took))
        child.start()
        time.sleep(HOLD)
    child.join(timeout=30)
    assert took.get(timeout=5) > HOLD / 2


def test_an_ingest_batch_waits_for_another_process_then_commits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    database.upgrade(url)
    db = database.connect(url)
    rules = compiled(ruleset_text("ingest-test"), "ingest-test.yaml")
    record = {"email": "ana@acme.io", "type": "page_view", "properties": {"url": "/docs"}}
    child = _hold_in_child(str(tmp_path / "nurture.db"), str(tmp_path / "held"))
    started = time.monotonic()
    done: list[float] = []
    writer = threading.Thread(
        target=lambda: done.append(
            ingest(db, rules, parse_jsonl([json.dumps(record)])).accepted
            and time.monotonic() - started
        )
    )
    writer.start()
    writer.join(timeout=60)
    child.wait(timeout=30)
    assert done and done[0] > HOLD / 2, done
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() == 1


LEADS_N, VIEWS, CLIENTS = 6, 8, 8  # 8 views at 10 points stay under engagement's cap of 100


def test_serve_with_workers_on_sqlite_scores_every_event_once(tmp_path: Path) -> None:
    """Two HTTP processes, eight clients posting one pricing view at a time for the same few
    leads: each lead ends with all its views stored, scored and in its ledger, however the
    requests were spread over the processes and interleaved."""
    home = api_home(tmp_path / "home")
    url = f"sqlite:///{tmp_path / 'nurture.db'}"
    port = free_port()
    token = "workers-token-0123456789abcdef0123456789"
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": url,
           "NURTURE_API_TOKEN": token}  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    with serving_workers(tmp_path, env, port):
        events = [
            {"id": f"v{n}", "email": f"lead{n % LEADS_N}@acme.io", "type": "page_view",
             "properties": {"url": "/pricing"}}
            for n in range(LEADS_N * VIEWS)
        ]  # fmt: skip
        answers: list[int] = []

        def client(mine: list[dict[str, object]]) -> None:
            headers = {"Authorization": f"Bearer {token}"}
            with httpx.Client(base_url=base, headers=headers, timeout=60) as http:
                for event in mine:
                    answers.append(http.post("/api/events", json=event).json()["accepted"])

        threads = [
            threading.Thread(target=client, args=(events[k::CLIENTS],)) for k in range(CLIENTS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert answers == [1] * len(events)
    db = database.connect(url)
    with db.connect() as conn:
        leads = conn.execute(sa.select(LEADS.c.id, LEADS.c.score)).all()
        counted = sa.select(EVENTS.c.lead_id, sa.func.count()).group_by(EVENTS.c.lead_id)
        stored = {lead_id: n for lead_id, n in conn.execute(counted)}
        summed = sa.select(LEDGER.c.lead_id, sa.func.sum(LEDGER.c.delta)).group_by(LEDGER.c.lead_id)
        ledger = {lead_id: total for lead_id, total in conn.execute(summed)}
    assert len(leads) == LEADS_N
    for lead_id, score in leads:
        assert stored[lead_id] == VIEWS
        assert score == ledger[lead_id] == 10 * VIEWS
