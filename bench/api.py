"""``POST /api/events`` under concurrent load, against a real ``nurture serve`` process on
loopback, on SQLite and PostgreSQL. Figures are printed, not asserted.

    python bench/api.py              # 4,000 events, 8 clients, 1 and 50 events per request
    python bench/api.py --events 20000 --clients 16 --batch 1,100 --skip-pg
    python bench/api.py --pg-workers 2       # PostgreSQL served by `nurture serve --workers 2`
    python bench/api.py --sqlite-workers 2   # SQLite served by `nurture serve --workers 2`

Each client is an asyncio task with its own keep-alive connection (raw HTTP/1.1, cheap enough
not to be what is measured), sending its next request as soon as its last one is answered. The
events are page views spread round-robin over ``--leads`` leads (1,000): of 4,000 events, the
first thousand or so (less the 200 the warm-up created) make new leads, the rest add to them.
For every request size it prints events/s, requests/s, the p50/p99 latency of a request, the
server's CPU per event and (one server process) the events per ingest transaction and the event
loop's share of the CPU, then the server's peak RSS (all its processes) and the load average.
To measure something else against the same server, add a phase that takes a ``Server`` (its
``url`` and ``headers``) the way ``load`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from engine.db import scratch_schema

ROOT = Path(__file__).resolve().parent.parent
NURTURE = str(Path(sys.executable).with_name("nurture"))
TOKEN = "bench-token-0123456789abcdef0123456789"
PAGES = ("/pricing", "/blog/rules", "/features", "/docs/start", "/case-studies")


@dataclass
class Server:
    url: str
    headers: dict[str, str]
    pid: int = 0

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (user + system)."""
        return sum(_cpu(pid) for pid in _family(self.pid))

    def loop_cpu_seconds(self) -> float:
        """CPU time used so far by the server's main thread: with one process, its event loop
        (HTTP parsing, routing, the handlers), as against the group-commit writer thread and
        the thread pool."""
        return _cpu(self.pid, f"/proc/{self.pid}/task/{self.pid}/stat")

    def connections(self) -> list[int]:
        """Open client connections held by each of the server's HTTP processes (``--workers``:
        the kernel hands each new connection to whichever process accepts first, so 8
        keep-alive clients may land 4/4 or 8/0)."""
        port = f"{int(urlsplit(self.url).port or 0):04X}"
        sockets: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[1].endswith(f":{port}") and fields[3] == "01":  # established
                    sockets.add(fields[9])
        counts = []
        for pid in _family(self.pid):
            held = 0
            with suppress(OSError):
                for fd in Path(f"/proc/{pid}/fd").iterdir():
                    with suppress(OSError):
                        held += os.readlink(fd).removeprefix("socket:[").rstrip("]") in sockets
            counts.append(held)
        return [n for n in counts if n]

    def transactions(self) -> tuple[float, float]:
        """Ingest transactions committed so far and their seconds, from ``/metrics`` (with
        ``--workers``, the share of the process that answers)."""
        text = httpx.get(f"{self.url}/metrics", timeout=30).text
        found = dict.fromkeys(("count", "sum"), 0.0)
        for line in text.splitlines():
            for key in found:
                if line.startswith(f"nurture_ingest_batch_seconds_{key} "):
                    found[key] = float(line.split()[1])
        return found["count"], found["sum"]


