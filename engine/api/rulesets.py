"""``POST /api/rulesets/validate``: a marketer's editor or CI asks whether a ruleset would be
accepted, before it is committed. The same parser and warnings as ``nurture rules check``; the
ruleset in force is never touched, and nothing is registered with the rules engine (which keeps
every ruleset it is given until the process ends), so validating is free of side effects.

``POST /api/rulesets/plan``: what a ruleset would change on the live leads (``nurture rules
plan --json``), nothing written. Planning compiles the ruleset, so each distinct text planned
stays registered with the rules engine until the process ends."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from engine.api.app import Context, Ctx
from engine.api.auth import require_token
from engine.api.intake import in_force, read_body
from engine.api.models import Finding, Validation, errors
from engine.errors import ProblemsError
from engine.home import compile_text
from engine.ingest.unseen import unseen
from engine.replay.run import plan
from engine.rules.lint import warnings
from engine.rules.load import parse_ruleset

router = APIRouter(prefix="/api", tags=["rulesets"], dependencies=[Depends(require_token)])
_TEXT = {"schema": {"type": "string"}}


def validate(text: str, db: Engine | None = None) -> Validation:
    try:
        ruleset = parse_ruleset(text, "<request>")
    except ProblemsError as error:
        problems = [Finding(line=p.line, message=p.message) for p in error.problems]
        return Validation(
            valid=False, ruleset=None, version=None, rules=0, problems=problems, warnings=[]
        )
    return Validation(
        valid=True,
        ruleset=ruleset.name,
        version=ruleset.version,
        rules=len(ruleset.rules),
        problems=[],
        warnings=[
            Finding(line=w.line, message=w.message)
            for w in warnings(ruleset) + (unseen(ruleset, db) if db is not None else [])
        ],
    )


@router.post(
    "/rulesets/validate",
    response_model=Validation,
    responses=errors(400, 401, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The ruleset's YAML text.",
            "content": {"application/yaml": _TEXT, "text/plain": _TEXT},
        }
    },
)
async def validate_ruleset(request: Request, ctx: Ctx) -> Validation:
    """Check a ruleset (its YAML text as the body): every problem with its line and a sentence,
    and the warnings ``nurture rules check`` gives (about attributes and event types the
    database never had too). 200 whether or not it is valid."""
    body = await read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8 text") from None
    # Reading YAML is pure Python (seconds for the largest files allowed): off the event loop.
    return await run_in_threadpool(validate, text, ctx.db)


def planned(ctx: Context, text: str) -> dict[str, Any]:
    """``nurture rules plan --json`` for a ruleset text: a 422 naming its problems when it does
    not compile."""
    try:
        compiled = compile_text(text, "<request>", ctx.settings.home)
    except ProblemsError as error:
        raise HTTPException(422, str(error)) from None
    current = in_force(ctx).compiled.ruleset
    summary = plan(ctx.db, ctx.settings, compiled, path="<request>")
    return {"in_force": current.version, "planned": compiled.ruleset.version, **summary.as_json()}


@router.post(
    "/rulesets/plan",
    responses=errors(400, 401, 413, 422, 503),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The ruleset's YAML text.",
            "content": {"application/yaml": _TEXT, "text/plain": _TEXT},
        }
    },
)
async def plan_ruleset(request: Request, ctx: Ctx) -> dict[str, Any]:
    """What a ruleset (its YAML text as the body) would change on the live leads if applied:
    every lead replayed under it, nothing written; the report of ``nurture rules plan --json``
    (score deltas, temperature and band transitions, stage moves, newly hot leads, enrollments
    that would start or end, the biggest changes with their ledger)."""
    body = await read_body(request)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPException(400, "the body is not UTF-8 text") from None
    return await run_in_threadpool(planned, ctx, text)
