"""Replaying leads from the event log under a ruleset version, and writing the result: what
``nurture rules plan`` compares, what ``apply`` writes, and what ingest does first to a lead
scored under another version than the one in force.

A lead's events are evaluated in ``occurred_at`` order (ties in the order received) from a new
lead with the :class:`~engine.ingest.score.Scorer` (decay applied before each evaluation), then
decayed up to now. Stored ``time`` events (``nurture tick``'s) replay like any other. The
replay of a batch of leads reads their stored state and events in a few set-based queries.

Writing replaces the lead's scores, named scores, bands, tags, attributes and firings with the
replayed ones, and its ledger rows of the replayed version (other versions' rows stay, for
audit). Stages move forward only (a history row with ``rescore`` true); a lead in an exit stays
there. The past sends nothing: replayed intents are stored as ``past``. Campaign membership
follows the final state (enrollments start now; past steps are not sent); with ``alert``, a
lead the rescore makes newly hot gets one pending sales alert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, delete, select

from engine.campaigns.compile import CompiledCampaigns
from engine.db import append_rows
from engine.db.rollup import record_moves
from engine.db.schema import (
    ACTIONS,
    ENROLLMENTS,
    EVENTS,
    FIRINGS,
    LEADS,
    LEDGER,
    NAMED_SCORES,
    SCORES,
)
from engine.ingest import outcome
from engine.ingest.outcome import LoadedLead, Rows
from engine.ingest.score import Scorer
from engine.ingest.state import opening, stored_peers
from engine.ingest.write import enroll_and_exit, write_leads
from engine.rules.account import ACCOUNT_FIELDS, AccountBook
from engine.rules.compile import CompiledRuleset
from engine.rules.decay import DecayState, decayed
from engine.rules.evaluate import ChainError, Event, LeadState, Outcome, new_lead
from engine.rules.spec import Ruleset
from engine.rules.timing import next_change
from engine.status import ActionStatus

RESCORE = "rescore"


@dataclass
class StoredLead:
    """A lead as stored before the replay."""

    id: int
    email: str
    version: int
    ruleset_version: str | None
    attributes: dict[str, Any]
    score: int
    temperature: str
    stage: str
    stage_entered_at: datetime
    tags: list[str]
    subscribed: bool
    created_at: datetime
    bands: dict[str, str] = field(default_factory=dict)  # named score → band
    totals: dict[str, int] = field(default_factory=dict)
    enrolled: dict[str, str] = field(default_factory=dict)
    components: dict[str, tuple[int, DecayState]] = field(default_factory=dict)

    def decay_to(self, ruleset: Ruleset, now: datetime) -> None:
        """The stored scores as they stand at ``now`` under ``ruleset`` (the version they were
        scored with): decay the scheduler has not applied yet, applied, so that a comparison
        with a replay up to ``now`` shows what the version changes, not what time did."""
        scores = {}
        for name, (value, state) in self.components.items():
            component = ruleset.components.get(name)
            scores[name] = value if component is None else decayed(component, value, state, now)[0]
        if not scores:
            return
        self.score = ruleset.lead_score(scores)
        self.temperature = ruleset.band(self.score)
        if ruleset.scores:
            self.totals = ruleset.totals(scores)
            self.bands = ruleset.named_bands(self.totals)


@dataclass
class Replayed:
    """One lead replayed: its stored self, the replayed lead and rows, and the stage it ends
    in after the forward-only rule."""

    stored: StoredLead
    lead: LoadedLead
    rows: Rows
    events: int
    decayed_now: bool  # the final decay (up to now) lowered a score
    score: int  # the replayed lead score
    stage: str = ""
    stage_entered_at: datetime | None = None
    moved: dict[str, Any] | None = None  # the stage history row of a forward move
    held: str | None = None  # the replayed stage a lead was kept out of (backward, exit)
    enroll: list[str] = field(default_factory=list)
    exit: list[str] = field(default_factory=list)


def load_stored(conn: Connection, ids: Sequence[int], lock: bool = True) -> list[StoredLead]:
    """The leads ``ids`` as stored, in id order (locked on PostgreSQL when ``lock``, in the
    order ingest locks them)."""
    query = select(LEADS).where(LEADS.c.id.in_(list(ids))).order_by(LEADS.c.id)
    if lock and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    found = [
        StoredLead(
            row["id"],
            row["email"],
            row["version"],
            row["ruleset_version"],
            dict(row["attributes"]),
            row["score"],
            row["temperature"],
            row["stage"],
            row["stage_entered_at"],
            list(row["tags"]),
            row["subscribed"],
            row["created_at"],
        )
        for row in conn.execute(query).mappings()
    ]
    by_id = {lead.id: lead for lead in found}
    named = select(NAMED_SCORES).where(NAMED_SCORES.c.lead_id.in_(list(by_id)))
    for row in conn.execute(named).mappings().all():
        by_id[row["lead_id"]].bands[row["name"]] = row["band"]
        by_id[row["lead_id"]].totals[row["name"]] = row["total"]
    for row in (
        conn.execute(select(SCORES).where(SCORES.c.lead_id.in_(list(by_id)))).mappings().all()
    ):
        state = [row["rose_at"], row["peak"], row["decay_steps"]]
        by_id[row["lead_id"]].components[row["component"]] = (row["value"], state)
    enrolled = select(ENROLLMENTS.c.lead_id, ENROLLMENTS.c.campaign, ENROLLMENTS.c.status)
    for lead_id, campaign, status in conn.execute(
        enrolled.where(ENROLLMENTS.c.lead_id.in_(list(by_id)))
    ).all():
        by_id[lead_id].enrolled[campaign] = status
    return found


def replay(
    conn: Connection,
    compiled: CompiledRuleset,
    stored: list[StoredLead],
    now: datetime,
    campaigns: CompiledCampaigns | None = None,
    until: datetime | None = None,
    baseline: Ruleset | None = None,
) -> list[Replayed]:
    """Replay ``stored`` leads' events (those up to ``until``, when given) under ``compiled``,
    decayed up to ``now``; nothing is written. ``baseline``: the version the stored scores are
    under, to bring them up to ``now`` too (see :meth:`StoredLead.decay_to`)."""
    ruleset = compiled.ruleset
    if baseline is not None:
        for lead in stored:
            lead.decay_to(baseline, now)
    by_id = {lead.id: lead for lead in stored}
    columns = (EVENTS.c.lead_id, EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at)
    query = (
        select(*columns, EVENTS.c.properties, EVENTS.c.attributes)
        .where(EVENTS.c.lead_id.in_(list(by_id)))
        .order_by(EVENTS.c.lead_id, EVENTS.c.occurred_at, EVENTS.c.id)
    )
    if until is not None:
        query = query.where(EVENTS.c.occurred_at <= until)
    events: dict[int, list[Any]] = {lead.id: [] for lead in stored}
    for row in conn.execute(query).all():
        events[row[0]].append(row)
    accounts = None
    if compiled.all_reads & ACCOUNT_FIELDS:
        ids = list(by_id)
        accounts = AccountBook(lambda domains: stored_peers(conn, domains, ids))
    start = new_lead(ruleset, {}).scores
    found = []
    for lead_id, rows in events.items():
        found.append(_replay_lead(compiled, by_id[lead_id], rows, start, now, campaigns, accounts))
    return found


def _replay_lead(
    compiled: CompiledRuleset,
    stored: StoredLead,
    events: list[Any],
    start: dict[str, int],
    now: datetime,
    campaigns: CompiledCampaigns | None,
    accounts: AccountBook | None,
) -> Replayed:
    ruleset = compiled.ruleset
    attributes: dict[str, Any] = {
        "email": stored.email,
        "domain": stored.email.rsplit("@", 1)[1],
    }
    if any(row.type == "profile_update" and row.attributes is None for row in events):
        # Stored before events kept their attributes: the stored profile is the best there is.
        attributes.update(stored.attributes)
    first = events[0].occurred_at if events else stored.created_at
    lead = LoadedLead(
        stored.id,
        stored.email,
        stored.version,
        LeadState(attributes, {}, ruleset.stages[0]),
        stored.subscribed,
        first,
        {},
        new=True,
        created_at=first,
    )
    opening(ruleset, lead, start, first)
    rows = Rows(ledger=list(lead.opening))
    scorer = Scorer(compiled, rows, now, accounts=accounts, past=True)
    for row in events:
        event = Event(row.event_id, row.type, row.occurred_at, row.properties)
        try:
            scorer.score(lead, event, row.attributes)
        except ChainError:
            continue  # under this version the event is rejected, as ingest would
    decayed_now = scorer.decay_to(lead, now)
    if lead.evaluated_at is not None:
        lead.due_at = next_change(compiled, lead.history, lead.evaluated_at)
    if decayed_now:
        lead.due_at = now
    score = ruleset.lead_score(lead.state.scores)
    found = Replayed(stored, lead, rows, len(events), decayed_now, score)
    _settle_stage(ruleset, found, now)
    if campaigns is not None:
        _settle_campaigns(found, campaigns, now)
    return found


def _settle_stage(ruleset: Ruleset, found: Replayed, now: datetime) -> None:
    """Stages move forward only: never backward, never out of an exit."""
    stored, replayed = found.stored.stage, found.lead.state.stage
    found.stage, found.stage_entered_at = stored, found.stored.stage_entered_at
    if replayed == stored:
        return
    order = ruleset.stages
    forward = stored not in ruleset.exits and (
        replayed in ruleset.exits
        or stored not in order
        or (replayed in order and order.index(replayed) > order.index(stored))
    )
    if not forward:
        found.held = replayed
        return
    # The replayed move into that stage names the rule (none: a stage the ruleset dropped).
    causes = [row for row in found.rows.stages if row["to_stage"] == replayed]
    cause = causes[-1] if causes else {"rule": RESCORE, "event_id": None}
    found.stage, found.stage_entered_at = replayed, now
    found.moved = {
        "lead_id": found.stored.id,
        "from_stage": stored,
        "to_stage": replayed,
        "rule": cause["rule"],
        "event_id": cause["event_id"],
        "at": now,
        "rescore": True,
    }


def _settle_campaigns(found: Replayed, campaigns: CompiledCampaigns, now: datetime) -> None:
    """Membership as the final state makes it: enrollments that start now and that end."""
    lead = found.lead
    lead.enrolled = dict(found.stored.enrolled)
    state = lead.state.copy()
    state.stage = found.stage
    lead.state, final = state, lead.state
    rows = Rows()
    event = Event(f"{RESCORE}:{found.stored.id}", RESCORE, now)
    outcome.enrollments(rows, lead, event, Outcome(state), campaigns)
    lead.state = final
    found.rows.enroll, found.rows.exit = rows.enroll, rows.exit
    found.enroll = [row["campaign"] for row in rows.enroll]
    found.exit = [row["campaign"] for row in rows.exit]


def rescore(
    conn: Connection,
    compiled: CompiledRuleset,
    ids: Sequence[int],
    now: datetime,
    campaigns: CompiledCampaigns | None = None,
    alert: bool = False,
    baseline: Ruleset | None = None,
) -> list[Replayed]:
    """Replay the leads ``ids`` (locking them) and write the result; returns the replays of
    those still under another version than ``compiled``'s (the others were rescored meanwhile
    and are left alone)."""
    version = compiled.ruleset.version
    stored = [lead for lead in load_stored(conn, ids) if lead.ruleset_version != version]
    if not stored:
        return []
    found = replay(conn, compiled, stored, now, campaigns, baseline=baseline)
    write(conn, compiled.ruleset, found, now, alert)
    return found


def top_band(ruleset: Ruleset) -> str | None:
    """The hottest temperature band (None: a ruleset with one band)."""
    ranked = ruleset.bands_from_top()
    return ranked[0][0] if ranked else None


def write(
    conn: Connection, ruleset: Ruleset, found: list[Replayed], now: datetime, alert: bool
) -> None:
    """Replace the leads' scored state with the replayed one, set-based."""
    ids = [item.stored.id for item in found]
    version = ruleset.version
    conn.execute(
        delete(LEDGER).where(LEDGER.c.lead_id.in_(ids), LEDGER.c.ruleset_version == version)
    )
    for table in (SCORES, NAMED_SCORES, FIRINGS):
        conn.execute(delete(table).where(table.c.lead_id.in_(ids)))
    conn.execute(
        delete(ACTIONS).where(ACTIONS.c.lead_id.in_(ids), ACTIONS.c.status == ActionStatus.PAST)
    )
    hot = top_band(ruleset)
    rows = Rows(
        ledger=[row for item in found for row in item.rows.ledger],
        firings=[row for item in found for row in item.rows.firings],
        actions=[row for item in found for row in item.rows.actions],
        stages=[item.moved for item in found if item.moved is not None],
        enroll=[row for item in found for row in item.rows.enroll],
        exit=[row for item in found for row in item.rows.exit],
    )
    if alert and hot is not None:
        rows.actions += [
            {
                "lead_id": item.stored.id,
                "kind": "alert",
                "target": "sales",
                "rule": RESCORE,
                "event_id": None,
                "at": now,
                "status": ActionStatus.PENDING,
            }
            for item in found
            if item.stored.temperature != hot and ruleset.band(item.score) == hot
        ]
    for table, batch in (
        (LEDGER, rows.ledger),
        (FIRINGS, rows.firings),
        (ACTIONS, rows.actions),
    ):
        if batch:
            append_rows(conn, table, batch)
    record_moves(conn, rows.stages)
    enroll_and_exit(conn, rows)
    leads = []
    for item in found:
        lead = item.lead
        # What the forward-only rule kept, and what is not the ruleset's to replay: consent
        # (an opt-out stored before events kept their attributes would be lost) and the row
        # version the batch locked.
        lead.state.stage = item.stage
        if item.stage_entered_at is not None:
            lead.stage_entered_at = item.stage_entered_at
        lead.subscribed = item.stored.subscribed
        lead.version = item.stored.version
        leads.append(lead)
    write_leads(conn, ruleset, leads, now)
