"""What the dispatcher hands a mail backend, and how a backend reports failure.

A backend's ``send`` returns the provider's id for the message (or None) when the provider has
it, raises :class:`TransientError` when trying again later may work (429, 5xx, a timeout, a
refused connection) and :class:`PermanentError` when it will not (a rejected address, a bad
request). The dispatcher turns these into sent, retried and failed outbox rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formataddr, make_msgid
from typing import Protocol

from engine.errors import NurtureError


@dataclass(frozen=True)
class Email:
    outbox_id: int
    to: str
    from_email: str
    from_name: str | None
    subject: str
    html: str
    text: str
    headers: dict[str, str] = field(default_factory=dict)
    category: str | None = None  # the campaign, for the provider's statistics


class TransientError(NurtureError):
    """Worth another try later; ``retry_after`` is the provider's hint, in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PermanentError(NurtureError):
    """Another try would fail the same way."""


def http_failure(status: int, reason: str, retry_after: object) -> TransientError | PermanentError:
    """An HTTP provider's refusal: 429 and 5xx are worth another try (after ``Retry-After``
    seconds, when it is a number), anything else is not."""
    if status == 429 or status >= 500:
        try:
            wait = float(retry_after) if isinstance(retry_after, str | int | float) else None
        except ValueError:
            wait = None
        return TransientError(reason, wait)
    return PermanentError(reason)


class Mailer(Protocol):
    def send(self, email: Email) -> str | None: ...


def mime_message(email: Email) -> EmailMessage:
    """The email as MIME: text and HTML alternatives, our headers, and the outbox id (so the
    same message written or relayed twice is recognisably the same)."""
    message = EmailMessage()
    message["From"] = formataddr((email.from_name or "", email.from_email))
    message["To"] = email.to
    message["Subject"] = email.subject
    domain = email.from_email.rpartition("@")[2] or None
    message["Message-ID"] = make_msgid(f"nurture.{email.outbox_id}", domain=domain)
    message["X-Nurture-Outbox-Id"] = str(email.outbox_id)
    for name, value in email.headers.items():
        message[name] = value
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message
