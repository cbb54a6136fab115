"""What operators watch: ``/healthz`` (the database answers a real query on the migrated schema)
and ``/metrics`` (Prometheus text, see ``engine.metrics``). Both are open without the API token
so that load balancers and scrapers need no secret: neither says anything about any lead, only
counts and rule names."""

from __future__ import annotations

import logging
import math

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from engine import metrics as gauges
from engine.api.app import Ctx
from engine.api.models import Health
from engine.db import failure, reading
from engine.send.outbox import LISTED, backlog
from engine.timeutil import utcnow

log = logging.getLogger(__name__)
router = APIRouter(tags=["operations"])


@router.get(
    "/healthz",
    response_model=Health,
    responses={503: {"model": Health, "description": "The database is not usable."}},
)
def healthz(ctx: Ctx) -> Health | JSONResponse:
    """200 when the database answers a query on the migrated schema, else 503 with the reason."""
    try:
        with reading(ctx.db) as conn:
            migrated = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except SQLAlchemyError as error:
        reason = f"database: {failure(error)}"
        return JSONResponse(Health(status="unavailable", reason=reason).model_dump(), 503)
    if migrated is None:
        body = Health(status="unavailable", reason="database: not migrated (nurture db upgrade)")
        return JSONResponse(body.model_dump(), 503)
    return Health(status="ok")


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
def metrics(ctx: Ctx) -> Response:
    """Counters, histograms and the outbox gauges in Prometheus' text format (``nurture_*``)."""
    try:
        found = backlog(ctx.db, utcnow())
        gauges.outbox_state(found.counts, found.oldest_seconds)
    except SQLAlchemyError as error:  # the counters are still worth serving
        log.warning("outbox gauges: the database could not be read: %s", type(error).__name__)
        gauges.outbox_state(dict.fromkeys(LISTED, math.nan), math.nan)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
