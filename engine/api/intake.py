"""The HTTP edge of ingest: request bodies (within the limit ``engine.api.limits`` enforces) and
records scored through the one ingest path (``engine.ingest.batch.ingest``) with the ruleset and
campaigns in force, exactly as ``nurture ingest`` scores a file. ``POST /api/events``,
``POST /api/leads``, the SendGrid webhook and the unsubscribe link all come through here."""

from __future__ import annotations

import time
from typing import Any

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from engine import jsontext
from engine.active import Active, NoRuleset, active
from engine.api.app import Context
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parse import Parsed

# How long a looked-up configuration serves requests before it is looked up again: reading
# and fingerprinting the ruleset, campaigns and templates took ~5 ms, more than scoring an
# event, so an edit (or a version put in force) reaches the API within this many seconds.
CONFIG_SECONDS = 1.0


def in_force(ctx: Context) -> Active:
    """The ruleset and campaigns in force, or 503: without a ruleset nothing can be scored or
    reported. May read the database and the files: call it from a worker thread."""
    found = cached_config(ctx)
    if found is not None:
        return found
    try:
        found = active(ctx.db, ctx.settings)
    except NoRuleset as error:
        raise HTTPException(503, f"no ruleset in force: {error}") from None
    ctx.config = (time.monotonic(), found)
    return found


def cached_config(ctx: Context) -> Active | None:
    """The configuration looked up less than ``CONFIG_SECONDS`` ago, if any (no I/O)."""
    cached = ctx.config
    if cached is not None and time.monotonic() - cached[0] < CONFIG_SECONDS:
        return cached[1]
    return None


def score(ctx: Context, items: list[Parsed]) -> IngestResult:
    """Records through the rules, with campaign enrollment and exit, like ``nurture ingest``;
    committed together with other requests' records that arrive meanwhile (group commit). For
    a worker thread; on the event loop, :func:`score_async`."""
    found = in_force(ctx)
    if len(items) > ctx.settings.batch_size:
        return _alone(ctx, found, items)
    return ctx.writer.ingest(found.compiled, items, found.campaigns)


async def score_async(ctx: Context, items: list[Parsed]) -> IngestResult:
    """:func:`score` from the event loop: the request waits for its group's commit without
    holding a thread (the configuration is looked up on a thread when its cache has expired)."""
    found = cached_config(ctx)
    if found is None:
        found = await run_in_threadpool(in_force, ctx)
    if len(items) > ctx.settings.batch_size:
        return await run_in_threadpool(_alone, ctx, found, items)
    return await ctx.writer.submit(found.compiled, items, found.campaigns)


def _alone(ctx: Context, found: Active, items: list[Parsed]) -> IngestResult:
    """More than one transaction's worth: ingested on its own, a batch per transaction."""
    return ingest(ctx.db, found.compiled, items, ctx.settings.batch_size, campaigns=found.campaigns)


def too_large(what: str) -> HTTPException:
    return HTTPException(413, what)


async def read_body(request: Request) -> bytes:
    """The body, already known to be within ``NURTURE_MAX_BODY_BYTES`` (``engine.api.limits``
    refuses a larger one before any route runs)."""
    return await request.body()


def parse_json(body: bytes) -> Any:
    """A body's JSON, or 400 saying why not (not UTF-8, not JSON, nested deeper than the parser
    goes)."""
    try:
        return jsontext.loads(body)
    except jsontext.JsonError as error:
        raise HTTPException(400, f"the body is not valid JSON: {error}") from None


async def read_json(request: Request) -> Any:
    return parse_json(await read_body(request))
