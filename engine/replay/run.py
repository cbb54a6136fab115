"""Plan and apply over every lead: batches of leads in id order, each replayed (and, for apply,
written) in one transaction; ``workers`` processes each take a slice of the lead ids
(``id % workers``).

Apply is resumable: it rescans the leads whose ``ruleset_version`` is not the target, so a run
killed midway is finished by the next, and a second run finds nothing to do. Other processes
pick the new version up within :data:`engine.active.RECHECK` seconds; until then they may still
score a lead under the old version (marking it so), which is why apply, after its first pass,
waits that long and scans again until no lead is left under another version.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import Connection, Engine, func, or_, select
from sqlalchemy.exc import IntegrityError, OperationalError

from engine import db as database
from engine import heap
from engine.active import (
    RECHECK,
    Applied,
    campaigns_in_force,
    finish_apply,
    latest_apply,
    record_apply,
)
from engine.campaigns.compile import CompiledCampaigns
from engine.db import reading
from engine.db.schema import ACTIONS, LEADS
from engine.errors import ProblemsError
from engine.home import compile_text
from engine.ingest.rescore import Replayed, load_stored, replay, rescore
from engine.ingest.write import ConflictError
from engine.render.templates import Renderer
from engine.replay.summary import Summary
from engine.rules.compile import CompiledRuleset
from engine.rules.spec import Ruleset
from engine.settings import Settings, get_settings
from engine.timeutil import utcnow

BATCH = 1000
RETRIES = 5
Progress = Callable[[int], None]


@dataclass(frozen=True)
class Job:
    """One process's share of a plan or an apply (picklable, for worker processes)."""

    url: str
    source: str
    path: str
    write: bool
    alert: bool
    now: datetime
    worker: int = 0
    workers: int = 1
    batch: int = BATCH
    baseline: str | None = None  # the source of the version the stored scores are under


def campaigns_for(
    db: Engine, settings: Settings, compiled: CompiledRuleset
) -> CompiledCampaigns | None:
    """The campaigns in force, compiled against ``compiled``'s ruleset (None: none usable)."""
    templates = Renderer(settings.templates_dir).names()
    try:
        return campaigns_in_force(db, settings, compiled.ruleset, templates).compiled
    except ProblemsError:
        return None


def _ids(conn: Connection, job: Job, version: str, after: int) -> list[int]:
    """The next batch of lead ids after ``after``: for apply those under another version."""
    query = select(LEADS.c.id).where(LEADS.c.id > after)
    if job.write:
        query = query.where(
            or_(LEADS.c.ruleset_version.is_(None), LEADS.c.ruleset_version != version)
        )
    if job.workers > 1:
        query = query.where(LEADS.c.id % job.workers == job.worker)
    return list(conn.execute(query.order_by(LEADS.c.id).limit(job.batch)).scalars())


def remaining(db: Engine, version: str) -> int:
    """Leads still under another version than ``version``."""
    query = select(func.count()).where(
        or_(LEADS.c.ruleset_version.is_(None), LEADS.c.ruleset_version != version)
    )
    with reading(db) as conn:
        return int(conn.execute(query).scalar() or 0)


def run_slice(
    db: Engine,
    compiled: CompiledRuleset,
    campaigns: CompiledCampaigns | None,
    job: Job,
    progress: Progress | None = None,
) -> Summary:
    """Plan or apply every batch of this job's slice of leads."""
    summary = Summary()
    baseline = None
    if job.baseline is not None:
        baseline = compile_text(job.baseline, job.path, get_settings().home).ruleset
    after = 0
    while True:
        for attempt in range(RETRIES):
            try:
                ids, found, alerting = _batch(db, compiled, campaigns, job, after, baseline)
                break
            except (ConflictError, IntegrityError, OperationalError):
                # A concurrent ingest won the race for these leads: the batch rolled back.
                if attempt == RETRIES - 1:
                    raise
        if not ids:
            return summary
        summary.add(compiled.ruleset, found, alerting)
        after = ids[-1]
        if progress is not None:
            progress(len(ids))


def _batch(
    db: Engine,
    compiled: CompiledRuleset,
    campaigns: CompiledCampaigns | None,
    job: Job,
    after: int,
    baseline: Ruleset | None,
) -> tuple[list[int], list[Replayed], set[int]]:
    """One batch in one transaction: its ids, their replays, the leads that had an alert."""
    if not job.write:
        with reading(db) as conn:
            ids = _ids(conn, job, compiled.ruleset.version, after)
            stored = load_stored(conn, ids, lock=False)
            found = replay(conn, compiled, stored, job.now, campaigns, baseline=baseline)
            return ids, found, _alerting(conn, ids)
    with db.begin() as conn:
        ids = _ids(conn, job, compiled.ruleset.version, after)
        if not ids:
            return ids, [], set()
        alerting = _alerting(conn, ids)
        found = rescore(conn, compiled, ids, job.now, campaigns, job.alert, baseline)
        return ids, found, alerting


