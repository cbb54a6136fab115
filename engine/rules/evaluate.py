"""One lead, one event → what the ruleset does: the forward-chaining loop around durable-rules.

Pure: the caller passes the lead's state and history and gets an :class:`Outcome` back (new
state, ledger rows, stage changes, recorded intents); writing it anywhere is the caller's job.

Each round asserts the current state as one fact and asks the engine which rules match. Rules
that have not fired yet in this evaluation fire in file order; a rule whose conditions read
something an earlier rule changed in the same round waits for the next round, where it is
matched again against the new state. Evaluation ends when a round fires nothing. A rule fires
at most once per evaluation, and a chain longer than ``max_chain`` rounds is an error.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.errors import NurtureError
from engine.rules import spec
from engine.rules.account import Peers
from engine.rules.compile import CompiledRuleset, History, token_class


class ChainError(NurtureError):
    """Rules kept enabling each other for more rounds than the ruleset's ``max_chain``."""

    def __init__(self, rules: list[str], limit: int) -> None:
        super().__init__(
            f"runaway chain: rules kept firing for more than {limit} rounds "
            f"({' → '.join(rules)}); raise max_chain or break the cycle"
        )
        self.rules = rules


@dataclass
class LeadState:
    attributes: dict[str, Any]
    scores: dict[str, int]
    stage: str
    tags: list[str] = field(default_factory=list)
    # The other leads of its account (None: no account, e.g. a free-mail address).
    account: Peers | None = None

    @property
    def score(self) -> int:
        """The sum of every component: the lead score when the ruleset has no named scores
        (in general :meth:`~engine.rules.spec.Ruleset.lead_score`)."""
        return sum(self.scores.values())

    def copy(self) -> LeadState:
        # The constructor, not dataclasses.replace: a copy per evaluation, and replace costs 4x.
        return LeadState(
            dict(self.attributes), dict(self.scores), self.stage, list(self.tags), self.account
        )


def new_lead(ruleset: spec.Ruleset, attributes: Mapping[str, Any]) -> LeadState:
    """A lead as it enters: the first stage, each component at 0 (or its nearest bound)."""
    scores = {c.name: min(max(0, c.min), c.max) for c in ruleset.components.values()}
    return LeadState(dict(attributes), scores, ruleset.stages[0])


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoreChange:
    rule: str
    component: str
    delta: int
    score_after: int  # the total after this change: the lead score, or the named score


@dataclass(frozen=True)
class StageChange:
    rule: str
    from_stage: str
    to_stage: str


@dataclass(frozen=True)
class Intent:
    """An alert, enrollment or exit a rule asked for: recorded now, acted on by the scheduler."""

    rule: str
    kind: spec.ActionKind
    target: str


@dataclass
class Outcome:
    state: LeadState
    fired: list[str] = field(default_factory=list)
    score_changes: list[ScoreChange] = field(default_factory=list)
    stage_changes: list[StageChange] = field(default_factory=list)
    intents: list[Intent] = field(default_factory=list)


def own_fields(ruleset: spec.Ruleset, state: LeadState) -> dict[str, Any]:
    """The ``lead.*`` view of the lead's own values: its attributes, lead score and temperature,
    stage, tags and component scores. What the evaluator's facts read unless the ruleset reads
    a derived value (``CompiledRuleset.reads_derived``)."""
    fields: dict[str, Any] = dict(state.attributes)
    score = fields["score"] = ruleset.lead_score(state.scores)
    fields["temperature"] = ruleset.band(score)
    fields["stage"] = state.stage
    fields["tags"] = state.tags
    fields["scores"] = state.scores
    return fields


def state_fields(ruleset: spec.Ruleset, state: LeadState, event_type: str) -> dict[str, Any]:
    """The whole ``lead.*`` view rules read: :func:`own_fields` with what is derived from
    them, named scores' totals and bands and the account's figures, and the event type."""
    fields = own_fields(ruleset, state)
    if ruleset.scores:
        # Component and named-score names share `lead.scores.<name>`.
        totals = ruleset.totals(state.scores)
        fields["scores"] = {**state.scores, **totals}
        fields["bands"] = ruleset.named_bands(totals)
    if state.account is not None:
        fields.update(state.account.view(ruleset.account_aggregate, fields["score"]))
    fields["event.type"] = event_type
    return fields


# What answers each round of one evaluation: the lead's current state → the indices of the rules
# that match it (with the event and the history fixed for the evaluation).
Rounds = Callable[[LeadState], list[int]]


def evaluate(
    compiled: CompiledRuleset, state: LeadState, event: Event, history: History
) -> Outcome:
    """What ``event`` does to a lead in ``state``: each round's fact goes to durable-rules as
    one JSON text built from remembered pieces (see ``CompiledRuleset.text``); the event's part
    and the history's are built once per evaluation, and the lead's part from
    :func:`own_fields` unless a rule reads a derived value. ``reference.evaluate`` is the plain
    path it must agree with."""
    ruleset, properties, lead_plan = compiled.ruleset, event.properties, compiled.lead_plan
    rules = len(compiled.rules)
    held: set[int] = set()  # the engine's indices of the residuals that held for the last fact
    # The event's plans read only `event.type` and `event.properties.*` (see compile.getter).
    fixed = compiled.history_text(history, event.occurred_at) + compiled.text(
        {"event.type": event.type}, properties, compiled.event_plan
    )
    derived = compiled.reads_derived

    def round(state: LeadState) -> list[int]:
        fields = state_fields(ruleset, state, event.type) if derived else own_fields(ruleset, state)
        found = compiled.match_text(fixed + compiled.text(fields, properties, lead_plan))
        cut = bisect_left(found, rules)  # the residuals are numbered after the rules
        held.clear()
        held.update(found[cut:])
        return found[:cut]

    def done(compiled: CompiledRuleset, fired: set[int], changed: set[str]) -> bool:
        return settled(compiled, fired, changed, held)

    return chain(compiled, state, round, done)


