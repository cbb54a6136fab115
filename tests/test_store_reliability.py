"""What must survive real life: a SIGKILL mid-ingest, two writers on the same leads at once, and
a ruleset file broken in the middle of operations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine import db as database
from engine.db.schema import EVENTS, FIRINGS, LEADS, LEDGER, STAGES
from engine.demo.sample import sample_records, write_jsonl
from engine.rules.load import parse_ruleset
from engine.settings import get_settings
from tests.helpers import ROOT, nurture
from tests.store_support import lead_state, ledger_sums, pg_schema

NURTURE = str(Path(sys.executable).with_name("nurture"))
BATCH = 500
# The components of the shipped ruleset's named scores (health), which the lead score leaves out.
CLAIMED = parse_ruleset((ROOT / "rulesets" / "b2b-saas.yaml").read_text()).claimed


def start_ingest(
    url: str, path: Path, home: Path = ROOT, batch: int = BATCH
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NURTURE_DATABASE_URL": url,
        "NURTURE_HOME": str(home),
        "NURTURE_BATCH_SIZE": str(batch),
    }
    return subprocess.Popen(
        [NURTURE, "ingest", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(process: subprocess.Popen[bytes], timeout: float = 120) -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err.decode()
    return out.decode()


def events_stored(url: str) -> int:
    try:
        with database.connect(url).connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() or 0)
    except sa.exc.SQLAlchemyError:
        return 0  # the schema is not there yet


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """About 21,000 records: 2,000 lead profiles and their events, in the b2b-saas vocabulary."""
    path = tmp_path_factory.mktemp("sample") / "events.jsonl"
    count = write_jsonl(sample_records(leads=2000, events_per_lead=9, seed=5), path)
    return path, count


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def two_databases(
    request: pytest.FixtureRequest, tmp_path: Path, pg_available: bool
) -> Iterator[tuple[str, str]]:
    """Two empty databases of one kind: one for the killed run, one for the clean run."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'killed.db'}", f"sqlite:///{tmp_path / 'clean.db'}"
        return
    if not pg_available:
        pytest.skip("no PostgreSQL reachable (set NURTURE_TEST_PG_URL)")
    with ExitStack() as stack:
        yield stack.enter_context(pg_schema()), stack.enter_context(pg_schema())


# -- (1) SIGKILL mid-ingest -------------------------------------------------------------------


@pytest.mark.slow
def test_sigkill_mid_ingest_then_rerun_equals_one_clean_run(
    sample_file: tuple[Path, int], two_databases: tuple[str, str]
) -> None:
    path, total = sample_file
    killed, clean = two_databases
    reference = start_ingest(clean, path)  # meanwhile, the clean run in the other database
    victim = start_ingest(killed, path)
    deadline = time.monotonic() + 120
    while events_stored(killed) < 3 * BATCH:
        assert victim.poll() is None, "ingest finished before it could be killed"
        assert time.monotonic() < deadline, "ingest made no progress"
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.communicate()
    assert victim.returncode == -signal.SIGKILL
    partial = events_stored(killed)
    assert 0 < partial < total
    # A batch commits whole or not at all (this sample has no duplicates or rejects)...
    assert partial % BATCH == 0
    # ...with all its effects: what is stored is consistent even before the re-run.
    scores, ledger, components = ledger_sums(database.connect(killed), CLAIMED)
    assert scores == ledger == components

    resumed = finish(start_ingest(killed, path))
    assert f"accepted {total - partial}, duplicates {partial}, rejected 0" in resumed
    assert f"accepted {total}, duplicates 0, rejected 0" in finish(reference)

    after_kill, after_clean = (
        lead_state(database.connect(killed)),
        lead_state(database.connect(clean)),
    )
    assert len(after_clean["events"]) == total
    for key in after_clean:
        assert after_kill[key] == after_clean[key], key
    scores, ledger, components = ledger_sums(database.connect(killed), CLAIMED)
    assert scores == ledger == components
    assert sum(scores.values()) > 0


# -- (2) two writers, the same leads ----------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.home(rulesets=["race"])
def test_two_processes_ingesting_the_same_leads_lose_no_update(
    pg_url: str, home: Path, tmp_path: Path
) -> None:
    """Disjoint files of events for the same (not yet known) leads, ingested at the same time:
    every event is scored once, once-only rules fire once, stage moves are written once."""
    leads, per_lead = 300, 20
    emails = [f"racer{i}@acme.io" for i in range(leads)]
    files = []
    for kind in ("email_click", "page_view"):
        path = tmp_path / f"{kind}.jsonl"
        path.write_text(
            "".join(
                json.dumps(
                    {
                        "id": f"{kind}-{n}",
                        "email": emails[n % leads],
                        "type": kind,
                        "occurred_at": f"2026-02-{1 + n // leads:02d}T{n % 24:02d}:00:00Z",
                    }
                )
                + "\n"
                for n in range(leads * per_lead)
            )
        )
        files.append(path)
    database.upgrade(pg_url)  # both processes start on a migrated schema
    processes = [start_ingest(pg_url, path, home, batch=100) for path in files]
    outputs = [finish(process) for process in processes]
    for output in outputs:
        assert f"accepted {leads * per_lead}, duplicates 0, rejected 0" in output

    db = database.connect(pg_url)
    scores, ledger, components = ledger_sums(db)
    assert len(scores) == leads
    assert scores == ledger == components
    # 5 (first touch) + 20 clicks × 3 + 20 views × 1, whatever the interleaving.
    assert set(scores.values()) == {85}
    with db.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(EVENTS)).scalar() == 2 * 6000
        firsts = conn.execute(
            sa.select(FIRINGS.c.lead_id, sa.func.count())
            .where(FIRINGS.c.rule == "first-touch")
            .group_by(FIRINGS.c.lead_id)
        ).all()
        assert len(firsts) == leads and {n for _, n in firsts} == {1}
        moves = conn.execute(
            sa.select(STAGES.c.rule, sa.func.count()).group_by(STAGES.c.rule)
        ).all()
        assert dict(moves) == {"new-lead": leads, "engaged": leads}
        assert set(conn.execute(sa.select(LEADS.c.stage)).scalars()) == {"lead"}
        assert conn.execute(sa.select(sa.func.max(LEADS.c.version))).scalar() is not None


