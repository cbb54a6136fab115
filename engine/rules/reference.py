"""The plain evaluation path, kept to check the fast one against: the fact of each round built
as a dict and handed to durable-rules through its Python host (``durable.engine.Host``), whose
actions record the matched rules. ``evaluate.evaluate`` must give the same :class:`Outcome`
for every input; tests compare the two on generated data. Not used in production."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from typing import Any

from durable import engine as durable

from engine.rules.compile import CompiledRuleset, History
from engine.rules.evaluate import Event, LeadState, Outcome, chain, state_fields


class _Host(durable.Host):  # type: ignore[misc]
    """durable-rules host with its background dispatch thread off: we call it synchronously,
    and the thread races ``delete_state`` into a segfault."""

    def _run(self) -> None:
        pass


_HOST = _Host()
_LOCK = threading.Lock()


class _Matcher:
    """A ruleset's conditions registered with the host under a name of their own (the fast
    path's registration has no Python actions)."""

    def __init__(self, compiled: CompiledRuleset) -> None:
        self.name = f"{compiled.engine_name}#reference"
        self.matched: list[int] = []
        self.fact_id = 0
        definition = {
            name: {**rule, "run": self._action(int(name[1:]))}
            for name, rule in compiled.definition.items()
        }
        _HOST.set_rulesets({self.name: definition})

    def _action(self, index: int) -> Callable[[Any], None]:
        def run(_closure: Any) -> None:
            self.matched.append(index)

        return run

    def match(self, fact: dict[str, Any]) -> list[int]:
        with _LOCK:
            self.fact_id += 1
            fact["id"] = self.fact_id
            self.matched.clear()
            try:
                _HOST.assert_fact(self.name, fact)
            except durable.MessageNotHandledException:
                return []
            finally:
                with contextlib.suppress(durable.MessageNotHandledException):
                    _HOST.retract_fact(self.name, fact)
            return sorted(set(self.matched))


_MATCHERS: dict[str, _Matcher] = {}


def match(compiled: CompiledRuleset, fact: dict[str, Any]) -> list[int]:
    """``CompiledRuleset.match`` through durable's Python host."""
    with _LOCK:
        matcher = _MATCHERS.get(compiled.engine_name)
        if matcher is None:
            matcher = _MATCHERS[compiled.engine_name] = _Matcher(compiled)
    return matcher.match(fact)


def evaluate(
    compiled: CompiledRuleset, state: LeadState, event: Event, history: History
) -> Outcome:
    """``evaluate.evaluate`` the plain way: every round builds the whole ``lead.*`` view and
    encodes the whole fact (every key the encoder assigned, read or not) into a dict."""

    def round(state: LeadState) -> list[int]:
        fields = state_fields(compiled.ruleset, state, event.type)
        fact = compiled.history_fields(history, event.occurred_at)
        compiled.encode(fields, event.properties, compiled.plans, fact)
        return match(compiled, fact)

    return chain(compiled, state, round, _settled)


def _settled(compiled: CompiledRuleset, _fired: set[int], changed: set[str]) -> bool:
    """Nothing any rule reads has changed: another round would match the same rules, all of
    which have fired."""
    return not changed & compiled.all_reads
