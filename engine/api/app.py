"""The FastAPI application: settings and database injected once per app, the routers mounted,
and (in ``nurture serve``) the scheduler started and stopped with the app."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from sqlalchemy import Engine

from engine import db as database
from engine.active import Active
from engine.api.limits import BodyLimit
from engine.errors import NurtureError
from engine.ingest.group import GroupCommit
from engine.redact import Redacting
from engine.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Context:
    settings: Settings
    db: Engine
    # This process's writer of scored records (engine.ingest.group): concurrent requests'
    # events commit together.
    writer: GroupCommit = field(init=False)
    # The configuration in force as last looked up, and when (engine.api.intake.in_force).
    config: tuple[float, Active] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.writer = GroupCommit(self.db, self.settings.batch_size)


async def context(request: Request) -> Context:
    """The dependency every route takes: this app's settings and database. Dependencies that
    do no I/O are ``async``: FastAPI runs a plain one on a worker thread, a hop per request."""
    found: Context = request.app.state.nurture
    return found


Ctx = Annotated[Context, Depends(context)]


async def no_nul(request: Request) -> None:
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
    from engine.api import dashboard, events, leads, ops, outbox, rulesets, webhooks

    if db is None:
        db = database.open_database(settings.database_url)

    routers = (webhooks.router, events.router, leads.router, outbox.router, rulesets.router,
               ops.router, dashboard.router)  # fmt: skip
    # uvicorn's access log: addresses and tokens in URLs redacted, the route of a lead's page
    # (`/api/leads/`, before `{email}`) kept.
    paths = [getattr(route, "path", "") for router in routers for route in router.routes]
    access_log = Redacting(settings.secrets(), keep={p.split("{")[0] for p in paths if "{" in p})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        logging.getLogger("uvicorn.access").addFilter(access_log)
        try:
            if scheduler:
                with scheduled(db, settings):
                    yield
            else:
                yield
        finally:
            logging.getLogger("uvicorn.access").removeFilter(access_log)

    if warning := webhooks.open_webhook_warning(settings):
        log.warning(warning)
    # /docs and /redoc with their scripts and styles served from the fastapi-offline package:
    # the reference works where no CDN can be reached.
    app = FastAPIOffline(
        title="nurture",
        lifespan=lifespan,
        dependencies=[Depends(no_nul)],
        static_url="/docs-assets",
    )
    app.state.nurture = Context(settings, db)
    app.add_exception_handler(NurtureError, _unprocessable)
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    for router in routers:
        app.include_router(router)
    events.check_direct(app)
    return app


@contextmanager
def scheduled(db: Engine, settings: Settings) -> Iterator[None]:
    """The scheduler of ``nurture serve``, running while the app (or its workers) serve."""
    from apscheduler.schedulers.background import BackgroundScheduler

    from engine.schedule.jobs import Jobs

    clock = BackgroundScheduler(timezone="UTC")
    Jobs(db, settings).schedule(clock)
    clock.start()
    try:
        yield
    finally:
        clock.shutdown(wait=False)
