"""Group commit: many small concurrent ingests (the API's requests) as one transaction.

A request of one event costs little to evaluate but a whole transaction to store (some twenty
statements, a commit, on SQLite the one write lock). :class:`GroupCommit` queues each caller's
records; one writer thread takes the queue's head jobs (up to ``limit`` records), writes them
in one ``engine.ingest.batch.ingest`` call, answers each of them, and takes the next jobs that
queued meanwhile (waiting up to ``GATHER_SECONDS`` for the callers it has just answered). So
one thread at a time writes, a caller is answered once its records have committed, and a caller
waits for at most the group in progress and its own. Callers on the event loop
(:meth:`GroupCommit.submit`, the API's requests) await their answer without holding a thread;
callers on threads (:meth:`GroupCommit.ingest`) block.

The group is scored exactly as if its jobs came one after another in queue order: ingest takes
records in order, so an event id repeated across two requests is a duplicate (or a rejected
reuse) in the later one, as it would be sequentially. Each job's records keep their own
positions (``line``) in its answer. Records a group rejects (bad input, a runaway chain) are
that record's answer; if the group's transaction fails as a whole, each job is written again on
its own, so one request whose records cannot be stored never fails the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from collections import deque
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import Engine

from engine.campaigns.compile import CompiledCampaigns
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parse import Parsed, Rejection
from engine.rules.compile import CompiledRuleset

# How long the writer thread waits for work before it ends (the next caller starts another).
IDLE_SECONDS = 5.0
# How long the next group waits for the callers the last one answered (they mostly come
# straight back with their next request) before it is written without them. A transaction's
# fixed cost (~7 ms of CPU on SQLite) dwarfs an event's (~0.4 ms): under 8 API clients this
# took groups from ~4 to ~7.5 events. A lone caller never waits: it is everyone expected.
GATHER_SECONDS = 0.002
# ...unless the queue already holds this many records: then the fixed cost is shared enough,
# and a larger group would only make each of its callers wait longer.
GATHER_RECORDS = 50


@dataclass(eq=False)
class _Job:
    items: list[Parsed]
    compiled: CompiledRuleset
    campaigns: CompiledCampaigns | None
    # Who waits: a thread (its event is set) or a coroutine (its future is settled on its
    # event loop, one wake-up of the loop for all of a group's jobs there).
    done: threading.Event | None = None
    waiting: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
    result: IngestResult | None = None
    error: BaseException | None = None

    def outcome(self) -> IngestResult:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


def _answer(jobs: list[_Job]) -> None:
    """Wake the callers of answered jobs (on the writer thread). Each wake-up of an event loop
    from another thread is a write to its self-pipe and a turn of the loop: a group's callers
    on one loop (all of a server process's requests) are woken together."""
    futures: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
    for job in jobs:
        if job.done is not None:
            job.done.set()
        if job.waiting is not None:
            futures.setdefault(job.waiting[0], []).append(job.waiting[1])
    for loop, waiting in futures.items():
        with suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, waiting)


