"""Rescoring speed and memory, printed (not asserted): `nurture rules plan` and `nurture rules
apply` of an edited ruleset over a database that `nurture ingest` filled with the same events,
in the same run, on SQLite and PostgreSQL.

    python bench/rescore.py --leads 10000 --events 100000
    python bench/rescore.py --leads 100000 --events 1000000 --skip-sqlite --workers 2

Figures per database: `nurture ingest` records/s; plan and apply events/s, total time and the
ratio to the ingest rate; the peak RSS of each process (flat in the number of leads: leads are
replayed a batch at a time).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scratch import ROOT, data_file, database_options, databases

NURTURE = str(Path(sys.executable).with_name("nurture"))
# The edit planned and applied: a pricing view is worth 15 instead of 10.
PRICING = "then: {score: {engagement: %d}, tag: pricing-interest}"
EDITS = ((PRICING % 10, PRICING % 15),)


def make_home(folder: Path) -> Path:
    (folder / "rulesets").mkdir(parents=True)
    shutil.copy(ROOT / "rulesets" / "b2b-saas.yaml", folder / "rulesets")
    for name in ("campaigns", "templates"):
        shutil.copytree(ROOT / name, folder / name)
    return folder


def edit(home: Path) -> None:
    path = home / "rulesets" / "b2b-saas.yaml"
    text = path.read_text()
    for old, new in EDITS:
        if old not in text:
            raise SystemExit(f"bench/rescore.py: the ruleset no longer has {old!r}")
        text = text.replace(old, new)
    path.write_text(text)


def timed(args: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, stdout) of ``nurture ARGS``."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [NURTURE, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    output = process.stdout.read().decode().strip() if process.stdout else ""
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    if status != 0:
        raise SystemExit(f"nurture {' '.join(args)} failed ({status}): {output[-500:]}")
    return elapsed, usage.ru_maxrss / 1024, output


def bench(url: str, name: str, path: Path, records: int, workers: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        home = make_home(Path(folder) / "home")
        env = {**os.environ, "NURTURE_DATABASE_URL": url, "NURTURE_HOME": str(home)}
        seconds, rss, _ = timed(["ingest", str(path)], env)
        ingest_rate = records / seconds
        print(
            f"{name}: nurture ingest {records:,} records: {ingest_rate:,.0f} records/s "
            f"({seconds:.1f} s), peak RSS {rss:,.0f} MiB"
        )
        edit(home)
        flags = ["--workers", str(workers)] if workers > 1 else []
        for command in (["rules", "plan", "--json", *flags], ["rules", "apply", *flags]):
            seconds, rss, output = timed(command, env)
            rate = records / seconds
            print(
                f"{name}: nurture {' '.join(command)}: {rate:,.0f} events/s ({seconds:.1f} s), "
                f"{rate / ingest_rate:.2f}× ingest, peak RSS {rss:,.0f} MiB"
            )
            if command[1] == "apply":
                print(f"    {output.splitlines()[0] if output else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=10_000)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="plan/apply processes")
    database_options(parser)
    args = parser.parse_args()
    path = data_file(args.events, args.leads, args.out)
    with path.open("rb") as handle:
        records = sum(1 for _ in handle)
    print(f"input: {path.name}: {records:,} records ({args.leads:,} lead profiles + events)")
    for name, url in databases(args, "rescore"):
        bench(url, name, path, records, args.workers)


if __name__ == "__main__":
    main()
