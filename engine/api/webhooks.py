"""Feedback into the flow: SendGrid's event webhook and the unsubscribe link. Both turn what
happened into events that score through the same ingest path as everything else (so an open
adds engagement and an unsubscribe exits campaigns), and both are reachable without the API
token: the webhook proves itself with SendGrid's ECDSA signature, the link with our own."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sqlalchemy import select

from engine.api.app import Context, Ctx
from engine.api.intake import parse_json, read_body, score, score_async
from engine.api.models import errors
from engine.db import reading
from engine.db.schema import LEADS
from engine.errors import InvalidRecord
from engine.ingest.batch import IngestResult
from engine.ingest.parse import Parsed, Rejection, record
from engine.send.dispatch import settle_processed
from engine.send.unsubscribe import BadToken, read_token
from engine.settings import Settings
from engine.timeutil import isoformat

log = logging.getLogger(__name__)
router = APIRouter()

# SendGrid event → our event type. Others (delivered, deferred, dropped, ...) do not score.
EVENT_TYPES = {
    "open": "email_open",
    "click": "email_click",
    "bounce": "bounce",
    "spamreport": "spam_report",
    "unsubscribe": "unsubscribe",
    "group_unsubscribe": "unsubscribe",
}
# Events that prove the provider holds a message.
SETTLING = frozenset({"processed", "delivered"})
MAX_ROW_ID = 2**31 - 1  # outbox ids are 32-bit integers
PROPERTIES = ("outbox_id", "url", "reason", "sg_message_id", "useragent", "category")


# How far a signed call's timestamp may be from our clock: older is a replay, later a forgery
# made for later use. SendGrid signs each delivery (retries included) when it sends it.
SIGNATURE_WINDOW = 600  # seconds


def open_webhook_warning(settings: Settings) -> str | None:
    """What ``nurture serve`` and the log say at start when the webhook takes unsigned calls."""
    if settings.sendgrid_webhook_insecure and not settings.sendgrid_webhook_public_key:
        return (
            "NURTURE_SENDGRID_WEBHOOK_INSECURE=1 and no NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY: "
            "/webhooks/sendgrid takes unsigned calls, so anyone who can reach it can "
            "unsubscribe, score or settle"
        )
    return None


def _verify(ctx: Context, request: Request, body: bytes) -> None:
    key = ctx.settings.sendgrid_webhook_public_key
    if not key:
        if ctx.settings.sendgrid_webhook_insecure:
            return
        raise HTTPException(
            403,
            "the SendGrid webhook is closed: set NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY (or "
            "NURTURE_SENDGRID_WEBHOOK_INSECURE=1 to accept unsigned calls)",
        )
    signature = request.headers.get(EventWebhookHeader.SIGNATURE)
    timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP)
    if not signature or timestamp is None:
        raise HTTPException(403, "missing SendGrid signature headers")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise HTTPException(403, "the SendGrid timestamp is not a number of seconds")
    if abs(time.time() - int(timestamp)) > SIGNATURE_WINDOW:
        raise HTTPException(
            403, f"the SendGrid timestamp is more than {SIGNATURE_WINDOW} seconds from now"
        )
    try:
        genuine = EventWebhook(key).verify_signature(body.decode("utf-8"), signature, timestamp)
    except (ValueError, UnicodeDecodeError):
        genuine = False
    if not genuine:
        raise HTTPException(403, "the SendGrid signature does not match the body")


def _event(index: int, item: Any) -> Parsed | None:
    """One SendGrid event → an event record (None for types that do not score)."""
    if not isinstance(item, dict):
        return Rejection(index, "an event must be a JSON object")
    kind = EVENT_TYPES.get(str(item.get("event")))
    if kind is None:
        return None
    key = (
        item.get("sg_event_id")
        or hashlib.sha256(json.dumps(item, sort_keys=True, default=str).encode()).hexdigest()[:32]
    )
    raw: dict[str, Any] = {
        "id": f"sendgrid:{key}",
        "email": item.get("email"),
        "type": kind,
        "properties": {k: item[k] for k in PROPERTIES if k in item},
    }
    if "timestamp" in item:
        try:
            raw["occurred_at"] = isoformat(_instant(item["timestamp"]))
        except ValueError:
            return Rejection(index, "timestamp: not a Unix time in seconds")
    try:
        return record(index, raw)
    except InvalidRecord as error:
        return Rejection(index, str(error))


def _instant(stamp: Any) -> datetime:
    if isinstance(stamp, bool) or not isinstance(stamp, int | float) or not math.isfinite(stamp):
        raise ValueError(stamp)
    try:
        return datetime.fromtimestamp(stamp, UTC)
    except (OverflowError, OSError) as error:  # beyond what a date holds
        raise ValueError(stamp) from error


def _outbox_id(item: dict[str, Any]) -> int | None:
    """The outbox row a ``processed`` event names (SendGrid echoes it as text), if it is one."""
    try:
        found = int(str(item["outbox_id"]))
    except (KeyError, ValueError):
        return None
    return found if 0 < found <= MAX_ROW_ID else None


def _settling(payload: list[Any]) -> dict[int, str]:
    """Outbox id → SendGrid's message id, for the events that prove SendGrid holds a message."""
    settled: dict[int, str] = {}
    for item in payload:
        if not isinstance(item, dict) or not isinstance(item.get("event"), str):
            continue
        if item["event"] in SETTLING and (outbox_id := _outbox_id(item)) is not None:
            settled[outbox_id] = str(item.get("sg_message_id") or "")[:200]
    return settled


