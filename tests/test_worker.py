"""The scheduled jobs as an operator runs them: `nurture tick` once, and `nurture worker` on
APScheduler's clock, from an event scored through the CLI to an email in the file outbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from engine.settings import get_settings
from tests.helpers import email_template, nurture

pytestmark = pytest.mark.home(
    rulesets=["camp-test"], campaigns=["hot-followup", "vip-track"], templates=True
)


def hot_lead_events(path: Path, email: str, at: datetime) -> Path:
    lines = [
        {"id": "v1", "email": email, "type": "page_view", "occurred_at": at.isoformat()},
        {"id": "d1", "email": email, "type": "demo_request", "occurred_at": at.isoformat()},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def env(cli_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The settings of `nurture` here, also for the worker's own process."""
    values = {
        "NURTURE_HOME": str(cli_home),
        "NURTURE_DATABASE_URL": db_url,
        "NURTURE_OUTBOX_DIR": str(cli_home / "outbox"),
        "NURTURE_SECRET_KEY": "worker-test-secret-0123456789abcdef",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    return values


def test_tick_renders_and_sends_what_is_due_once(env: dict[str, str], tmp_path: Path) -> None:
    at = datetime(2026, 11, 2, 10, tzinfo=UTC)
    assert (
        nurture("ingest", str(hot_lead_events(tmp_path / "e.jsonl", "ana@acme.io", at))).exit_code
        == 0
    )
    early = nurture("tick", "--now", (at - timedelta(minutes=1)).isoformat(), "--json")
    assert json.loads(early.stdout)["dispatch"]["sent"] == 0
    result = nurture("tick", "--now", at.isoformat(), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["steps"]["queued"] == 1 and report["dispatch"]["sent"] == 1
    again = json.loads(nurture("tick", "--now", at.isoformat(), "--json").stdout)
    assert again["steps"]["queued"] == 0 and again["dispatch"]["sent"] == 0
    [eml] = (Path(env["NURTURE_HOME"]) / "outbox").glob("*.eml")
    assert "Subject: hot/a for you" in eml.read_text()  # tests/templates/hot/a.j2


def test_a_held_email_is_reported_by_tick(env: dict[str, str], tmp_path: Path) -> None:
    home = Path(env["NURTURE_HOME"])
    (home / "templates/hot/a.j2").write_text(email_template("{{ lead.nickname }}", "<p>x</p>"))
    at = datetime(2026, 11, 2, 10, tzinfo=UTC)
    nurture("ingest", str(hot_lead_events(tmp_path / "e.jsonl", "bo@acme.io", at)))
    result = nurture("tick", "--now", at.isoformat())
    assert result.exit_code == 0
    assert "held" in result.output and "nickname" in result.output
    assert not (home / "outbox").exists()


def start_worker(env: dict[str, str]) -> subprocess.Popen[str]:
    """``nurture worker`` in its own process; its log on ``stderr``."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "worker"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_the_worker_sends_due_email_on_its_own_clock(env: dict[str, str], tmp_path: Path) -> None:
    now = datetime.now(UTC)
    assert (
        nurture("ingest", str(hot_lead_events(tmp_path / "e.jsonl", "cy@acme.io", now))).exit_code
        == 0
    )
    outbox = Path(env["NURTURE_HOME"]) / "outbox"
    worker = start_worker(env)
    try:
        deadline = time.monotonic() + 60
        while not list(outbox.glob("*.eml")) and time.monotonic() < deadline:
            assert worker.poll() is None, worker.stderr.read() if worker.stderr else ""
            time.sleep(0.2)
    finally:
        worker.terminate()
        _, errors = worker.communicate(timeout=30)
    assert len(list(outbox.glob("*.eml"))) == 1, errors
    assert "cy@acme.io" not in errors  # no full addresses in the logs


def test_a_job_stopped_by_a_problem_the_operator_can_fix_logs_it_in_one_line(
    env: dict[str, str],
) -> None:
    home = Path(env["NURTURE_HOME"])
    (home / "campaigns" / "broken.yaml").write_text("campaign: broken\naudience: {lead.x: 1}\n")
    worker = start_worker(env)
    time.sleep(8)
    worker.terminate()
    _, errors = worker.communicate(timeout=30)
    failed = [line for line in errors.splitlines() if "job steps" in line]
    assert failed and "broken.yaml" in failed[0] and "it runs again" in failed[0], errors
    assert "Traceback" not in errors
