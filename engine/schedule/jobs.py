"""The scheduled work and its clock: decay, time evaluations, due campaign steps (render →
outbox), dispatch and alerts.

The work lives in SQL (enrollments' ``next_due_at``, the outbox's ``next_attempt_at``), so a
job is just "do what is due now" and any number of processes may run it at once: the database's
locks split the rows between them. APScheduler is only the clock that calls the jobs inside
``nurture serve`` and ``nurture worker``; its job store holds nothing that must be shared.
``tick`` runs each job once, for ``nurture tick`` and cron. Alerts must reach sales within a
second, finer than APScheduler's clock is meant for: their job runs in its own thread
(:class:`AlertRunner`), started and stopped with the scheduler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from apscheduler.events import EVENT_SCHEDULER_SHUTDOWN, EVENT_SCHEDULER_START, SchedulerEvent
from apscheduler.schedulers.base import BaseScheduler
from sqlalchemy import Engine

from engine.active import campaigns_in_force, ruleset_in_force
from engine.alerts.job import AlertJob, AlertReport, AlertRunner
from engine.campaigns.compile import CompiledCampaigns
from engine.errors import NurtureError, one_line
from engine.render.templates import Renderer
from engine.rules.spec import Ruleset
from engine.schedule.clock import TimeReport, evaluate_due
from engine.schedule.decay import decay
from engine.schedule.shares import StepProcesses
from engine.schedule.steps import StepReport, StepRunner
from engine.send.backends import mailer_for
from engine.send.dispatch import Dispatcher, DispatchReport
from engine.send.email import Mailer
from engine.settings import Settings
from engine.timeutil import isoformat, utcnow

log = logging.getLogger(__name__)

# Seconds between runs of each job inside serve/worker. Decay also runs the time evaluations
# it makes due; `time` evaluates the leads whose other time-dependent inputs changed.
INTERVALS = {"decay": 3600, "time": 60, "steps": 60, "dispatch": 10}


@dataclass
class TickReport:
    now: datetime
    decayed: int = 0
    time: TimeReport = field(default_factory=TimeReport)
    steps: StepReport = field(default_factory=StepReport)
    dispatch: DispatchReport = field(default_factory=DispatchReport)
    alerts: AlertReport = field(default_factory=AlertReport)
    warnings: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        steps = {k: v for k, v in vars(self.steps).items() if k != "errors"}
        return {
            "now": isoformat(self.now),
            "decayed": self.decayed,
            "time": self.time.as_json(),
            "steps": steps,
            "held": self.steps.errors,
            "dispatch": self.dispatch.as_json(),
            "alerts": self.alerts.as_json(),
            "warnings": self.warnings,
        }


class Jobs:
    """The jobs over one database, settings and mail backend. The ruleset in force (the
    database's, see engine.active) and the campaigns are looked up on each run, so a version
    applied by `nurture rules apply` takes effect without a restart (a broken campaigns edit
    leaves the last good version in force and is reported)."""

    def __init__(self, db: Engine, settings: Settings, mailer: Mailer | None = None) -> None:
        self.db = db
        self.settings = settings
        self.mailer = mailer if mailer is not None else mailer_for(settings)
        self.renderer = Renderer(settings.templates_dir)
        self.alert_job = AlertJob(db, settings, self.mailer)
        self.warnings: list[str] = []
        # Started on the first run of the step job (NURTURE_STEP_PROCESSES), then kept.
        self.step_processes: StepProcesses | None = None

    def decay(self, now: datetime) -> int:
        """Decay, then the time evaluations of the leads it lowered (and any other due)."""
        written = decay(self.db, ruleset_in_force(self.db, self.settings).compiled.ruleset, now)
        self.time(now)
        return written

    def time(self, now: datetime) -> TimeReport:
        """Evaluate the leads whose time-dependent inputs changed (``event.type: time``)."""
        compiled = ruleset_in_force(self.db, self.settings).compiled
        return evaluate_due(self.db, compiled, self._campaigns(compiled.ruleset), now)

    def steps(self, now: datetime) -> StepReport:
        if self.settings.step_processes > 1:
            if self.step_processes is None:
                self.step_processes = StepProcesses(self.settings, self.settings.step_processes)
            report, problems = self.step_processes.run(now)
        else:
            runner, problems = step_runner(self.db, self.settings, self.renderer)
            report = runner.run(now)
        self.warnings.extend(problems)
        return report

    def _campaigns(self, ruleset: Ruleset) -> CompiledCampaigns:
        found = campaigns_in_force(self.db, self.settings, ruleset, self.renderer.names())
        self.warnings.extend(str(p) for p in found.problems if str(p) not in self.warnings)
        return found.compiled

    def dispatch(self, now: datetime) -> DispatchReport:
        return Dispatcher(self.db, self.settings, self.mailer).run(now)

    def alerts(self, now: datetime) -> AlertReport:
        return self.alert_job.run(now, self._ruleset)

    def _ruleset(self) -> Ruleset:
        return ruleset_in_force(self.db, self.settings).compiled.ruleset

    def tick(self, now: datetime) -> TickReport:
        """Each job once, in flow order: decay lowers scores, time evaluations follow (rules
        fire, enrollments start and end), steps fill the outbox, the dispatcher empties it;
        then alerts are decided and delivered."""
        self.warnings = []
        report = TickReport(now)
        report.decayed = decay(
            self.db, ruleset_in_force(self.db, self.settings).compiled.ruleset, now
        )
        report.time = self.time(now)
        report.steps = self.steps(now)
        report.dispatch = self.dispatch(now)
        report.alerts = self.alerts(now)
        report.warnings = self.warnings
        return report

    def schedule(self, scheduler: BaseScheduler) -> None:
        """Add the jobs to an APScheduler scheduler, each at its interval (never overlapping
        itself in this process; other processes are kept apart by the database)."""
        jobs: dict[str, Callable[[datetime], object]] = {
            "decay": self.decay,
            "time": self.time,
            "steps": self.steps,
            "dispatch": self.dispatch,
        }
        for name, job in jobs.items():
            scheduler.add_job(
                _logged(name, job),
                "interval",
                seconds=INTERVALS[name],
                id=name,
                name=name,
                max_instances=1,
                coalesce=True,
                next_run_time=utcnow(),
            )
        runner = AlertRunner(_logged("alerts", self.alerts, quiet=True))

        def follow(event: SchedulerEvent) -> None:
            (runner.start if event.code == EVENT_SCHEDULER_START else runner.stop)()

        scheduler.add_listener(follow, EVENT_SCHEDULER_START | EVENT_SCHEDULER_SHUTDOWN)


def step_runner(db: Engine, settings: Settings, renderer: Renderer) -> tuple[StepRunner, list[str]]:
    """The step runner of the ruleset and campaigns in force, and what is wrong with the
    campaigns on disk (the last good ones stay in force)."""
    ruleset = ruleset_in_force(db, settings).compiled.ruleset
    found = campaigns_in_force(db, settings, ruleset, renderer.names())
    runner = StepRunner(db, settings, found.compiled, renderer)
    return runner, [str(problem) for problem in found.problems]


def release(db: Engine, settings: Settings, outbox_id: int, now: datetime) -> dict[str, Any]:
    """``nurture outbox --release`` and its API: a held message rendered again now (see
    :meth:`StepRunner.release`)."""
    runner, _problems = step_runner(db, settings, Renderer(settings.templates_dir))
    return runner.release(outbox_id, now)


def _logged(
    name: str, job: Callable[[datetime], object], quiet: bool = False
) -> Callable[[], None]:
    """``quiet``: a job that runs every second logs at debug level."""

    def run() -> None:
        try:
            result = job(utcnow())
        except NurtureError as error:
            # A problem the operator can fix (a broken campaign file): its sentence, no traceback.
            log.error(
                "job %s failed: %s; it runs again at its next interval", name, one_line(error)
            )
            return
        except Exception:
            log.exception("job %s failed; it runs again at its next interval", name)
            return
        log.log(logging.DEBUG if quiet else logging.INFO, "job %s: %s", name, result)

    return run