def _settle(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():  # a cancelled caller's job is still written, unheard
            future.set_result(None)


class GroupCommit:
    """One writer thread for one database, batching what callers queue meanwhile."""

    def __init__(self, db: Engine, limit: int) -> None:
        self.db = db
        self.limit = max(1, limit)  # records per group: one ingest batch, one transaction
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._queue: deque[_Job] = deque()
        self._queued = 0  # records in the queue
        self._writer: threading.Thread | None = None
        # The queue length the waiting writer waits for: 1 when idle, the callers it expects
        # while it gathers a group. A job that does not bring the queue there (nor to
        # GATHER_RECORDS) does not wake it: each wake-up is a thread switch, the GIL handed
        # over and back, up to seven times a group under 8 clients.
        self._wanted = 1
        self.groups = 0  # transactions written, for benchmarks and tests
        self.records = 0  # records written in them

    def ingest(
        self,
        compiled: CompiledRuleset,
        items: list[Parsed],
        campaigns: CompiledCampaigns | None = None,
    ) -> IngestResult:
        """``items`` scored and committed (with whatever other callers queued meanwhile); the
        result as ``ingest`` would give it for ``items`` alone. Blocks this thread until then."""
        done = threading.Event()
        job = _Job(items, compiled, campaigns, done=done)
        self._put(job)
        done.wait()
        return job.outcome()

    async def submit(
        self,
        compiled: CompiledRuleset,
        items: list[Parsed],
        campaigns: CompiledCampaigns | None = None,
    ) -> IngestResult:
        """:meth:`ingest` for a caller on the event loop: it waits without holding a thread."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[None] = loop.create_future()
        job = _Job(items, compiled, campaigns, waiting=(loop, answered))
        self._put(job)
        await answered
        return job.outcome()

    def _put(self, job: _Job) -> None:
        with self._lock:
            self._queue.append(job)
            self._queued += len(job.items)
            if self._writer is None:
                self._writer = threading.Thread(target=self._run, name="group-commit", daemon=True)
                self._writer.start()
            elif len(self._queue) >= self._wanted or self._queued >= GATHER_RECORDS:
                self._work.notify()

    def _run(self) -> None:
        """The writer thread: groups written one after another while there is work."""
        # The jobs of the last group and those that queued while it was written: the callers
        # seen in one round, whom the next group waits for.
        callers = 0
        while True:
            with self._lock:
                self._wanted = 1
                while not self._queue:
                    self._work.wait(IDLE_SECONDS)
                    if not self._queue:
                        self._writer = None
                        return
                # The callers just answered mostly come straight back with their next
                # request: waiting a moment for them makes the next group whole.
                deadline = time.monotonic() + GATHER_SECONDS
                self._wanted = callers
                while (
                    len(self._queue) < callers
                    and self._queued < GATHER_RECORDS
                    and (left := deadline - time.monotonic()) > 0
                ):
                    self._work.wait(left)
                group = self._take()
            self._write_group(group)
            with self._lock:
                callers = len(group) + len(self._queue)

    def _take(self) -> list[_Job]:
        """The head of the queue: jobs of one configuration, up to ``limit`` records (the first
        job whatever its size)."""
        group = [self._queue.popleft()]
        size = len(group[0].items)
        while self._queue:
            nxt = self._queue[0]
            same = (nxt.compiled, nxt.campaigns) == (group[0].compiled, group[0].campaigns)
            if not same or size + len(nxt.items) > self.limit:
                break
            group.append(self._queue.popleft())
            size += len(nxt.items)
        self._queued -= size
        return group

    def _write_group(self, group: list[_Job]) -> None:
        try:
            self._write(group)
        finally:
            for job in group:  # answered, whatever stopped the write
                if job.result is None and job.error is None:
                    job.error = RuntimeError("the write of this request's group was interrupted")
            _answer(group)

    def _write(self, group: list[_Job]) -> None:
        self.groups += 1
        self.records += sum(len(job.items) for job in group)
        if len(group) > 1:
            try:
                results = _together(self.db, group)
            except Exception:
                pass  # a failure of the whole transaction: each job alone says whose it is
            else:
                for job, result in zip(group, results, strict=True):
                    job.result = result
                return
        for job in group:
            try:
                job.result = ingest(
                    self.db, job.compiled, job.items, len(job.items) + 1, campaigns=job.campaigns
                )
            except BaseException as error:  # the caller's to raise, not this writer's
                job.error = error


def _together(db: Engine, group: list[_Job]) -> list[IngestResult]:
    """The jobs' records in one ingest call, positions made distinct by an offset per job, and
    the result split back by position."""
    items: list[Parsed] = []
    spans: list[range] = []
    start = 0
    for job in group:
        end = start + max((item.line + 1 for item in job.items), default=0)
        spans.append(range(start, end))
        items.extend(dataclasses.replace(item, line=start + item.line) for item in job.items)
        start = end
    head = group[0]
    result = ingest(db, head.compiled, items, len(items) + 1, campaigns=head.campaigns)
    results = []
    for job, span in zip(group, spans, strict=True):
        mine = IngestResult(
            rejected=[Rejection(r.line - span.start, r.error) for r in result.rejected
                      if r.line in span],
            duplicate_lines=[n - span.start for n in result.duplicate_lines if n in span],
        )  # fmt: skip
        mine.duplicates = len(mine.duplicate_lines)
        mine.accepted = len(job.items) - mine.duplicates - len(mine.rejected)
        results.append(mine)
    return results
