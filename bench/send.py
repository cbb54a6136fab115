"""Campaign sending throughput, printed (not asserted).

    python bench/send.py --steps 100000               # SQLite and PostgreSQL (NURTURE_TEST_PG_URL)
    python bench/send.py --steps 20000 --dispatch 5000 --skip-pg --senders 32

Figures:
- Jinja2 alone: the shipped warm/case-study template rendered N times (no CSS inlining, no SQL);
- render and enqueue: N due warm-nurture steps → rendered outbox rows (StepRunner, the job
  behind ``nurture tick``), messages/s on SQLite and PostgreSQL (aim 10,000/s), and the CPU per
  message; in this process, and with each count of --step-processes the worker's step job
  spreading them over that many processes (NURTURE_STEP_PROCESSES, started before the clock);
  before the clock the runners also take other leads' steps once, as a long-lived worker's have;
- dispatch: M queued messages (beside --history messages sent before) through the official
  SendGrid client to the fake SendGrid (NURTURE_DISPATCH_BATCH --batch),
  running in its own process on 127.0.0.1 (each request answered after --latency seconds, at
  real-time priority where the system permits: ``--realtime``),
  messages/s (aim 1,500/s with 32 senders), CPU per message of this process and of the fake,
  and TCP connections opened, at each concurrency of --senders; then what the same fake answers
  to as many bare clients (raw sockets, one prepared request each, no SendGrid client and no
  database), the ceiling the machine allows at that moment, and the dispatch as a share of it.

Peak RSS of this process is printed last.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scratch import analyze  # noqa: E402

from engine import db as database  # noqa: E402
from engine import heap  # noqa: E402
from engine.active import ruleset_in_force  # noqa: E402
from engine.campaigns.compile import CompiledCampaigns  # noqa: E402
from engine.home import load_campaigns, load_ruleset  # noqa: E402
from engine.render.templates import Renderer, sample_context  # noqa: E402
from engine.schedule.jobs import Jobs  # noqa: E402
from engine.schedule.steps import StepRunner  # noqa: E402
from engine.send.dispatch import Dispatcher  # noqa: E402
from engine.send.file import FileMailer  # noqa: E402
from engine.send.sendgrid import SendGridMailer  # noqa: E402
from engine.settings import Settings  # noqa: E402

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)  # a Monday, inside every shipped send window
WARM_UP = 2_000  # the early leads: a batch or more for each step process
# When their steps are taken: the Friday before at 16:00, inside the send window, and their next
# step (three days on) not due yet at NOW.
WARM_AT = NOW - timedelta(days=2, hours=18)
PG_URL = os.environ.get("NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def jinja_alone(count: int) -> float:
    renderer = Renderer(ROOT / "templates")
    template = renderer.env.get_template("warm/case-study.j2")
    variables = sample_context()
    start = time.perf_counter()
    for _ in range(count):
        "".join(template.root_render_func(template.new_context(variables)))
    return count / (time.perf_counter() - start)


def seed(db: sa.Engine, count: int, due: datetime = NOW, name: str = "lead") -> None:
    """``count`` warm leads more (``name``0@example.com, …), each with a warm-nurture enrollment
    due at ``due``: set-based SQL."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO lead (email, attributes, score, temperature, stage, "
                "stage_entered_at, tags, subscribed, version, created_at, updated_at) "
                "VALUES (:email, :attrs, 45, 'warm', 'lead', :now, '[]', :yes, 0, :now, :now)"
            ),
            [
                {
                    "email": f"{name}{i}@example.com",
                    "now": NOW,
                    "yes": True,
                    "attrs": json.dumps({"first_name": f"Lead {i}", "company": f"Co {i % 997}"}),
                }
                for i in range(count)
            ],
        )
        conn.execute(
            sa.text(
                "INSERT INTO lead_score (lead_id, component, value, peak, decay_steps) "
                "SELECT id, 'engagement', 45, 45, 0 FROM lead "
                "WHERE id NOT IN (SELECT lead_id FROM lead_score)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO enrollment (lead_id, campaign, step, status, enrolled_at, "
                "next_due_at) SELECT id, 'warm-nurture', 0, 'active', :due, :due FROM lead "
                "WHERE id NOT IN (SELECT lead_id FROM enrollment)"
            ),
            {"due": due},
        )


