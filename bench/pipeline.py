"""Pipeline report and accounts listing at scale, printed (not asserted).

    python bench/pipeline.py                       # 1,000,000 leads on SQLite and PostgreSQL
    python bench/pipeline.py --leads 100000 --skip-pg
    python bench/pipeline.py --skip-reference      # the rollups alone (the reference takes minutes)

Loads N leads and ~5 N stage changes set-based (a recursive CTE on SQLite, generate_series on
PostgreSQL: INSERT ... SELECT, nothing row by row from Python) into a database migrated up to
the revision before the pipeline rollups, then runs that migration (its backfill is timed), then
times each report both ways in the same run: `pipeline_reference` (window functions over every
stage change) and `pipeline` (the rollups), whole history, the last 90 days, a period with
partial days and the whole history with cohorts, checking they agree; then
`engine.reports.accounts.hottest_accounts`, and `record_moves` writing 20,000 new leads' moves
(the cost every stage change now pays at write time). Peak RSS of the process at the end.

Lead i has 3 + (7 i mod 5) stage changes (5 on average), days to weeks apart from a first one
spread over a year: new-lead into subscriber, then up the funnel; the last move of 2 leads in 10
goes back two stages (rule cooled-off), 1 in 10 is disqualified (competitor), 1 in 10
unsubscribes. One lead in 5 has a gmail.com address (no account); the others share 100,000
company domains.
"""

from __future__ import annotations

import argparse
import resource
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from scratch import run

from engine import db as database
from engine.db.rollup import record_moves
from engine.home import load_ruleset
from engine.reports.accounts import hottest_accounts
from engine.reports.pipeline import pipeline, pipeline_reference

ROOT = Path(__file__).resolve().parent.parent
RULESET = ROOT / "rulesets" / "b2b-saas.yaml"
NOW = datetime(2026, 11, 1, tzinfo=UTC)
START = int(datetime(2025, 11, 1, tzinfo=UTC).timestamp())

# Shared by both databases; {i} and {j} are the lead and move numbers, {seconds} turns epoch
# seconds into a stored timestamp.
FUNNEL = "('subscriber', 'lead', 'mql', 'sql', 'opportunity', 'customer')"
MOVES = "(3 + ({i} * 7) % 5)"  # how many stage changes lead i has
ENDING = "(({i} * 13) % 10)"  # 0-5 up the funnel, 6-7 back two stages, 8 out, 9 unsubscribed
AT = f"({START} + ({{i}} * 7919) % 31536000 + ({{j}}) * 86400 * (1 + ({{i}} * 31) % 30))"


def _stage(i: str, j: str, dialect: str) -> str:
    """The stage lead i enters at move j (the last move may go back or out)."""
    last = f"{j} = {MOVES.format(i=i)} - 1"
    ending = ENDING.format(i=i)
    return (
        f"CASE WHEN {last} AND {ending} = 8 THEN 'disqualified' "
        f"WHEN {last} AND {ending} = 9 THEN 'unsubscribed' "
        f"WHEN {last} AND ({ending} >= 6 OR {j} = 6) THEN {_funnel(f'{j} - 2', dialect)} "
        f"ELSE {_funnel(j, dialect)} END"
    )


