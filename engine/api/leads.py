"""Leads over HTTP: upsert a profile (scored as a ``profile_update``, like a profile line of
``nurture ingest``), list leads, read one with its ledger and stage history, and the pipeline
report. Reads come from ``engine.reports.leads``, the same as the CLI's ``--json``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool

from engine.api.app import Context, Ctx
from engine.api.auth import require_token
from engine.api.intake import in_force, read_json, score_async
from engine.api.models import LeadDetail, LeadIn, LeadSummary, Pipeline, errors, json_body
from engine.errors import InvalidRecord, NurtureError
from engine.ingest.parse import LeadRecord, record
from engine.replay.asof import as_of as replayed
from engine.reports import leads as report
from engine.reports.pipeline import pipeline, report_options
from engine.timeutil import parse_instant

router = APIRouter(prefix="/api", tags=["leads"], dependencies=[Depends(require_token)])


def profile(raw: Any) -> LeadRecord:
    """A request body → a profile record. Without a client ``id`` each upsert is a new
    ``profile_update`` (a content-derived id, as a file gets, would make re-sending an earlier
    profile a no-op duplicate and leave the later one in place)."""
    if not isinstance(raw, dict):
        raise InvalidRecord("the body must be a JSON object with `email` and profile attributes")
    if raw.get("type") not in (None, ""):
        raise InvalidRecord("type: a lead profile has no type (events go to POST /api/events)")
    if raw.get("id") in (None, ""):
        raw = {**raw, "id": f"api-profile:{uuid.uuid4().hex}"}
    found = record(0, raw)
    assert isinstance(found, LeadRecord)
    return found


def lead_or_404(ctx: Context, email: str) -> dict[str, Any]:
    claimed = in_force(ctx).compiled.ruleset.claimed
    try:
        detail = report.lead_detail(ctx.db, email, claimed)
    except InvalidRecord as error:
        raise HTTPException(422, str(error)) from None
    if detail is None:
        raise HTTPException(404, "no lead with that email")
    return detail


@router.post(
    "/leads",
    response_model=LeadDetail,
    responses=errors(400, 401, 413, 422, 503),
    openapi_extra=json_body(LeadIn.model_json_schema()),
)
async def upsert_lead(request: Request, ctx: Ctx) -> dict[str, Any]:
    """Create or update a lead by email: the attributes given are set (others kept) and the lead
    is scored as a ``profile_update``. Answers the lead as it is now."""
    try:
        item = profile(await read_json(request))
    except InvalidRecord as error:
        raise HTTPException(422, str(error)) from None
    result = await score_async(ctx, [item])
    if result.rejected:
        raise HTTPException(422, result.rejected[0].error)
    return await run_in_threadpool(lead_or_404, ctx, item.email)


@router.get("/leads", response_model=list[LeadSummary], responses=errors(401, 422))
def list_leads(
    ctx: Ctx,
    temperature: Annotated[str | None, Query(description="cold, warm, hot, …")] = None,
    stage: Annotated[str | None, Query(description="A funnel stage, e.g. mql.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
    band: Annotated[
        str | None, Query(description="A named score's band: `health=at_risk`.", max_length=200)
    ] = None,
) -> list[dict[str, Any]]:
    """Leads, highest score first, filtered by temperature, stage and named-score band."""
    try:
        wanted = report.band_filter(band) if band else None
    except InvalidRecord as error:
        raise HTTPException(422, str(error)) from None
    return report.list_leads(ctx.db, temperature, stage, limit, offset=offset, band=wanted)


@router.get("/leads/{email}", response_model=LeadDetail, responses=errors(401, 404, 422))
def get_lead(
    email: str,
    ctx: Ctx,
    as_of: Annotated[
        str | None,
        Query(description="Scores as of this time: the lead's events up to then, replayed."),
    ] = None,
) -> dict[str, Any]:
    """One lead: scores, temperature, stage, the score ledger (every change with its rule and
    event), stage history, recent events and the top reasons behind the score. With ``as_of``,
    the scores, bands, stage, tags, attributes and ledger are those the version in force gives
    the lead's events up to that time."""
    detail = lead_or_404(ctx, email)
    if as_of is None:
        return detail
    try:
        at = parse_instant(as_of)
    except NurtureError as error:
        raise HTTPException(422, f"as_of: {error}") from None
    found = replayed(ctx.db, in_force(ctx).compiled, email, at)
    if found is None:
        raise HTTPException(404, "no lead with that email")
    keep = ("score", "scores", "totals", "bands", "temperature", "stage", "tags", "attributes")
    return {**detail, **{k: found[k] for k in keep}, "ledger": found["ledger"],
            "ruleset_version": found["ruleset_version"], "as_of": found["as_of"]}  # fmt: skip


@router.get("/pipeline", response_model=Pipeline, responses=errors(401, 422, 503))
def pipeline_report(
    ctx: Ctx,
    since: Annotated[str | None, Query(description="Period start, ISO date or time.")] = None,
    until: Annotated[str | None, Query(description="Period end (excluded).")] = None,
    stuck_days: Annotated[
        list[str] | None,
        Query(description="Days in a stage before a lead counts as stuck: `45` or `mql=14`."),
    ] = None,
    cohort: Annotated[bool, Query(description="Add the monthly cohorts.")] = False,
) -> dict[str, Any]:
    """The pipeline report, as `nurture pipeline --json` gives it: per stage the leads now,
    entries, conversion to the next stage, time in stage and stuck leads; backward moves and
    exits with their rules; cohorts on request."""
    ruleset = in_force(ctx).compiled.ruleset
    options = report_options(ruleset, since, until, stuck_days, cohort)  # OptionError: a 422
    return pipeline(ctx.db, ruleset, **options)
