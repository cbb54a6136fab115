"""Bulk reads and writes shared by every stage: appends (COPY on PostgreSQL), the dialect's
``INSERT … ON CONFLICT``, :func:`execute_many`, an ``executemany`` without SQLAlchemy's
per-row parameter assembly, and on PostgreSQL set-based forms with one array parameter per
column instead of one parameter per value (:func:`among`, :func:`upsert_rows`,
:func:`update_rows`): psycopg then parses a statement whose text is the same for every batch,
and the server runs one statement, not one per row."""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

from sqlalchemy import (
    JSON,
    ColumnElement,
    Connection,
    CursorResult,
    DateTime,
    Table,
    and_,
    any_,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import Insert as PgInsert
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.dml import Insert, UpdateBase
from sqlalchemy.sql.selectable import Select


def upsert(conn: Connection, table: Table) -> PgInsert | SqliteInsert:
    """An INSERT that can take ``on_conflict_do_nothing`` / ``on_conflict_do_update`` on the
    connection's dialect (both spell it the same)."""
    return (pg_insert if conn.dialect.name == "postgresql" else sqlite_insert)(table)


def among(
    conn: Connection, column: ColumnElement[Any], values: Collection[Any]
) -> ColumnElement[bool]:
    """``column IN (values)``; on PostgreSQL ``column = ANY(array)``, one parameter however
    many values (a batch looks up thousands of ids)."""
    if conn.dialect.name != "postgresql":
        return column.in_(list(values))
    array = postgresql.ARRAY(column.type)
    return column == any_(cast(bindparam(None, list(values), type_=array), array))


def among_param(dialect: str, column: ColumnElement[Any], name: str) -> ColumnElement[bool]:
    """:func:`among` with the values left to a parameter ``name``, given (a list) when the
    statement is executed: for a statement built once and cached, which SQLAlchemy then
    neither builds nor keys again (a few ``IN`` statements per batch cost the API's small
    batches ~10 % of their CPU). On PostgreSQL one array; on SQLite one JSON array read by
    ``json_each``: an expanding parameter would have SQLAlchemy render the statement's text
    again on every execution (~7 % of a group commit's CPU in the API), a JSON text is one
    parameter and one statement text. SQLite still searches ``column``'s index for each value
    (tests/test_bulk_among.py checks both the answers and the plan)."""
    if dialect != "postgresql":
        values = func.json_each(bindparam(name, type_=JSON)).table_valued("value")
        return column.in_(select(values.c.value))
    array = postgresql.ARRAY(column.type)
    return column == any_(cast(bindparam(name, type_=array), array))


def upsert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    keys: Sequence[str],
    replace: Sequence[str] = (),
    add: Sequence[str] = (),
) -> int:
    """Insert ``rows`` (all with the same keys); a row whose ``keys`` are taken instead sets the
    stored row's ``replace`` columns to its values and adds its ``add`` columns to the stored
    ones (with neither, it is skipped). How many rows were inserted or updated. On PostgreSQL
    one ``INSERT … SELECT FROM unnest(arrays)``, not SQLAlchemy's many-row VALUES."""
    if not rows:
        return 0
    columns = tuple(rows[0])
    if conn.dialect.name != "postgresql":
        statement = _sqlite_upsert(table, tuple(keys), tuple(replace), tuple(add))
        return write_rows(conn, statement, rows)
    sql = _pg_upsert(table, columns, tuple(keys), tuple(replace), tuple(add))
    return conn.exec_driver_sql(sql, _arrays(table, columns, rows)).rowcount


def update_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    match: Sequence[str],
    constants: Mapping[str, Any] | None = None,
    increment: str | None = None,
    where: Mapping[str, Any] | None = None,
) -> int:
    """Update the stored rows whose ``match`` columns equal a row's (and whose ``where``
    columns hold those values): its other columns take the row's values, ``constants`` theirs,
    and ``increment`` (if any) goes up by one. How many were updated. On PostgreSQL one
    ``UPDATE … FROM unnest(arrays)``: two rows that match the same stored row update it with
    either one's values, so callers pass one row per stored row."""
    constants = constants or {}
    if not rows:
        return 0
    columns = tuple(rows[0])
    where = where or {}
    fixed = {f"k_{name}": value for name, value in constants.items()}
    fixed |= {f"w_{name}": value for name, value in where.items()}
    shape = (table, columns, tuple(match), tuple(constants), increment, tuple(where))
    if conn.dialect.name != "postgresql":
        # Each row's values under the statement's names, taken in C (zip, map): this runs
        # for every enrollment the step job moves.
        names = [f"b_{name}" for name in columns]
        renamed = [
            dict(zip(names, map(row.__getitem__, columns), strict=True), **fixed) for row in rows
        ]
        return write_rows(conn, _sqlite_update(*shape), renamed)
    params = _arrays(table, columns, rows) | fixed
    return conn.exec_driver_sql(_pg_update(*shape), params).rowcount