@router.post("/webhooks/sendgrid", tags=["feedback"], responses=errors(400, 403, 503))
async def sendgrid_events(request: Request, ctx: Ctx) -> dict[str, Any]:
    """SendGrid's event webhook: opens, clicks, bounces, spam reports and unsubscribes score
    through the rules (duplicates by ``sg_event_id`` are dropped); ``processed`` events settle
    messages a crashed dispatcher left uncertain. Only calls signed with the key
    ``NURTURE_SENDGRID_WEBHOOK_PUBLIC_KEY`` within the last minutes are taken (unless
    ``NURTURE_SENDGRID_WEBHOOK_INSECURE=1``)."""
    body = await read_body(request)
    _verify(ctx, request, body)
    payload = parse_json(body)
    if not isinstance(payload, list):
        raise HTTPException(400, "the body must be a JSON array of SendGrid events")
    items = [found for i, item in enumerate(payload) if (found := _event(i, item)) is not None]
    settled = _settling(payload)
    # Database work off the event loop: other requests go on being served meanwhile.
    result = await score_async(ctx, items) if items else IngestResult()
    count = await run_in_threadpool(settle_processed, ctx.db, list(settled), settled)
    return {**result.as_json(position="index"), "settled": count}


UNSUBSCRIBE: dict[str, Any] = {
    "tags": ["feedback"],
    "responses": {200: {"content": {"text/html": {}}}, **errors(400, 422, 503)},
}
# The token is in the address: no search engine, cache or other site is to keep it.
PRIVATE = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
PAGE = """<!doctype html><html><head><meta charset="utf-8">
<meta name="robots" content="noindex"><title>{title}</title></head>
<body style="font-family:sans-serif;max-width:32em;margin:4em auto">{body}</body></html>"""
# No `action`: the form posts back to this page's address, token included, wherever the
# service is mounted.
CONFIRM = PAGE.format(
    title="Unsubscribe",
    body="""<h1>Unsubscribe?</h1><p>You will not receive any more emails from us.</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>""",
)
DONE = PAGE.format(
    title="Unsubscribed",
    body="<h1>You are unsubscribed</h1><p>You will not receive any more emails from us.</p>",
)


def _lead_of(ctx: Context, token: str) -> Any:
    """The lead a genuine unsubscribe token names (id, email, subscribed, version); 400 for a
    forged or altered token, or one for a lead that is no longer there."""
    try:
        found = read_token(ctx.settings.signing_key(), token)
    except BadToken as error:
        raise HTTPException(400, str(error)) from None
    query = select(
        LEADS.c.id, LEADS.c.email, LEADS.c.created_at, LEADS.c.subscribed, LEADS.c.version
    ).where(LEADS.c.id == found.lead_id)
    with reading(ctx.db) as conn:
        lead = conn.execute(query).first()
    if lead is None or not found.names(lead.email, lead.created_at):
        raise HTTPException(400, "the unsubscribe link is not valid")
    return lead


@router.get("/unsubscribe", **UNSUBSCRIBE)
def unsubscribe_page(token: str, ctx: Ctx) -> HTMLResponse:
    """The signed link in every email: a page that asks first, because link scanners and
    previews follow links; its button (or the mail client's one click) is the POST."""
    lead = _lead_of(ctx, token)
    return HTMLResponse(CONFIRM if lead.subscribed else DONE, headers=PRIVATE)


@router.post("/unsubscribe", operation_id="unsubscribe_post", **UNSUBSCRIBE)
def unsubscribe(token: str, ctx: Ctx) -> HTMLResponse:
    """Opts the lead out at once (RFC 8058 one click: ``List-Unsubscribe=One-Click``). A forged
    or altered token is refused."""
    lead = _lead_of(ctx, token)
    if lead.subscribed:
        # One event per click that finds the lead subscribed: the lead's version is in the id,
        # so two clicks racing on the same state record one unsubscribe, and a click after a
        # re-subscribe records another.
        raw = {"id": f"unsubscribe-link:{lead.id}:v{lead.version}", "email": lead.email,
               "type": "unsubscribe", "properties": {"via": "link"}}  # fmt: skip
        result = score(ctx, [record(0, raw)])
        if result.rejected:
            raise HTTPException(500, "could not record the unsubscribe; please try again")
        log.info("lead %s unsubscribed by link", lead.id)
    return HTMLResponse(DONE, headers=PRIVATE)
