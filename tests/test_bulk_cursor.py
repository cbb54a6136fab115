"""``fetch_rows`` and ``write_rows`` (ingest's cached reads and its bulk writes, on SQLite run
on the DB-API cursor with SQLAlchemy's type processors) do what SQLAlchemy's execution does:
every cached read of :mod:`engine.ingest.state` over a database ingest filled, generated leads
(JSON attributes, times, text) read back, ingest storing the same rows either way, the same
row counts, an error raised as SQLAlchemy's; outside a transaction SQLAlchemy begins one;
and SQLAlchemy still sees every statement when something listens (cursor events, echo)."""

from __future__ import annotations

import io
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import db as database
from engine.db import append_rows, bulk, fetch_rows, update_rows, upsert_rows
from engine.db.schema import EVENTS, LEADS
from engine.ingest import state
from engine.ingest.batch import ingest
from engine.ingest.parse import parse_jsonl
from tests.helpers import compiled
from tests.store_support import another_database
from tests.test_bulk_among import TEXT, _history_stream, _outcome

ROOT = Path(__file__).resolve().parent.parent
AT = datetime(2026, 3, 1, tzinfo=UTC)


def _reads(conn: sa.Connection) -> list[tuple[sa.Select[Any], dict[str, Any]]]:
    """Every cached read of ingest, with parameters that find rows and some that do not."""
    rules = compiled((ROOT / "rulesets" / "b2b-saas.yaml").read_text(), "b2b-saas.yaml")
    dialect = conn.dialect.name
    emails = [e for (e,) in conn.execute(sa.select(LEADS.c.email))] + ["nobody@x.io"]
    ids = [i for (i,) in conn.execute(sa.select(LEADS.c.id))] + [10**6]
    events = [f"e{n}" for n in range(0, 400, 3)] + ["missing"]
    history = state._history(dialect, rules)
    values: dict[str, Any] = {**history.names, "ids": ids, "since": AT + timedelta(days=20)}
    reads = [
        (state._lock_query(dialect), {"emails": emails}),
        (state._ids_query(dialect), {"emails": emails[::2]}),
        (state._events_query(dialect), {"ids": events}),
        (state._scores_query(dialect), {"ids": ids}),
        (state._enrollments_query(dialect), {"ids": ids}),
    ]
    reads += [
        (q, values) for q in (history.events, history.bounds, history.firings) if q is not None
    ]
    assert len(reads) == 8
    return reads


def _filled(db: sa.Engine) -> None:
    rules = compiled((ROOT / "rulesets" / "b2b-saas.yaml").read_text(), "b2b-saas.yaml")
    lines = _history_stream(7)
    for n in range(0, len(lines), 50):
        ingest(db, rules, parse_jsonl(io.StringIO("\n".join(lines[n : n + 50]) + "\n")), 50)


def test_ingest_reads_are_what_sqlalchemy_returns(db: sa.Engine) -> None:
    _filled(db)
    with db.connect() as conn:
        for query, params in _reads(conn):
            mine = fetch_rows(conn, query, params)
            plain = [tuple(row) for row in conn.execute(query, params)]
            assert mine == plain
            assert [[type(v) for v in row] for row in mine] == [
                [type(v) for v in row] for row in plain
            ]
        emails = {"emails": ["lead1@acme0.io", "lead1@acme1.io"]}
        leads = fetch_rows(conn, state._lock_query(conn.dialect.name), emails)
        assert leads and all(isinstance(row[4], datetime) and row[4].tzinfo for row in leads)


def test_sqlite_reads_skip_sqlalchemys_execution(
    db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    if db.dialect.name != "sqlite":
        return
    _filled(db)
    with db.connect() as conn:
        expected = [[tuple(row) for row in conn.execute(q, p)] for q, p in _reads(conn)]
        reads = _reads(conn)

        def refused(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("went through Connection.execute")

        monkeypatch.setattr(sa.Connection, "execute", refused)
        assert [fetch_rows(conn, q, p) for q, p in reads] == expected


def test_listeners_and_echo_still_see_each_statement(
    db: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    _filled(db)
    seen: list[str] = []

    def statement(_conn: Any, _cursor: Any, text: str, *_args: Any) -> None:
        seen.append(text)

    query = state._lock_query(db.dialect.name)
    sa.event.listen(db, "before_cursor_execute", statement)
    try:
        with db.connect() as conn:
            rows = fetch_rows(conn, query, {"emails": ["lead1@acme0.io"]})
    finally:
        sa.event.remove(db, "before_cursor_execute", statement)
    assert [text for text in seen if "FROM lead" in text] and len(rows) <= 1
    db.echo = True
    try:
        with caplog.at_level(logging.INFO, "sqlalchemy.engine"), db.connect() as conn:
            fetch_rows(conn, query, {"emails": ["lead1@acme0.io"]})
    finally:
        db.echo = False
    assert any("FROM lead" in record.getMessage() for record in caplog.records)


def test_an_error_is_sqlalchemys(db: sa.Engine) -> None:
    missing = sa.table("no_such_table", sa.column("id"))
    query = sa.select(missing.c.id).where(missing.c.id == sa.bindparam("id"))
    with db.connect() as conn, pytest.raises(sa.exc.DBAPIError):
        fetch_rows(conn, query, {"id": 1})


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    leads=st.lists(
        st.tuples(
            TEXT,
            st.dictionaries(
                TEXT,
                st.one_of(st.none(), st.booleans(), st.integers(-(2**53), 2**53), TEXT),
                max_size=4,
            ),
            st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1)),
            st.lists(TEXT, max_size=3),
            st.booleans(),
        ),
        max_size=6,
        unique_by=lambda lead: lead[0],
    )
)
def test_generated_leads_read_back_alike(
    db: sa.Engine, leads: list[tuple[str, dict[str, Any], datetime, list[str], bool]]
) -> None:
    rows = [
        {"email": email, "attributes": attributes, "score": 0, "temperature": "cold",
         "stage": "subscriber", "stage_entered_at": at.replace(tzinfo=UTC), "tags": tags,
         "subscribed": subscribed, "version": 0, "ruleset_version": "v", "created_at": AT,
         "updated_at": AT, "time_due_at": at.replace(tzinfo=UTC) if subscribed else None}
        for email, attributes, at, tags, subscribed in leads
    ]  # fmt: skip
    with db.connect() as conn:
        if rows:
            upsert_rows(conn, LEADS, rows, ["email"])
        query = state._lock_query(conn.dialect.name)
        params = {"emails": [lead[0] for lead in leads] + ["nobody"]}
        mine = fetch_rows(conn, query, params)
        assert mine == [tuple(row) for row in conn.execute(query, params)]
        assert len(mine) == len(leads)
        conn.rollback()


