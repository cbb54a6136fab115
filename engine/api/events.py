"""``POST /api/events``: the HTTP way into the flow. One event or a list, validated by the same
parser as ``nurture ingest`` and scored by the same ingest path; the answer says what became of
each item (accepted, duplicate of an event already stored, or rejected with the reason)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request

from engine.api.app import Ctx
from engine.api.auth import require_token
from engine.api.intake import read_json, score_async, too_large
from engine.api.models import EventIn, IngestAnswer, ItemOutcome, Rejected, errors, json_body
from engine.errors import InvalidRecord
from engine.ingest.batch import IngestResult
from engine.ingest.parse import Parsed, Rejection, record

router = APIRouter(prefix="/api", tags=["events"], dependencies=[Depends(require_token)])

_EVENT = EventIn.model_json_schema()
BODY_SCHEMA = {"anyOf": [_EVENT, {"type": "array", "items": _EVENT}]}


def parse_event(index: int, raw: Any) -> Parsed:
    """One item of the request → an event record, or its rejection. A profile (no ``type``) is
    refused here: over HTTP profiles have their own endpoint."""
    if isinstance(raw, dict) and raw.get("type") in (None, ""):
        return Rejection(index, "type: missing (lead profiles go to POST /api/leads)")
    try:
        return record(index, raw)
    except InvalidRecord as error:
        return Rejection(index, str(error))


def answer(parsed: list[Parsed], result: IngestResult) -> IngestAnswer:
    """Per-item outcomes from the ingest result: an item is rejected or a duplicate when ingest
    says so by its index, else it was accepted."""
    rejected = {r.line: r.error for r in result.rejected}
    duplicates = set(result.duplicate_lines)
    items = []
    for index, item in enumerate(parsed):
        key = None if isinstance(item, Rejection) else item.id
        if index in rejected:
            items.append(ItemOutcome(index=index, status="rejected", id=key, error=rejected[index]))
        elif index in duplicates:
            items.append(ItemOutcome(index=index, status="duplicate", id=key))
        else:
            items.append(ItemOutcome(index=index, status="accepted", id=key))
    return IngestAnswer(
        accepted=result.accepted,
        duplicates=result.duplicates,
        rejected=[Rejected(index=r.line, error=r.error) for r in result.rejected],
        items=items,
    )


@router.post(
    "/events",
    response_model=IngestAnswer,
    responses=errors(400, 401, 413, 422, 503),
    openapi_extra=json_body(BODY_SCHEMA),
)
async def post_events(request: Request, ctx: Ctx) -> IngestAnswer:
    """Score one event (an object) or several (a list), idempotent by event id. Bad items are
    rejected with the reason and the rest kept; the answer is 200 whatever became of each item,
    listed in ``items`` in request order."""
    payload = await read_json(request)
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise HTTPException(422, "the body must be an event object or a list of them")
    limit = ctx.settings.max_events_per_request
    if len(payload) > limit:
        raise too_large(
            f"{len(payload)} events in one request; at most {limit} "
            "(NURTURE_MAX_EVENTS_PER_REQUEST)"
        )
    parsed = [parse_event(index, raw) for index, raw in enumerate(payload)]
    result = await score_async(ctx, parsed)
    return answer(parsed, result)
