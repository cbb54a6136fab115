"""An evaluation's outcome → the rows ingest writes, without a database (engine.ingest.outcome):
the event, ledger, stage history, firings and actions of ``record``; the decay clock a rise
restarts; the enrollments and exits of ``enrollments``; a new lead's first stage."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.campaigns.compile import CompiledCampaigns
from engine.ingest.outcome import LoadedLead, Rows, enrollments, new_lead_stages, record
from engine.rules.evaluate import Event, Intent, LeadState, Outcome, ScoreChange, StageChange
from engine.status import ActionStatus, EnrollmentStatus
from engine.timeutil import epoch

AT = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
RECEIVED = AT + timedelta(minutes=5)


def loaded(lead_id: int = 7, new: bool = False, score: int = 0) -> LoadedLead:
    return LoadedLead(
        id=lead_id,
        email=f"l{lead_id}@acme.io",
        version=1,
        state=LeadState({}, {"engagement": score}, "subscriber"),
        subscribed=True,
        stage_entered_at=AT - timedelta(days=30),
        decay={},
        new=new,
        created_at=AT - timedelta(days=30),
    )


def demo_outcome(score_before: int = 0) -> Outcome:
    """A demo request: +50 engagement, subscriber → lead, an alert and an enrollment asked for."""
    after = score_before + 50
    return Outcome(
        LeadState({}, {"engagement": after}, "lead"),
        fired=["demo", "hot-lead"],
        score_changes=[ScoreChange("demo", "engagement", 50, after)],
        stage_changes=[StageChange("demo", "subscriber", "lead")],
        intents=[Intent("hot-lead", "alert", "sales"), Intent("demo", "enroll", "vip-track")],
    )


EVENT = Event("e1", "demo_request", AT, {"url": "/demo"})


def test_an_evaluation_becomes_one_row_per_fact_in_evaluation_order() -> None:
    rows, lead = Rows(), loaded()
    record(rows, lead, EVENT, demo_outcome(), "v1", RECEIVED, campaigns_applied=True)
    base = {"lead_id": 7, "event_id": "e1", "at": AT}
    assert rows.events == [
        {"event_id": "e1", "lead_id": 7, "type": "demo_request", "occurred_at": AT,
         "properties": {"url": "/demo"}, "received_at": RECEIVED, "attributes": None,
         "outbox_id": None, "campaign": None}
    ]  # fmt: skip
    assert rows.ledger == [
        base | {"component": "engagement", "delta": 50, "score_after": 50, "rule": "demo",
                "ruleset_version": "v1"}
    ]  # fmt: skip
    assert rows.stages == [
        base | {"from_stage": "subscriber", "to_stage": "lead", "rule": "demo", "rescore": False}
    ]
    assert rows.firings == [base | {"rule": "demo"}, base | {"rule": "hot-lead"}]
    # An alert always waits for the alerts job; an enrollment applied in the same batch does not.
    assert rows.actions == [
        base | {"kind": "alert", "target": "sales", "rule": "hot-lead",
                "status": ActionStatus.PENDING},
        base | {"kind": "enroll", "target": "vip-track", "rule": "demo",
                "status": ActionStatus.APPLIED},
    ]  # fmt: skip
    assert rows.enroll == [] and rows.exit == []
    # The lead moves on: its state, when it entered its stage, the firings its history counts.
    assert (lead.state.stage, lead.state.score, lead.stage_entered_at) == ("lead", 50, AT)
    assert lead.history.count_firings("demo", None, AT) == 1


def test_without_campaigns_every_action_waits() -> None:
    rows = Rows()
    record(rows, loaded(), EVENT, demo_outcome(), "v1", RECEIVED, campaigns_applied=False)
    assert {row["status"] for row in rows.actions} == {ActionStatus.PENDING}


def test_an_event_that_fires_nothing_is_still_stored() -> None:
    rows, lead = Rows(), loaded(score=20)
    record(rows, lead, EVENT, Outcome(lead.state.copy()), "v1", RECEIVED, campaigns_applied=True)
    assert len(rows.events) == 1
    assert rows.ledger == rows.stages == rows.firings == rows.actions == []
    assert lead.stage_entered_at == AT - timedelta(days=30)


def test_a_rise_restarts_the_decay_clock_and_a_fall_does_not() -> None:
    lead = loaded(score=30)
    record(Rows(), lead, EVENT, demo_outcome(30), "v1", RECEIVED, campaigns_applied=True)
    assert lead.decay == {"engagement": [epoch(AT), 80, 0]}  # rose at, peak, decay steps
    fall = Outcome(
        LeadState({}, {"engagement": 70}, "lead"),
        score_changes=[ScoreChange("careers", "engagement", -10, 70)],
    )
    later = Event("e2", "careers", AT + timedelta(days=1))
    record(Rows(), lead, later, fall, "v1", RECEIVED, campaigns_applied=True)
    assert lead.decay == {"engagement": [epoch(AT), 80, 0]}


def test_a_late_rise_adds_its_points_to_the_peak_instead_of_restarting_the_clock() -> None:
    lead = loaded(score=40)
    lead.decay = {"engagement": [epoch(AT), 40, 2]}
    late = Event("e0", "page_view", AT - timedelta(days=3))
    rise = Outcome(
        LeadState({}, {"engagement": 50}, "subscriber"),
        score_changes=[ScoreChange("visit", "engagement", 10, 50)],
    )
    record(Rows(), lead, late, rise, "v1", RECEIVED, campaigns_applied=True)
    assert lead.decay == {"engagement": [epoch(AT), 50, 2]}


def test_enrollments_start_at_the_event_with_the_first_step_due_after_its_wait(
    campaigns: CompiledCampaigns,
) -> None:
    rows, lead = Rows(), loaded()
    outcome = demo_outcome()
    lead.state = outcome.state  # as record() leaves it: score 50, warm
    enrollments(rows, lead, EVENT, outcome, campaigns)
    base = {"lead_id": 7, "step": 0, "status": EnrollmentStatus.ACTIVE, "enrolled_at": AT,
            "ended_at": None}  # fmt: skip
    assert rows.enroll == [
        base | {"campaign": "vip-track", "next_due_at": AT + timedelta(hours=1),
                "reason": "rule demo"},
        base | {"campaign": "warm-nurture", "next_due_at": AT, "reason": "audience"},
    ]  # fmt: skip
    assert lead.enrolled == {"vip-track": "active", "warm-nurture": "active"}


def test_exits_end_active_enrollments_with_their_reason(campaigns: CompiledCampaigns) -> None:
    rows, lead = Rows(), loaded()
    lead.enrolled = {"warm-nurture": EnrollmentStatus.ACTIVE}
    lead.state = LeadState({}, {"engagement": 80}, "lead")  # hot: warm-nurture's exit_when
    enrollments(rows, lead, EVENT, Outcome(lead.state), campaigns)
    assert rows.exit == [
        {"lead_id": 7, "campaign": "warm-nurture", "ended_at": AT, "reason": "exit_when"}
    ]
    assert [row["campaign"] for row in rows.enroll] == ["hot-followup"]
    assert lead.enrolled == {"warm-nurture": "exited", "hot-followup": "active"}


def test_only_new_leads_get_their_first_stage_as_history() -> None:
    leads = [loaded(1, new=True), loaded(2, new=False), loaded(3, new=True)]
    assert new_lead_stages(leads, "subscriber") == [
        {"lead_id": n, "from_stage": None, "to_stage": "subscriber", "rule": "new-lead",
         "event_id": None, "at": AT - timedelta(days=30), "rescore": False}
        for n in (1, 3)
    ]  # fmt: skip
