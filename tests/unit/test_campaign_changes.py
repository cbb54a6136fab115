"""Who enters and leaves which campaign after an evaluation, without a database
(``CompiledCampaigns.changes``): audiences, exit_when, rule actions, at most one enrollment per
campaign, and nothing while unsubscribed. The campaigns of tests/campaigns/ on camp-test:
warm-nurture (warm, exits when hot or a customer), hot-followup (hot), vip-track (stage sql)."""

from __future__ import annotations

import pytest

from engine.campaigns.compile import Changes, CompiledCampaigns
from engine.rules.evaluate import LeadState
from engine.status import EnrollmentStatus

ACTIVE, EXITED, COMPLETED = (
    EnrollmentStatus.ACTIVE,
    EnrollmentStatus.EXITED,
    EnrollmentStatus.COMPLETED,
)


def lead(score: int, stage: str = "subscriber") -> LeadState:
    """camp-test bands: cold < 40 ≤ warm < 70 ≤ hot."""
    return LeadState({}, {"engagement": score}, stage)


def test_a_lead_entering_an_audience_is_enrolled(campaigns: CompiledCampaigns) -> None:
    assert campaigns.changes(lead(40), True, {}) == Changes({"warm-nurture": "audience"}, {})
    assert campaigns.changes(lead(10), True, {}) == Changes({}, {})


@pytest.mark.parametrize("status", [ACTIVE, EXITED, COMPLETED])
def test_a_lead_is_enrolled_in_a_campaign_at_most_once(
    campaigns: CompiledCampaigns, status: str
) -> None:
    assert campaigns.changes(lead(40), True, {"warm-nurture": status}) == Changes({}, {})


def test_exit_when_ends_an_active_enrollment_and_the_next_audience_starts(
    campaigns: CompiledCampaigns,
) -> None:
    hot = campaigns.changes(lead(70), True, {"warm-nurture": ACTIVE})
    assert hot == Changes({"hot-followup": "audience"}, {"warm-nurture": "exit_when"})
    customer = campaigns.changes(lead(40, "customer"), True, {"warm-nurture": ACTIVE})
    assert customer == Changes({}, {"warm-nurture": "exit_when"})
    # exit_when also keeps a lead out: warm and a customer is not warm-nurture's audience.
    assert campaigns.changes(lead(40, "customer"), True, {}) == Changes({}, {})


def test_only_active_enrollments_are_exited(campaigns: CompiledCampaigns) -> None:
    enrolled = {"warm-nurture": COMPLETED, "hot-followup": ACTIVE}
    assert campaigns.changes(lead(70), True, enrolled) == Changes({}, {})


def test_a_rule_enrolls_outside_the_audience_and_its_reason_comes_first(
    campaigns: CompiledCampaigns,
) -> None:
    requested = [("enroll", "vip-track", "vip")]
    assert campaigns.changes(lead(0), True, {}, requested) == Changes({"vip-track": "rule vip"}, {})
    in_audience = campaigns.changes(lead(0, "sql"), True, {}, requested)
    assert in_audience.enroll == {"vip-track": "rule vip"}


def test_an_exit_wins_over_an_enrollment(campaigns: CompiledCampaigns) -> None:
    leave = [("exit", "warm-nurture", "cooled")]
    assert campaigns.changes(lead(40), True, {}, leave) == Changes({}, {})
    active = campaigns.changes(lead(40), True, {"warm-nurture": ACTIVE}, leave)
    assert active == Changes({}, {"warm-nurture": "rule cooled"})
    both = [("enroll", "vip-track", "vip"), ("exit", "vip-track", "not-vip")]
    assert campaigns.changes(lead(0), True, {}, both) == Changes({}, {})


def test_unsubscribed_leads_leave_every_campaign_and_enter_none(
    campaigns: CompiledCampaigns,
) -> None:
    enrolled = {"warm-nurture": ACTIVE, "vip-track": ACTIVE, "hot-followup": EXITED}
    requested = [("enroll", "hot-followup", "r"), ("exit", "vip-track", "gone")]
    changes = campaigns.changes(lead(70, "sql"), False, enrolled, requested)
    assert changes == Changes({}, {"warm-nurture": "exit_when", "vip-track": "rule gone"})
    assert campaigns.changes(lead(40), False, {"warm-nurture": ACTIVE}) == Changes(
        {}, {"warm-nurture": "unsubscribed"}
    )
