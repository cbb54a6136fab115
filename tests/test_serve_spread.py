"""``nurture serve --workers 2`` spreads its clients' connections over both HTTP processes
(engine.api.spread: a socket of each process's own, ``SO_REUSEPORT``), on SQLite and
PostgreSQL: 32 keep-alive clients connecting at once (a burst) or one after another both land
on both processes, where uvicorn's shared socket, the first process to wake taking every waiting
connection, handed a burst to one process (8/0) as often as not; every connection is
answered."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path

import pytest

from engine.api.spread import own_socket
from tests.helpers import api_home, serving_workers
from tests.mail_support import free_port

# Connections, and the fewest a process may get: the kernel spreads them at random, 32 over two
# processes giving one fewer than 6 about once in 10,000 runs (binomial).
CONNECTIONS, MOST_UNEVEN = 32, 6
TOKEN = "spread-token-0123456789abcdef0123456789"

linux = pytest.mark.skipif(sys.platform != "linux", reason="Linux spreads SO_REUSEPORT")


@linux
def test_own_sockets_share_the_address_and_its_connections() -> None:
    """Two processes' own sockets (here two of this one) on the supervisor's address both get
    connections; a plain bind of the address is still refused."""
    with socket.socket() as shared:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        shared.bind(("127.0.0.1", 0))
        own = [own_socket(shared), own_socket(shared)]
        for each in own:
            each.listen(CONNECTIONS)
            each.setblocking(False)
        clients = [socket.create_connection(shared.getsockname()) for _ in range(CONNECTIONS)]
        accepted = []
        for each in own:
            count = 0
            with suppress(BlockingIOError):
                while True:
                    each.accept()[0].close()
                    count += 1
            accepted.append(count)
        with socket.socket() as other, pytest.raises(OSError):
            other.bind(shared.getsockname())
        for each in [*own, *clients]:
            each.close()
    assert sum(accepted) == CONNECTIONS and min(accepted) >= MOST_UNEVEN, accepted


def _held(pid: int, port: int) -> list[int]:
    """Established connections to ``port`` held by each child process of ``pid`` holding any
    (not the supervisor's other children)."""
    hex_port = f":{port:04X}"
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[1].endswith(hex_port) and fields[3] == "01":
                inodes.add(f"socket:[{fields[9]}]")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    counts = []
    for child in children:
        links = []
        for fd in Path(f"/proc/{child}/fd").iterdir():
            try:
                links.append(os.readlink(fd))
            except OSError:  # closed meanwhile
                continue
        counts.append(sum(link in inodes for link in links))
    return [n for n in counts if n]


def _post(conn: socket.socket, port: int, event: Mapping[str, object]) -> dict[str, object]:
    """One ``POST /api/events`` on a keep-alive connection, its answer read by Content-Length."""
    body = json.dumps(event).encode()
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}"
        f"\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    conn.sendall(head.encode() + body)
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += conn.recv(65536)
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    assert lines[0].split()[1] == "200", answer
    length = next(int(v) for k, _, v in (h.partition(":") for h in lines[1:])
                  if k.lower() == "content-length")  # fmt: skip
    while len(rest) < length:
        rest += conn.recv(65536)
    found: dict[str, object] = json.loads(rest)
    return found


@linux
@pytest.mark.parametrize("burst", [True, False], ids=["burst", "one-by-one"])
def test_serve_workers_spread_connections(tmp_path: Path, db_url: str, burst: bool) -> None:
    home = api_home(tmp_path / "home")
    port = free_port()
    env = {**os.environ, "NURTURE_HOME": str(home), "NURTURE_DATABASE_URL": db_url,
           "NURTURE_API_TOKEN": TOKEN}  # fmt: skip
    conns: list[socket.socket] = []
    with serving_workers(tmp_path, env, port) as server:
        try:
            time.sleep(1)  # the health check's connection closed
            for _ in range(CONNECTIONS):
                conn = socket.socket()
                conn.setblocking(not burst)  # a burst: all connecting before any is accepted
                conn.connect_ex(("127.0.0.1", port))
                conns.append(conn)
            for conn in conns:
                conn.setblocking(True)
                conn.settimeout(60)
            for n, conn in enumerate(conns):
                event = {"id": f"e{n}", "email": f"lead{n}@acme.io", "type": "page_view",
                         "properties": {"url": "/pricing"}}  # fmt: skip
                assert _post(conn, port, event)["accepted"] == 1
            held = sorted(_held(server.pid, port))
        finally:
            for conn in conns:
                conn.close()
    assert sum(held) == CONNECTIONS, held
    assert len(held) == 2 and held[0] >= MOST_UNEVEN, held