def _funnel(position: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"(ARRAY{FUNNEL.replace('(', '[').replace(')', ']')})[({position}) + 1]"
    names = FUNNEL.strip("()").split(", ")
    cases = " ".join(f"WHEN {position} = {n} THEN {name}" for n, name in enumerate(names))
    return f"CASE {cases} END"


def _rule(i: str, j: str) -> str:
    last = f"{j} = {MOVES.format(i=i)} - 1"
    ending = ENDING.format(i=i)
    return (
        f"CASE WHEN {j} = 0 THEN 'new-lead' WHEN {last} AND {ending} = 8 THEN 'competitor' "
        f"WHEN {last} AND {ending} = 9 THEN 'unsubscribed' "
        f"WHEN {last} AND ({ending} >= 6 OR {j} = 6) THEN 'cooled-off' ELSE 'advance' END"
    )


def load(engine: sa.Engine, leads: int) -> None:
    dialect = engine.dialect.name
    if dialect == "postgresql":
        numbers = f"generate_series(1, {leads}::bigint) AS n(i)"
        moves = "generate_series(0, 6) AS m(j)"
        seconds, json, true = "to_timestamp({})", "'{}'::json", "true"
        prefix = ""
    else:
        numbers = "n"
        moves = "(SELECT 0 AS j UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3 "
        moves += "UNION ALL SELECT 4 UNION ALL SELECT 5 UNION ALL SELECT 6) AS m"
        seconds, json, true = "strftime('%Y-%m-%d %H:%M:%f000', {}, 'unixepoch')", "'{}'", "1"
        prefix = "WITH RECURSIVE n(i) AS "
        prefix += f"(SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {leads}) "
    last = f"{MOVES.format(i='i')} - 1"
    domain = "CASE WHEN i % 5 = 0 THEN NULL ELSE 'co' || (i % 100000) || '.com' END"
    score = "((i * 37) % 120)"
    lead_sql = (
        f"{prefix}INSERT INTO lead (id, email, attributes, score, temperature, stage, "
        "stage_entered_at, tags, subscribed, version, created_at, updated_at, account_domain) "
        f"SELECT i, 'lead' || i || '@' || COALESCE({domain}, 'gmail.com'), {json}, {score}, "
        f"CASE WHEN {score} >= 70 THEN 'hot' WHEN {score} >= 40 THEN 'warm' ELSE 'cold' END, "
        f"{_stage('i', last, dialect)}, {seconds.format(AT.format(i='i', j=last))}, "
        f"'[]', {true}, 1, {seconds.format(str(int(NOW.timestamp())))}, "
        f"{seconds.format(str(int(NOW.timestamp())))}, {domain} FROM {numbers}"
    )
    history_sql = (
        f"{prefix}INSERT INTO stage_history (lead_id, from_stage, to_stage, rule, event_id, at) "
        f"SELECT i, CASE WHEN j = 0 THEN NULL ELSE {_funnel('j - 1', dialect)} END, "
        f"{_stage('i', 'j', dialect)}, {_rule('i', 'j')}, NULL, "
        f"{seconds.format(AT.format(i='i', j='j'))} "
        f"FROM {numbers} CROSS JOIN {moves} WHERE j < {MOVES.format(i='i')}"
    )
    with engine.begin() as conn:
        for sql in (lead_sql, history_sql):
            # psycopg reads % as a placeholder.
            conn.exec_driver_sql(sql.replace("%", "%%") if dialect == "postgresql" else sql)
    with engine.begin() as conn:
        conn.exec_driver_sql("ANALYZE")


def timed(label: str, work: object) -> object:
    start = time.perf_counter()
    result = work() if callable(work) else None
    print(f"  {label}: {time.perf_counter() - start:.2f} s")
    return result


def before_rollups(url: str) -> None:
    """Migrate up to the revision before the rollups (0010), which `database.upgrade` then runs."""
    engine = database.connect(url)
    with engine.begin() as connection:
        config = database.alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "0010-1")
    engine.dispose()


def both_ways(
    engine: sa.Engine, ruleset: object, label: str, reference: bool, **options: object
) -> None:
    """Times the report from the rollups and, unless skipped, the reference; they must agree."""
    start = time.perf_counter()
    report = pipeline(engine, ruleset, now=NOW, **options)  # type: ignore[arg-type]
    fast = time.perf_counter() - start
    if not reference:
        print(f"  pipeline, {label}: rollups {fast:.2f} s")
        return
    start = time.perf_counter()
    expected = pipeline_reference(engine, ruleset, now=NOW, **options)  # type: ignore[arg-type]
    slow = time.perf_counter() - start
    same = "same report" if report == expected else "REPORTS DIFFER"
    print(
        f"  pipeline, {label}: straightforward {slow:.2f} s, rollups {fast:.2f} s "
        f"({slow / fast:,.0f}x), {same}"
    )


