"""The one limit on request bodies (``NURTURE_MAX_BODY_BYTES``), for every route, enforced before
any route reads a byte: an ASGI middleware in front of the whole app. A declared length over the
limit is refused at once; a body without one (chunked) is taken in up to the limit and refused as
soon as it passes it, so no request makes the server hold more than the limit in memory, whether
its route reads the body (the API, the webhook, the sign-in form) or not (the unsubscribe link,
sign-out)."""

from __future__ import annotations

import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def too_large_message(limit: int) -> str:
    return f"the body is larger than {limit} bytes (NURTURE_MAX_BODY_BYTES)"


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        if declared is None:
            body = await self._take(receive)
            if body is None:
                await self._refuse(send)
                return
            receive = _replay(body, receive)
        await self.app(scope, receive, send)

    async def _take(self, receive: Receive) -> bytes | None:
        """The whole undeclared body, or None once it passes the limit (the rest unread)."""
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return bytes(body)  # the client went away; the route sees an empty body
            body += message.get("body", b"")
            if len(body) > self.limit:
                return None
            if not message.get("more_body", False):
                return bytes(body)

    async def _refuse(self, send: Send) -> None:
        content = json.dumps({"detail": too_large_message(self.limit)}).encode()
        # The rest of the body is never read, so the connection cannot carry another request.
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})


def _declared_length(scope: Scope) -> int | None:
    """The Content-Length header as a number; an unreadable one counts as over any limit."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() and len(text) < 20 else 1 << 63
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive channel that hands the route the body already taken, then the client's own
    messages (a disconnect)."""
    pending = [body]

    async def replayed() -> Message:
        if pending:
            return {"type": "http.request", "body": pending.pop(), "more_body": False}
        return await receive()

    return replayed