def render_and_enqueue(url: str, count: int, processes: int) -> tuple[float, float, float]:
    """Messages/s, ms of CPU per message (this process and its step processes), and the step
    processes' peak RSS in MB (0 with one runner, which is this process)."""
    database.upgrade(url)
    db = database.connect(url)
    # A worker's step runners are long-lived: what each does once (statements compiled, the
    # template and its page shapes laid out) is done before the clock, on leads of their own.
    seed(db, WARM_UP, WARM_AT, "early")
    seed(db, count)
    ruleset = load_ruleset(ROOT / "rulesets" / "b2b-saas.yaml")
    renderer = Renderer(ROOT / "templates")
    campaigns = CompiledCampaigns(
        ruleset, load_campaigns(ROOT / "campaigns", ruleset, renderer.names())
    )
    settings = Settings(
        home=ROOT,
        database_url=url,
        secret_key="bench-secret-0123456789abcdef0123456789",
        step_processes=processes,
    )
    if processes == 1:
        runner = StepRunner(db, settings, campaigns, renderer)
        runner.run(WARM_AT)
        analyze(db)
        start, cpu = time.perf_counter(), time.process_time()
        report = runner.run(NOW)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = 0.0
    else:
        # The worker's path (NURTURE_STEP_PROCESSES): its processes are started once, so they
        # are started (and the ruleset adopted, as `nurture worker` does) before the clock, and
        # take the early leads' steps.
        ruleset_in_force(db, settings)
        jobs = Jobs(db, settings, FileMailer(Path(tempfile.mkdtemp())))
        jobs.steps(WARM_AT)
        analyze(db)
        pids = children()
        start, cpu = time.perf_counter(), time.process_time() + sum(map(cpu_seconds, pids))
        report = jobs.steps(NOW)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() + sum(map(cpu_seconds, pids)) - cpu
        peak = max(peak_rss(pid) for pid in pids)
        assert jobs.step_processes is not None
        jobs.step_processes.close()
    assert report.queued == count, report
    db.dispose()
    return count / elapsed, cpu / count * 1000, peak


