"""Who may call the API: the bearer token ``NURTURE_API_TOKEN`` (header ``Authorization: Bearer
…``), and nothing else: no cookie, so no page of another site can make a signed-in browser call
the API (the dashboard's own sessions are ``engine.api.sessions``). The unsubscribe link, the
signed SendGrid webhook and ``/healthz`` do not use this."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from engine.api.app import Context, context

# Declares the scheme in /openapi.json; the check itself is `valid`.
BEARER = HTTPBearer(auto_error=False, description="NURTURE_API_TOKEN")


def presented(request: Request) -> str | None:
    """The token a request carries in its Authorization header."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def valid(token: str | None, ctx: Context) -> bool:
    expected = ctx.settings.access_token()
    return token is not None and hmac.compare_digest(token.encode(), expected.encode())


async def require_token(
    request: Request,
    ctx: Annotated[Context, Depends(context)],
    _scheme: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)] = None,
) -> None:
    # On the event loop (see engine.api.app.context); its one I/O, reading the kept token file
    # when NURTURE_API_TOKEN is unset, is a cached read of a few bytes.
    if not valid(presented(request), ctx):
        raise HTTPException(
            401, "a valid API token is required", headers={"WWW-Authenticate": "Bearer"}
        )
