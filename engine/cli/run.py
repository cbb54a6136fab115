"""``nurture tick``, ``worker``, ``serve``, ``demo``, ``db upgrade``: running the service."""

from __future__ import annotations

from contextlib import suppress
from datetime import timedelta
from typing import Annotated

import typer
from rich.markup import escape

from engine import heap
from engine.cli.app import app, db_app, open_db, scoring
from engine.cli.output import JsonFlag, emit_json, err, fail, out
from engine.errors import NurtureError
from engine.schedule.jobs import Jobs
from engine.settings import configure_logging, get_settings
from engine.timeutil import EPOCH, isoformat, parse_instant, utcnow

TICK_AHEAD = timedelta(days=100 * 365)  # how far ahead `tick --now` may simulate


@app.command("tick")
def tick_command(
    now: Annotated[
        str | None, typer.Option(help="ISO time to run as (default: now), for tests and cron.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run all due scheduled work once: decay, time evaluations, due campaign steps, dispatch,
    alerts."""
    settings = get_settings()
    try:
        moment = parse_instant(now) if now else utcnow()
    except NurtureError as error:
        raise fail(f"--now: {error}") from None
    # Waits, windows and send windows are added to this time: bounded, they cannot overflow.
    latest = utcnow() + TICK_AHEAD
    if not EPOCH <= moment <= latest:
        raise fail(f"--now: must be between {EPOCH:%Y-%m-%d} and {latest:%Y-%m-%d}")
    db = open_db(settings)
    scoring(db, settings)
    try:
        result = Jobs(db, settings).tick(moment)
    except NurtureError as error:
        raise fail(str(error)) from None
    if as_json:
        emit_json(result.as_json())
        return
    steps, sent, alerts = result.steps, result.dispatch, result.alerts.as_json()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    for rejected in result.time.rejected:
        err.print(f"[red]time evaluation rejected[/red] {escape(rejected.error)}", highlight=False)
    for held in steps.errors:
        err.print(f"[red]held[/red] {escape(held)}", highlight=False)
    out.print(
        f"{isoformat(moment)}: decay {result.decayed} ledger rows; time evaluations "
        f"{result.time.evaluated}; steps: queued {steps.queued}, "
        f"held {steps.held}, deferred {steps.deferred}, skipped {steps.skipped}, exited "
        f"{steps.exited}, completed {steps.completed}; dispatch: sent {sent.sent}, retried "
        f"{sent.retried}, failed {sent.failed}, suppressed {sent.suppressed}; alerts: created "
        f"{alerts['created']}, suppressed {alerts['suppressed']}, delivered {alerts['sent']}, "
        f"retried {alerts['retried']}, failed {alerts['failed']}",
        highlight=False,
    )


@app.command("worker")
def worker_command() -> None:
    """The scheduler and dispatcher only (no HTTP), for scale-out: run as many as you like."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    settings = get_settings()
    configure_logging(settings)
    settings.signing_key()  # unsubscribe links are signed with it: refused now if unusable
    db = open_db(settings)
    scoring(db, settings)
    scheduler = BlockingScheduler(timezone="UTC")
    Jobs(db, settings).schedule(scheduler)
    heap.settle()
    err.print(
        f"worker: decay, campaign steps, dispatch and alerts via the {settings.mail_backend} "
        "backend"
    )
    with suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="HTTP server processes. The scheduler runs once, in the parent process. "
            "On SQLite the processes write one at a time (a lock file beside the database).",
        ),
    ] = 1,
) -> None:
    """The HTTP API, the dashboard and the scheduler in one process (or, with --workers, the
    scheduler and N HTTP processes)."""
    import uvicorn

    from engine.api.app import create_app, scheduled
    from engine.api.webhooks import open_webhook_warning

    settings = get_settings()
    configure_logging(settings)
    db = open_db(settings)
    scoring(db, settings)
    # Both secrets made (or refused) now, not on the first request: the kept token file exists
    # before anyone is told to read it.
    settings.access_token()
    settings.signing_key()
    # Where the token is, never the token itself: this line ends up in logs.
    where = "NURTURE_API_TOKEN" if settings.api_token else f"in {settings.token_file}"
    processes = f" ({workers} HTTP processes)" if workers > 1 else ""
    err.print(
        f"nurture: API, dashboard and scheduler on http://{host}:{port}{processes} "
        f"(API reference at /docs); the API token is {where}",
        highlight=False,
    )
    if warning := open_webhook_warning(settings):
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    # log_config=None: uvicorn logs through the handlers configure_logging set up.
    options = {"host": host, "port": port, "log_config": None,
               "log_level": settings.log_level.lower()}  # fmt: skip
    if workers == 1:
        served = create_app(settings, db, scheduler=True)
        heap.settle()
        uvicorn.run(served, **options)  # type: ignore[arg-type]
        return
    # Each worker process builds its app from the same environment (worker_app); the
    # scheduler is this process's, so the jobs run once however many workers serve.
    # A worker answers uvicorn's health check only once it has imported and built its app:
    # seconds on a busy machine, where the default 5 s had workers killed and restarted.
    # Each worker listens on a socket of its own, the kernel spreading connections over them
    # (engine.api.spread).
    with scheduled(db, settings):
        heap.settle()
        uvicorn.run(
            f"{__name__}:worker_app",
            factory=True,
            workers=workers,
            timeout_worker_healthcheck=60,
            loop="engine.api.spread:new_event_loop",
            **options,  # type: ignore[arg-type]
        )


def worker_app() -> object:
    """The app of one ``nurture serve --workers`` HTTP process (no scheduler)."""
    from engine.api.app import create_app

    settings = get_settings()
    configure_logging(settings)
    served = create_app(settings)
    heap.settle()
    return served


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Apply migrations (every command also does this on start)."""
    open_db(get_settings())
    out.print("database is up to date")


@app.command("demo")
def demo_command(
    leads: Annotated[int, typer.Option(help="How many sample leads.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the sample data.")] = 7,
) -> None:
    """The main job on embedded defaults: score sample leads, run the scheduler for two
    simulated weeks (decay, campaign emails to the outbox), show the funnel and the emails."""
    from engine.demo.run import run_demo

    settings = get_settings()
    db = open_db(settings)
    active = scoring(db, settings)
    run_demo(db, settings, active.compiled, active.campaigns, out, leads=leads, seed=seed)
