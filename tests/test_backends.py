"""The mail backends against real peers: an SMTP server (aiosmtpd) and the fake SendGrid, which
checks every request body against SendGrid's published Mail Send schema; and choosing a backend
from the settings."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.send.backends import mailer_for
from engine.send.email import Email, PermanentError, TransientError
from engine.send.file import FileMailer
from engine.send.sendgrid import SendGridMailer
from engine.send.smtp import SmtpMailer
from engine.settings import Settings
from tests.fake_sendgrid import FakeSendGrid
from tests.mail_support import SMTP_CONNECTION_KEPT, Inbox, free_port

# SmtpMailer keeps one connection per dispatcher thread for the process's life and has no close():
# what a test leaves open is collected unclosed (engine/send/smtp.py: a close() belongs there).
UNSUBSCRIBE = {
    "List-Unsubscribe": "<https://nurture.example/unsubscribe?token=abc>",
    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
}


def an_email(to: str = "ana@acme.io", outbox_id: int = 7) -> Email:
    return Email(
        outbox_id=outbox_id,
        to=to,
        from_email="hello@acme.io",
        from_name="Acme",
        subject="A case study for Acme",
        html="<p>Hello <b>Ana</b></p>",
        text="Hello Ana",
        headers=UNSUBSCRIBE,
        category="warm-nurture",
    )


@SMTP_CONNECTION_KEPT
def test_smtp_delivers_text_and_html_with_the_unsubscribe_headers(
    smtp_server: tuple[Inbox, str],
) -> None:
    inbox, url = smtp_server
    mailer = SmtpMailer(url, timeout=5)
    first = mailer.send(an_email())
    mailer.send(an_email("bo@acme.io", outbox_id=8))  # the same connection, reused
    assert len(inbox.received) == 2
    message = inbox.received[0]
    assert message["To"] == "ana@acme.io" and message["Subject"] == "A case study for Acme"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Nurture-Outbox-Id"] == "7" and first == message["Message-ID"]
    body = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert body is not None and body.get_content().strip() == "Hello Ana"
    assert html is not None and "<b>Ana</b>" in html.get_content()


@SMTP_CONNECTION_KEPT
def test_smtp_rejections_are_permanent_and_deferrals_transient(
    smtp_server: tuple[Inbox, str],
) -> None:
    inbox, url = smtp_server
    inbox.refuse = {"gone@acme.io": "550 5.1.1 no such user", "busy@acme.io": "451 4.3.0 later"}
    mailer = SmtpMailer(url, timeout=5)
    with pytest.raises(PermanentError, match="550"):
        mailer.send(an_email("gone@acme.io"))
    with pytest.raises(TransientError, match="451"):
        mailer.send(an_email("busy@acme.io"))
    mailer.send(an_email())  # the mailer recovers after an error
    assert [m["To"] for m in inbox.received] == ["ana@acme.io"]


def test_an_smtp_server_that_is_down_is_a_transient_error() -> None:
    with pytest.raises(TransientError):
        SmtpMailer(f"smtp://127.0.0.1:{free_port()}", timeout=2).send(an_email())


@pytest.mark.data("sendgrid/mail-v3.openapi.json")
def test_sendgrid_requests_are_valid_mail_send_bodies_with_our_outbox_id() -> None:
    with FakeSendGrid() as fake:
        provider_id = SendGridMailer("SG.test", fake.url, timeout=5).send(an_email())
    assert fake.validator is not None, "SendGrid's schema should be at hand in this checkout"
    assert fake.invalid == []
    [body] = fake.messages
    assert provider_id
    assert body["custom_args"] == {"outbox_id": "7"}
    assert body["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert body["from"] == {"email": "hello@acme.io", "name": "Acme"}
    assert body["personalizations"][0]["to"] == [{"email": "ana@acme.io"}]
    assert body["categories"] == ["warm-nurture"]


def test_many_sendgrid_sends_reuse_a_few_kept_alive_connections() -> None:
    with FakeSendGrid() as fake:
        mailer = SendGridMailer("SG.test", fake.url, timeout=5)
        fake.fail_next(503)  # a failure answered on a connection leaves it usable
        with pytest.raises(TransientError, match="503"):
            mailer.send(an_email())
        with ThreadPoolExecutor(max_workers=4) as pool:
            provider_ids = list(pool.map(lambda _: mailer.send(an_email()), range(60)))
    assert len(fake.messages) == 60 and all(provider_ids)
    assert len(set(provider_ids)) == 60
    assert 1 <= fake.connections <= 4


def test_sendgrid_4xx_is_permanent_and_an_unreachable_host_transient() -> None:
    with FakeSendGrid() as fake:
        fake.fail_next(400)
        with pytest.raises(PermanentError, match="400"):
            SendGridMailer("SG.test", fake.url, timeout=5).send(an_email())
    with pytest.raises(TransientError, match="unreachable"):
        SendGridMailer("SG.test", f"http://127.0.0.1:{free_port()}", timeout=2).send(an_email())


def test_the_file_backend_writes_one_file_per_message_however_often_sent(tmp_path: Path) -> None:
    mailer = FileMailer(tmp_path / "outbox")
    mailer.send(an_email())
    mailer.send(an_email())
    assert [p.name for p in (tmp_path / "outbox").iterdir()] == ["7.eml"]


def test_the_backend_comes_from_the_settings(tmp_path: Path) -> None:
    assert isinstance(mailer_for(Settings(outbox_dir=tmp_path)), FileMailer)
    assert isinstance(mailer_for(Settings(mail_backend="smtp")), SmtpMailer)
    with pytest.raises(ValueError, match="SENDGRID_API_KEY"):
        mailer_for(Settings(mail_backend="sendgrid", sendgrid_api_key=None))
    with pytest.raises(ValueError, match="file, smtp, sendgrid"):
        mailer_for(Settings(mail_backend="pigeon"))


LONG_LINK = "https://nurture.example/unsubscribe?token=" + "A1b2-C3d4_" * 20
# What a provider must accept: a date, a stable id, the unsubscribe link as the plain
# `<https://…>` form however long it is, and headers that stay one header each whatever the
# from name and subject hold.
HOSTILE = replace(
    an_email(),
    from_name="Acme\r\nBcc: evil@attacker.io",
    subject="Hello\r\nBcc: evil@attacker.io\x00",
    headers={"List-Unsubscribe": f"<{LONG_LINK}>", "List-Unsubscribe-Post": "One-Click"},
    message_id="<nurture.enrollment.1.step.0@nurture.example>",
    date=datetime(2026, 11, 2, 10, 0, tzinfo=UTC),
)


def assert_acceptable(raw: bytes) -> None:
    head = raw.replace(b"\r\n", b"\n").split(b"\n\n", 1)[0].decode()
    assert f"\nList-Unsubscribe: <{LONG_LINK}>\n" in head
    message = message_from_bytes(raw, policy=policy.default)
    assert parsedate_to_datetime(message["Date"]) == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    assert message["Message-ID"] == "<nurture.enrollment.1.step.0@nurture.example>"
    assert message["Subject"] == "Hello Bcc: evil@attacker.io"
    assert message["From"] == '"Acme Bcc: evil@attacker.io" <hello@acme.io>'
    assert message["Bcc"] is None and message.get_all("To") == ["ana@acme.io"]


@SMTP_CONNECTION_KEPT
def test_file_and_smtp_messages_are_what_providers_accept(
    tmp_path: Path, smtp_server: tuple[Inbox, str]
) -> None:
    FileMailer(tmp_path).send(HOSTILE)
    assert_acceptable((tmp_path / "7.eml").read_bytes())
    inbox, url = smtp_server
    assert SmtpMailer(url, timeout=5).send(HOSTILE) == HOSTILE.message_id
    [raw] = inbox.raw
    assert_acceptable(raw)


def test_sendgrid_gets_the_plain_link_our_message_id_and_one_line_headers() -> None:
    with FakeSendGrid() as fake:
        SendGridMailer("SG.test", fake.url, timeout=5).send(HOSTILE)
    assert fake.invalid == []
    [body] = fake.messages
    assert body["headers"]["List-Unsubscribe"] == f"<{LONG_LINK}>"
    assert body["headers"]["Message-ID"] == HOSTILE.message_id
    assert body["subject"] == "Hello Bcc: evil@attacker.io"
    assert body["from"]["name"] == "Acme Bcc: evil@attacker.io"


_HEADER_NAMES = st.sampled_from(
    ["List-Unsubscribe", "list-unsubscribe", "Message-ID", "X-Campaign", "Reply-To", ""]
)
_TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_PLAIN_LOCAL = st.from_regex(r"[A-Za-z0-9_%+-]{1,8}(\.[A-Za-z0-9_%+-]{1,8}){0,2}", fullmatch=True)
_PLAIN_DOMAIN = st.from_regex(r"[A-Za-z0-9-]{1,8}(\.[A-Za-z0-9-]{1,8}){0,2}", fullmatch=True)
_ADDRESS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", _PLAIN_LOCAL, _PLAIN_DOMAIN),
    st.sampled_from(["Ana <ana@acme.io>", '"Lee, Bo" <bo@x.io>', "ana@acme.io ", "a..b@x.io"]),
)


@given(
    to=_ADDRESS,
    from_email=_ADDRESS,
    from_name=st.one_of(st.none(), _TEXT, st.sampled_from(["Acme, Inc.", '"Q" Team', " \n "])),
    subject=_TEXT,
    body=st.one_of(_TEXT, st.just("SG.abc123.def456 pasted key")),
    headers=st.dictionaries(_HEADER_NAMES, _TEXT, max_size=4),
    category=st.one_of(st.none(), st.just(""), _TEXT, st.just("c" * 300)),
    message_id=st.one_of(st.none(), st.just("<nurture.enrollment.1.step.0@acme.io>")),
)
@settings(max_examples=400, deadline=None)
def test_sendgrid_body_is_what_the_mail_helper_builds(
    to: str,
    from_email: str,
    from_name: str | None,
    subject: str,
    body: str,
    headers: dict[str, str],
    category: str | None,
    message_id: str | None,
) -> None:
    email = Email(
        outbox_id=12,
        to=to,
        from_email=from_email,
        from_name=from_name,
        subject=subject,
        html=f"<p>{body}</p>",
        text=body,
        headers=headers,
        category=category,
        message_id=message_id,
    )
    try:
        expected = SendGridMailer.payload(email).get()
    except Exception as error:  # the helper refuses it: so must the shortcut, the same way
        with pytest.raises(type(error)):
            SendGridMailer.body(email)
        return
    built = SendGridMailer.body(email)
    assert built == expected
    assert json.dumps(built) == json.dumps(expected)  # the same bytes on the wire
