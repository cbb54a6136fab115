"""``POST /api/rulesets/validate``: a marketer's editor or CI asks whether a ruleset would be
accepted, before it is committed. The same parser and warnings as ``nurture rules check``; the
ruleset in force is never touched, and nothing is registered with the rules engine (which keeps
every ruleset it is given until the process ends), so validating is free of side effects."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine

from engine.api.app import Ctx
from engine.api.auth import require_token
from engine.api.intake import read_body
from engine.api.models import Finding, Validation, errors
from engine.errors import ProblemsError
from engine.ingest.unseen import unseen
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
