"""Group commit: many small concurrent ingests (the API's requests) as one transaction.

A request of one event costs little to evaluate but a whole transaction to store (a dozen
statements, a commit, on SQLite the one write lock). :class:`GroupCommit` queues each caller's
records; the caller at the head of the queue writes the queue's head jobs (up to ``limit``
records) in one ``engine.ingest.batch.ingest`` call, answers each of them, and hands the
writing on to the next job waiting. So one thread at a time writes, a caller is answered once
its records have committed, and a caller waits for at most the group in progress and its own.

The group is scored exactly as if its jobs came one after another in queue order: ingest takes
records in order, so an event id repeated across two requests is a duplicate (or a rejected
reuse) in the later one, as it would be sequentially. Each job's records keep their own
positions (``line``) in its answer. Records a group rejects (bad input, a runaway chain) are
that record's answer; if the group's transaction fails as a whole, each job is written again on
its own, so one request whose records cannot be stored never fails the others.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from dataclasses import dataclass, field

from sqlalchemy import Engine

from engine.campaigns.compile import CompiledCampaigns
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parse import Parsed, Rejection
from engine.rules.compile import CompiledRuleset


@dataclass(eq=False)
class _Job:
    items: list[Parsed]
    compiled: CompiledRuleset
    campaigns: CompiledCampaigns | None
    result: IngestResult | None = None
    error: BaseException | None = None
    # Set when the job is answered, or when its caller is to write the next group.
    wake: threading.Event = field(default_factory=threading.Event)
    leads: bool = False


class GroupCommit:
    """One writer at a time for one database, batching what callers queue meanwhile."""

    def __init__(self, db: Engine, limit: int) -> None:
        self.db = db
        self.limit = max(1, limit)  # records per group: one ingest batch, one transaction
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._writing = False
        self.groups = 0  # transactions written, for benchmarks and tests

    def ingest(
        self,
        compiled: CompiledRuleset,
        items: list[Parsed],
        campaigns: CompiledCampaigns | None = None,
    ) -> IngestResult:
        """``items`` scored and committed (with whatever other callers queued meanwhile); the
        result as ``ingest`` would give it for ``items`` alone."""
        job = _Job(items, compiled, campaigns)
        with self._lock:
            self._queue.append(job)
            if not self._writing:
                self._writing = job.leads = True
        while True:
            if not job.leads:
                job.wake.wait()
            if job.result is not None or job.error is not None:
                break
            self._write_next()
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _write_next(self) -> None:
        """Write the head of the queue (this caller's job first), then pass the writing on."""
        with self._lock:
            group = [self._queue.popleft()]
            size = len(group[0].items)
            while self._queue:
                nxt = self._queue[0]
                same = (nxt.compiled, nxt.campaigns) == (group[0].compiled, group[0].campaigns)
                if not same or size + len(nxt.items) > self.limit:
                    break
                group.append(self._queue.popleft())
                size += len(nxt.items)
        try:
            self._write(group)
        finally:
            for job in group:  # answered, whatever stopped the write
                if job.result is None and job.error is None:
                    job.error = RuntimeError("the write of this request's group was interrupted")
            with self._lock:
                if self._queue:
                    self._queue[0].leads = True
                    self._queue[0].wake.set()
                else:
                    self._writing = False
            for job in group:
                job.wake.set()

    def _write(self, group: list[_Job]) -> None:
        self.groups += 1
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
