"""Bulk writes shared by every stage: appends (COPY on PostgreSQL), the dialect's
``INSERT … ON CONFLICT``, and :func:`execute_many`, an ``executemany`` without SQLAlchemy's
per-row parameter assembly."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Connection, CursorResult, DateTime, Table
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, UpdateBase


def upsert(conn: Connection, table: Table) -> PgInsert | SqliteInsert:
    """An INSERT that can take ``on_conflict_do_nothing`` / ``on_conflict_do_update`` on the
    connection's dialect (both spell it the same)."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def append_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Append rows (all with the same keys): COPY on PostgreSQL (several times fewer round trips
    than INSERT), else an executemany INSERT. For rows that cannot conflict: a unique key they
    break fails the transaction."""
    if conn.dialect.name != "postgresql":
        execute_many(conn, table.insert(), rows)
        return
    # Here, not at the top: a command on SQLite does not pay psycopg's import (~0.15 s).
    from psycopg.types.json import Json

    columns = list(rows[0])
    json_columns = {c.name for c in table.columns if isinstance(c.type, JSON)}
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([Json(row[c]) if c in json_columns else row[c] for c in columns])


def execute_many(
    conn: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]
) -> CursorResult[Any]:
    """``conn.execute(statement, rows)`` (rows all with the same keys), for many rows, without
    SQLAlchemy's assembly of each row's parameters in Python (a third of a batch's write time
    on SQLite): the statement is compiled once for the rows' keys and each value goes through
    its column type's bind processor, as SQLAlchemy applies them, so the stored values are the
    same; then one DB-API ``executemany``. It is ``conn.execute`` for an INSERT on PostgreSQL
    (SQLAlchemy sends those as multi-row VALUES, fewer round trips) and for a statement that
    needs values SQLAlchemy computes per row (a Python-side column default the rows lack)."""
    positional = conn.dialect.name == "sqlite"
    if not rows or not (positional or not isinstance(statement, Insert)):
        return conn.execute(statement, list(rows))
    compiled = statement.compile(dialect=conn.dialect, column_keys=list(rows[0]))
    assert isinstance(compiled, SQLCompiler)
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.escaped_bind_names:
        return conn.execute(statement, list(rows))
    fixed = compiled.construct_params(_check=False)
    names = list(compiled.positiontup if compiled.positiontup is not None else fixed)
    processors: Mapping[str, Any] = compiled._bind_processors
    given = rows[0].keys()
    getters: list[Callable[[Mapping[str, Any]], Any]] = []
    for name in names:
        process = processors.get(name)
        if name not in given:
            # A value the statement carries itself (``version + 1``, a constant): processed once.
            getters.append(_constant(process(fixed[name]) if process else fixed[name]))
        elif process is None:
            getters.append(itemgetter(name))
        elif compiled.binds[name].type._type_affinity is DateTime:
            # A batch's rows share few times (a record's rows all have its time): format each
            # once.
            getters.append(_processed(name, functools.cache(process)))
        else:
            getters.append(_processed(name, process))
    values = ([get(row) for get in getters] for row in rows)
    if compiled.positiontup is not None:
        return conn.exec_driver_sql(compiled.string, [tuple(row) for row in values])
    return conn.exec_driver_sql(
        compiled.string, [dict(zip(names, row, strict=True)) for row in values]
    )


def _constant(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    return lambda _row: value


def _processed(name: str, process: Callable[[Any], Any]) -> Callable[[Mapping[str, Any]], Any]:
    return lambda row: process(row[name])
