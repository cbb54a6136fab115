"""Bulk writes shared by every stage: appends (COPY on PostgreSQL) and the dialect's
``INSERT … ON CONFLICT``."""

from __future__ import annotations

from typing import Any

from psycopg.types.json import Json
from sqlalchemy import JSON, Connection, Table
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert


def upsert(conn: Connection, table: Table) -> PgInsert | SqliteInsert:
    """An INSERT that can take ``on_conflict_do_nothing`` / ``on_conflict_do_update`` on the
    connection's dialect (both spell it the same)."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def append_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Append rows (all with the same keys): COPY on PostgreSQL (several times fewer round trips
    than INSERT), else an executemany INSERT. For rows that cannot conflict: a unique key they
    break fails the transaction."""
    if conn.dialect.name != "postgresql":
        conn.execute(table.insert(), rows)
        return
    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Json(row[c]) if c in json_columns else row[c] for c in columns])
