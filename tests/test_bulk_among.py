"""``among_param`` (the ``IN`` of ingest's cached read statements: one parameter, a JSON array
read by ``json_each`` on SQLite, an array on PostgreSQL) finds what a plain ``IN`` of the
values finds, on generated and hostile text (quotes, brackets, backslashes, unicode, JSON
syntax, SQL) and on integer ids; on SQLite it still searches the column's index."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.db import among_param, upsert_rows
from engine.db.schema import LEADS

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
