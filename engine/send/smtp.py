"""The ``smtp`` mail backend: ``NURTURE_SMTP_URL`` = ``smtp://[user:password@]host[:port]``
(``?starttls=true`` to upgrade the connection) or ``smtps://`` for TLS from the start.

One connection per dispatcher thread, opened on first use and reopened after an error. SMTP
4xx replies and connection failures are transient; 5xx replies are permanent.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
import threading
from urllib.parse import parse_qs, unquote, urlsplit

from engine.send.email import Email, PermanentError, TransientError, mime_message


class SmtpMailer:
    def __init__(self, url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ValueError(
                f"NURTURE_SMTP_URL: expected smtp://host:port or smtps://…, got {url!r}"
            )
        self.tls = parts.scheme == "smtps"
        self.host = parts.hostname
        self.port = parts.port or (465 if self.tls else 25)
        self.user = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.starttls = parse_qs(parts.query).get("starttls", ["false"])[0].lower() in ("1", "true")
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self) -> smtplib.SMTP:
        connection: smtplib.SMTP | None = getattr(self._local, "connection", None)
        if connection is not None:
            return connection
        if self.tls:
            connection = smtplib.SMTP_SSL(
                self.host, self.port, timeout=self.timeout, context=ssl.create_default_context()
            )
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                connection.starttls(context=ssl.create_default_context())
        if self.user:
            connection.login(self.user, self.password or "")
        self._local.connection = connection
        return connection

    def _drop(self) -> None:
        connection = getattr(self._local, "connection", None)
        self._local.connection = None
        if connection is not None:
            with contextlib.suppress(OSError):
                connection.close()

    def send(self, email: Email) -> str | None:
        message = mime_message(email)
        try:
            refused = self._connection().send_message(message)
        except smtplib.SMTPRecipientsRefused as error:
            self._drop()
            code, reply = next(iter(error.recipients.values()))
            raise _error(code, reply) from None
        except smtplib.SMTPResponseException as error:
            self._drop()
            raise _error(error.smtp_code, error.smtp_error) from None
        except (smtplib.SMTPException, OSError) as error:
            self._drop()
            raise TransientError(f"SMTP: {type(error).__name__}: {error}") from None
        if refused:
            code, reply = next(iter(refused.values()))
            raise _error(code, reply)
        return str(message["Message-ID"])


def _error(code: int, reply: bytes | str) -> Exception:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else reply
    message = f"SMTP {code}: {text}"
    return PermanentError(message) if 500 <= code < 600 else TransientError(message)