def settled(compiled: CompiledRuleset, fired: set[int], changed: set[str], held: set[int]) -> bool:
    """The next round could fire nothing: each rule that has yet to fire either reads nothing
    the last round changed (its part of the fact is the same), or reads changes of one token
    class only and the residual of its condition without that class did not hold for the last
    round's fact (``held``: the engine's indices of those that did, ``len(rules) + j`` for
    residual ``j``; see ``compile._residuals``)."""
    rules = len(compiled.rules)
    for token in changed:
        for index in compiled.readers.get(token, ()):
            if index in fired:
                continue
            classes = {token_class(t) for t in changed & compiled.rules[index].reads}
            if len(classes) != 1:
                return False
            residual = compiled.residual.get((index, classes.pop()))
            if residual is None or rules + residual in held:
                return False
    return True


def chain(
    compiled: CompiledRuleset,
    state: LeadState,
    rounds: Rounds,
    done: Callable[[CompiledRuleset, set[int], set[str]], bool],
) -> Outcome:
    """The forward-chaining loop: ``rounds`` answers each round for the lead's current state;
    after a round, ``done`` says whether another could fire anything."""
    ruleset = compiled.ruleset
    outcome = Outcome(state.copy())
    if ruleset.modelled:
        predict(ruleset, outcome)
    fired: set[int] = set()
    count = 0
    while True:
        found = rounds(outcome.state)
        matched = [i for i in found if i not in fired] if fired else found
        if not matched:
            return outcome
        count += 1
        if count > ruleset.max_chain:
            names = outcome.fired + [compiled.rules[i].rule.name for i in matched]
            raise ChainError(names, ruleset.max_chain)
        changed: set[str] = set()
        for index in matched:
            compiled_rule = compiled.rules[index]
            if compiled_rule.reads & changed:
                continue
            fired.add(index)
            outcome.fired.append(compiled_rule.rule.name)
            changed |= apply(ruleset, compiled_rule.rule, outcome)
        if not changed or done(compiled, fired, changed):  # nothing changed: nothing new can fire
            return outcome


def apply(ruleset: spec.Ruleset, rule: spec.Rule, outcome: Outcome) -> set[str]:
    """Apply one rule's ``then`` to the outcome; return the state tokens it actually changed."""
    state, then, changed = outcome.state, rule.then, set()
    for name, points in then.score:
        changed |= add_points(ruleset, outcome, rule.name, name, points)
    if then.stage is not None and then.stage != state.stage:
        outcome.stage_changes.append(StageChange(rule.name, state.stage, then.stage))
        state.stage = then.stage
        changed.add("stage")
    for attribute, new in then.set:
        if state.attributes.get(attribute) != new:
            state.attributes[attribute] = new
            changed.add(attribute)
    for tag in then.tags:
        if tag not in state.tags:
            state.tags.append(tag)
            changed.add("tags")
    if then.alert or then.enroll or then.exit:  # most rules only score
        intents: tuple[tuple[spec.ActionKind, tuple[str, ...]], ...] = (
            ("alert", then.alert),
            ("enroll", then.enroll),
            ("exit", then.exit),
        )
        for kind, targets in intents:
            outcome.intents.extend(Intent(rule.name, kind, target) for target in targets)
    return changed


def add_points(
    ruleset: spec.Ruleset, outcome: Outcome, source: str, name: str, points: int
) -> set[str]:
    """Add ``points`` to component ``name``, clamped to its bounds; the ledger gets the delta
    actually applied and the total after it of the score the component counts toward (its named
    score, else the lead score). Returns the state tokens that changed."""
    state, component = outcome.state, ruleset.components[name]
    value = state.scores[name]
    after = min(max(value + points, component.min), component.max)
    if after == value:
        return set()
    before_total = ruleset.total_of(name, state.scores)
    state.scores[name] = after
    total = before_total + (after - value)  # a total is a sum of its components
    outcome.score_changes.append(ScoreChange(source, name, after - value, total))
    named = ruleset.claimed.get(name)
    if named is not None:
        changed = {f"scores.{name}", f"scores.{named.name}"}
        if named.band(before_total) != named.band(total):
            changed.add(f"bands.{named.name}")
        return changed
    changed = {f"scores.{name}", "score"}
    if ruleset.band(before_total) != ruleset.band(total):
        changed.add("temperature")
    return changed


def predict(ruleset: spec.Ruleset, outcome: Outcome) -> None:
    """Components fed by a model take the model's score for the lead's attributes before any
    rule reads them; the change is a ledger row (rule ``model:<version>``) like any other."""
    for component in ruleset.modelled:
        assert component.model is not None
        target = component.model.score(outcome.state.attributes)
        current = outcome.state.scores[component.name]
        source = f"model:{component.model.version}"
        add_points(ruleset, outcome, source, component.name, target - current)


def prime(ruleset: spec.Ruleset, rows: Sequence[Mapping[str, Any]]) -> None:
    """Score many leads by each model in one call, so that ``predict`` finds them: one lead at
    a time costs milliseconds in scikit-learn's per-call overhead."""
    for component in ruleset.components.values():
        if component.model is not None:
            component.model.prime(rows)
