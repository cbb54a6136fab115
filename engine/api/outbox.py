"""The outbox over HTTP, as ``nurture outbox`` gives it: messages queued, held or failed with
their errors; release a held message (rendered again now) or retry a failed one. Bearer token."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from pydantic import BaseModel

from engine.api.app import Ctx
from engine.api.auth import require_token
from engine.api.models import errors
from engine.errors import NurtureError
from engine.schedule.jobs import release
from engine.send import outbox
from engine.send.outbox import NoSuchMessage
from engine.timeutil import utcnow

router = APIRouter(prefix="/api", tags=["outbox"], dependencies=[Depends(require_token)])
# Outbox ids are PostgreSQL integers: a larger one names no message.
OutboxId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class OutboxMessage(BaseModel):
    id: int
    status: str
    kind: str
    to: str | None
    campaign: str | None
    step: int | None
    template: str | None
    subject: str | None
    attempts: int
    created_at: str
    next_attempt_at: str
    last_error: str | None


@router.get("/outbox", response_model=list[OutboxMessage], responses=errors(401, 422))
def list_outbox(
    ctx: Ctx,
    status: Annotated[
        list[Literal["queued", "held", "failed"]] | None,
        Query(description="Only these (repeatable); default all three."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Messages queued, held (a template error) or failed, with their errors, longest due
    first."""
    return outbox.messages(ctx.db, status or outbox.LISTED, limit)


def _acted(action: Any, *args: Any) -> dict[str, Any]:
    try:
        found: dict[str, Any] = action(*args)
    except NoSuchMessage as error:
        raise HTTPException(404, str(error)) from None
    except NurtureError as error:  # not in the state the action applies to
        raise HTTPException(409, str(error)) from None
    return found


@router.post(
    "/outbox/{outbox_id}/release",
    response_model=OutboxMessage,
    responses=errors(401, 404, 409, 422, 503),
)
def release_message(outbox_id: OutboxId, ctx: Ctx) -> dict[str, Any]:
    """Render a held message again from its template now: it is queued, or held again with the
    new error (``status`` and ``last_error`` say which)."""
    return _acted(release, ctx.db, ctx.settings, outbox_id, utcnow())


@router.post(
    "/outbox/{outbox_id}/retry", response_model=OutboxMessage, responses=errors(401, 404, 409)
)
def retry_message(outbox_id: OutboxId, ctx: Ctx) -> dict[str, Any]:
    """Put a failed message back in the queue, due now with all its tries ahead of it."""
    return _acted(outbox.retry, ctx.db, outbox_id, utcnow())
