"""The one way a lead is scored, for ingest and for replay (``nurture rules plan/apply``,
``--as-of``): per lead, in memory, decay up to the event's time (the arithmetic of
:mod:`engine.rules.decay`, each change a ``decay`` ledger row), then the profile attributes the
record sets, then the rules. Because decay is applied before every evaluation, scoring events as
they arrive and replaying them from the event log give the same scores, even when events fall
between the scheduler's ticks."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from engine.campaigns.compile import CompiledCampaigns
from engine.ingest import outcome
from engine.ingest.outcome import LoadedLead, Rows
from engine.rules.account import AccountBook, account_domain
from engine.rules.compile import CompiledRuleset
from engine.rules.decay import decayed
from engine.rules.evaluate import ChainError, Event, Outcome, evaluate
from engine.status import ActionStatus

# Event types that withdraw consent whatever the ruleset says.
OPT_OUTS = frozenset({"unsubscribe", "spam_report"})
DECAY = "decay"


class Scorer:
    """Scores leads into ``rows``. ``campaigns``: enrollments and exits follow each evaluation
    (ingest); ``past``: the evaluations happened in the past (replay), so their intents are
    stored as ``past`` and nobody acts on them."""

    def __init__(
        self,
        compiled: CompiledRuleset,
        rows: Rows,
        received_at: datetime,
        campaigns: CompiledCampaigns | None = None,
        accounts: AccountBook | None = None,
        past: bool = False,
    ) -> None:
        self.compiled = compiled
        self.ruleset = compiled.ruleset
        self.rows = rows
        self.received_at = received_at
        self.campaigns = campaigns
        self.accounts = accounts
        self.past = past

    def decay_to(self, lead: LoadedLead, at: datetime) -> bool:
        """Apply each decaying component's decay up to ``at``; True when a score moved."""
        moved = False
        for name, component in self.ruleset.components.items():
            state = lead.decay.get(name)
            if component.decay is None or state is None:
                continue
            value = lead.state.scores[name]
            lowered, state[2] = decayed(component, value, state, at)
            if lowered == value:
                continue
            moved = True
            lead.state.scores[name] = lowered
            self.rows.ledger.append(
                {
                    "lead_id": lead.id,
                    "component": name,
                    "delta": lowered - value,
                    "score_after": self.ruleset.total_of(name, lead.state.scores),
                    "rule": DECAY,
                    "ruleset_version": self.ruleset.version,
                    "event_id": None,
                    "at": at,
                }
            )
        return moved

    def score(
        self,
        lead: LoadedLead,
        event: Event,
        attributes: Mapping[str, Any] | None = None,
        past: bool = False,
    ) -> Outcome:
        """Evaluate one event (with the profile ``attributes`` its record sets) against its
        lead and append its rows; ChainError (the lead left as it was) on a runaway chain.
        ``past``: its alerts are stored as past (a profile record, a backfill)."""
        at = event.occurred_at
        before, decay_before = lead.state.copy(), {k: list(v) for k, v in lead.decay.items()}
        ledger_before = len(self.rows.ledger)
        self.decay_to(lead, at)
        given = dict(attributes or {})
        subscribed = given.pop("subscribed", None)
        lead.state.attributes.update(given)
        if self.accounts is not None:
            domain = account_domain(lead.state.attributes, lead.email)
            lead.state.account = self.accounts.peers(lead.id, domain)
        tracked = event.type in self.compiled.history_types
        amounts = self.compiled.amounts(event.type, event.properties) if tracked else None
        if tracked:
            lead.history.add_event(event.type, at, amounts)
        try:
            result = evaluate(self.compiled, lead.state, event, lead.history)
        except ChainError:
            lead.state, lead.decay = before, decay_before
            del self.rows.ledger[ledger_before:]
            if tracked:
                lead.history.remove_event(event.type, at, amounts)
            raise
        lead.evaluated_at = at if lead.evaluated_at is None else max(lead.evaluated_at, at)
        if isinstance(subscribed, bool):
            lead.subscribed = subscribed
        if event.type in OPT_OUTS:
            lead.subscribed = False
        status = ActionStatus.PAST if self.past else None
        outcome.record(
            self.rows,
            lead,
            event,
            result,
            self.ruleset.version,
            self.received_at,
            self.campaigns is not None,
            attributes=dict(attributes) if attributes else None,
            status=status,
            past=past,
        )
        if self.accounts is not None:
            domain = account_domain(lead.state.attributes, lead.email)
            self.accounts.place(lead.id, domain, self.ruleset.lead_score(lead.state.scores))
        if self.campaigns is not None:
            outcome.enrollments(self.rows, lead, event, result, self.campaigns)
        return result
