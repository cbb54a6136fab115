"""Small builders shared by the tests: a ruleset from text, one lead scored through events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.evaluate import Event, LeadState, Outcome, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.load import parse_ruleset

T0 = datetime(2026, 1, 5, 10, tzinfo=UTC)


def compiled(text: str, path: str = "test.yaml") -> CompiledRuleset:
    return compile_ruleset(parse_ruleset(text, path))


class Lead:
    """One lead scored in memory, event after event, the way ingest does it."""

    def __init__(self, rules: CompiledRuleset, **attributes: Any) -> None:
        self.rules = rules
        self.state: LeadState = new_lead(rules.ruleset, attributes)
        self.history = MemoryHistory()
        self.fired: list[str] = []
        self.clock = T0

    def event(self, type: str, at: datetime | None = None, **properties: Any) -> Outcome:
        self.clock = at or self.clock + timedelta(minutes=1)
        event = Event(f"e{len(self.fired)}-{self.clock.isoformat()}", type, self.clock, properties)
        self.history.add_event(type, self.clock)
        outcome = evaluate(self.rules, self.state, event, self.history)
        for rule in outcome.fired:
            self.history.add_firing(rule, self.clock)
        self.fired += outcome.fired
        self.state = outcome.state
        return outcome

    @property
    def temperature(self) -> str:
        return self.rules.ruleset.band(self.state.score)
