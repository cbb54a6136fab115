"""The HTTP edge of ingest: request bodies read within the configured limits, and records scored
through the one ingest path (``engine.ingest.batch.ingest``) with the ruleset and campaigns in
force, exactly as ``nurture ingest`` scores a file. ``POST /api/events``, ``POST /api/leads``, the
SendGrid webhook and the unsubscribe link all come through here."""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException, Request

from engine import jsontext
from engine.active import Active, NoRuleset, active
from engine.api.app import Context
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parse import Parsed
from engine.settings import Settings


def in_force(ctx: Context) -> Active:
    """The ruleset and campaigns in force, or 503: without a ruleset nothing can be scored or
    reported."""
    try:
        return active(ctx.db, ctx.settings)
    except NoRuleset as error:
        raise HTTPException(503, f"no ruleset in force: {error}") from None


def score(ctx: Context, items: list[Parsed]) -> IngestResult:
    """Records through the rules, with campaign enrollment and exit, like ``nurture ingest``."""
    found = in_force(ctx)
    return ingest(ctx.db, found.compiled, items, ctx.settings.batch_size, campaigns=found.campaigns)


def too_large(what: str) -> HTTPException:
    return HTTPException(413, what)


async def read_body(request: Request, settings: Settings) -> bytes:
    """The body, refused with 413 as soon as it passes ``NURTURE_MAX_BODY_BYTES``: a declared
    length over the limit is refused before reading, an undeclared one while streaming, so an
    oversized body never sits whole in memory."""
    limit = settings.max_body_bytes
    message = f"the body is larger than {limit} bytes (NURTURE_MAX_BODY_BYTES)"
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(message)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise too_large(message)
    return bytes(body)


async def read_json(request: Request, settings: Settings) -> Any:
    body = await read_body(request, settings)
    try:
        return jsontext.loads(body)
    except jsontext.JsonError as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None
