"""The fake SendGrid the send benchmark runs in a process of its own (an asyncio loop, not the
threaded server the other tests use) answers the official client as the threaded one does: 202
with a message id over one kept-alive connection, 401 without a key, 404 elsewhere; each answer
no sooner than its delay after its request, in the order of the requests, at real-time priority
or not."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from engine.send.email import Email
from engine.send.sendgrid import SendGridMailer

ROOT = Path(__file__).resolve().parent.parent


DELAY = 0.05


@pytest.fixture(params=[[], ["--realtime"]], ids=["normal", "realtime"])
def fake_process(request: pytest.FixtureRequest) -> Iterator[str]:
    with subprocess.Popen(
        [sys.executable, "-m", "tests.fake_sendgrid", "--delay", str(DELAY), *request.param],
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
    start = time.monotonic()
    ids = {mailer.send(email) for _ in range(5)}
    assert time.monotonic() - start >= 5 * DELAY
    assert len(ids) == 5 and None not in ids
    assert httpx.post(f"{fake_process}/v3/mail/send", content=b"{}").status_code == 401
    assert httpx.post(f"{fake_process}/v3/other", content=b"{}").status_code == 404
    stats = httpx.get(f"{fake_process}/stats").json()
    assert stats["calls"] == 7
    assert stats["connections"] == 4  # the mailer's one, and one for each of httpx's calls


def test_answers_leave_at_their_deadline_in_the_order_of_the_requests(fake_process: str) -> None:
    """Three requests in one write, a GET (answered at once) between two POSTs and a POST whose
    body comes later: three answers in order, the first no sooner than the delay."""
    post = (
        b"POST /v3/mail/send HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer SG.t\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    )
    stats = b"GET /stats HTTP/1.1\r\nHost: fake\r\n\r\n"
    host, port = fake_process.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as sock, sock.makefile("rb") as answers:
        start = time.monotonic()
        sock.sendall(post + b"{}" + stats + post)
        time.sleep(0.01)
        sock.sendall(b"{}")
        seen = []
        for _ in range(3):
            status = answers.readline()
            length = 0
            while (line := answers.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            answers.read(length)
            seen.append((status.split()[1], time.monotonic() - start))
    assert [code for code, _ in seen] == [b"202", b"200", b"202"]
    assert seen[0][1] >= DELAY and seen[2][1] >= DELAY + 0.01
    assert seen[1][1] - seen[0][1] < DELAY / 2  # the GET waited for the POST before it only