# -- (3) a broken ruleset never replaces the one in force -------------------------------------

GOOD = """\
ruleset: live
components:
  engagement: {min: 0, max: 1000}
rules:
  - name: view
    when: {event.type: page_view}
    then: {score: {engagement: 1}}
"""
BETTER = GOOD.replace("engagement: 1}", "engagement: 2}")
BROKEN_LINE = 7
BROKEN = GOOD.replace("    then: {score: {engagement: 1}}", "    then: score: 1")


def view(n: int) -> str:
    return json.dumps(
        {"id": f"v{n}", "email": "ana@acme.io", "type": "page_view", "occurred_at": "2026-01-05"}
    )


def versions_by_event(url: str) -> dict[str, str]:
    with database.connect(url).connect() as conn:
        return dict(conn.execute(sa.select(LEDGER.c.event_id, LEDGER.c.ruleset_version)).all())


def version_of(text: str) -> str:
    return parse_ruleset(text, "x.yaml").version


def ingest_ok(n: int) -> Any:
    result = nurture("ingest", "-", input=view(n))
    assert result.exit_code == 0, result.output
    return result


def test_a_broken_ruleset_leaves_the_last_good_one_in_force(cli_home: Path, db_url: str) -> None:
    path = cli_home / "rulesets" / "live.yaml"
    path.write_text(GOOD)
    ingest_ok(1)
    path.write_text(BROKEN)
    check = nurture("rules", "check", str(path))
    assert check.exit_code == 1
    assert f"{path}:{BROKEN_LINE}: YAML syntax" in check.stdout

    result = ingest_ok(2)
    assert "warning" in result.stderr and "stays in force" in result.stderr
    assert f"{path}:{BROKEN_LINE}: YAML syntax" in result.stderr
    assert version_of(GOOD) in result.stderr
    assert versions_by_event(db_url) == {"v1": version_of(GOOD), "v2": version_of(GOOD)}
    lead = json.loads(nurture("lead", "ana@acme.io", "--json").stdout)
    assert lead["score"] == 2  # scored +1 as the version in force says
    tick = nurture("tick", "--now", "2026-02-01T00:00:00Z")
    assert tick.exit_code == 0 and "stays in force" in tick.stderr

    # Fixed: saving changes nothing live; `rules apply` makes the new version the one in force
    # and rescores the lead by replaying its events (+2 each).
    path.write_text(BETTER)
    ingest_ok(3)
    assert versions_by_event(db_url)["v3"] == version_of(GOOD)
    assert nurture("rules", "apply").exit_code == 0
    assert versions_by_event(db_url)["v3"] == version_of(BETTER)
    assert json.loads(nurture("lead", "ana@acme.io", "--json").stdout)["score"] == 6


def test_a_broken_ruleset_with_no_earlier_version_is_refused(cli_home: Path, db_url: str) -> None:
    path = cli_home / "rulesets" / "live.yaml"
    path.write_text(BROKEN)
    result = nurture("ingest", "-", input=view(1))
    assert result.exit_code == 1
    assert "no earlier version is in force" in result.stderr
    assert f"{path}:{BROKEN_LINE}: YAML syntax" in result.stderr
    assert events_stored(db_url) == 0
    assert nurture("tick").exit_code == 1


def test_after_a_revert_the_reverted_version_is_the_one_kept(cli_home: Path, db_url: str) -> None:
    """Good → better → back to good (each applied) → broken: `good` is in force, so it stays."""
    path = cli_home / "rulesets" / "live.yaml"
    for n, text in enumerate((GOOD, BETTER, GOOD), start=1):
        path.write_text(text)
        assert nurture("rules", "apply").exit_code == 0
        ingest_ok(n)
    path.write_text(BROKEN)
    result = ingest_ok(4)
    assert f"version {version_of(GOOD)} stays in force" in result.stderr
    # Every event is scored under the version in force, the earlier ones by replay.
    assert versions_by_event(db_url) == {f"v{n}": version_of(GOOD) for n in (1, 2, 3, 4)}


def test_the_version_in_force_is_found_however_home_is_spelled(
    cli_home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person runs ingest with NURTURE_HOME=/srv/x, cron runs it from /srv/x with ``.``."""
    path = cli_home / "rulesets" / "live.yaml"
    path.write_text(GOOD)
    ingest_ok(1)
    path.write_text(BROKEN)
    monkeypatch.chdir(cli_home)
    monkeypatch.setenv("NURTURE_HOME", ".")
    get_settings.cache_clear()
    result = ingest_ok(2)
    assert "stays in force" in result.stderr
    assert versions_by_event(db_url)["v2"] == version_of(GOOD)
