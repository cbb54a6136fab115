"""Small builders shared by the tests."""

from __future__ import annotations

from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.load import parse_ruleset


def compiled(text: str, path: str = "test.yaml") -> CompiledRuleset:
    return compile_ruleset(parse_ruleset(text, path))
