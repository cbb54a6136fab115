"""The ``sendgrid`` mail backend: SendGrid's v3 Mail Send API through the official client.

The host comes from ``NURTURE_SENDGRID_HOST`` (tests point it at a fake on 127.0.0.1), every
call has a timeout, and the outbox id travels in ``custom_args`` so SendGrid's event webhook
can name the message it is about (``processed`` settles a row a crash left uncertain). 429 and
5xx answers, timeouts and refused connections are transient; other 4xx answers are permanent.
Requests go over kept-alive connections (:mod:`engine.send.pool`), not a new one per email.

The request body is what the library's ``Mail`` helper builds (:meth:`SendGridMailer.payload`),
written out directly for the usual email between plain addresses (:meth:`SendGridMailer.body`):
the helper cost ~45 µs a message, a quarter of a sender's CPU between one answer and its next
request, all of it holding the GIL the other senders wait for.
"""

from __future__ import annotations

import re
from typing import Any
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
from sendgrid.helpers.mail.validators import ValidateApiKey

from engine.send.email import Email, TransientError, http_failure, one_line
from engine.send.pool import ConnectionPool, PooledClient, proxied

# An address the helper's parser (email.utils.parseaddr) gives back as it is, with no name.
_PLAIN = re.compile(r"[A-Za-z0-9_%+-]+(?:\.[A-Za-z0-9_%+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
# The check the helper's Content runs: no SendGrid API key pasted into a body.
_NO_API_KEY = ValidateApiKey()


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
        # The Mail Send endpoint's client, built once: ``SendGridAPIClient.send`` builds it
        # anew from each URL segment (``client.mail.send``) on every call.
        self.mail_send = self.client.client.mail.send

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

    @classmethod
    def body(cls, email: Email) -> dict[str, Any]:
        """``payload(email).get()``, equal key for key and in the same order; built without the
        helper when both addresses are plain (anything else is parsed by the helper)."""
        if not (_PLAIN.fullmatch(email.to) and _PLAIN.fullmatch(email.from_email)):
            return dict(cls.payload(email).get())
        for value in (email.text, email.html):
            _NO_API_KEY.validate_message_text(value)
        sender = {"email": email.from_email}
        if name := one_line(email.from_name or ""):
            sender = {"name": name, "email": email.from_email}
        # The helper inserts each header ahead of the earlier ones: the first one added of a
        # name keeps its value, and the last added comes first.
        headers = [(one_line(name), one_line(value)) for name, value in email.headers.items()]
        if email.message_id:
            headers.append(("Message-ID", one_line(email.message_id)))
        body: dict[str, Any] = {
            "from": sender,
            "subject": one_line(email.subject),
            "personalizations": [{"to": [{"email": email.to}]}],
            "content": [
                {"type": MimeType.text, "value": email.text},
                {"type": MimeType.html, "value": email.html},
            ],
            "headers": dict(reversed(headers)),
        }
        if not body["headers"]:
            del body["headers"]
        if email.category:
            body["categories"] = [email.category[:255]]
        body["custom_args"] = {"outbox_id": str(email.outbox_id)}
        return body

    def send(self, email: Email) -> str | None:
        try:
            response = self.mail_send.post(request_body=self.body(email))
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
