"""The API's JSON shapes as pydantic models (docs/design.md, "JSON shapes"), so that /openapi.json
describes exactly what each endpoint answers, and the error answers each one documents."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ApiError(BaseModel):
    """Every error answer: a sentence, or (for malformed parameters) FastAPI's list of them."""

    detail: str | list[dict[str, Any]]


def json_body(schema: dict[str, Any]) -> dict[str, Any]:
    """``openapi_extra`` for a route that reads its JSON body itself (to bound its size first)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses an endpoint may answer."""
    meaning = {
        400: "The body is not valid JSON or not UTF-8 text (or, for /unsubscribe, the link "
        "is not valid).",
        401: "No valid API token (header `Authorization: Bearer …`).",
        403: "The SendGrid signature is missing or does not match the body.",
        404: "No such lead or outbox message.",
        409: "The outbox message is not in the state the action applies to (held to release, "
        "failed to retry).",
        413: "The body is over NURTURE_MAX_BODY_BYTES, or has more items than "
        "NURTURE_MAX_EVENTS_PER_REQUEST.",
        422: "The request is well-formed JSON but not what this endpoint takes.",
        503: "No ruleset in force (none on disk, or broken with no earlier good version).",
    }
    return {code: {"model": ApiError, "description": meaning[code]} for code in codes}


class Rejected(BaseModel):
    index: int
    error: str


class ItemOutcome(BaseModel):
    index: int = Field(description="Position in the request's list (0 for a single object).")
    status: Literal["accepted", "duplicate", "rejected"]
    id: str | None = Field(description="The event id used for idempotency (given or derived).")
    error: str | None = None


class IngestAnswer(BaseModel):
    accepted: int
    duplicates: int
    rejected: list[Rejected]
    items: list[ItemOutcome]


class EventIn(BaseModel):
    """An event as ``POST /api/events`` takes it (also a line of ``nurture ingest``)."""

    email: str
    type: str = Field(description="page_view, email_open, form_submit, demo_request, … any name.")
    id: str | int | None = Field(
        default=None, description="Client id; the same id twice is stored and scored once."
    )
    occurred_at: str | None = Field(default=None, description="ISO 8601; default now.")
    properties: dict[str, Any] | None = None
    lead: dict[str, str | int | float | bool | None] | None = Field(
        default=None, description="Profile attributes to set on the lead with this event."
    )


class LeadIn(BaseModel):
    """A lead profile: ``email`` and any attributes (first_name, company, job_title, …)."""

    model_config = ConfigDict(extra="allow")

    email: str
    id: str | None = Field(
        default=None, description="Client id making a retry idempotent; default a fresh one."
    )
    occurred_at: str | None = None
    subscribed: bool | None = None


class LeadSummary(BaseModel):
    email: str
    score: int
    scores: dict[str, int]
    totals: dict[str, int]  # named scores (`scores:` in the ruleset)
    bands: dict[str, str]
    temperature: str
    stage: str
    stage_entered_at: str
    subscribed: bool
    tags: list[str]
    attributes: dict[str, Any]


class LedgerRow(BaseModel):
    rule: str
    component: str
    delta: int
    score_after: int
    event_id: str | None
    at: str
    ruleset_version: str | None = None  # the ruleset version that produced the row


class StageChange(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    from_: str | None = Field(alias="from")
    to: str
    rule: str
    at: str


class RecentEvent(BaseModel):
    id: str
    type: str
    occurred_at: str
    properties: dict[str, Any]


class Reason(BaseModel):
    rule: str
    points: int
    times: int


class LeadDetail(LeadSummary):
    ledger: list[LedgerRow]
    stage_history: list[StageChange]
    recent_events: list[RecentEvent]
    reasons: list[Reason]
    ruleset_version: str | None = None  # the version the lead's scores are under
    as_of: str | None = None  # `?as_of=`: the scores replayed up to this time


class PipelineStage(BaseModel):
    # Open to further figures, so a richer pipeline report passes through unchanged.
    model_config = ConfigDict(extra="allow")

    stage: str
    leads: int
    entered: int | None = None
    converted_to_next: int | None = None
    conversion_rate: float | None = None
    median_days: float | None = None
    p90_days: float | None = None
    stuck: int | None = None


class Pipeline(BaseModel):
    model_config = ConfigDict(extra="allow")

    stages: list[PipelineStage]


class Finding(BaseModel):
    line: int
    message: str


class Validation(BaseModel):
    valid: bool
    ruleset: str | None = Field(description="The ruleset's name, when it parsed.")
    version: str | None
    rules: int
    problems: list[Finding] = Field(description="Errors: the ruleset would be rejected.")
    warnings: list[Finding] = Field(description="Valid, but probably not what was meant.")


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    reason: str | None = None
