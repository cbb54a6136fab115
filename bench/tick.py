"""Time evaluations at scale (`nurture tick`'s decay and time jobs), printed (not asserted).

    python bench/tick.py                        # 100,000 customers on SQLite and PostgreSQL
    python bench/tick.py --leads 20000 --skip-pg

Ingests one purchase for each of N customers (rulesets/examples/customer-health.yaml, through
the ingest path, which stores when each customer's time-dependent inputs next change: 30 days
after the purchase), the purchases one every 100 days / N apart. Then ticks three times:

- when 1 % of the customers have passed 30 days without a purchase,
- when 10 % more have (the 1 % are not due again: their next change is 30 days later),
- at once again, when nobody is due.

Each tick runs decay and the time evaluations, as `nurture tick` does; the cost must follow the
customers whose inputs changed, not all customers.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from scratch import run

from engine import db as database
from engine.home import compile_checked
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from engine.rules.compile import CompiledRuleset
from engine.schedule.clock import evaluate_due
from engine.schedule.decay import decay

ROOT = Path(__file__).resolve().parent.parent
RULESET = ROOT / "rulesets" / "examples" / "customer-health.yaml"
START = datetime(2026, 1, 1, tzinfo=UTC)
SPREAD = timedelta(days=100)
QUIET = timedelta(days=30)  # customer-health's first time-dependent change after a purchase


def purchases(leads: int) -> Iterator[str]:
    gap = SPREAD / leads
    for i in range(leads):
        yield json.dumps(
            {
                "id": f"p{i}",
                "email": f"customer{i}@shop.example",
                "type": "purchase",
                "occurred_at": (START + i * gap).isoformat(),
                "properties": {"amount": 20 + i % 50, "cds": 1 + i % 3},
            }
        )


def tick(url: str, compiled: CompiledRuleset, now: datetime) -> tuple[int, float]:
    engine = database.connect(url)
    started = time.perf_counter()
    decay(engine, compiled.ruleset, now)
    report = evaluate_due(engine, compiled, None, now)
    return report.evaluated, time.perf_counter() - started


def bench(url: str, name: str, args: argparse.Namespace) -> None:
    leads = args.leads
    database.upgrade(url)
    engine = database.connect(url)
    compiled = compile_checked(RULESET)
    print(f"{name}: {leads:,} customers")
    started = time.perf_counter()
    result = ingest(engine, compiled, parse_jsonl(purchases(leads)))
    took = time.perf_counter() - started
    print(f"  ingest {result.accepted:,} purchases: {took:.1f} s ({result.accepted / took:,.0f}/s)")
    gap = SPREAD / leads
    one = START + QUIET + (leads // 100) * gap - gap / 2
    ten = one + (leads // 10) * gap
    for label, moment in (("1 % due", one), ("10 % more due", ten), ("nobody due", ten)):
        evaluated, seconds = tick(url, compiled, moment)
        rate = f"{evaluated / seconds:,.0f} leads/s" if evaluated else "—"
        print(f"  tick, {label:<13}: {evaluated:>7,} evaluated in {seconds:6.2f} s ({rate})")
    engine.dispose()


if __name__ == "__main__":
    run(__doc__, bench, 100_000, "tick")
