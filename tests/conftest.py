"""Shared fixtures.

- Databases: ``db_url`` runs a test on SQLite (always) and PostgreSQL (when NURTURE_TEST_PG_URL is
  reachable; with NURTURE_REQUIRE_PG=1, as in CI, unreachable is a failure rather than a skip).
- ``home``: a NURTURE_HOME folder holding what the test's ``home`` marker names; ``cli_home``
  puts it and the database under test in the environment for the `nurture` command.
- Each test reads only the settings it sets (``_isolated_settings``).
- ``@pytest.mark.data(files)``: the test needs the case studies' real data; it skips where the
  files are missing, unless NURTURE_REQUIRE_DATA=1 (as in CI), where that is a failure.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from fastapi.testclient import TestClient

from engine import db as database
from engine.api.app import create_app
from engine.settings import Settings, get_settings
from tests.campaign_support import settings_for
from tests.helpers import FIXTURES, PG_URL, copy_fixtures, data_dir, shared_data
from tests.mail_support import PUBLIC, RULES_WITH_EMAIL, Inbox, Receiver, free_port

# The test suite's own switches, kept from the shell; every other NURTURE_* setting is the test's.
SUITE_SETTINGS = {
    "NURTURE_TEST_PG_URL",
    "NURTURE_REQUIRE_PG",
    "NURTURE_REQUIRE_BROWSER",
    "NURTURE_REQUIRE_DATA",
    "NURTURE_DATA_DIR",
    "NURTURE_CHROMIUM",
    "NURTURE_SENDGRID_OPENAPI",
}


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


def _fill_home(
    folder: Path,
    rulesets: Sequence[str] = (),
    campaigns: Sequence[str] = (),
    templates: bool = False,
) -> None:
    copy_fixtures("rulesets", rulesets, folder / "rulesets")
    if campaigns:
        copy_fixtures("campaigns", campaigns, folder / "campaigns")
    if templates:
        shutil.copytree(FIXTURES / "templates", folder / "templates")


@pytest.fixture
def home(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A NURTURE_HOME folder, ``tmp_path/home``, with a ``rulesets/`` folder. The test's (or its
    module's) ``pytest.mark.home(rulesets=[...], campaigns=[...], templates=True)`` names what
    it holds: rulesets and campaigns by name from tests/rulesets/ and tests/campaigns/, and the
    email templates of tests/templates/."""
    folder = tmp_path / "home"
    marker = request.node.get_closest_marker("home")
    if marker is None:
        _fill_home(folder)
    else:
        _fill_home(folder, *marker.args, **marker.kwargs)
    return folder


@pytest.fixture
def cli_home(home: Path, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``home`` and the database under test in the environment, as `nurture` reads them."""
    monkeypatch.setenv("NURTURE_HOME", str(home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", db_url)
    get_settings.cache_clear()
    return home


@pytest.fixture(autouse=True)
def _isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """None of the shell's settings leak into a test: NURTURE_HOME is a folder that does not exist
    and the database a file nobody makes, until the test says otherwise; ``get_settings`` (it
    reads the environment once) is cleared before and after."""
    for name in list(os.environ):
        if name.startswith("NURTURE_") and name not in SUITE_SETTINGS:
            monkeypatch.delenv(name)
    monkeypatch.delenv("SENDGRID_API_KEY", raising=False)
    monkeypatch.setenv("NURTURE_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{tmp_path / 'unused.db'}")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """``serve`` and ``worker`` configure the root logger (handlers on the CLI runner's stream);
    each test starts from and leaves the logging set-up pytest made."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def pytest_runtest_setup(item: pytest.Item) -> None:
    """A test marked ``data(files)`` skips where the real data is missing, or fails with
    NURTURE_REQUIRE_DATA=1: CI must not pass a case study it never ran."""
    for marker in item.iter_markers("data"):
        missing = [name for name in marker.args if not shared_data(name).is_file()]
        if not missing:
            continue
        reason = f"{', '.join(missing)} not in {data_dir()} (set NURTURE_DATA_DIR)"
        if os.environ.get("NURTURE_REQUIRE_DATA") == "1":
            pytest.fail(f"real data required (NURTURE_REQUIRE_DATA=1): {reason}")
        pytest.skip(reason)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Inbox, str]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()
    found.server.server_close()


@pytest.fixture
def service(home: Path, db_url: str) -> Iterator[tuple[TestClient, Settings, sa.Engine]]:
    (home / "rulesets/test.yaml").write_text(RULES_WITH_EMAIL)
    settings = settings_for(home, db_url, sendgrid_webhook_public_key=PUBLIC)
    database.upgrade(db_url)
    db = database.connect(db_url)
    with TestClient(create_app(settings, db)) as client:
        yield client, settings, db
