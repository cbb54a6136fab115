"""``nurture tick``, ``worker``, ``serve``, ``demo``, ``db upgrade``: running the service."""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated

import typer
from rich.markup import escape

from engine import db as database
from engine.cli.app import app, db_app, open_db, scoring
from engine.cli.output import JsonFlag, emit_json, err, fail, out
from engine.errors import NurtureError
from engine.schedule.jobs import Jobs
from engine.settings import configure_logging, get_settings
from engine.timeutil import isoformat, parse_instant, utcnow


@app.command("tick")
def tick_command(
    now: Annotated[
        str | None, typer.Option(help="ISO time to run as (default: now), for tests and cron.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run all due scheduled work once: decay, due campaign steps, dispatch, sales alerts."""
    settings = get_settings()
    try:
        moment = parse_instant(now) if now else utcnow()
    except NurtureError as error:
        raise fail(f"--now: {error}") from None
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
    for held in steps.errors:
        err.print(f"[red]held[/red] {escape(held)}", highlight=False)
    out.print(
        f"{isoformat(moment)}: decay {result.decayed} ledger rows; steps: queued {steps.queued}, "
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
    db = open_db(settings)
    scoring(db, settings)
    scheduler = BlockingScheduler(timezone="UTC")
    Jobs(db, settings).schedule(scheduler)
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
) -> None:
    """The HTTP API, the dashboard and the scheduler in one process."""
    import uvicorn

    from engine.api.app import create_app

    settings = get_settings()
    configure_logging(settings)
    db = open_db(settings)
    scoring(db, settings)
    settings.access_token()  # creates the kept token file before anyone is told to read it
    # Where the token is, never the token itself: this line ends up in logs.
    where = "NURTURE_API_TOKEN" if settings.api_token else f"in {settings.token_file}"
    err.print(
        f"nurture: API, dashboard and scheduler on http://{host}:{port} "
        f"(API reference at /docs); the API token is {where}",
        highlight=False,
    )
    app = create_app(settings, db, scheduler=True)
    # log_config=None: uvicorn logs through the handlers configure_logging set up.
    uvicorn.run(app, host=host, port=port, log_config=None, log_level=settings.log_level.lower())


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Apply migrations (every command also does this on start)."""
    settings = get_settings()
    database.upgrade(settings.database_url)
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
