"""No full address, token or secret reaches a log line or an error kept in the database: the one
redaction helper (``engine.redact``) on free text, on uvicorn's access log, on every handler the
logging set-up installs, and on provider errors kept on outbox rows."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from engine.api.app import create_app
from engine.redact import redact
from engine.send.dispatch import Dispatcher
from engine.send.smtp import SmtpMailer
from engine.send.webhook import WebhookSender
from engine.settings import Settings, configure_logging
from tests.campaign_support import CAMPAIGNS, T0, outbox, run_steps, settings_for, warm
from tests.helpers import API_TOKEN as TOKEN
from tests.helpers import api_home
from tests.mail_support import Inbox

pytestmark = pytest.mark.home(campaigns=CAMPAIGNS, templates=True)  # service adds the ruleset


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("to ana.silva@acme.io failed", "to a***@acme.io failed"),
        ("<ana.silva@acme.io>: no such user", "<a***@acme.io>: no such user"),
        # A local part may hold a slash (RFC 5322): none of it may stay.
        ("refused: ana/silva@acme.io", "refused: a***@acme.io"),
        ("rcpt=ana%2Fsilva%40acme.io&x=1", "rcpt=a***%40acme.io&x=1"),
        ("{'o.brien+x@mail.example.co.uk': (550, b'5.1.1')}",
         "{'o***@mail.example.co.uk': (550, b'5.1.1')}"),
        ("GET /unsubscribe?token=MTIz.abc-DEF_9 HTTP/1.1", "GET /unsubscribe?token=*** HTTP/1.1"),
        ("/x?next=/a&api_token=s3cr3t&page=2", "/x?next=/a&api_token=***&page=2"),
        ("postgresql://nurture:pa55word@db.example/leads", "postgresql://nurture:***@db.example/leads"),
        ("nothing to hide: 42 leads, rule vp-title", "nothing to hide: 42 leads, rule vp-title"),
    ],
)  # fmt: skip
def test_redact_keeps_the_first_letter_and_the_domain_only(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_redaction_is_linear_on_hostile_text() -> None:
    assert redact("a" * 200_000 + "@") == "a" * 200_000 + "@"
    assert redact("a" * 300 + "@acme.io").endswith("***@acme.io")


def access_line(path: str, app: Any) -> str:
    """A uvicorn access log record for ``path``, as the app's filter leaves it."""
    args = ("127.0.0.1:5000", "GET", path, "1.1", 200)
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               args, None)  # fmt: skip
    logger = logging.getLogger("uvicorn.access")
    assert all(f.filter(record) for f in logger.filters if isinstance(f, logging.Filter))
    return record.getMessage().split('"')[1].split()[1]


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        ("/api/leads/ana.silva@acme.io", "/api/leads/a***@acme.io"),
        ("/api/leads/ana.silva%40acme.io?x=1", "/api/leads/a***%40acme.io?x=1"),
        ("/api/leads/ana/silva@acme.io", "/api/leads/a***@acme.io"),
        ("/leads/ana%2Fsilva@acme.io", "/leads/a***@acme.io"),
        ("/leads?email=ana.silva%40acme.io", "/leads?email=a***%40acme.io"),
        ("/unsubscribe?token=NDI.ZXhhbXBsZQ.c2lnbmF0dXJl", "/unsubscribe?token=***"),
        ("/api/leads?stage=mql", "/api/leads?stage=mql"),
    ],
)
def test_the_access_log_names_no_lead_and_no_token(tmp_path: Path, path: str, logged: str) -> None:
    settings = Settings(home=api_home(tmp_path), database_url=f"sqlite:///{tmp_path / 'a.db'}",
                        api_token=TOKEN)  # fmt: skip
    from fastapi.testclient import TestClient

    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert access_line(path, client.app) == logged


class Hook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def slack() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/services/T000/B000/XXXXsecretXXXX"
    finally:
        server.shutdown()
        server.server_close()


def test_the_logs_show_no_webhook_url_secret_or_address(
    tmp_path: Path, slack: str, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings(home=tmp_path, log_level="DEBUG", api_token=TOKEN, sales_webhook_url=slack)
    configure_logging(settings)
    # httpx would log each URL at INFO: the configured one, and one nurture does not know of.
    unknown = slack.replace("XXXXsecretXXXX", "YYYYotherYYYY")
    for url in (slack, unknown):
        sender = WebhookSender(url, timeout=5)
        sender.post({"text": "hot lead"})
        sender.close()
    log = logging.getLogger("engine.test")
    log.info("token %s for lead ana.silva@acme.io", TOKEN)
    try:
        raise ValueError("could not mail bo.berg@acme.io")
    except ValueError:
        log.exception("failed")
    written = capsys.readouterr().err
    assert "engine.test: token *** for lead a***@acme.io" in written
    assert "b***@acme.io" in written and "Traceback" in written
    for secret in ("XXXXsecretXXXX", "YYYYotherYYYY", "/services/", TOKEN, "ana.silva", "bo.berg"):
        assert secret not in written


def test_provider_errors_are_kept_and_logged_without_the_address(
    db: sa.Engine,
    db_url: str,
    home: Path,
    smtp_server: tuple[Inbox, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    inbox, url = smtp_server
    inbox.refuse = {"kim.lee@example.com": "550 5.1.1 <kim.lee@example.com>: no such user"}
    settings = settings_for(home, db_url, max_attempts=1)
    warm(db, home, "kim.lee@example.com")
    run_steps(db, home, T0, settings)
    with caplog.at_level(logging.INFO):
        report = Dispatcher(db, settings, SmtpMailer(url, timeout=5)).run(T0)
    assert report.failed == 1
    [row] = outbox(db)
    assert row["last_error"] == "SMTP 550: 5.1.1 <k***@example.com>: no such user"
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("engine")]
    assert ours and "kim.lee@" not in json.dumps(ours)
