"""Small builders shared by the tests: the fixture files under tests/ (rulesets/, campaigns/,
templates/), the `nurture` command in this process, and where the case studies' real data is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from typer.testing import CliRunner, Result

from engine.cli import app
from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.load import parse_ruleset
from engine.settings import get_settings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests"
API_TOKEN = "test-token-0123456789abcdef0123456789"  # long enough for the secret rules
PG_URL = os.environ.get("NURTURE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

_runner = CliRunner()


def nurture(*args: str, input: str | None = None) -> Result:
    """``nurture ARGS`` in this process (settings from the environment the test set)."""
    return _runner.invoke(app, list(args), input=input)


def ruleset_text(name: str) -> str:
    """The text of ``tests/rulesets/NAME.yaml``."""
    return (FIXTURES / "rulesets" / f"{name}.yaml").read_text(encoding="utf-8")


def campaign_text(name: str) -> str:
    """The text of ``tests/campaigns/NAME.yaml``."""
    return (FIXTURES / "campaigns" / f"{name}.yaml").read_text(encoding="utf-8")


def compiled(text: str, path: str = "test.yaml") -> CompiledRuleset:
    return compile_ruleset(parse_ruleset(text, path))


def copy_fixtures(kind: str, names: Iterable[str], folder: Path) -> Path:
    """``tests/KIND/NAME.yaml`` for each name, copied into ``folder`` (made if missing)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        shutil.copy(FIXTURES / kind / f"{name}.yaml", folder)
    return folder


def email_template(subject: str, body: str) -> str:
    """An email template on tests/templates/layout.j2 (which adds the unsubscribe link)."""
    return (
        '{% extends "layout.j2" %}'
        f"{{% block subject %}}{subject}{{% endblock %}}"
        f"{{% block html %}}{body}{{% endblock %}}"
    )


def data_dir() -> Path:
    """The case studies' real data: ``NURTURE_DATA_DIR``, else ``../shared/data`` beside this
    checkout, else the workplace's copy (a clean clone elsewhere, as CI makes, has no ``..``)."""
    configured = os.environ.get("NURTURE_DATA_DIR")
    if configured:
        return Path(configured)
    beside = ROOT.parent / "shared" / "data"
    return beside if beside.is_dir() else Path("/work/shared/data")


def shared_data(name: str) -> Path:
    """A file of the real data (tests that need one are marked ``@pytest.mark.data(name)``)."""
    return data_dir() / name


def run_cli(
    monkeypatch: pytest.MonkeyPatch, home: Path, args: list[str], **env: str
) -> tuple[Result, list[tuple[Any, dict[str, Any]]]]:
    """``nurture ARGS`` in this process, with NURTURE_HOME=``home``, a SQLite database in it
    and no NURTURE_API_TOKEN unless ``env`` says otherwise; what ``serve`` would have handed
    uvicorn is recorded instead of served."""
    started: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: started.append((app, options)))
    monkeypatch.delenv("NURTURE_API_TOKEN", raising=False)
    monkeypatch.setenv("NURTURE_HOME", str(home))
    monkeypatch.setenv("NURTURE_DATABASE_URL", f"sqlite:///{home / 'nurture.db'}")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        return nurture(*args), started
    finally:
        get_settings.cache_clear()


def api_home(folder: Path) -> Path:
    """``folder`` as a NURTURE_HOME holding the api-test ruleset (for tests that make several)."""
    copy_fixtures("rulesets", ["api-test"], folder / "rulesets")
    return folder


def side_by_side(work: Callable[[], object], count: int) -> list[BaseException]:
    """``work`` in ``count`` threads at once, all joined; what any of them raised."""
    failures: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # reported to the test by the return value
            failures.append(error)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return failures


@contextmanager
def serving_workers(
    folder: Path, env: Mapping[str, str], port: int, workers: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """``nurture serve --workers N`` on ``port`` with ``env``, once it answers its health check
    (its output in ``folder/serve.log``), stopped when the block ends."""
    nurture = str(Path(sys.executable).with_name("nurture"))
    with (folder / "serve.log").open("w") as log:
        server = subprocess.Popen(
            [nurture, "serve", "--port", str(port), "--workers", str(workers)],
            env=dict(env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert server.poll() is None, (folder / "serve.log").read_text()
                assert time.monotonic() < deadline, f"serve --workers {workers} did not start"
                time.sleep(0.2)
            yield server
        finally:
            server.terminate()
            server.wait(timeout=30)