_PG = postgresql.dialect()  # type: ignore[no-untyped-call]


@functools.cache
def _sqlite_upsert(
    table: Table, keys: tuple[str, ...], replace: tuple[str, ...], add: tuple[str, ...]
) -> UpdateBase:
    """:func:`upsert_rows`' statement on SQLite, built once (so also compiled once)."""
    statement = sqlite_insert(table)
    if not replace and not add:
        return statement.on_conflict_do_nothing(index_elements=list(keys))
    sets: dict[str, ColumnElement[Any]] = {name: statement.excluded[name] for name in replace}
    sets |= {name: table.c[name] + statement.excluded[name] for name in add}
    return statement.on_conflict_do_update(index_elements=list(keys), set_=sets)


@functools.cache
def _sqlite_update(
    table: Table,
    columns: tuple[str, ...],
    match: tuple[str, ...],
    constants: tuple[str, ...],
    increment: str | None,
    where: tuple[str, ...],
) -> UpdateBase:
    """:func:`update_rows`' statement on SQLite, built once."""
    conditions = [table.c[name] == bindparam(f"b_{name}") for name in match]
    conditions += [table.c[name] == bindparam(f"w_{name}") for name in where]
    statement = (
        update(table)
        .where(and_(*conditions))
        .values({name: bindparam(f"b_{name}") for name in columns if name not in match})
        .values({name: bindparam(f"k_{name}") for name in constants})
    )
    return statement if increment is None else statement.values({increment: table.c[increment] + 1})


@functools.cache
def _insert(table: Table) -> UpdateBase:
    return table.insert()


@functools.cache
def _unnest(table: Table, columns: tuple[str, ...]) -> str:
    """``unnest(%(a)s::type[], …) AS v(a, …)``: the rows' columns as arrays of their types."""
    quote = _PG.identifier_preparer.quote
    arrays = ", ".join(f"%({c})s::{table.c[c].type.compile(dialect=_PG)}[]" for c in columns)
    return f"unnest({arrays}) AS v({', '.join(quote(c) for c in columns)})"


@functools.cache
def _pg_update(
    table: Table,
    columns: tuple[str, ...],
    match: tuple[str, ...],
    constants: tuple[str, ...],
    increment: str | None,
    where: tuple[str, ...],
) -> str:
    """:func:`update_rows`' statement on PostgreSQL, built once."""
    quote = _PG.identifier_preparer.quote
    name = quote(table.name)
    sets = [f"{quote(c)} = v.{quote(c)}" for c in columns if c not in match]
    sets += [f"{quote(c)} = %(k_{c})s" for c in constants]
    if increment is not None:
        sets.append(f"{quote(increment)} = {name}.{quote(increment)} + 1")
    conditions = [f"{name}.{quote(c)} = v.{quote(c)}" for c in match]
    conditions += [f"{name}.{quote(c)} = %(w_{c})s" for c in where]
    return (
        f"UPDATE {name} SET {', '.join(sets)} FROM {_unnest(table, columns)} "
        f"WHERE {' AND '.join(conditions)}"
    )


@functools.cache
def _pg_upsert(
    table: Table,
    columns: tuple[str, ...],
    keys: tuple[str, ...],
    replace: tuple[str, ...],
    add: tuple[str, ...],
) -> str:
    quote = _PG.identifier_preparer.quote
    name = quote(table.name)
    sets = [f"{quote(c)} = EXCLUDED.{quote(c)}" for c in replace]
    sets += [f"{quote(c)} = {name}.{quote(c)} + EXCLUDED.{quote(c)}" for c in add]
    action = f"DO UPDATE SET {', '.join(sets)}" if sets else "DO NOTHING"
    return (
        f"INSERT INTO {name} ({', '.join(quote(c) for c in columns)}) "
        f"SELECT * FROM {_unnest(table, columns)} "
        f"ON CONFLICT ({', '.join(quote(c) for c in keys)}) {action}"
    )


def _arrays(
    table: Table, columns: tuple[str, ...], rows: Sequence[Mapping[str, Any]]
) -> dict[str, list[Any]]:
    """Each column's values over the rows, JSON ones wrapped for psycopg."""
    from psycopg.types.json import Json

    arrays: dict[str, list[Any]] = {}
    for c in columns:
        values = list(map(itemgetter(c), rows))  # in C: a batch's rows times its columns
        if isinstance(table.c[c].type, JSON):
            values = [Json(v) for v in values]  # None too: JSON null, as SQLAlchemy stores it
        arrays[c] = values
    return arrays