def write_moves(engine: sa.Engine, leads: int) -> None:
    """`record_moves` as ingest calls it: batches of 1,000 new leads, 5 moves each."""
    with engine.connect() as conn:
        first = int(conn.execute(sa.text("SELECT max(id) FROM lead")).scalar_one()) + 1
    stages = ("subscriber", "lead", "mql", "sql", "opportunity")
    start = time.perf_counter()
    for batch in range(first, first + leads, 1000):
        ids = range(batch, min(batch + 1000, first + leads))
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO lead (id, email, attributes, score, temperature, stage, "
                    "stage_entered_at, tags, subscribed, version, created_at, updated_at) "
                    "VALUES (:id, :email, '{}', 0, 'cold', 'opportunity', :at, '[]', true, 1, "
                    ":at, :at)"
                ),
                [{"id": i, "email": f"new{i}@example.com", "at": NOW} for i in ids],
            )
            record_moves(
                conn,
                [
                    {
                        "lead_id": i,
                        "from_stage": stages[j - 1] if j else None,
                        "to_stage": stage,
                        "rule": "advance" if j else "new-lead",
                        "event_id": None,
                        "at": NOW - timedelta(days=30 - 7 * j, seconds=i % 86400),
                    }
                    for i in ids
                    for j, stage in enumerate(stages)
                ],
            )
    elapsed = time.perf_counter() - start
    print(
        f"  record_moves, {leads * 5:,} stage changes of {leads:,} new leads: "
        f"{leads * 5 / elapsed:,.0f} changes/s ({elapsed:.1f} s)"
    )


def bench(url: str, name: str, args: argparse.Namespace) -> None:
    leads, reference = args.leads, not args.skip_reference
    before_rollups(url)
    engine = database.connect(url)
    ruleset = load_ruleset(RULESET)
    print(f"{name}:")
    timed(f"load {leads:,} leads and their stage changes", lambda: load(engine, leads))
    with engine.connect() as conn:
        changes = conn.execute(sa.text("SELECT count(*) FROM stage_history")).scalar_one()
    print(f"  ({changes:,} stage changes)")
    timed("migration 0010: backfill the rollups", lambda: database.upgrade(url))
    # As autovacuum leaves tables after a bulk load: statistics, and on PostgreSQL the
    # visibility map that lets index-only scans skip the heap.
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
    both_ways(engine, ruleset, "whole history", reference)
    both_ways(engine, ruleset, "last 90 days", reference, since=NOW - timedelta(days=90))
    partial = {
        "since": NOW - timedelta(days=200, hours=5),
        "until": NOW - timedelta(days=20, hours=7),
    }
    both_ways(engine, ruleset, "partial days (-200 d 5 h to -20 d 7 h)", reference, **partial)
    both_ways(engine, ruleset, "whole history with cohorts", reference, cohorts=True)
    timed("accounts, top 20", lambda: hottest_accounts(engine, ruleset, 20))
    report = pipeline(engine, ruleset, now=NOW)
    for row in report["stages"]:
        print(
            f"    {row['stage']:<13} leads {row['leads']:>8,}  entered {row['entered']:>8,}  "
            f"rate {row['conversion_rate']}  median {row['median_days']}  p90 {row['p90_days']}  "
            f"stuck {row['stuck']}"
        )
    write_moves(engine, 20_000)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak RSS {rss:,.0f} MiB")
    engine.dispose()


if __name__ == "__main__":
    run(
        __doc__,
        bench,
        1_000_000,
        "pipeline",
        lambda parser: parser.add_argument(
            "--skip-reference",
            action="store_true",
            help="time the rollups alone (the straightforward reports take minutes at 1M leads)",
        ),
    )
