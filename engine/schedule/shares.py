"""Due campaign steps in several processes: ``NURTURE_STEP_PROCESSES`` runners side by side.

Drafting, inlining and sealing an email is Python work that holds one core; the step job of
``nurture worker`` (and of ``serve`` and ``tick``) spreads it over processes, started once and
kept. Each takes its :class:`~engine.schedule.steps.Share` of the leads (lead id modulo the
number of processes), so no two runners ever take the same enrollment: on PostgreSQL each
locks its batches as a lone runner does, on SQLite each renders in a snapshot and writes under
the one write lock after checking that nothing it read moved (see
:meth:`~engine.schedule.steps.StepRunner.run`). Exactly once still rests on the database: an
enrollment moves past its step in the transaction that queues the step's email, whose
idempotency key (enrollment, step) is unique.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime

from engine import heap, metrics
from engine.db import connect
from engine.render.templates import Renderer
from engine.schedule.steps import Share, StepReport
from engine.settings import Settings, configure_logging

# One process's database engine, renderer and settings, made when the process starts.
_PROCESS: dict[str, object] = {}


def _prepare_process(settings: Settings) -> None:
    heap.settle()
    configure_logging(settings)  # as the worker logs: its level and format, secrets redacted
    _PROCESS.update(
        db=connect(settings.database_url),
        renderer=Renderer(settings.templates_dir),
        settings=settings,
    )


def _run(now: datetime, share: Share) -> tuple[StepReport, list[str]]:
    # Imported here: engine.schedule.jobs imports this module.
    from engine.schedule.jobs import step_runner

    runner, problems = step_runner(
        _PROCESS["db"],  # type: ignore[arg-type]
        _PROCESS["settings"],  # type: ignore[arg-type]
        _PROCESS["renderer"],  # type: ignore[arg-type]
    )
    return runner.run(now, share=share), problems


class StepProcesses:
    """``count`` step-runner processes over the database of ``settings``, each running its
    share of every call to :meth:`run`."""

    def __init__(self, settings: Settings, count: int) -> None:
        self.settings = settings
        self.count = count
        self.pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        # Spawned, not forked: the parent may hold threads (the scheduler, css-inline's pool)
        # and open database connections that a forked child must not share.
        return ProcessPoolExecutor(
            self.count,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_prepare_process,
            initargs=(self.settings,),
        )

    def run(self, now: datetime) -> tuple[StepReport, list[str]]:
        """Every step due at ``now``, all shares at once; the campaigns' problems as the
        processes found them (each once)."""
        report, problems = StepReport(), list[str]()
        try:
            shares = [self.pool.submit(_run, now, Share(i, self.count)) for i in range(self.count)]
            for future in shares:
                done, found = future.result()
                report.add(done)
                problems.extend(p for p in found if p not in problems)
        except BrokenProcessPool:
            # A process died (killed, out of memory): this run fails, the next one starts new
            # processes. What the dead one had not committed is still due.
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._start()
            raise
        # The processes' own counters are not the ones /metrics serves: counted here.
        metrics.emails_prepared(report.queued, report.held)
        return report, problems

    def close(self) -> None:
        self.pool.shutdown()