def _alerting(conn: Connection, ids: list[int]) -> set[int]:
    """Which of the leads already had an alert (so a replayed one is not new)."""
    if not ids:
        return set()
    query = select(ACTIONS.c.lead_id).where(ACTIONS.c.lead_id.in_(ids), ACTIONS.c.kind == "alert")
    return set(conn.execute(query.distinct()).scalars())


def _work(job: Job) -> Summary:
    """A worker process: its own connection pool, the ruleset compiled from the job's source."""
    settings = get_settings()
    db = database.connect(job.url)
    try:
        compiled = compile_text(job.source, job.path, settings.home)
        heap.settle()
        return run_slice(db, compiled, campaigns_for(db, settings, compiled), job)
    finally:
        db.dispose()


def run(
    db: Engine,
    compiled: CompiledRuleset,
    campaigns: CompiledCampaigns | None,
    job: Job,
    progress: Progress | None = None,
) -> Summary:
    """The whole job, in this process or in ``job.workers`` processes (progress then follows
    the leads left under another version, for apply)."""
    if job.workers <= 1:
        return run_slice(db, compiled, campaigns, job, progress)
    jobs = [replace(job, worker=k) for k in range(job.workers)]
    context = multiprocessing.get_context("spawn")
    summary = Summary()
    with ProcessPoolExecutor(job.workers, mp_context=context) as pool:
        futures = [pool.submit(_work, one) for one in jobs]
        left = remaining(db, compiled.ruleset.version) if job.write else 0
        while not all(f.done() for f in futures):
            time.sleep(0.5)
            if job.write and progress is not None:
                now_left = remaining(db, compiled.ruleset.version)
                progress(max(0, left - now_left))
                left = now_left
        for future in futures:
            summary.merge(future.result())
    return summary


@dataclass
class ApplyResult:
    applied: Applied
    summary: Summary
    seconds: float
    resumed: bool


def apply(
    db: Engine,
    settings: Settings,
    compiled: CompiledRuleset,
    kind: str = "apply",
    note: str | None = None,
    commit: str | None = None,
    alert: bool = False,
    workers: int = 1,
    progress: Progress | None = None,
    path: str = "",
    now: datetime | None = None,
) -> ApplyResult:
    """Make ``compiled`` the version in force (unless it already is: then finish its rescore)
    and rescore every lead under another version."""
    started = time.monotonic()
    with reading(db) as conn:
        latest = latest_apply(conn)
    resumed = latest is not None and latest.version == compiled.ruleset.version
    if latest is not None and resumed:
        applied = latest
    else:
        applied = record_apply(db, compiled.ruleset, kind, note, commit)
    baseline = latest.source if latest is not None and not resumed else None
    campaigns = campaigns_for(db, settings, compiled)
    source, version = compiled.ruleset.source, compiled.ruleset.version
    url = db.url.render_as_string(hide_password=False)
    job = Job(url, source, path, True, alert, now or utcnow(), workers=workers, baseline=baseline)
    job = replace(job, batch=min(settings.batch_size, BATCH))
    summary = run(db, compiled, campaigns, job, progress)
    # Processes that had not seen the new version yet may have scored leads under the old
    # one meanwhile: once they all have (RECHECK), scan until none is left.
    wait = applied.applied_at.timestamp() + RECHECK + 0.5 - time.time()
    if wait > 0 and not (resumed and applied.finished_at is not None):
        time.sleep(wait)
    while remaining(db, version):
        again = replace(job, workers=1, worker=0)
        summary.merge(run_slice(db, compiled, campaigns, again, progress))
    seconds = time.monotonic() - started
    if resumed and applied.finished_at is not None and not summary.leads:
        return ApplyResult(applied, summary, seconds, resumed)  # nothing was left to do
    rescored = summary.leads + (applied.leads_rescored if resumed else 0)
    finish_apply(db, applied.id, rescored, seconds + ((applied.seconds or 0) if resumed else 0))
    return ApplyResult(applied, summary, seconds, resumed)


def plan(
    db: Engine,
    settings: Settings,
    compiled: CompiledRuleset,
    workers: int = 1,
    progress: Progress | None = None,
    path: str = "",
    now: datetime | None = None,
) -> Summary:
    """Replay every lead under ``compiled`` and sum what would change; nothing is written."""
    campaigns = campaigns_for(db, settings, compiled)
    url = db.url.render_as_string(hide_password=False)
    with reading(db) as conn:
        latest = latest_apply(conn)
    baseline = latest.source if latest is not None else None
    job = Job(url, compiled.ruleset.source, path, False, False, now or utcnow(), workers=workers)
    job = replace(job, baseline=baseline, batch=min(settings.batch_size, BATCH))
    return run(db, compiled, campaigns, job, progress)
