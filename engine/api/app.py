"""The FastAPI application: settings and database injected once per app, the routers mounted,
and (in ``nurture serve``) the scheduler started and stopped with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from sqlalchemy import Engine

from engine.settings import Settings
from engine.store import db as database


@dataclass
class Context:
    settings: Settings
    db: Engine


def context(request: Request) -> Context:
    """The dependency every route takes: this app's settings and database."""
    found: Context = request.app.state.nurture
    return found


def create_app(settings: Settings, db: Engine | None = None, scheduler: bool = False) -> FastAPI:
    from engine.api import events, leads, ops, rulesets, webhooks

    if db is None:
        database.upgrade(settings.database_url)
        db = database.connect(settings.database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ops.redact_access_log()
        if not scheduler:
            yield
            return
        from apscheduler.schedulers.background import BackgroundScheduler

        from engine.schedule.jobs import Jobs

        clock = BackgroundScheduler(timezone="UTC")
        Jobs(db, settings).schedule(clock)
        clock.start()
        try:
            yield
        finally:
            clock.shutdown(wait=False)

    app = FastAPI(title="nurture", lifespan=lifespan)
    app.state.nurture = Context(settings, db)
    app.include_router(webhooks.router)
    for router in (events.router, leads.router, rulesets.router, ops.router):
        app.include_router(router)
    return app
