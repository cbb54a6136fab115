"""Small builders shared by the tests."""

from __future__ import annotations

from pathlib import Path

from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.load import parse_ruleset


def compiled(text: str, path: str = "test.yaml") -> CompiledRuleset:
    return compile_ruleset(parse_ruleset(text, path))


def shared_data(name: str) -> Path:
    """A file of the workplace's real data: ``../shared/data`` beside this checkout, else the
    workplace's own copy (a clean clone elsewhere, as CI makes, has no ``..``/shared)."""
    beside = Path(__file__).resolve().parents[2] / "shared" / "data" / name
    return beside if beside.exists() else Path("/work/shared/data") / name
