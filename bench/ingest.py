"""Ingest throughput and memory, printed (not asserted).

    python bench/ingest.py --events 100000            # SQLite and PostgreSQL
    python bench/ingest.py --events 1000000 --skip-pg

Figures:
- baseline: the same records evaluated by the same durable-rules ruleset in memory (no database),
  and the raw engine (assert + retract of one flat fact);
- `nurture ingest` of the file on SQLite and PostgreSQL: records/s and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from engine.db import scratch_schema
from engine.demo.sample import sample_records, write_jsonl
from engine.home import load_ruleset
from engine.ingest.parse import LeadRecord, Rejection, parse_jsonl
from engine.rules.compile import compile_ruleset
from engine.rules.evaluate import Event, LeadState, evaluate, new_lead
from engine.rules.history import MemoryHistory

ROOT = Path(__file__).resolve().parent.parent
RULESET = ROOT / "rulesets" / "b2b-saas.yaml"
NURTURE = str(Path(sys.executable).with_name("nurture"))


def data_file(events: int, leads: int, out: Path) -> Path:
    path = out / f"sample-{events}-{leads}.jsonl"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(sample_records(leads=leads, events_per_lead=events / leads, seed=11), path)
    return path


def baseline(path: Path, limit: int) -> tuple[int, float, float]:
    """In-memory evaluation of the first ``limit`` records, then the bare engine."""
    compiled = compile_ruleset(load_ruleset(RULESET))
    with path.open() as handle:
        records = [r for _, r in zip(range(limit), parse_jsonl(handle), strict=False)]
    states: dict[str, LeadState] = {}
    histories: dict[str, MemoryHistory] = {}
    start = time.perf_counter()
    for record in records:
        if isinstance(record, Rejection):
            continue
        state = states.get(record.email) or new_lead(compiled.ruleset, {"email": record.email})
        history = histories.setdefault(record.email, MemoryHistory())
        at = record.occurred_at
        assert at is not None
        if isinstance(record, LeadRecord):
            state.attributes.update(record.attributes)
            event = Event(record.id, "profile_update", at)
        else:
            event = Event(record.id, record.type, at, record.properties)
        history.add_event(event.type, at)
        outcome = evaluate(compiled, state, event, history)
        for rule in outcome.fired:
            history.add_firing(rule, at)
        states[record.email] = outcome.state
    evaluated = len(records) / (time.perf_counter() - start)
    fact: dict[str, object] = {}
    compiled.encode(
        {"scores": {}, "event.type": "page_view"},
        {"url": "/pricing"},
        compiled.event_plan + compiled.lead_plan,
        fact,
    )
    rounds = 50_000
    start = time.perf_counter()
    for _ in range(rounds):
        compiled.match(dict(fact))
    raw = rounds / (time.perf_counter() - start)
    return len(records), evaluated, raw


def run_ingest(url: str, path: Path, batch: int) -> tuple[float, float, str]:
    env = {
        **os.environ,
        "NURTURE_DATABASE_URL": url,
        "NURTURE_HOME": str(ROOT),
        "NURTURE_BATCH_SIZE": str(batch),
    }
    start = time.perf_counter()
    process = subprocess.Popen(
        [NURTURE, "ingest", str(path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    output = process.stdout.read().decode().strip() if process.stdout else ""
    if status != 0:
        raise SystemExit(f"nurture ingest failed ({status}): {output}")
    return elapsed, usage.ru_maxrss / 1024, output


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--leads", type=int, help="default: events / 10")
    parser.add_argument("--batch", type=int, default=2000, help="records per transaction")
    parser.add_argument("--baseline-records", type=int, default=100_000)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    leads = args.leads or max(1, args.events // 10)
    path = data_file(args.events, leads, args.out)
    with path.open("rb") as handle:
        records = sum(1 for _ in handle)
    print(f"input: {path.name}: {records} records ({leads} lead profiles + events)")

    count, evaluated, raw = baseline(path, args.baseline_records)
    print(f"baseline, in memory, no database ({count} records): {evaluated:,.0f} records/s")
    print(f"raw durable-rules match (assert + retract, one fact): {raw:,.0f} facts/s")

    db_file = args.out / f"bench-{uuid.uuid4().hex[:8]}.db"
    elapsed, rss, output = run_ingest(f"sqlite:///{db_file}", path, args.batch)
    print(
        f"nurture ingest, SQLite: {records / elapsed:,.0f} records/s "
        f"({elapsed:.1f} s), peak RSS {rss:,.0f} MiB  [{output}]"
    )
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_file}{suffix}").unlink(missing_ok=True)

    if not args.skip_pg:
        with scratch_schema(args.pg_url, "bench") as url:
            elapsed, rss, output = run_ingest(url, path, args.batch)
        print(
            f"nurture ingest, PostgreSQL: {records / elapsed:,.0f} records/s "
            f"({elapsed:.1f} s), peak RSS {rss:,.0f} MiB  [{output}]"
        )


if __name__ == "__main__":
    main()