@dataclass
class Figures:
    events: int
    requests: int
    seconds: float
    latencies: list[float]  # seconds per request
    failures: int
    cpu: float = 0.0  # the server's CPU seconds meanwhile
    loop_cpu: float = 0.0  # of which its main thread's (the event loop's, one process)
    transactions: float = 0.0  # ingest transactions meanwhile (group commits)
    transaction_seconds: float = 0.0  # their time, from begin to commit
    split: list[int] = field(default_factory=list)  # client connections per HTTP process

    def groups(self) -> str:
        """Events per transaction and the mean time of one (a single server process only)."""
        if not self.transactions:
            return ""
        per = self.transaction_seconds / self.transactions * 1000
        return f"   {self.events / self.transactions:.1f} events/transaction, {per:.1f} ms each"

    def line(self, label: str) -> str:
        ordered = sorted(self.latencies)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000

        return (
            f"{label:<28} {self.events / self.seconds:>8,.0f} events/s "
            f"{self.requests / self.seconds:>7,.0f} req/s   p50 {pct(0.50):7.1f} ms   "
            f"p99 {pct(0.99):7.1f} ms   server CPU {self.cpu / self.events * 1000:.2f} ms/event "
            f"({self.events:,} events, {self.failures} failed requests){self.groups()}"
            f"{self.loop_share()}"
        )

    def loop_share(self) -> str:
        """The event loop's share of the server's CPU (a single server process only)."""
        if not self.loop_cpu or not self.cpu:
            return ""
        return f", event loop {self.loop_cpu / self.cpu:.0%} of the CPU"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def make_home(folder: Path) -> Path:
    """The repository's ruleset, campaigns and templates: the real scoring and enrollment work."""
    for part in ("rulesets", "campaigns", "templates"):
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, folder / part, ignore=shutil.ignore_patterns("tests"))
    return folder


def _family(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(k) for k in children.read_text().split())] if children.exists() else [pid]


def _cpu(pid: int, stat: str = "") -> float:
    fields = Path(stat or f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid: int) -> float:
    """The peak resident memory of a process and its children (``VmHWM``), summed."""
    total = 0.0
    for each in _family(pid):
        status = Path(f"/proc/{each}/status")
        for line in status.read_text().splitlines() if status.exists() else ():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


