"""Alert latency, printed (not asserted): from an event's HTTP POST to the sales webhook's receipt.

    python bench/alerts.py --events 200               # SQLite
    python bench/alerts.py --events 200 --pg          # PostgreSQL (NURTURE_TEST_PG_URL's server)

Starts ``nurture serve`` (uvicorn, the app with its scheduler and alert thread) as a subprocess
on a fresh database with a small ruleset in which one event makes a lead hot, and a
Slack-compatible webhook receiver on 127.0.0.1 in this process. Then, one after another with
``--gap`` seconds between them, N events each make a different lead hot; each one's time from
the start of its POST to the receipt of its alert is recorded (one clock: both ends are in this
process). The POST goes to ``/api/events`` when the server has it, else to
``/webhooks/sendgrid`` (a SendGrid click event): both score through the same ingest path.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from engine import db as database

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TOKEN = "bench-token-0123456789abcdef0123456789"
RULESET = """\
ruleset: alert-bench
components: {engagement: {min: 0, max: 100}}
temperature: {cold: 0, warm: 40, hot: 70}
stages: [subscriber, lead]
rules:
  - name: demo-request
    when: {event.type: demo_request}
    then: {score: {engagement: 80}}
  - name: email-click
    when: {event.type: email_click}
    then: {score: {engagement: 80}}
  - name: hot-lead
    when: {lead.temperature: hot}
    then: {alert: sales}
"""
LEAD = re.compile(r"bench-(\d+)@")


class Receiver:
    def __init__(self) -> None:
        self.arrivals: dict[int, float] = {}
        self.done = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                at = time.perf_counter()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")
                found = LEAD.search(body["text"])
                if found:
                    with receiver.done:
                        receiver.arrivals.setdefault(int(found.group(1)), at)
                        receiver.done.notify_all()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, lead: int, timeout: float) -> float | None:
        with self.done:
            self.done.wait_for(lambda: lead in self.arrivals, timeout)
            return self.arrivals.get(lead)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def body_for(endpoint: str, lead: int) -> Any:
    email = f"bench-{lead}@example.com"
    if endpoint == "/api/events":
        return {"id": f"bench-{uuid.uuid4().hex}", "email": email, "type": "demo_request"}
    return [{"event": "click", "email": email, "url": "/pricing", "timestamp": int(time.time()),
             "sg_event_id": uuid.uuid4().hex}]  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200, help="measured events (leads)")
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between POSTs")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL instead of SQLite")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="nurture-bench-alerts-"))
    (home / "rulesets").mkdir()
    (home / "rulesets/alert-bench.yaml").write_text(RULESET)
    scratch = ExitStack()
    url = (
        scratch.enter_context(database.scratch_schema(PG_URL, "bench"))
        if args.pg
        else f"sqlite:///{home / 'nurture.db'}"
    )
    receiver = Receiver()
    port = free_port()
    env = {
        **os.environ,
        "NURTURE_HOME": str(home),
        "NURTURE_DATABASE_URL": url,
        "NURTURE_OUTBOX_DIR": str(home / "outbox"),
        "NURTURE_SALES_WEBHOOK_URL": receiver.url,
        "NURTURE_SALES_EMAIL": "sales@example.com",
        "NURTURE_API_TOKEN": TOKEN,
    }
    nurture = str(Path(sys.executable).parent / "nurture")
    server = subprocess.Popen(
        [nurture, "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    try:
        for _ in range(300):
            try:
                paths = client.get("/openapi.json").json()["paths"]
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit("nurture serve did not start")
        endpoint = "/api/events" if "/api/events" in paths else "/webhooks/sendgrid"
        latencies, posts, missing = [], [], 0
        warmup = 5
        for lead in range(warmup + args.events):
            started = time.perf_counter()
            response = client.post(endpoint, json=body_for(endpoint, lead))
            response.raise_for_status()
            posted = time.perf_counter()
            arrived = receiver.wait_for(lead, timeout=30)
            if lead >= warmup:
                posts.append(posted - started)
                if arrived is None:
                    missing += 1
                else:
                    latencies.append(arrived - started)
            time.sleep(args.gap)
    finally:
        server.terminate()
        server.wait(timeout=30)
        scratch.close()
    name = "PostgreSQL" if args.pg else "SQLite"
    print(f"{args.events} events via POST {endpoint} on {name}, each making a new lead hot")
    print(
        f"  POST answered:        p50 {statistics.median(posts) * 1000:.0f} ms, "
        f"p99 {percentile(posts, 0.99) * 1000:.0f} ms"
    )
    if latencies:
        print(
            f"  POST → webhook receipt: p50 {statistics.median(latencies) * 1000:.0f} ms, "
            f"p90 {percentile(latencies, 0.90) * 1000:.0f} ms, "
            f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
    print(f"  alerts received: {len(latencies)} of {args.events}; missing {missing}")


if __name__ == "__main__":
    main()
