"""Draining a backlog of pending alerts, printed (not asserted).

    python bench/alert_backlog.py                    # 50,000 hot leads, SQLite and PostgreSQL
    python bench/alert_backlog.py --leads 200000 --skip-pg

One import makes N leads hot at once (bench/alerts.py's ruleset: a demo request is 80 points,
and a hot lead pages sales), leaving N pending alert actions. The alerts job then decides them
all, 200 a batch, each delivered alert an email in the outbox. A backlog of N / 5 first, then
one of N: a batch should cost the same however long the backlog behind it, so both drains
should run at one rate. Prints alerts/s for each, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from alerts import RULESET
from scratch import analyze, run

from engine import db as database
from engine.alerts.enqueue import enqueue
from engine.home import load_ruleset
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.rules.compile import compile_ruleset
from engine.settings import Settings
from engine.timeutil import utcnow


def bench(url: str, name: str, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="nurture-bench-backlog-") as folder:
        drain(url, name, args.leads, Path(folder))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {peak:.0f} MiB")


def drain(url: str, name: str, leads: int, home: Path) -> None:
    (home / "rulesets").mkdir()
    path = home / "rulesets" / "alert-bench.yaml"
    path.write_text(RULESET)
    ruleset = load_ruleset(path, home)
    settings = Settings(
        home=home,
        database_url=url,
        public_url="https://nurture.example",
        sales_email="sales@example.com",
    )
    database.upgrade(url)
    db = database.connect(url)
    compiled = compile_ruleset(ruleset)
    for size, offset in ((leads // 5, 0), (leads, leads)):
        started = time.perf_counter()
        lines = (
            json.dumps({"id": f"e{i}", "email": f"lead{i}@example.com", "type": "demo_request"})
            for i in range(offset, offset + size)
        )
        imported = ingest(db, compiled, parse_jsonl(lines))
        analyze(db)
        print(
            f"{name}: {imported.accepted:,} leads made hot in {time.perf_counter() - started:.1f} s"
        )
        started = time.perf_counter()
        done = enqueue(db, settings, ruleset, utcnow())
        took = time.perf_counter() - started
        print(
            f"  drain a backlog of {size:,}: {done.created:,} alerts ({done.suppressed:,} "
            f"suppressed) in {took:.1f} s, {size / took:,.0f} alerts/s"
        )
    db.dispose()


if __name__ == "__main__":
    run(__doc__, bench, 50_000, "alert-backlog")
