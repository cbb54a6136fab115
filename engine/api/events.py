"""``POST /api/events``: the HTTP way into the flow. One event or a list, validated by the same
parser as ``nurture ingest`` and scored by the same ingest path; the answer says what became of
each item (accepted, duplicate of an event already stored, or rejected with the reason).

The route is the API's hot path (one request per event from most senders), so it is a
:class:`Direct` route: the same steps as FastAPI's handler, called straight, without FastAPI's
per-request dependency solving and response validation; :func:`check_direct` refuses to build
an app whose route would do anything else."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.datastructures import DefaultPlaceholder
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts

from engine.api.app import Ctx, context, no_nul
from engine.api.auth import BEARER, require_token
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


class Direct(APIRoute):
    """``POST /api/events`` answered by :func:`_direct`: FastAPI's handler solves the route's
    dependencies (~a dozen calls, signature checks, a validation pass over the answer) on every
    request, a sizeable share of a one-event request's CPU. What FastAPI documents and routes
    (path, OpenAPI, exception handlers, middleware) is unchanged; only the handler is."""

    def get_route_handler(self) -> Any:
        return _direct


async def _direct(request: Request) -> Response:
    """What FastAPI's handler does for this route, in its order: the app's dependency
    (:func:`~engine.api.app.no_nul`), the router's (:func:`~engine.api.auth.require_token`; its
    ``BEARER`` never refuses, it only documents the scheme), the endpoint, then the answer as
    FastAPI serialises a ``response_model`` (pydantic's JSON by alias)."""
    await no_nul(request)
    ctx = await context(request)
    await require_token(request, ctx)
    answered = await post_events(request, ctx)
    return Response(answered.model_dump_json(by_alias=True), media_type="application/json")


router.add_api_route(
    "/events",
    post_events,
    methods=["POST"],
    response_model=IngestAnswer,
    responses=errors(400, 401, 413, 422, 503),
    openapi_extra=json_body(BODY_SCHEMA),
    route_class_override=Direct,
)


def _shape(dependant: Dependant) -> tuple[Any, ...]:
    """What FastAPI would do for a dependant: its call, the parameters it reads from the
    request, and its own dependencies in order."""
    params = (dependant.path_params, dependant.query_params, dependant.header_params,
              dependant.cookie_params, dependant.body_params)  # fmt: skip
    return (
        dependant.call,
        [[field.name for field in kind] for kind in params],
        (dependant.request_param_name, dependant.http_connection_param_name),
        (dependant.response_param_name, dependant.background_tasks_param_name),
        [_shape(each) for each in dependant.dependencies],
    )


def _expected() -> tuple[Any, ...]:
    """The dependant :func:`_direct` stands for: ``no_nul``, ``require_token`` (``context``,
    the bearer scheme) and ``context``, then ``post_events(request, ctx)``."""
    none: list[list[str]] = [[], [], [], [], []]
    ctx: tuple[Any, ...] = (context, none, ("request", None), (None, None), [])
    bearer: tuple[Any, ...] = (BEARER, none, (None, "request"), (None, None), [])
    return (
        post_events,
        none,
        ("request", None),
        (None, None),
        [
            (no_nul, none, ("request", None), (None, None), []),
            (require_token, none, ("request", None), (None, None), [ctx, bearer]),
            ctx,
        ],
    )


def check_direct(app: FastAPI) -> None:
    """Refuse (at start-up) an app whose ``POST /api/events`` FastAPI would handle otherwise
    than :func:`_direct` does: other dependencies, parameters, overrides, answer model or
    response class. A change to the route or its router must change ``_direct`` with it."""
    found = [c for c in iter_route_contexts(app.routes) if isinstance(c.original_route, Direct)]
    problems = []
    if len(found) != 1:
        problems.append(f"{len(found)} Direct routes mounted")
    for route in found:
        if _shape(route.dependant) != _expected():
            problems.append("its dependencies or parameters changed")
        if BEARER.auto_error:
            problems.append("the bearer scheme refuses requests itself")
        answer_class = route.response_class
        if not (
            isinstance(answer_class, DefaultPlaceholder) and answer_class.value is JSONResponse
        ):
            problems.append("it has a response class of its own")
        serialised = (route.response_model, route.status_code, route.response_model_by_alias,
                      route.response_model_include, route.response_model_exclude,
                      route.response_model_exclude_unset, route.response_model_exclude_defaults,
                      route.response_model_exclude_none)  # fmt: skip
        if serialised != (IngestAnswer, None, True, None, None, False, False, False):
            problems.append("its answer is serialised otherwise")
        if app.dependency_overrides:
            problems.append("dependencies are overridden")
    if problems:
        raise RuntimeError(f"POST /api/events is not what its Direct handler does: {problems}")