def children() -> list[int]:
    """This process's child processes (Linux)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(stat.parent.name))
        except (OSError, IndexError):
            continue
    return found


def peak_rss(pid: int) -> float:
    """A process's peak RSS in MB (Linux), 0 where unknown."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines()
                 if line.startswith("VmHWM:")), 0.0)  # fmt: skip


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process has used so far (Linux), 0 where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def fake_sendgrid(latency: float) -> Iterator[tuple[str, int]]:
    """The fake SendGrid in a process of its own (its CPU is not this one's), at real-time
    priority where permitted (its answers then leave on time however busy the machine): its URL
    and process id."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_sendgrid", "--delay", str(latency), "--realtime"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdin is not None
    try:
        yield process.stdout.readline().strip(), process.pid
    finally:
        process.stdin.close()
        process.wait(timeout=30)


def bare_clients(fake: str, count: int, concurrency: int) -> float:
    """Answers/s of the fake to ``concurrency`` threads sending ``count`` prepared requests in
    all over kept-alive raw sockets: on a shared machine the fake's own timing and the load cap
    the rate, and this shows by how much at the moment of the run."""
    body = json.dumps(
        {
            "personalizations": [{"to": [{"email": "ana@example.com"}]}],
            "from": {"email": "hello@acme.io"},
            "subject": "Hello",
            "content": [{"type": "text/plain", "value": "Hello"}],
        }
    ).encode()
    request = (
        b"POST /v3/mail/send HTTP/1.1\r\nHost: fake\r\nAuthorization: Bearer SG.bench\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body
    host, port = fake.removeprefix("http://").split(":")
    left = [count]
    lock = threading.Lock()

    def client() -> None:
        with socket.create_connection((host, int(port))) as sock, sock.makefile("rb") as answers:
            while True:
                with lock:
                    if left[0] <= 0:
                        return
                    left[0] -= 1
                sock.sendall(request)
                length = 0
                while (line := answers.readline()) not in (b"\r\n", b""):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                answers.read(length)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return count / (time.perf_counter() - start)


def dispatch(
    url: str, count: int, concurrency: int, latency: float, history: int, batch: int
) -> tuple[float, float, float, int, float]:
    """Messages/s, ms of CPU per message of this process and of the fake, and the TCP
    connections the fake accepted. ``history`` messages sent earlier are in the outbox too, as
    in any database that has been sending for a while. Last, what bare clients get from the
    same fake (:func:`bare_clients`)."""
    database.upgrade(url)
    db = database.connect(url)
    seed(db, count)
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO outbox_message (idempotency_key, kind, lead_id, campaign, step, "
                "template, to_email, from_email, subject, html, text, headers, status, attempts, "
                "next_attempt_at, created_at, sent_at) WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL "
                "SELECT i + 1 FROM n WHERE i + 1 < :history) SELECT 'h' || i, 'campaign', "
                "(SELECT min(id) FROM lead) + i % :count, 'warm-nurture', 0, 'warm/case-study', "
                "'old@example.com', 'hello@acme.io', 'Hello', '<p>Hello</p>', 'Hello', '{}', "
                "'sent', 1, :before, :before, :before FROM n"
            ),
            {"history": history, "count": count, "before": NOW - timedelta(days=30)},
        )
        conn.execute(
            sa.text(
                "INSERT INTO outbox_message (idempotency_key, kind, lead_id, campaign, step, "
                "template, to_email, from_email, subject, html, text, headers, status, attempts, "
                "next_attempt_at, created_at) SELECT 'k' || id, 'campaign', id, 'warm-nurture', "
                "0, 'warm/case-study', email, 'hello@acme.io', 'Hello', '<p>Hello</p>', 'Hello', "
                "'{}', 'queued', 0, :now, :now FROM lead"
            ),
            {"now": NOW},
        )
    with fake_sendgrid(latency) as (fake, pid):
        settings = Settings(database_url=url, send_concurrency=concurrency, dispatch_batch=batch)
        mailer = SendGridMailer("SG.bench", fake, timeout=10)
        heap.settle()  # as `nurture worker` does once started
        start, cpu, served = time.perf_counter(), time.process_time(), cpu_seconds(pid)
        report = Dispatcher(db, settings, mailer).run(NOW)
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
        served = cpu_seconds(pid) - served
        connections = int(httpx.get(f"{fake}/stats").json()["connections"])
        ceiling = bare_clients(fake, count, concurrency)
    assert report.sent == count, report
    db.dispose()
    return count / elapsed, cpu / count * 1000, served / count * 1000, connections, ceiling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--dispatch", type=int, default=5_000)
    parser.add_argument("--latency", type=float, default=0.02, help="fake SendGrid reply delay")
    parser.add_argument(
        "--history", type=int, default=20_000, help="messages sent before, already in the outbox"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=100,
        help="the dispatch's NURTURE_DISPATCH_BATCH (default 100)",
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument(
        "--senders",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 8, 32],
        help="dispatch concurrencies, comma-separated (default 1,8,32)",
    )
    parser.add_argument(
        "--step-processes",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 2],
        help="render and enqueue with these NURTURE_STEP_PROCESSES, comma-separated (default 1,2)",
    )
    parser.add_argument(
        "--parts",
        type=lambda text: set(text.split(",")),
        default={"jinja", "render", "dispatch"},
        help="which figures, comma-separated (default jinja,render,dispatch)",
    )
    args = parser.parse_args()

    if "jinja" in args.parts:
        rate = jinja_alone(min(args.steps, 20_000))
        print(f"Jinja2 alone (warm/case-study): {rate:,.0f} renders/s")
    with tempfile.TemporaryDirectory() as folder, ExitStack() as scratch:
        targets: list[tuple[str, Callable[[], str]]] = [
            ("SQLite", lambda: f"sqlite:///{folder}/{uuid.uuid4().hex}.db")
        ]
        if not args.skip_pg:
            # Each run gets its own schema on the local PostgreSQL, all dropped at the end.
            targets.append(
                ("PostgreSQL", lambda: scratch.enter_context(database.scratch_schema(PG_URL)))
            )
        for name, url in targets if "render" in args.parts else ():
            for processes in args.step_processes:
                rate, cpu, peak = render_and_enqueue(url(), args.steps, processes)
                runners = f"{processes} step processes" if processes > 1 else "in this process"
                rss = f", step processes' peak RSS {peak:,.0f} MB" if peak else ""
                print(
                    f"{name}: render and enqueue {args.steps:,} due steps ({runners}): "
                    f"{rate:,.0f} messages/s ({rate / 10_000:.2f}× the 10,000/s aim), "
                    f"{cpu:.3f} ms CPU each{rss}"
                )
        for name, url in targets if "dispatch" in args.parts else ():
            for concurrency in args.senders:
                rate, cpu, served, opened, ceiling = dispatch(
                    url(), args.dispatch, concurrency, args.latency, args.history, args.batch
                )
                print(
                    f"{name}: dispatch {args.dispatch:,} ({args.history:,} sent before) via fake "
                    "SendGrid "
                    f"({args.latency * 1000:.0f} ms per call, {concurrency} senders, "
                    f"batch {args.batch}): "
                    f"{rate:,.0f} messages/s ({rate / 1_500:.2f}× the 1,500/s aim), "
                    f"{cpu:.2f} ms CPU each (the fake: {served:.2f} ms), "
                    f"{opened:,} TCP connections; bare clients on the same fake: {ceiling:,.0f}/s "
                    f"(the dispatch at {rate / ceiling:.0%} of it)"
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {peak:,.0f} MB; load average {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
