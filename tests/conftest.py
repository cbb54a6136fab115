"""Shared fixtures: a database URL per test on SQLite (always) and PostgreSQL (when
NURTURE_TEST_PG_URL is reachable; with NURTURE_REQUIRE_PG=1, as in CI, unreachable is a failure
rather than a skip)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from engine import db as database

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _pg_reachable() -> str | None:
    try:
        engine = sa.create_engine(database.normalise_url(PG_URL))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as error:  # any failure to connect means "no PostgreSQL here"
        return str(error).splitlines()[0]


@pytest.fixture(scope="session")
def pg_available() -> bool:
    problem = _pg_reachable()
    if problem is None:
        return True
    if os.environ.get("NURTURE_REQUIRE_PG") == "1":
        pytest.fail(f"PostgreSQL required (NURTURE_REQUIRE_PG=1) but unreachable: {problem}")
    return False


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nurture.db'}"


@pytest.fixture
def pg_url(pg_available: bool) -> Iterator[str]:
    """A fresh schema on the test PostgreSQL, dropped afterwards."""
    if not pg_available:
        pytest.skip("no PostgreSQL reachable (set NURTURE_TEST_PG_URL)")
    with database.scratch_schema(PG_URL, "t") as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes ``db_url`` runs on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "pg_url"
    return str(request.getfixturevalue(name))


@pytest.fixture
def db(db_url: str) -> sa.Engine:
    database.upgrade(db_url)
    return database.connect(db_url)


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """``serve`` and ``worker`` configure the root logger (handlers on the CLI runner's stream);
    each test starts from and leaves the logging set-up pytest made."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
