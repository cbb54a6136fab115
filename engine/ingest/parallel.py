"""``nurture ingest --workers N``: one file scored by N processes, each taking the leads of one
slice of it.

The durable-rules core never releases the GIL, so evaluation scales with processes only. Each
worker reads the whole file (no records cross between processes) and keeps the records whose
lead falls in its slice: a stable hash of the email, or of the email's domain when the rules
read ``lead.account.*``, so that a lead's records, in file order, and (as far as the address
tells) its account's leads stay in one process. A line whose email reads plainly off its text is
parsed only by the worker whose slice it falls in, which also reports it if it is bad; any other
line is parsed by every worker, and if it is bad the first worker reports it
(:data:`engine.ingest.parse.Slice`). The workers write through the ordinary batch path
(:func:`engine.ingest.batch.ingest`), so every guarantee of a batch holds; their answers are
merged into one :class:`IngestResult`.

On PostgreSQL the slices lock disjoint leads and run side by side. SQLite admits one writer at a
time, but a batch there reads and evaluates in a snapshot and takes the write lock only to write
(see :func:`engine.ingest.batch._attempt`), so one worker evaluates while another writes.
"""

from __future__ import annotations

import multiprocessing
import queue
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

from sqlalchemy import Engine

from engine import heap
from engine.campaigns.compile import CompiledCampaigns
from engine.errors import NurtureError
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parse import Slice, parse_stream
from engine.rules.account import ACCOUNT_FIELDS
from engine.rules.compile import CompiledRuleset

# How often the parent looks at the workers' progress, in seconds.
POLL = 0.2
# How long a worker may take to exit once it has answered (or the parent gave up), in seconds.
JOIN = 30


class WorkerError(NurtureError):
    """A worker process failed; the batches it had committed stay committed (a re-run skips
    them by event id)."""


@dataclass(frozen=True)
class _Job:
    db: Engine
    compiled: CompiledRuleset
    campaigns: CompiledCampaigns | None
    path: Path
    name: str  # as the user gave it: the format is told from it
    batch_size: int
    workers: int
    backfill: bool
    alert_max_age: timedelta | None


def slice_of(key: str, workers: int) -> int:
    """The worker that takes a lead: the same for the same key in every run and process."""
    return zlib.crc32(key.encode("utf-8", "surrogateescape")) % workers


def slice_keeper(index: int, workers: int, by_domain: bool) -> Slice:
    """Worker ``index``'s slice of the leads: by email, or by its domain with ``by_domain``;
    lines that name no lead fall in the first worker's."""

    def mine(email: str | None) -> bool:
        if email is None:
            return index == 0
        return slice_of(email.rsplit("@", 1)[-1] if by_domain else email, workers) == index

    return mine


def _work(
    job: _Job, index: int, results: multiprocessing.Queue[object], done: Synchronized[int]
) -> None:
    # The parent's pooled connections came along with the fork: leave them to the parent.
    job.db.dispose(close=False)
    heap.settle()
    mine = slice_keeper(index, job.workers, bool(job.compiled.all_reads & ACCOUNT_FIELDS))

    def advance(count: int) -> None:
        with done.get_lock():
            done.value += count

    try:
        with job.path.open(encoding="utf-8", errors="surrogateescape", newline="") as stream:
            result = ingest(
                job.db,
                job.compiled,
                parse_stream(stream, job.name, mine),
                job.batch_size,
                advance,
                job.campaigns,
                job.backfill,
                job.alert_max_age,
            )
    except BaseException as error:  # reported by the parent, which names the worker
        results.put((index, None, f"{type(error).__name__}: {error}"))
    else:
        results.put((index, result, None))


def ingest_parallel(
    db: Engine,
    compiled: CompiledRuleset,
    path: Path,
    workers: int,
    batch_size: int = 2000,
    on_progress: Callable[[int], None] | None = None,
    campaigns: CompiledCampaigns | None = None,
    name: str | None = None,
    backfill: bool = False,
    alert_max_age: timedelta | None = None,
) -> IngestResult:
    """Score the file at ``path`` in ``workers`` processes (see the module's doc);
    ``on_progress`` gets the records done since its last call, as with one process."""
    job = _Job(
        db,
        compiled,
        campaigns,
        path,
        name or str(path),
        batch_size,
        workers,
        backfill,
        alert_max_age,
    )
    # Fork: the workers start with the ruleset compiled and the engine loaded.
    context = multiprocessing.get_context("fork")
    results: multiprocessing.Queue[object] = context.Queue()
    done: Synchronized[int] = context.Value("q", 0)
    db.dispose()
    processes = [
        context.Process(target=_work, args=(job, index, results, done), daemon=True)
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    merged, errors, answered, reported = IngestResult(), [], 0, 0
    index: int
    result: IngestResult | None
    error: str | None
    try:
        while answered < workers:
            try:
                index, result, error = results.get(timeout=POLL)  # type: ignore[misc]
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and results.empty():
                    errors.append("a worker ended without an answer")
                    break
            else:
                answered += 1
                if error is not None:
                    errors.append(f"worker {index + 1}: {error}")
                else:
                    _merge(merged, result)
            if on_progress is not None:
                now = done.value
                on_progress(now - reported)
                reported = now
    finally:
        for process in processes:
            process.join(timeout=JOIN)
            if process.is_alive():
                process.terminate()
    if errors:
        raise WorkerError(
            "ingest failed in a worker process (committed batches are kept; run it again "
            "to score the rest): " + "; ".join(errors)
        )
    merged.rejected.sort(key=lambda r: r.line)
    merged.duplicate_lines.sort()
    return merged


def _merge(into: IngestResult, part: IngestResult | None) -> None:
    assert part is not None
    into.accepted += part.accepted
    into.alerts += part.alerts
    into.duplicates += part.duplicates
    into.rejected.extend(part.rejected)
    into.duplicate_lines.extend(part.duplicate_lines)
