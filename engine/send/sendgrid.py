"""The ``sendgrid`` mail backend: SendGrid's v3 Mail Send API through the official client.

The host comes from ``NURTURE_SENDGRID_HOST`` (tests point it at a fake on 127.0.0.1), every
call has a timeout, and the outbox id travels in ``custom_args`` so SendGrid's event webhook
can name the message it is about (``processed`` settles a row a crash left uncertain). 429 and
5xx answers, timeouts and refused connections are transient; other 4xx answers are permanent.
Requests go over kept-alive connections (:mod:`engine.send.pool`), not a new one per email.
"""

from __future__ import annotations

from urllib.error import URLError

from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Category,
    Content,
    CustomArg,
    From,
    Header,
    Mail,
    MimeType,
    To,
)

from engine.send.email import Email, TransientError, http_failure, one_line
from engine.send.pool import ConnectionPool, PooledClient, proxied


class SendGridMailer:
    def __init__(self, api_key: str, host: str, timeout: float = 10.0) -> None:
        self.client = SendGridAPIClient(api_key=api_key, host=host.rstrip("/"))
        if not proxied(self.client.host):
            # The official client with its transport swapped for kept-alive connections.
            self.client.client = PooledClient(
                host=self.client.host,
                request_headers=self.client._default_headers,
                version=3,
                timeout=timeout,
                pool=ConnectionPool(self.client.host),
            )

    @staticmethod
    def payload(email: Email) -> Mail:
        mail = Mail(
            from_email=From(email.from_email, one_line(email.from_name or "") or None),
            to_emails=To(email.to),
            subject=one_line(email.subject),
        )
        # text/plain must come before text/html in SendGrid's content list.
        mail.add_content(Content(MimeType.text, email.text))
        mail.add_content(Content(MimeType.html, email.html))
        for name, value in email.headers.items():
            mail.add_header(Header(one_line(name), one_line(value)))
        if email.message_id:  # the same on every try: the recipient's side can tell
            mail.add_header(Header("Message-ID", one_line(email.message_id)))
        mail.add_custom_arg(CustomArg("outbox_id", str(email.outbox_id)))
        if email.category:
            mail.add_category(Category(email.category[:255]))
        return mail

    def send(self, email: Email) -> str | None:
        try:
            response = self.client.send(self.payload(email))
        except HTTPError as error:
            status = int(error.status_code)
            reason = f"SendGrid {status}: {_detail(error.body)}"
            headers = error.headers
            wait = headers.get("Retry-After") if hasattr(headers, "get") else None
            raise http_failure(status, reason, wait) from None
        except (URLError, TimeoutError, ConnectionError) as error:
            raise TransientError(f"SendGrid unreachable: {error}") from None
        found = response.headers.get("X-Message-Id") if response.headers else None
        return str(found) if found else None


def _detail(body: object) -> str:
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    return " ".join(text.split())[:300] or "no detail"
