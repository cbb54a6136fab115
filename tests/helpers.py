"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import uvicorn
from click.testing import Result
from typer.testing import CliRunner

from engine import cli
from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.load import parse_ruleset
from engine.settings import get_settings


def compiled(text: str, path: str = "test.yaml") -> CompiledRuleset:
    return compile_ruleset(parse_ruleset(text, path))


def shared_data(name: str) -> Path:
    """A file of the workplace's real data: ``../shared/data`` beside this checkout, else the
    workplace's own copy (a clean clone elsewhere, as CI makes, has no ``..``/shared)."""
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / name
    return beside if beside.exists() else Path("/work/shared/data") / name


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
        return CliRunner().invoke(cli.app, args), started
    finally:
        get_settings.cache_clear()