def test_ingest_stores_what_it_stores_through_sqlalchemy(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Groups of a few records, as the API commits them: leads, events, scores, ledger,
    firings the same whether reads and writes take the cursor or SQLAlchemy's execution."""
    rules = compiled((ROOT / "rulesets" / "b2b-saas.yaml").read_text(), "b2b-saas.yaml")
    lines = _history_stream(21)

    def run(url: str) -> tuple[dict[str, list[tuple[Any, ...]]], list[tuple[Any, ...]]]:
        engine = database.connect(url)
        for n in range(0, len(lines), 6):
            group = lines[n : n + 6]
            ingest(engine, rules, parse_jsonl(io.StringIO("\n".join(group) + "\n")), 6)
        with engine.connect() as conn:
            columns = (EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties)
            events = sorted(tuple(row) for row in conn.execute(sa.select(*columns)))
        found = _outcome(engine), events
        engine.dispose()
        return found

    database.upgrade(db_url)
    fast = run(db_url)
    monkeypatch.setattr(bulk, "_plain_sqlite", lambda _conn: False)
    with another_database(db_url, tmp_path) as url:
        plain = run(url)
    assert fast == plain
    assert len(fast[1]) > 250 and fast[0]["firings"]


def _lead(email: str, version: int = 0) -> dict[str, Any]:
    row = {"email": email, "attributes": {"k": [1, "é"]}, "score": 3, "temperature": "cold"}
    row |= {"stage": "subscriber", "stage_entered_at": AT, "tags": ["t"], "subscribed": True}
    return row | {"version": version, "ruleset_version": "v", "created_at": AT, "updated_at": AT}


def test_row_counts_and_errors_are_sqlalchemys(
    db: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def counts() -> list[int]:
        with db.begin() as conn:
            found = [upsert_rows(conn, LEADS, [_lead("a@x.io"), _lead("b@x.io")], ["email"])]
            found.append(upsert_rows(conn, LEADS, [_lead("a@x.io"), _lead("c@x.io")], ["email"]))
            ids = dict(conn.execute(sa.select(LEADS.c.email, LEADS.c.id)).all())
            rows = [{"id": ids["a@x.io"], "version": 0, "score": 9},
                    {"id": ids["b@x.io"], "version": 5, "score": 9}]  # fmt: skip
            found.append(update_rows(conn, LEADS, rows, ["id", "version"], increment="version"))
            found.append(upsert_rows(conn, LEADS, [_lead("c@x.io", 7)], ["email"], ["version"]))
            if conn.dialect.name == "sqlite":  # PostgreSQL appends by COPY, psycopg's error
                with pytest.raises(sa.exc.IntegrityError):
                    append_rows(conn, LEADS, [_lead("d@x.io"), _lead("d@x.io")])
            conn.rollback()
        return found

    fast = counts()
    monkeypatch.setattr(bulk, "_plain_sqlite", lambda _conn: False)
    assert fast == counts() == [2, 1, 1, 1]


def test_outside_a_transaction_sqlalchemy_begins_one(db: sa.Engine) -> None:
    with db.connect() as conn:
        assert not conn.in_transaction()
        fetch_rows(conn, state._ids_query(db.dialect.name), {"emails": ["a@x.io"]})
        assert conn.in_transaction()
        conn.rollback()
        upsert_rows(conn, LEADS, [_lead("a@x.io")], ["email"])
        assert conn.in_transaction()
        conn.rollback()
        assert fetch_rows(conn, state._ids_query(db.dialect.name), {"emails": ["a@x.io"]}) == []


def test_events_counted_alike_with_noughts_skipped() -> None:
    """The ingested-events counter moves as three unconditional increments move it."""
    from engine import metrics

    def values() -> list[float]:
        return [
            metrics.EVENTS.labels(o)._value.get() for o in ("accepted", "duplicate", "rejected")
        ]

    before = values()
    for counts in [(0, 0, 0), (3, 0, 0), (0, 2, 0), (0, 0, 4), (1, 1, 1), (0, 0, 0)]:
        metrics.events_ingested(*counts)
    assert [after - was for after, was in zip(values(), before, strict=True)] == [4, 3, 5]
