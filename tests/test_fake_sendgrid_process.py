"""The fake SendGrid the send benchmark runs in a process of its own (an asyncio loop, not the
threaded server the other tests use) answers the official client as the threaded one does: 202
with a message id over one kept-alive connection, 401 without a key, 404 elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.send.email import Email
from engine.send.sendgrid import SendGridMailer

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fake_process() -> Iterator[str]:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fake_sendgrid", "--delay", "0.01"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        try:
            yield process.stdout.readline().strip()
        finally:
            process.stdin.close()
            assert process.wait(timeout=30) == 0  # it stops by itself once its input closes


def test_the_fake_in_its_own_process_answers_the_official_client(fake_process: str) -> None:
    mailer = SendGridMailer("SG.test", fake_process, timeout=5)
    email = Email(1, "ana@example.com", "hello@acme.io", "Acme", "Hi", "<p>Hi</p>", "Hi")
    ids = {mailer.send(email) for _ in range(5)}
    assert len(ids) == 5 and None not in ids
    assert httpx.post(f"{fake_process}/v3/mail/send", content=b"{}").status_code == 401
    assert httpx.post(f"{fake_process}/v3/other", content=b"{}").status_code == 404
    stats = httpx.get(f"{fake_process}/stats").json()
    assert stats["calls"] == 7
    assert stats["connections"] == 4  # the mailer's one, and one for each of httpx's calls
