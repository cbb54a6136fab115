"""The databases a benchmark runs on: a fresh SQLite file (removed afterwards) and a scratch
schema on the local PostgreSQL (dropped afterwards), with the command line that chooses them and
the number of leads. Imported by the benchmarks beside it (`python bench/NAME.py` puts this
folder first)."""

from __future__ import annotations

import argparse
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import Engine

from engine import db as database
from engine.demo.sample import sample_records, write_jsonl

ROOT = Path(__file__).resolve().parent.parent


def database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
        ),
    )
    parser.add_argument("--skip-pg", action="store_true")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")


def databases(args: argparse.Namespace, prefix: str) -> Iterator[tuple[str, str]]:
    """(name, URL) of each database the options ask for, each removed once the caller moves on."""
    if not args.skip_sqlite:
        args.out.mkdir(parents=True, exist_ok=True)
        db_file = args.out / f"{prefix}-{uuid.uuid4().hex[:8]}.db"
        try:
            yield "SQLite", f"sqlite:///{db_file}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{db_file}{suffix}").unlink(missing_ok=True)
    if not args.skip_pg:
        with database.scratch_schema(args.pg_url, "bench") as url:
            yield "PostgreSQL", url


def run(
    doc: str,
    bench: Callable[[str, str, argparse.Namespace], None],
    leads: int,
    prefix: str,
    options: Callable[[argparse.ArgumentParser], None] | None = None,
) -> None:
    """``bench(url, name, args)`` on each database the command line asks for; ``options`` adds
    the benchmark's own flags to the parser (``args.leads`` is always there)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--leads", type=int, default=leads)
    database_options(parser)
    if options is not None:
        options(parser)
    args = parser.parse_args()
    for name, url in databases(args, prefix):
        bench(url, name, args)


def data_file(events: int, leads: int, out: Path) -> Path:
    """The sample data of ``leads`` leads and about ``events`` events as JSON Lines, made once
    per size under ``out``."""
    path = out / f"sample-{events}-{leads}.jsonl"
    if not path.exists():
        out.mkdir(parents=True, exist_ok=True)
        write_jsonl(sample_records(leads=leads, events_per_lead=events / leads, seed=11), path)
    return path


def analyze(db: Engine) -> None:
    """Statistics of the tables as autovacuum keeps them in a live database: the planner of a
    table just filled, never analyzed, takes it for a few pages and scans it whole."""
    with db.begin() as conn:
        conn.exec_driver_sql("ANALYZE")
