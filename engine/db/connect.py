"""Connections and migrations, for SQLite (the default) and PostgreSQL alike."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (SQLAlchemy would pick psycopg2)."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


@cache
def connect(url: str) -> Engine:
    """One engine per URL per process."""
    url = normalise_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})
        _sqlite_serialised_writes(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True)
    return engine


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
