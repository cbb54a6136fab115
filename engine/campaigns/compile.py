"""Campaign conditions → one durable-rules ruleset, and the pure decisions built on it: which
campaigns a lead enters or leaves after an evaluation, and whether a step's `when` holds.

Each campaign contributes synthetic rules (audience without exit_when, exit_when, each step's
when); one assert of the lead's state tells which hold. The synthetic ruleset reuses the scoring
ruleset's components, bands and stages, so `lead.temperature` means the same in both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from engine.campaigns.spec import Campaign
from engine.rules import spec as rules
from engine.rules.compile import CompiledRuleset, compile_ruleset
from engine.rules.evaluate import LeadState, own_fields, state_fields
from engine.status import EnrollmentStatus

MEMO_SIZE = 4096


@dataclass(frozen=True)
class Changes:
    """Enrollments to create and to end, by campaign name, each with the reason."""

    enroll: dict[str, str]
    exit: dict[str, str]


def synthetic_rules(campaigns: Sequence[Campaign]) -> list[rules.Rule]:
    """The rules the campaigns' conditions become (``NAME#audience``, ``NAME#exit``,
    ``NAME#step<i>``), each with the line of its condition in the campaign's file."""
    synthetic: list[rules.Rule] = []
    for campaign in campaigns:
        audience = campaign.audience
        if campaign.exit_when is not None:
            audience = rules.All((audience, rules.Not(campaign.exit_when)))
            synthetic.append(_rule(f"{campaign.name}#exit", campaign.exit_when, campaign.exit_line))
        synthetic.append(_rule(f"{campaign.name}#audience", audience, campaign.audience_line))
        for index, step in enumerate(campaign.steps):
            if step.when is not None:
                synthetic.append(_rule(f"{campaign.name}#step{index}", step.when, step.line))
    return synthetic


def _rule(name: str, when: rules.Condition, line: int) -> rules.Rule:
    return rules.Rule(name, when, rules.Effects(), None, line)


class CompiledCampaigns:
    def __init__(self, ruleset: rules.Ruleset, campaigns: Sequence[Campaign]) -> None:
        self.ruleset = ruleset
        self.campaigns = {c.name: c for c in campaigns}
        synthetic = synthetic_rules(campaigns)
        digest = rules.version_of(
            repr((ruleset.version, [(c.name, c.audience, c.exit_when, c.steps) for c in campaigns]))
        )
        self.compiled: CompiledRuleset | None = None
        self._memo: dict[str, frozenset[str]] = {}
        self._split: dict[frozenset[str], tuple[tuple[str, ...], tuple[str, ...]]] = {}
        if synthetic:
            self.compiled = compile_ruleset(
                replace(
                    ruleset,
                    name=f"{ruleset.name}-campaigns",
                    version=digest,
                    rules=tuple(synthetic),
                    source="",
                )
            )

    def holding(self, state: LeadState) -> frozenset[str]:
        """Names of the synthetic rules (``campaign#audience`` …) that hold for ``state``."""
        if self.compiled is None:
            return frozenset()
        compiled = self.compiled
        # The lead's own values unless a campaign condition reads a derived one (named scores'
        # totals and bands, the account's figures): working those out costs every evaluation.
        if compiled.reads_derived:
            fields = state_fields(self.ruleset, state, "")
        else:
            fields = own_fields(self.ruleset, state)
        # The fact as the engine reads it (its JSON members, built from remembered pieces).
        # Most leads share a handful of facts (temperature × stage …): ask the engine once each.
        fact = compiled.text(fields, {}, compiled.lead_plan)
        found = self._memo.get(fact)
        if found is None:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            found = frozenset(compiled.rules[i].rule.name for i in compiled.match_text(fact))
            self._memo[fact] = found
        return found

    def changes(
        self,
        state: LeadState,
        subscribed: bool,
        enrolled: Mapping[str, str],
        requested: Sequence[tuple[str, str, str]] = (),
    ) -> Changes:
        """What an evaluation does to enrollments. ``enrolled``: campaign → status of the lead's
        enrollments (active, exited, completed); ``requested``: (kind, campaign, rule) from rule
        ``enroll`` / ``exit`` actions. A lead is enrolled in a campaign at most once, never while
        unsubscribed, and an exit (its exit_when, or a rule) wins over an enrollment."""
        audiences, exits = self._campaigns_of(self.holding(state))
        enroll: dict[str, str] = {}
        leave: dict[str, str] = {}
        for kind, campaign, rule in requested:
            (enroll if kind == "enroll" else leave).setdefault(campaign, f"rule {rule}")
        for name in audiences:
            enroll.setdefault(name, "audience")
        for name in exits:
            leave.setdefault(name, "exit_when")
        if not subscribed:
            leave = {name: "unsubscribed" for name in self.campaigns} | leave
        return Changes(
            enroll={
                name: why
                for name, why in enroll.items()
                if name not in enrolled and name not in leave and subscribed
            },
            exit={
                name: why
                for name, why in leave.items()
                if enrolled.get(name) == EnrollmentStatus.ACTIVE
            },
        )

    def _campaigns_of(self, holding: frozenset[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The campaigns (in file order) whose audience holds and those whose exit_when holds,
        remembered per ``holding`` (few distinct sets, each the same object from ``holding``'s
        memo, its hash kept)."""
        found = self._split.get(holding)
        if found is None:
            if len(self._split) >= MEMO_SIZE:
                self._split.clear()
            audiences = tuple(name for name in self.campaigns if f"{name}#audience" in holding)
            exits = tuple(name for name in self.campaigns if f"{name}#exit" in holding)
            found = self._split[holding] = (audiences, exits)
        return found

    def step_holds(self, campaign: str, index: int, holding: frozenset[str]) -> bool:
        step = self.campaigns[campaign].steps[index]
        return step.when is None or f"{campaign}#step{index}" in holding

    def exits(self, campaign: str, holding: frozenset[str]) -> bool:
        return f"{campaign}#exit" in holding
