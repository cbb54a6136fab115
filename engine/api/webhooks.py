"""Feedback into the flow: SendGrid's event webhook and the unsubscribe link. Both turn what
happened into events that score through the same ingest path as everything else (so an open
adds engagement and an unsubscribe exits campaigns), and both are reachable without the API
token: the webhook proves itself with SendGrid's ECDSA signature, the link with our own."""

from __future__ import annotations

import hashlib
import json
import logging
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from sqlalchemy import select

from engine.api.app import Context, Ctx
from engine.api.intake import score
from engine.api.models import errors
from engine.db import reading
from engine.db.schema import LEADS
from engine.errors import InvalidRecord
from engine.ingest.batch import IngestResult
from engine.ingest.parse import Parsed, Rejection, record
from engine.send.dispatch import settle_processed
from engine.send.unsubscribe import BadToken, read_token
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
PROPERTIES = ("outbox_id", "url", "reason", "sg_message_id", "useragent", "category")


def _verify(ctx: Context, request: Request, body: bytes) -> None:
    key = ctx.settings.sendgrid_webhook_public_key
    if not key:
        return
    signature = request.headers.get(EventWebhookHeader.SIGNATURE)
    timestamp = request.headers.get(EventWebhookHeader.TIMESTAMP)
    if not signature or not timestamp:
        raise HTTPException(403, "missing SendGrid signature headers")
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
    if isinstance(item.get("timestamp"), int | float):
        raw["occurred_at"] = isoformat(datetime.fromtimestamp(item["timestamp"], UTC))
    try:
        return record(index, raw)
    except InvalidRecord as error:
        return Rejection(index, str(error))


@router.post("/webhooks/sendgrid", tags=["feedback"], responses=errors(400, 403, 503))
async def sendgrid_events(request: Request, ctx: Ctx) -> dict[str, Any]:
    """SendGrid's event webhook: opens, clicks, bounces, spam reports and unsubscribes score
    through the rules (duplicates by ``sg_event_id`` are dropped); ``processed`` events settle
    messages a crashed dispatcher left uncertain. Signature-checked when a key is set."""
    body = await request.body()
    _verify(ctx, request, body)
    try:
        payload = json.loads(body)
    except ValueError:
        raise HTTPException(400, "the body must be a JSON array of SendGrid events") from None
    if not isinstance(payload, list):
        raise HTTPException(400, "the body must be a JSON array of SendGrid events")
    items = [found for i, item in enumerate(payload) if (found := _event(i, item)) is not None]
    settled: dict[int, str] = {}
    for item in payload:
        if isinstance(item, dict) and item.get("event") in SETTLING:
            try:
                settled[int(item["outbox_id"])] = str(item.get("sg_message_id") or "")
            except (KeyError, TypeError, ValueError):
                continue
    # Database work off the event loop: other requests go on being served meanwhile.
    result = await run_in_threadpool(score, ctx, items) if items else IngestResult()
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
