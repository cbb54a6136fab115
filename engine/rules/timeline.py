"""One lead's records played through a ruleset in memory, clock included: the path of event-log
backtests. Pure; no database.

Records are evaluated in time order (ties in the order given) from a new lead. Before each
evaluation, decay is applied up to its time; between records, and after the last one up to
``until``, a ``time`` evaluation happens at each instant the lead's time-dependent inputs change
(:func:`~engine.rules.timing.next_change`), as a scheduler ticking continuously would do it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from engine.rules.compile import CompiledRuleset
from engine.rules.decay import DecayState, decayed, rise
from engine.rules.evaluate import Event, LeadState, evaluate, new_lead
from engine.rules.history import MemoryHistory
from engine.rules.timing import TIME, next_change
from engine.timeutil import isoformat

SECOND = timedelta(seconds=1)


@dataclass
class Timeline:
    """A lead as its records and the clock leave it."""

    compiled: CompiledRuleset
    state: LeadState
    history: MemoryHistory = field(default_factory=MemoryHistory)
    decay: dict[str, DecayState] = field(default_factory=dict)
    last: datetime | None = None  # the latest evaluation
    fired: list[str] = field(default_factory=list)
    evaluations: int = 0

    @classmethod
    def start(cls, compiled: CompiledRuleset, email: str) -> Timeline:
        domain = email.rpartition("@")[2]
        return cls(compiled, new_lead(compiled.ruleset, {"email": email, "domain": domain}))

    def record(self, event: Event, attributes: Mapping[str, Any] | None = None) -> None:
        """Catch up with the clock to the event's time, then evaluate it (``attributes``: the
        profile attributes it sets first). Raises ChainError on a runaway chain."""
        self.run_clock(event.occurred_at, inclusive=False)
        if attributes:
            self.state.attributes.update(attributes)
        self._evaluate(event)

    def run_clock(self, until: datetime, inclusive: bool = True) -> None:
        """Time evaluations at each instant an input changes, up to ``until``; then decay to
        ``until``."""
        while self.last is not None:
            moment = next_change(
                self.compiled, self.history, self.last, self.decay, self.state.scores
            )
            if moment is None or moment > until or (moment == until and not inclusive):
                break
            moment = max(moment, self.last + SECOND)
            self._evaluate(Event(f"{TIME}:{isoformat(moment)}", TIME, moment))
        self._decay(until)

    def _decay(self, now: datetime) -> None:
        for name, component in self.compiled.ruleset.components.items():
            state = self.decay.get(name)
            if component.decay is None or state is None:
                continue
            self.state.scores[name], state[2] = decayed(
                component, self.state.scores[name], state, now
            )

    def _evaluate(self, event: Event) -> None:
        at = event.occurred_at
        self._decay(at)
        if event.type in self.compiled.history_types:
            self.history.add_event(
                event.type, at, self.compiled.amounts(event.type, event.properties)
            )
        outcome = evaluate(self.compiled, self.state, event, self.history)
        for change in outcome.score_changes:
            if change.delta > 0:
                value = outcome.state.scores[change.component]
                self.decay[change.component] = rise(
                    self.decay.get(change.component), at, value, change.delta
                )
        for rule in outcome.fired:
            self.history.add_firing(rule, at)
        self.fired += outcome.fired
        self.state = outcome.state
        self.last = at if self.last is None else max(self.last, at)
        self.evaluations += 1
