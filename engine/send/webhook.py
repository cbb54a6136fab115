"""The sales webhook: a JSON POST to a Slack-compatible incoming webhook
(``NURTURE_SALES_WEBHOOK_URL``), the webhook counterpart of the mail backends.

Like a mail backend it reports failure as :class:`TransientError` (429 with its Retry-After,
5xx, timeouts, refused connections) or :class:`PermanentError` (any other 4xx: a revoked hook,
a bad payload), so the dispatcher retries or fails the outbox row. The URL is a secret (it is
the credential): it never appears in errors, logs or the database.
"""

from __future__ import annotations

from typing import Any

import httpx

from engine.send.email import TransientError, http_failure


class WebhookSender:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        # One client per sender: its connection pool is shared by the dispatcher's threads.
        self.client = httpx.Client(timeout=timeout)

    def post(self, payload: dict[str, Any]) -> None:
        try:
            response = self.client.post(self.url, json=payload)
        except httpx.TimeoutException:
            raise TransientError("webhook timed out") from None
        except httpx.TransportError as error:
            raise TransientError(f"webhook unreachable: {type(error).__name__}") from None
        status = response.status_code
        if status < 300:
            return
        reason = f"webhook {status}: {' '.join(response.text.split())[:300] or 'no detail'}"
        raise http_failure(status, reason, response.headers.get("Retry-After"))

    def close(self) -> None:
        self.client.close()