@contextmanager
def serve(home: Path, database_url: str, workers: int = 1) -> Iterator[Server]:
    """``nurture serve`` (API and scheduler) in its own process, until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "NURTURE_HOME": str(home),
        "NURTURE_DATABASE_URL": database_url,
        "NURTURE_API_TOKEN": TOKEN,
        "NURTURE_OUTBOX_DIR": str(home / "outbox"),
    }
    log = (home / "serve.log").open("w")
    process = subprocess.Popen(
        [NURTURE, "serve", "--port", str(port), *(["--workers", str(workers)] * (workers > 1))],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    server = Server(f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {TOKEN}"}, process.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{server.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"nurture serve did not start; see {home / 'serve.log'}")
            time.sleep(0.2)
        yield server
        print(
            f"  server peak RSS {peak_rss_mb(process.pid):,.0f} MB, "
            f"load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def bodies(events: int, per_request: int, leads: int, run: str) -> list[list[dict[str, Any]]]:
    """Page views spread round-robin over ``leads`` leads (the same addresses in every run of
    the server, so a run meets leads the warm-up or an earlier size created as well as new
    ones), each with a unique id, cut into requests."""
    stream = [
        {
            "id": f"{run}-{n}",
            "email": f"lead{n % leads}@bench{n % leads % 97}.example",
            "type": "page_view",
            "properties": {"url": PAGES[n % len(PAGES)]},
        }
        for n in range(events)
    ]
    return [stream[i : i + per_request] for i in range(0, len(stream), per_request)]


class Client:
    """One keep-alive HTTP/1.1 connection speaking just what the bench needs: a POST of a body
    encoded beforehand, the answer read by its Content-Length. A general client (httpx) costs
    ~1 ms of CPU per request: 8 of them in this one process could not keep a fast server busy."""

    def __init__(self, server: Server) -> None:
        self.url = urlsplit(server.url)
        headers = {"Host": self.url.netloc, "Content-Type": "application/json", **server.headers}
        self.head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.url.hostname, self.url.port)
        reader, writer = self.streams
        request = f"POST {path} HTTP/1.1\r\n{self.head}Content-Length: {len(body)}\r\n\r\n"
        writer.write(request.encode() + body)
        lines = (await reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        length = next(int(v) for k, _, v in (line.partition(b":") for line in lines)
                      if k.lower() == b"content-length")  # fmt: skip
        answer = await reader.readexactly(length)
        if any(line.lower() == b"connection: close" for line in lines):
            await self.close()
        return int(lines[0].split()[1]), answer

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            await self.streams[1].wait_closed()
            self.streams = None


async def load(server: Server, requests: list[list[dict[str, Any]]], clients: int) -> Figures:
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for body in requests:
        queue.put_nowait((len(body), json.dumps(body).encode()))
    latencies: list[float] = []
    failures = 0

    async def client() -> None:
        nonlocal failures
        http = Client(server)
        try:
            while not queue.empty():
                events, body = queue.get_nowait()
                started = time.perf_counter()
                status, answer = await http.post("/api/events", body)
                latencies.append(time.perf_counter() - started)
                if status != 200 or json.loads(answer)["accepted"] != events:
                    failures += 1
        finally:
            await http.close()

    async def spread() -> list[int]:
        await asyncio.sleep(0.5)  # the clients have connected
        return server.connections()

    groups = server.transactions()
    started, cpu, loop = time.perf_counter(), server.cpu_seconds(), server.loop_cpu_seconds()
    split = asyncio.ensure_future(spread())
    await asyncio.gather(*(client() for _ in range(clients)))
    seconds, cpu = time.perf_counter() - started, server.cpu_seconds() - cpu
    loop = server.loop_cpu_seconds() - loop
    (count, total), before = server.transactions(), groups
    count, total = count - before[0], total - before[1]
    figures = Figures(sum(map(len, requests)), len(requests), seconds, latencies, failures, cpu)
    figures.transactions, figures.transaction_seconds = count, total
    figures.loop_cpu = loop
    figures.split = split.result() if split.done() else []
    return figures


def bench(label: str, database_url: str, args: argparse.Namespace, workers: int = 1) -> None:
    home = tempfile.TemporaryDirectory()
    with home as folder, serve(make_home(Path(folder)), database_url, workers) as s:
        # Warm-up: the ruleset and campaigns are loaded and the first leads exist.
        asyncio.run(load(s, bodies(200, 10, args.leads, "warm"), 4))
        for size in args.batch:
            run = f"{label}-{size}-{uuid.uuid4().hex[:6]}"
            figures = asyncio.run(load(s, bodies(args.events, size, args.leads, run), args.clients))
            if workers > 1:  # /metrics is one process's share: no figure of the whole
                figures.transactions = 0
                figures.loop_cpu = 0  # the main process only supervises
            line = figures.line(f"{label}, {size}/request")
            if workers > 1:
                line += f", connections per process {'/'.join(map(str, figures.split))}"
            print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="events per request size")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument(
        "--batch",
        type=lambda text: [int(n) for n in text.split(",")],
        default=[1, 50],
        help="events per request, comma-separated (default 1,50)",
    )
    parser.add_argument("--leads", type=int, default=1000, help="distinct leads")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument(
        "--pg-workers", type=int, default=2, help="HTTP processes serving PostgreSQL"
    )
    parser.add_argument(
        "--sqlite-workers", type=int, default=1, help="HTTP processes serving SQLite"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    args = parser.parse_args()
    print(f"POST /api/events: {args.events:,} events per size, {args.clients} clients, loopback")
    if not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as folder:
            workers = args.sqlite_workers
            label = "SQLite" + (f", {workers} workers" if workers > 1 else "")
            bench(label, f"sqlite:///{folder}/bench.db", args, args.sqlite_workers)
    if not args.skip_pg:
        with scratch_schema(args.pg_url, "bench") as url:
            bench(f"PostgreSQL, {args.pg_workers} workers", url, args, args.pg_workers)


if __name__ == "__main__":
    main()
