"""Ingest throughput and memory, printed (not asserted).

    python bench/ingest.py --events 100000            # SQLite and PostgreSQL
    python bench/ingest.py --events 1000000 --skip-pg --workers 1

Figures, with the load average before and after (2 cores are shared: compare ratios):
- the raw engine: durable-rules' C core asked about one pre-serialised fact (assert, take the
  queued actions, retract), measured before and after the evaluations and averaged; through
  durable's Python host, measured between five slices of the evaluations and its median taken;
- ``evaluate()`` on the first ``--baseline-records`` records in memory (no database), the heap
  settled as in the ingest processes (``engine.heap``): records/s,
  CPU µs per record, its ratio to the raw engine through durable's Python host (the issue's "raw
  engine"; aim 0.5x) and to the C core, the facts it asked about per record and the C core's own
  time on them (the same facts replayed), and the plain path (``engine.rules.reference``);
- `nurture ingest` of the file on SQLite and PostgreSQL, one process and ``--workers N``:
  records/s and the peak RSS of the process (of the largest process with workers).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from scratch import data_file

from engine import heap
from engine.db import scratch_schema
from engine.db.connect import WRITER_LOCK_SUFFIX
from engine.home import load_ruleset
from engine.ingest.parse import LeadRecord, Parsed, Rejection, parse_jsonl
from engine.rules import reference
from engine.rules.compile import CompiledRuleset, History, compile_ruleset
from engine.rules.evaluate import Event, LeadState, Outcome, evaluate, new_lead
from engine.rules.history import MemoryHistory

ROOT = Path(__file__).resolve().parent.parent
RULESET = ROOT / "rulesets" / "b2b-saas.yaml"
# evaluate() is measured in slices, each beside a figure of the engine through its host.
SLICES = 5
RAW_SLICE_FACTS = 8_000  # facts of each such figure: ~0.25 s
# Runs a command and writes the peak RSS (KiB) of the largest process of its tree and the CPU
# seconds of the whole tree to stderr: a fresh parent per run, as the rusage of waited-for
# children only ever grows.
MEASURE = (
    "import resource, subprocess, sys; code = subprocess.call(sys.argv[1:]); "
    "use = resource.getrusage(resource.RUSAGE_CHILDREN); "
    "print(use.ru_maxrss, use.ru_utime + use.ru_stime, file=sys.stderr); "
    "sys.exit(code)"
)
Evaluator = Callable[[CompiledRuleset, LeadState, Event, History], Outcome]


def load_average() -> str:
    return "load average " + ", ".join(f"{value:.2f}" for value in os.getloadavg())


def evaluate_all(
    compiled: CompiledRuleset,
    records: list[Parsed],
    path: Evaluator,
    states: dict[str, LeadState] | None = None,
    histories: dict[str, MemoryHistory] | None = None,
) -> tuple[float, float]:
    """Records/s and CPU µs per record of ``path`` over ``records``, each lead's state and
    history kept in memory as ingest keeps them (the event types and amounts the rules count),
    in ``states`` and ``histories`` when given (to go on from an earlier slice)."""
    states = {} if states is None else states
    histories = {} if histories is None else histories
    start, cpu = time.perf_counter(), time.process_time()
    for record in records:
        if isinstance(record, Rejection):
            continue
        state = states.get(record.email) or new_lead(compiled.ruleset, {"email": record.email})
        history = histories.get(record.email) or histories.setdefault(record.email, MemoryHistory())
        at = record.occurred_at
        assert at is not None
        if isinstance(record, LeadRecord):
            state.attributes.update(record.attributes)
            event = Event(record.id, "profile_update", at)
        else:
            event = Event(record.id, record.type, at, record.properties)
        if event.type in compiled.history_types:
            history.add_event(event.type, at, compiled.amounts(event.type, event.properties))
        outcome = path(compiled, state, event, history)
        for rule in outcome.fired:
            history.add_firing(rule, at)
        states[record.email] = outcome.state
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return len(records) / elapsed, cpu / len(records) * 1e6


def raw_engine(
    compiled: CompiledRuleset, host: bool = False, rounds: int = 50_000
) -> tuple[float, float]:
    """Facts/s and CPU µs per fact of the C core on one pre-encoded fact: assert, actions,
    retract (``host``: through durable's Python host, as the issue's raw figure was measured)."""
    fact: dict[str, Any] = {}
    # Every key the encoder assigns (read or not), as the figure has been measured since the
    # issue: the raw fact stays the same whatever evaluate() leaves out.
    compiled.encode(
        {"scores": {}, "event.type": "page_view"}, {"url": "/pricing"}, compiled.plans, fact
    )
    members = json.dumps(fact)[1:-1] + ", "
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(rounds):
        if host:
            reference.match(compiled, dict(fact))
        else:
            compiled.match_text(members)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    return rounds / elapsed, cpu / rounds * 1e6


def baseline(path: Path, limit: int) -> None:
    """In-memory evaluation of the first ``limit`` records, beside the bare engine: the C core
    measured before and after it and averaged, the engine through its host before each of
    :data:`SLICES` slices of the records and its median taken (the machine's load moves within
    a run: each figure is seconds from the records it is compared with)."""
    compiled = compile_ruleset(load_ruleset(RULESET))
    with path.open() as handle:
        records = [r for _, r in zip(range(limit), parse_jsonl(handle), strict=False)]
    heap.settle()  # as every process that ingests does before it scores
    before = raw_engine(compiled)
    facts: list[str] = []
    match = compiled.match_text

    def recording(members: str) -> list[int]:
        facts.append(members)
        return match(members)

    compiled.match_text = recording  # type: ignore[method-assign]
    evaluate_all(compiled, records[:1000], evaluate)  # warm the remembered pieces
    facts.clear()
    states: dict[str, LeadState] = {}
    histories: dict[str, MemoryHistory] = {}
    seconds = cpu_seconds = 0.0
    hosts: list[tuple[float, float]] = []  # the engine through its host: facts/s, CPU µs
    size = -(-len(records) // SLICES)
    for first in range(0, len(records), size):
        part = records[first : first + size]
        compiled.match_text = match  # type: ignore[method-assign]
        hosted_part, hosted_part_cpu = raw_engine(compiled, host=True, rounds=RAW_SLICE_FACTS)
        compiled.match_text = recording  # type: ignore[method-assign]
        rate, cpu = evaluate_all(compiled, part, evaluate, states, histories)
        seconds, cpu_seconds = seconds + len(part) / rate, cpu_seconds + cpu * len(part)
        hosts.append((hosted_part, hosted_part_cpu))
    compiled.match_text = match  # type: ignore[method-assign]
    fast, fast_cpu = len(records) / seconds, cpu_seconds / len(records)
    after = raw_engine(compiled)
    raw, raw_cpu = ((b + a) / 2 for b, a in zip(before, after, strict=True))
    hosted, hosted_cpu = (statistics.median(figures) for figures in zip(*hosts, strict=True))
    spread = sorted(rate for rate, _ in hosts)
    start = time.perf_counter()
    for members in facts:
        match(members)
    replayed = len(facts) / (time.perf_counter() - start)
    plain, plain_cpu = evaluate_all(compiled, records, reference.evaluate)
    per_record = len(facts) / len(records)
    print(
        f"raw durable-rules, C core (one pre-serialised fact): {raw:,.0f} facts/s, CPU "
        f"{raw_cpu:.1f} µs/fact"
    )
    print(
        f"raw durable-rules through its Python host (the same fact; the issue's raw engine): "
        f"{hosted:,.0f} facts/s, CPU {hosted_cpu:.1f} µs/fact"
    )
    print(
        f"evaluate(), in memory, no database ({len(records)} records): {fast:,.0f} records/s, "
        f"CPU {fast_cpu:,.1f} µs/record = {fast / hosted:.2f}x the raw engine through the host "
        f"(its median over {len(hosts)} figures taken between slices of the run, "
        f"{spread[0]:,.0f} to {spread[-1]:,.0f} facts/s; {hosted_cpu / fast_cpu:.2f}x by CPU "
        f"time; aim 0.5x), {fast / raw:.2f}x the C core "
        f"({raw_cpu / fast_cpu:.2f}x by CPU); peak RSS "
        f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:,.0f} MiB"
    )
    print(
        f"  {per_record:.2f} facts per record; the C core alone on those facts: "
        f"{replayed:,.0f} facts/s = {replayed / per_record:,.0f} records/s "
        f"(evaluate() is {fast * per_record / replayed:.2f}x that)"
    )
    print(
        f"  the plain path (engine.rules.reference): {plain:,.0f} records/s, CPU "
        f"{plain_cpu:,.1f} µs/record = {plain / hosted:.2f}x the raw engine through the host; "
        f"evaluate() is {fast / plain:.2f}x it"
    )


def run_ingest(
    url: str, path: Path, batch: int, workers: int, code: Path = ROOT
) -> tuple[float, float, float, str]:
    """Seconds, CPU seconds (all processes), peak RSS (MiB; the largest process) and output of
    `nurture ingest`, run from the checkout at ``code``."""
    env = {
        **os.environ,
        "NURTURE_DATABASE_URL": url,
        "NURTURE_HOME": str(ROOT),
        "NURTURE_BATCH_SIZE": str(batch),
        "PYTHONPATH": str(code),
    }
    command = [sys.executable, "-c", MEASURE, sys.executable, "-m", "engine.cli", "ingest"]
    command += [str(path)] + (["--workers", str(workers)] if workers > 1 else [])
    start = time.perf_counter()
    # The checkout's directory, not ours: ``-m`` puts the working directory ahead of PYTHONPATH.
    done = subprocess.run(command, env=env, cwd=code, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"nurture ingest failed ({done.returncode}): {done.stderr[-2000:]}")
    rss, cpu = done.stderr.split()[-2:]
    return elapsed, float(cpu), int(rss) / 1024, done.stdout.strip()


@contextmanager
def scratch_database(pg_url: str | None, out: Path) -> Iterator[str]:
    """A fresh SQLite file (``pg_url`` None) or PostgreSQL schema, removed afterwards."""
    if pg_url is not None:
        with scratch_schema(pg_url, "bench") as url:
            yield url
        return
    db_file = out / f"bench-{uuid.uuid4().hex[:8]}.db"
    try:
        yield f"sqlite:///{db_file}"
    finally:
        for suffix in ("", "-wal", "-shm", WRITER_LOCK_SUFFIX):
            Path(f"{db_file}{suffix}").unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--leads", type=int, help="default: events / 10")
    parser.add_argument("--batch", type=int, default=2000, help="records per transaction")
    parser.add_argument("--baseline-records", type=int, default=50_000)
    parser.add_argument(
        "--workers", default="1,2", help="`ingest --workers` values to run, comma-separated"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--skip-baseline", action="store_true", help="no evaluate() figures")
    parser.add_argument(
        "--before",
        type=Path,
        help="another checkout (say of main): its `nurture ingest` runs first, back to back",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    leads = args.leads or max(1, args.events // 10)
    path = data_file(args.events, leads, args.out)
    with path.open("rb") as handle:
        records = sum(1 for _ in handle)
    print(f"input: {path.name}: {records} records ({leads} lead profiles + events)")
    print(f"start: {load_average()}")
    if not args.skip_baseline:
        baseline(path, args.baseline_records)
    workers = [int(n) for n in args.workers.split(",")]
    codes = [("before", args.before), ("after", ROOT)] if args.before else [("", ROOT)]
    databases = ([] if args.skip_sqlite else [("SQLite", None)]) + (
        [] if args.skip_pg else [("PostgreSQL", args.pg_url)]
    )
    for name, pg_url in databases:
        for count in workers:
            for label, code in codes:
                with scratch_database(pg_url, args.out) as url:
                    elapsed, cpu, rss, output = run_ingest(url, path, args.batch, count, code)
                print(
                    f"nurture ingest --workers {count}, {name}{' ' + label if label else ''}: "
                    f"{records / elapsed:,.0f} records/s ({elapsed:.1f} s), CPU "
                    f"{cpu / records * 1e6:,.0f} µs/record, peak RSS {rss:,.0f} MiB  [{output}]  "
                    f"({load_average()})"
                )
    print(f"end: {load_average()}")


if __name__ == "__main__":
    main()