def append_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Append rows (all with the same keys): COPY on PostgreSQL (several times fewer round trips
    than INSERT), else an executemany INSERT. For rows that cannot conflict: a unique key they
    break fails the transaction."""
    if conn.dialect.name != "postgresql":
        write_rows(conn, _insert(table), rows)
        return
    # Here, not at the top: a command on SQLite does not pay psycopg's import (~0.15 s).
    from psycopg.types.json import Json

    columns = tuple(rows[0])
    sql, types, json_columns = _copy(table, columns)
    # Each row's values taken in C (itemgetter), only its JSON ones wrapped in Python.
    values = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    wrapped = [i for i, c in enumerate(columns) if c in json_columns]
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    with cursor.copy(sql) as copy:
        copy.set_types(types)
        for row in rows:
            line = list(values(row))
            for i in wrapped:
                line[i] = Json(line[i])
            copy.write_row(line)


@functools.cache
def _copy(table: Table, columns: tuple[str, ...]) -> tuple[str, list[str], frozenset[str]]:
    """:func:`append_rows`' COPY in binary (psycopg writes a text row's times in Python, ~1 µs
    each), the columns' types it must be told (a binary row names none) and the JSON columns
    (their values wrapped, None too: JSON null, as SQLAlchemy stores it)."""
    types = [re.sub(r"\(.*\)", "", table.c[c].type.compile(dialect=_PG)).lower() for c in columns]
    json_columns = frozenset(c for c in columns if isinstance(table.c[c].type, JSON))
    sql = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
    return sql, types, json_columns


def execute_many(
    conn: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]
) -> CursorResult[Any]:
    """``conn.execute(statement, rows)`` (rows all with the same keys), for many rows, without
    SQLAlchemy's assembly of each row's parameters in Python (a third of a batch's write time
    on SQLite): the statement is compiled once for the rows' keys (and kept: callers that pass
    the same statement object again skip the compilation, most of a small batch's cost) and
    each value goes through its column type's bind processor, as SQLAlchemy applies them, so
    the stored values are the same; then one DB-API ``executemany``. It is ``conn.execute``
    for an INSERT on PostgreSQL (SQLAlchemy sends those as multi-row VALUES, fewer round
    trips) and for a statement that needs values SQLAlchemy computes per row (a Python-side
    column default the rows lack)."""
    positional = conn.dialect.name == "sqlite"
    if not rows or (not positional and isinstance(statement, Insert)):
        return conn.execute(statement, list(rows))
    prepared = _prepare(statement, conn.dialect, tuple(rows[0]))
    if prepared is None:
        return conn.execute(statement, list(rows))
    sql, names, binds = prepared
    columns = _columns(names, binds, rows)
    if positional:
        return conn.exec_driver_sql(sql, list(zip(*columns, strict=True)))
    return conn.exec_driver_sql(
        sql, [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    )


def write_rows(conn: Connection, statement: UpdateBase, rows: Sequence[Mapping[str, Any]]) -> int:
    """:func:`execute_many`'s rows written, and how many rows they inserted or updated. On
    SQLite, inside the connection's transaction, with nobody listening to its statements (see
    :func:`fetch_rows`), the ``executemany`` runs on the connection's own DB-API cursor:
    SQLAlchemy's execution of a prepared statement cost ~80 µs, and the API's group commit
    writes six a group. A DB-API error is raised as SQLAlchemy raises it (``IntegrityError``,
    ``OperationalError``: what ingest retries on)."""
    prepared = _prepare(statement, conn.dialect, tuple(rows[0])) if rows else None
    if prepared is None or not _plain_sqlite(conn):
        return int(execute_many(conn, statement, rows).rowcount)
    sql, names, binds = prepared
    params = list(zip(*_columns(names, binds, rows), strict=True))
    dbapi = conn.dialect.loaded_dbapi
    cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.executemany(sql, params)
        return int(cursor.rowcount)
    except dbapi.Error as error:
        raise DBAPIError.instance(sql, params, error, dbapi.Error, dialect=conn.dialect) from error
    finally:
        cursor.close()


def _columns(
    names: list[str], binds: list[tuple[str, Any]], rows: Sequence[Mapping[str, Any]]
) -> list[Iterable[Any]]:
    """The rows' parameter values, column by column, each in C (map, itemgetter), to be
    zipped into rows: per-row getters cost a Python call per value."""
    columns: list[Iterable[Any]] = []
    for name, (kind, value) in zip(names, binds, strict=True):
        if kind == "constant":
            columns.append(itertools.repeat(value, len(rows)))
            continue
        column = map(itemgetter(name), rows)
        # A batch's rows share few times (a record's rows all have its time): format each once
        # (a cache costs more to make than a row or two to format).
        process = functools.cache(value) if kind == "time" and len(rows) > 2 else value
        columns.append(column if kind == "plain" else map(process, column))
    return columns


@functools.lru_cache(maxsize=256)
def _prepare(
    statement: UpdateBase, dialect: Any, keys: tuple[str, ...]
) -> tuple[str, list[str], list[tuple[str, Any]]] | None:
    """A statement compiled for rows with ``keys``: its SQL, its parameters' names and how each
    gets its value (a constant, the row's value as is, through a time or other bind processor);
    None when SQLAlchemy must compute values per row."""
    compiled = statement.compile(dialect=dialect, column_keys=list(keys))
    assert isinstance(compiled, SQLCompiler)
    if compiled.insert_prefetch or compiled.update_prefetch or compiled.escaped_bind_names:
        return None
    fixed = compiled.construct_params(_check=False)
    names = list(compiled.positiontup if compiled.positiontup is not None else fixed)
    processors: Mapping[str, Any] = compiled._bind_processors
    binds: list[tuple[str, Any]] = []
    for name in names:
        process = processors.get(name)
        if name not in keys:
            # A value the statement carries itself (``version + 1``, a constant): processed once.
            binds.append(("constant", process(fixed[name]) if process else fixed[name]))
        elif process is None:
            binds.append(("plain", None))
        elif compiled.binds[name].type._type_affinity is DateTime:
            binds.append(("time", process))
        else:
            binds.append(("other", process))
    return compiled.string, names, binds


def fetch_rows(
    conn: Connection, statement: Select[Any], params: Mapping[str, Any]
) -> list[tuple[Any, ...]]:
    """``conn.execute(statement, params).all()`` as tuples, for a statement built once and
    kept (ingest's reads of a batch's leads, events, scores, history, enrollments). On SQLite
    the statement is compiled once and run on the connection's own DB-API cursor, in its
    transaction, each parameter and result value through its type's processor as SQLAlchemy
    applies them: SQLAlchemy's execution (cache key, execution context, result object) cost
    ~75 µs a statement, three times SQLite's own, and the API's group commit runs seven a
    group. Anywhere SQLAlchemy must see the statement (PostgreSQL; cursor events or echo on
    the engine, for tests and logging) and on any error (run again through SQLAlchemy, which
    raises its own error: a read changes nothing), it is ``conn.execute``."""
    prepared = _read_statement(statement, conn.dialect) if _plain_sqlite(conn) else None
    if prepared is not None:
        sql, names, binds, results = prepared
        values = tuple(
            params[name] if process is None else process(params[name])
            for name, process in zip(names, binds, strict=True)
        )
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            found: list[tuple[Any, ...]] = cursor.execute(sql, values).fetchall()
        except conn.dialect.loaded_dbapi.Error:
            pass  # SQLAlchemy's own execution says what went wrong, as its error
        else:
            if not found or not any(results):
                return found
            # Column by column, each processed one in C (map): a generator over every value
            # of every row cost ~1 µs a row more (the step job reads a lead a message).
            columns = list(zip(*found, strict=True))
            for i, process in enumerate(results):
                if process is not None:
                    columns[i] = tuple(map(process, columns[i]))
            return list(zip(*columns, strict=True))
        finally:
            cursor.close()
    return [tuple(row) for row in conn.execute(statement, dict(params)).all()]


def _plain_sqlite(conn: Connection) -> bool:
    """SQLite, in a transaction the connection began (outside one, SQLAlchemy begins it; the
    DB-API cursor would run in autocommit), with nobody to tell of a statement: no cursor
    events, no echo."""
    if conn.dialect.name != "sqlite" or conn._echo or not conn.in_transaction():
        return False
    dispatch = conn.dispatch
    return not (dispatch.before_cursor_execute or dispatch.after_cursor_execute
                or dispatch.before_execute or dispatch.after_execute)  # fmt: skip


@functools.lru_cache(maxsize=256)
def _read_statement(
    statement: Select[Any], dialect: Any
) -> tuple[str, list[str], list[Any], list[Any]] | None:
    """A SELECT compiled once: its SQL, its parameters' names (positional) and bind
    processors, and its result columns' processors; None when its text or values depend on the
    parameters (expanding or literal ones, values computed per execution) or its result
    columns do not map one to one."""
    compiled = statement.compile(dialect=dialect)
    assert isinstance(compiled, SQLCompiler)
    if (
        compiled.positiontup is None
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled.escaped_bind_names
        or any(compiled.binds[name].value is not None for name in compiled.positiontup)
        or any(compiled.binds[name].callable is not None for name in compiled.positiontup)
    ):
        return None
    names = list(compiled.positiontup)
    processors: Mapping[str, Any] = compiled._bind_processors
    binds = [processors.get(name) for name in names]
    columns = compiled._result_columns
    if len(columns) != len(statement.selected_columns):
        return None
    results = [column[3]._cached_result_processor(dialect, None) for column in columns]
    return compiled.string, names, binds, results
