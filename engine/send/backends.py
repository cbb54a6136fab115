"""``NURTURE_MAIL_BACKEND`` → the mail backend the dispatcher sends through."""

from __future__ import annotations

from engine.send.email import Mailer
from engine.settings import Settings

BACKENDS = ("file", "smtp", "sendgrid")


def mailer_for(settings: Settings) -> Mailer:
    backend = settings.mail_backend.strip().lower()
    if backend == "file":
        from engine.send.file import FileMailer

        return FileMailer(settings.outbox_dir)
    if backend == "smtp":
        from engine.send.smtp import SmtpMailer

        return SmtpMailer(settings.smtp_url, settings.send_timeout)
    if backend == "sendgrid":
        from engine.send.sendgrid import SendGridMailer

        if not settings.sendgrid_api_key:
            raise ValueError("NURTURE_MAIL_BACKEND=sendgrid needs SENDGRID_API_KEY")
        return SendGridMailer(
            settings.sendgrid_api_key, settings.sendgrid_host, settings.send_timeout
        )
    raise ValueError(
        f"NURTURE_MAIL_BACKEND={settings.mail_backend!r}: choose one of {', '.join(BACKENDS)}"
    )
