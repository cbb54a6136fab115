"""``among_param`` (the ``IN`` of ingest's cached read statements: one parameter, a JSON array
read by ``json_each`` on SQLite, an array on PostgreSQL) finds what a plain ``IN`` of the
values finds, on generated and hostile text (quotes, brackets, backslashes, unicode, JSON
syntax, SQL) and on integer ids; on SQLite it still searches the column's index. And ingest,
whose reads of a batch's leads, events, scores, history and enrollments use it, stores what
it stores when every one of those reads is a plain expanding ``IN``."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import db as database
from engine.db import among_param, upsert_rows
from engine.db.schema import FIRINGS, LEADS, LEDGER, SCORES
from engine.ingest import state
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from tests.helpers import compiled
from tests.store_support import another_database

ROOT = Path(__file__).resolve().parent.parent

AT = datetime(2026, 3, 1, tzinfo=UTC)
HOSTILE = [
    "a@b.io",
    "A@B.IO",
    "",
    " ",
    "'; DROP TABLE lead; --",
    '"quoted"@x.io',
    "back\\slash@x.io",
    '["a@b.io"]',
    "[1, 2]",
    "null",
    "1",
    "é@exämple.org",
    "用户@例子.广告",
    "😀@emoji.io",
    "tab\t@x.io",
    "line\nbreak@x.io",
    "%40@x.io",
    "a" * 300 + "@long.io",
]
# PostgreSQL stores no NUL and no lone surrogate in text (ingest refuses both before here).
TEXT = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))


def _store(conn: sa.Connection, emails: list[str]) -> dict[str, int]:
    """One lead per address; address → id."""
    rows = [
        {"email": email, "attributes": {}, "score": 0, "temperature": "cold",
         "stage": "subscriber", "stage_entered_at": AT, "tags": [], "subscribed": True,
         "version": 0, "ruleset_version": "v", "created_at": AT, "updated_at": AT}
        for email in emails
    ]  # fmt: skip
    upsert_rows(conn, LEADS, rows, ["email"])
    return {email: id_ for email, id_ in conn.execute(sa.select(LEADS.c.email, LEADS.c.id))}


def _both(conn: sa.Connection, column: sa.Column[Any], values: Sequence[object]) -> list[set[int]]:
    """The lead ids ``among_param`` finds and those a plain ``IN`` of the values finds."""
    cached = sa.select(LEADS.c.id).where(among_param(conn.dialect.name, column, "values"))
    plain = sa.select(LEADS.c.id).where(column.in_(values))
    return [set(conn.execute(q, {"values": values}).scalars()) for q in (cached, plain)]


def test_hostile_addresses_and_ids_are_found_as_a_plain_in_finds_them(db: sa.Engine) -> None:
    with db.connect() as conn:
        stored = _store(conn, HOSTILE[::2])
        for n in range(len(HOSTILE) + 1):
            asked = [*HOSTILE[n:], *HOSTILE[:n]][:n]
            mine, plain = _both(conn, LEADS.c.email, asked)
            assert mine == plain == {stored[e] for e in asked if e in stored}
            ids = [*list(stored.values())[:n], 0, -1, 10**6]
            mine, plain = _both(conn, LEADS.c.id, ids)
            assert mine == plain == set(stored.values()) & set(ids)
        conn.rollback()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(stored=st.lists(TEXT, max_size=12, unique=True), asked=st.lists(TEXT, max_size=12))
def test_generated_text_is_found_as_a_plain_in_finds_it(
    db: sa.Engine, stored: list[str], asked: list[str]
) -> None:
    with db.connect() as conn:
        ids = _store(conn, stored)
        mine, plain = _both(conn, LEADS.c.email, [*asked, *stored[::2]])
        assert mine == plain == {ids[e] for e in {*asked, *stored[::2]} if e in ids}
        conn.rollback()


def test_sqlite_searches_the_index_for_each_value(db: sa.Engine) -> None:
    if db.dialect.name != "sqlite":
        return
    query = sa.select(LEADS.c.id).where(among_param("sqlite", LEADS.c.email, "values"))
    with db.connect() as conn:
        sql = str(query.compile(conn))
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", ('["a@b.io"]',)).all()
    details = " | ".join(str(row[-1]) for row in plan)
    assert "SEARCH lead USING" in details and "INDEX" in details, details


def _history_stream(seed: int) -> list[str]:
    """Profiles and events over a few leads for some weeks, then more a year on (the repository's
    ruleset): counts and sums in windows, limits per period and once, stage moves."""
    rng = random.Random(seed)
    kinds = ["page_view", "page_view", "page_view", "purchase", "crm_won", "form_submit"]
    lines = []
    for n in range(400):
        later = timedelta(days=400) if n >= 300 else timedelta()  # past the 365-day window
        at = (AT + later + timedelta(hours=n * 3 + rng.randrange(3))).isoformat()
        email = f"lead{rng.randrange(6)}@acme{rng.randrange(2)}.io"
        if rng.random() < 0.1:
            profile = {"job_title": rng.choice(["VP Sales", "intern"]), "country": "US"}
            lines.append(json.dumps({"email": email, **profile, "occurred_at": at}))
            continue
        kind = rng.choice(kinds)
        url = rng.choice(["/pricing", "/blog", "/careers"])
        properties = {"amount": rng.randrange(500, 4000)} if kind == "purchase" else {"url": url}
        event = {"id": f"e{n}", "email": email, "type": kind, "properties": properties}
        lines.append(json.dumps({**event, "occurred_at": at}))
    return lines


def _outcome(engine: sa.Engine) -> dict[str, list[tuple[Any, ...]]]:
    """What ingest stored, by address: scores, firings, ledger and the leads."""
    tables = {
        "scores": (SCORES, ["component", "value", "rose_at"]),
        "firings": (FIRINGS, ["rule", "at"]),
        "ledger": (LEDGER, ["component", "delta", "rule"]),
    }
    found = {}
    with engine.connect() as conn:
        for name, (table, columns) in tables.items():
            query = sa.select(LEADS.c.email, *(table.c[c] for c in columns))
            rows = conn.execute(query.join(LEADS, LEADS.c.id == table.c.lead_id))
            found[name] = sorted(tuple(row) for row in rows)
        leads = sa.select(LEADS.c.email, LEADS.c.score, LEADS.c.stage, LEADS.c.stage_entered_at)
        found["leads"] = sorted(tuple(row) for row in conn.execute(leads))
    return found


def _plain(dialect: str, column: sa.ColumnElement[Any], name: str) -> sa.ColumnElement[bool]:
    """The straightforward form: an expanding IN, rendered again for each execution."""
    return column.in_(sa.bindparam(name, expanding=True))


def _forget_statements() -> None:
    for each in vars(state).values():
        if callable(getattr(each, "cache_clear", None)):
            each.cache_clear()


def test_ingest_reads_what_plain_in_statements_read(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups of a few records (as the API commits them) through ingest's cached statements
    store what the same groups store through plain expanding INs, and what the whole stream
    stores as one batch (which reads no history back): the leads, events, scores, history
    (counts, sums, days_since, limits) and enrollments were read alike and right."""
    rules = compiled((ROOT / "rulesets" / "b2b-saas.yaml").read_text(), "b2b-saas.yaml")
    lines = _history_stream(15)
    in_groups = [lines[n : n + 8] for n in range(0, len(lines), 8)]

    def run(url: str, groups: list[list[str]], size: int) -> dict[str, list[tuple[Any, ...]]]:
        engine = database.connect(url)
        for group in [*groups, lines[:16]]:  # the last one again: duplicates only
            ingest(engine, rules, parse_jsonl(io.StringIO("\n".join(group) + "\n")), size)
        found = _outcome(engine)
        engine.dispose()
        return found

    database.upgrade(db_url)
    _forget_statements()
    cached = run(db_url, in_groups, 8)
    with another_database(db_url, tmp_path) as url:
        # One batch: its history is the batch's own, nothing of it read back.
        whole = run(url, [lines], len(lines))
    monkeypatch.setattr(state, "among_param", _plain)
    _forget_statements()
    with another_database(db_url, tmp_path) as url:
        plain = run(url, in_groups, 8)
    monkeypatch.undo()
    _forget_statements()
    assert cached == plain == whole
    fired = {row[1] for row in cached["firings"]}
    assert {"pricing-page", "repeat-visits", "big-spender"} <= fired, fired
