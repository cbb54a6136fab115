"""What the dispatcher hands a mail backend, and how a backend reports failure.

A backend's ``send`` returns the provider's id for the message (or None) when the provider has
it, raises :class:`TransientError` when trying again later may work (429, 5xx, a timeout, a
refused connection) and :class:`PermanentError` when it will not (a rejected address, a bad
request). The dispatcher turns these into sent, retried and failed outbox rows.

Every header is built to be what providers accept (RFC 5322, RFC 8058): one line per value
whatever the from name or subject hold (no header injection), a ``Date``, a ``Message-ID`` that
stays the same on every try of one outbox message, and the unsubscribe link in the plain
``<https://…>`` form however long it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import EmailPolicy
from email.utils import format_datetime, formataddr, make_msgid
from typing import Any, Protocol

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
    message_id: str | None = None  # stable per outbox message; a fresh one when None
    date: datetime | None = None  # when it is sent; now when None


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


# Control characters (line breaks included) in a header value would end the header early or be
# refused by the provider: each run of them, and of white space, becomes one space.
_BREAKS = re.compile(r"[\s\x00-\x1f\x7f-\x9f]+")


def one_line(value: str) -> str:
    """A header value as one line: no CR, LF or other control characters."""
    return _BREAKS.sub(" ", value).strip()


# Links a mail client must read as they are: folding would RFC 2047-encode a long one.
_UNFOLDED = frozenset({"list-unsubscribe", "list-unsubscribe-post"})


class _MailPolicy(EmailPolicy):
    """``email.policy.default``, except that the link headers are never folded or encoded (a
    link up to RFC 5322's 998 characters per line stays one plain line)."""

    def _unfolded(self, name: str) -> EmailPolicy | None:
        if name.lower() in _UNFOLDED and self.max_line_length:
            return self.clone(max_line_length=0)
        return None

    def fold(self, name: str, value: Any) -> str:
        other = self._unfolded(name)
        folded: str = other.fold(name, value) if other else super().fold(name, value)
        return folded

    def fold_binary(self, name: str, value: Any) -> bytes:
        other = self._unfolded(name)
        return other.fold_binary(name, value) if other else super().fold_binary(name, value)


POLICY = _MailPolicy()


def mime_message(email: Email) -> EmailMessage:
    """The email as MIME: text and HTML alternatives, our headers, and the outbox id (so the
    same message written or relayed twice is recognisably the same)."""
    message = EmailMessage(policy=POLICY)
    message["From"] = formataddr((one_line(email.from_name or ""), one_line(email.from_email)))
    message["To"] = one_line(email.to)
    message["Subject"] = one_line(email.subject)
    message["Date"] = format_datetime(email.date or datetime.now(UTC))
    domain = email.from_email.rpartition("@")[2] or None
    message["Message-ID"] = one_line(
        email.message_id or make_msgid(f"nurture.{email.outbox_id}", domain=domain)
    )
    message["X-Nurture-Outbox-Id"] = str(email.outbox_id)
    for name, value in email.headers.items():
        message[one_line(name)] = one_line(value)
    message.set_content(email.text)
    message.add_alternative(email.html, subtype="html")
    return message
