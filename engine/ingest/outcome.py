"""Ingest, step 3 (pure): an evaluation's outcome → the rows the batch writes (event, ledger,
stage history, firings, pending actions, enrollments and exits) and the lead's new state."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from engine.campaigns.compile import CompiledCampaigns
from engine.ingest import feedback
from engine.rules.decay import DecayState, rise
from engine.rules.evaluate import Event, LeadState, Outcome
from engine.rules.history import MemoryHistory
from engine.status import ActionStatus, EnrollmentStatus

Row = dict[str, Any]


@dataclass
class LoadedLead:
    """A lead of the batch: its stored state, then its state as the batch evaluates it."""

    id: int
    email: str
    version: int
    state: LeadState
    subscribed: bool
    stage_entered_at: datetime
    decay: dict[str, DecayState]  # component → [rose_at, peak, decay_steps]
    new: bool
    created_at: datetime  # when its first record happened
    history: MemoryHistory = field(default_factory=MemoryHistory)
    # Ledger rows for components that start away from 0 (a minimum above 0): the ledger sums
    # to the score from the start.
    opening: list[dict[str, Any]] = field(default_factory=list)
    enrolled: dict[str, str] = field(default_factory=dict)  # campaign → enrollment status
    due_at: datetime | None = None  # stored: when its time-dependent inputs change
    ruleset_version: str | None = None  # stored: the version its state is under
    evaluated_at: datetime | None = None  # the latest time the batch evaluated it at
    # Its component rows as stored (component → value, rose_at, peak, decay_steps): a row the
    # batch leaves as it was is not written again.
    stored: dict[str, tuple[Any, ...]] = field(default_factory=dict)


@dataclass
class Rows:
    """What a batch writes, table by table, in evaluation order."""

    events: list[Row] = field(default_factory=list)
    ledger: list[Row] = field(default_factory=list)
    stages: list[Row] = field(default_factory=list)
    firings: list[Row] = field(default_factory=list)
    actions: list[Row] = field(default_factory=list)
    enroll: list[Row] = field(default_factory=list)
    exit: list[Row] = field(default_factory=list)


def record(
    rows: Rows,
    lead: LoadedLead,
    event: Event,
    outcome: Outcome,
    version: str,
    received_at: datetime,
    campaigns_applied: bool,
    attributes: dict[str, Any] | None = None,
    status: ActionStatus | None = None,
    past: bool = False,
) -> None:
    """Append the rows of one evaluation and move ``lead`` to its outcome. With
    ``campaigns_applied``, enroll/exit intents are applied in the same transaction; alerts
    wait for the dispatcher, or with ``past`` (a profile, a backfill) are stored as past: the
    alerts job never sends them. ``attributes``: the profile attributes the record set,
    stored with the event for replay. ``status``: every intent's (a replay's are ``past``)."""
    at = event.occurred_at
    rows.events.append(
        {
            "event_id": event.id,
            "lead_id": lead.id,
            "type": event.type,
            "occurred_at": at,
            "properties": dict(event.properties),
            "received_at": received_at,
            "attributes": attributes,
            **feedback.columns(event.properties),
        }
    )
    for change in outcome.score_changes:
        rows.ledger.append(
            {
                "lead_id": lead.id,
                "component": change.component,
                "delta": change.delta,
                "score_after": change.score_after,
                "rule": change.rule,
                "ruleset_version": version,
                "event_id": event.id,
                "at": at,
            }
        )
        if change.delta > 0:
            value = outcome.state.scores[change.component]
            state = lead.decay.get(change.component)
            lead.decay[change.component] = rise(state, at, value, change.delta)
    for stage in outcome.stage_changes:
        rows.stages.append(
            {
                "lead_id": lead.id,
                "from_stage": stage.from_stage,
                "to_stage": stage.to_stage,
                "rule": stage.rule,
                "event_id": event.id,
                "at": at,
                "rescore": False,
            }
        )
        lead.stage_entered_at = at
    for rule in outcome.fired:
        rows.firings.append({"lead_id": lead.id, "rule": rule, "event_id": event.id, "at": at})
        lead.history.add_firing(rule, at)
    for intent in outcome.intents:
        rows.actions.append(
            {
                "lead_id": lead.id,
                "kind": intent.kind,
                "target": intent.target,
                "rule": intent.rule,
                "event_id": event.id,
                "at": at,
                "status": status or _status(intent.kind, campaigns_applied, past),
            }
        )
    lead.state = outcome.state


def _status(kind: str, campaigns_applied: bool, past: bool) -> ActionStatus:
    if kind == "alert":
        return ActionStatus.PAST if past else ActionStatus.PENDING
    return ActionStatus.APPLIED if campaigns_applied else ActionStatus.PENDING


def enrollments(
    rows: Rows, lead: LoadedLead, event: Event, outcome: Outcome, campaigns: CompiledCampaigns
) -> None:
    """Enrollments that start and end after one evaluation (audiences, exits, intents)."""
    requested = [
        (i.kind, i.target, i.rule) for i in outcome.intents if i.kind in ("enroll", "exit")
    ]
    changes = campaigns.changes(lead.state, lead.subscribed, lead.enrolled, requested)
    at = event.occurred_at
    for name, reason in changes.enroll.items():
        first = campaigns.campaigns[name].steps[0]
        rows.enroll.append(
            {
                "lead_id": lead.id,
                "campaign": name,
                "step": 0,
                "status": EnrollmentStatus.ACTIVE,
                "enrolled_at": at,
                "next_due_at": at + first.wait,
                "ended_at": None,
                "reason": reason,
            }
        )
        lead.enrolled[name] = EnrollmentStatus.ACTIVE
    for name, reason in changes.exit.items():
        rows.exit.append({"lead_id": lead.id, "campaign": name, "ended_at": at, "reason": reason})
        lead.enrolled[name] = EnrollmentStatus.EXITED


def new_lead_stages(leads: list[LoadedLead], first_stage: str) -> list[Row]:
    """A new lead's first stage is history too: pipeline reports count entries from it."""
    return [
        {
            "lead_id": lead.id,
            "from_stage": None,
            "to_stage": first_stage,
            "rule": "new-lead",
            "event_id": None,
            "at": lead.created_at,
            "rescore": False,
        }
        for lead in leads
        if lead.new
    ]


def renumber(rows: Rows, leads: list[LoadedLead], ids: dict[int, int]) -> None:
    """Give leads evaluated under provisional ids (``ids``: provisional → stored) their stored
    ids, in the leads and in every row of theirs."""
    if not ids:
        return
    for lead in leads:
        lead.id = ids[lead.id]
    tables = (rows.events, rows.ledger, rows.stages, rows.firings, rows.actions, rows.enroll)
    for table in (*tables, rows.exit):
        for row in table:
            row["lead_id"] = ids.get(row["lead_id"], row["lead_id"])
