"""Connections and migrations, for SQLite (the default) and PostgreSQL alike."""

from __future__ import annotations

import math
import os
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.util.exc import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from engine import jsontext, status
from engine.errors import NurtureError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SUPPORTED = ("sqlite", "postgresql")
KINDS = "use sqlite:///PATH or postgresql://USER@HOST/DB"
CONNECT_TIMEOUT = 10  # seconds: an unreachable PostgreSQL host is reported, not waited on


class DatabaseUnavailable(NurtureError):
    """The database cannot be opened; ``str()`` names it (password hidden) and why, in one
    sentence."""


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


# JSON columns written and read in C without json.dumps' and json.loads' Python around it (the
# same text, the same values; psycopg's COPY of a JSON column too): a lead's attributes are
# read ~3.5× and written ~2× as fast.
_JSON = {"json_serializer": jsontext.storable, "json_deserializer": jsontext.stored}


@cache
def connect(url: str) -> Engine:
    """One engine per URL per process."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60}, **_JSON)
        _sqlite_serialised_writes(engine)
    else:
        engine = create_engine(
            url, pool_pre_ping=True, connect_args={"connect_timeout": CONNECT_TIMEOUT}, **_JSON
        )
        _binary_arrays(engine)
    return engine


def open_database(url: str) -> Engine:
    """The database at ``url``, migrated: what every command and the server open first.
    Whatever stops that (a URL that is none, a kind of database nurture does not run on, a
    server that refuses, a missing file or database) is :class:`DatabaseUnavailable`."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Not parsed, so its password cannot be told apart: the URL is not repeated.
        raise DatabaseUnavailable(f"NURTURE_DATABASE_URL is not a database URL ({KINDS})") from None
    where = f"cannot open the database at {parsed.render_as_string(hide_password=True)}"
    kind = parsed.get_backend_name()
    if kind not in SUPPORTED:
        raise DatabaseUnavailable(f"{where}: {kind} databases are not supported ({KINDS})")
    try:
        upgrade(url)
    except (SQLAlchemyError, CommandError, ImportError) as error:
        reason = failure(error)
        if parsed.password:
            reason = reason.replace(str(parsed.password), "***")
        raise DatabaseUnavailable(f"{where}: {reason}") from None
    return connect(url)


def failure(error: BaseException) -> str:
    """The first line of what the driver said (refused, unknown database, no such table), which
    names the problem without the URL."""
    cause = str(getattr(error, "orig", None) or error).strip().splitlines()
    return cause[0].strip() if cause else type(error).__name__


@contextmanager
def scratch_schema(url: str, prefix: str = "scratch") -> Iterator[str]:
    """The URL of a fresh schema on the PostgreSQL at ``url``, dropped with all it holds
    afterwards: where tests and benchmarks run, beside whatever else that database keeps."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(normalise_url(url))
    with admin.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    scoped = make_url(normalise_url(url)).update_query_dict({"options": f"-csearch_path={schema}"})
    scoped_url = scoped.render_as_string(hide_password=False)
    try:
        yield scoped_url
    finally:
        connect(scoped_url).dispose()  # the cached engine's connections would block the DROP
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _binary_arrays(engine: Engine) -> None:
    """Lists go to PostgreSQL as binary arrays (a batch's array parameters, see
    :mod:`engine.db.bulk`): psycopg writes a text array element by element in Python, ~2 µs a
    time and ~0.6 µs a string; the binary form ~0.1 µs, for the same values on the server."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        from psycopg.types.array import ListBinaryDumper

        dbapi_connection.adapters.register_dumper(list, ListBinaryDumper)


def _same(value: Any) -> Any:
    return value


def plain_sqlite_parameters() -> None:
    """pysqlite binds an int, float, str or bytearray as it is; any other value (None, a
    status, which is a ``StrEnum``) it first tries to adapt, and finding no adapter costs it an
    AttributeError raised and cleared (~0.3–0.4 µs a value; each message the step job queues
    binds five such). An adapter that gives what it would bind anyway (None stays NULL, a status
    its text) makes that a dictionary hit. Process-wide, like every sqlite3 adapter."""
    sqlite3.register_adapter(type(None), _same)
    for value in vars(status).values():
        if isinstance(value, type) and issubclass(value, StrEnum) and value is not StrEnum:
            sqlite3.register_adapter(value, str.__str__)


plain_sqlite_parameters()


def _sqlite_serialised_writes(engine: Engine) -> None:
    """pysqlite defers BEGIN until the first write, which lets two writers read the same lead
    and both write. Take the write lock up front (BEGIN IMMEDIATE): per-lead updates are then
    serialised by SQLite itself, the way row locks do it on PostgreSQL."""

    @event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.create_function("power", 2, math.pow, deterministic=True)
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def on_begin(connection: Any) -> None:
        # Readers (see `reading`) must not queue for the write lock behind a long ingest.
        read_only = connection.get_execution_options().get("nurture_read_only", False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


# Beside a SQLite database ``PATH``: the file whose lock (``flock``) nurture's writers of
# scored records take, one process at a time (engine.ingest.batch._one_writer).
WRITER_LOCK_SUFFIX = "-writer.lock"


@contextmanager
def writer_lock(path: str | None) -> Iterator[None]:
    """Hold the writer lock of the SQLite database at ``path`` (none for an in-memory one)
    until the block ends. Processes wait on it in the kernel, woken in turn as it is released,
    where SQLite's busy handler would have them poll with sleeps of up to 100 ms. A separate
    file, not the database's: SQLite's own locks on it are ``fcntl`` locks, which some systems
    merge with ``flock``. Opened per hold, so a forked process never shares its parent's."""
    if not path or path == ":memory:" or path.startswith("file:"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # no flock (Windows): SQLite's busy handler alone
        yield
        return
    # Read-only is enough for flock: a user who can write the database but did not make the
    # lock file (mode 0644, empty) still takes it. Where it cannot be had at all, SQLite's own
    # locking still serialises the writers, only with its busy handler's sleeps.
    flags = os.O_RDONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path + WRITER_LOCK_SUFFIX, flags, 0o644)
    except OSError:
        yield
        return
    _HELD.add(descriptor)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        _HELD.discard(descriptor)
        os.close(descriptor)  # releases the lock, unless a forked child still has it open


# The lock files this process has open. A child forked meanwhile closes its copies at once:
# the lock belongs to the open file, so the parent's release would not end it while the child
# kept one, and the child's own next take would wait for itself.
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for descriptor in _HELD:
        with suppress(OSError):
            os.close(descriptor)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


def reading(engine: Engine) -> Connection:
    """A connection for reports: on SQLite it reads a snapshot without taking the write lock."""
    return engine.connect().execution_options(nurture_read_only=True)


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return config


def upgrade(url: str) -> None:
    """Bring the schema to the newest migration (idempotent; every command runs it first)."""
    engine = connect(url)
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
