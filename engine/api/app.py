"""The FastAPI application: settings and database injected once per app, the routers mounted,
and (in ``nurture serve``) the scheduler started and stopped with the app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine

from engine import db as database
from engine.errors import NurtureError
from engine.settings import Settings


@dataclass
class Context:
    settings: Settings
    db: Engine


def context(request: Request) -> Context:
    """The dependency every route takes: this app's settings and database."""
    found: Context = request.app.state.nurture
    return found


Ctx = Annotated[Context, Depends(context)]


def no_nul(request: Request) -> None:
    """PostgreSQL stores no NUL in text: a query or path parameter holding one is refused with a
    422 naming it (as ingest refuses NUL in records) instead of failing in the database."""
    found = [("query", k) for k, v in request.query_params.multi_items() if "\x00" in v]
    found += [("path", k) for k, v in request.path_params.items() if "\x00" in str(v)]
    if found:
        raise RequestValidationError(
            [
                {"type": "value_error", "loc": loc, "msg": "must not contain NUL characters"}
                for loc in found
            ]
        )


async def _unprocessable(_request: Request, error: Exception) -> JSONResponse:
    """Errors the caller can act on (a bad option, a record that cannot be stored) are a 422
    saying what is wrong; anything else stays a 500."""
    return JSONResponse({"detail": str(error)}, status_code=422)


def create_app(settings: Settings, db: Engine | None = None, scheduler: bool = False) -> FastAPI:
    from engine.api import dashboard, events, leads, ops, rulesets, webhooks

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

    app = FastAPI(title="nurture", lifespan=lifespan, dependencies=[Depends(no_nul)])
    app.state.nurture = Context(settings, db)
    app.add_exception_handler(NurtureError, _unprocessable)
    app.include_router(webhooks.router)
    for router in (events.router, leads.router, rulesets.router, ops.router, dashboard.router):
        app.include_router(router)
    return app
