"""Who gets paged, without a database (engine.alerts.decide): the cooldown, the re-arm below hot,
stale backfills, several firings of one lead in a batch, and the owner → roster → sales address
order of recipients."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from engine.alerts.decide import Firing, LastAlert, Policy, decide, recipient
from engine.settings import SALES

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
# NURTURE_ALERT_COOLDOWN 7d, hot at 70 with NURTURE_ALERT_REARM_MARGIN 10, NURTURE_ALERT_MAX_AGE 1d
POLICY = Policy(cooldown=timedelta(days=7), rearm_below=60, max_age=timedelta(days=1))


def firing(action_id: int, at: datetime = NOW, lead_id: int = 1, score: int = 75) -> Firing:
    return Firing(action_id=action_id, lead_id=lead_id, at=at, score=score)


def test_a_first_firing_pages() -> None:
    assert decide([firing(1)], {}, POLICY, NOW) == {1: None}


def test_an_event_older_than_the_max_age_pages_nobody() -> None:
    old, edge = firing(1, NOW - timedelta(days=1, seconds=1)), firing(2, NOW - timedelta(days=1))
    decided = decide([old, edge], {}, POLICY, NOW)
    assert decided[1] == "stale: the event is older than NURTURE_ALERT_MAX_AGE (1 day, 0:00:00)"
    assert decided[2] is None  # exactly the max age is still fresh


def test_within_the_cooldown_is_suppressed_whatever_the_score_did() -> None:
    last = {(1, SALES): LastAlert(at=NOW - timedelta(days=6), score=75, lowest_since=20)}
    [reason] = decide([firing(1)], last, POLICY, NOW).values()
    assert reason == (
        "cooldown: alerted at 2026-10-27T10:00:00Z, within NURTURE_ALERT_COOLDOWN (7 days, 0:00:00)"
    )
    after = {(1, SALES): LastAlert(at=NOW - timedelta(days=7), score=75, lowest_since=20)}
    assert decide([firing(1)], after, POLICY, NOW) == {1: None}  # the cooldown is [at, at + 7d)


@pytest.mark.parametrize(
    ("score", "lowest_since", "pages"),
    [
        (75, 59, True),  # fell below hot - margin since: re-armed
        (75, 60, False),  # only down to the re-arm line
        (75, None, False),  # the score never changed since the alert
        (59, None, True),  # its score at the alert was already below the line
    ],
)
def test_after_the_cooldown_only_a_lead_that_cooled_pages_again(
    score: int, lowest_since: int | None, pages: bool
) -> None:
    last = {
        (1, SALES): LastAlert(at=NOW - timedelta(days=30), score=score, lowest_since=lowest_since)
    }
    [reason] = decide([firing(1)], last, POLICY, NOW).values()
    if pages:
        assert reason is None
    else:
        assert reason == "not re-armed: the score has not fallen below 60 since the last alert"


def test_an_alert_decided_in_a_batch_is_the_last_alert_of_the_leads_later_firings() -> None:
    batch = [
        firing(1, NOW - timedelta(hours=2), lead_id=1),
        firing(2, NOW - timedelta(hours=2), lead_id=2),
        firing(3, NOW - timedelta(hours=1), lead_id=1),
    ]
    decided = decide(batch, {}, POLICY, NOW)
    assert decided[1] is None and decided[2] is None
    assert str(decided[3]).startswith("cooldown: alerted at 2026-11-02T08:00:00Z")


def test_a_suppressed_firing_is_not_a_last_alert() -> None:
    stale_then_fresh = [firing(1, NOW - timedelta(days=3)), firing(2, NOW)]
    decided = decide(stale_then_fresh, {}, POLICY, NOW)
    assert str(decided[1]).startswith("stale") and decided[2] is None


@pytest.mark.parametrize(
    ("owner", "roster", "turn", "sales", "expected"),
    [
        (" rep@acme.io ", ["ana@acme.io"], 0, "sales@acme.io", ("rep@acme.io", "owner")),
        (None, ["ana@acme.io", "bo@acme.io"], 0, "sales@acme.io", ("ana@acme.io", "roster")),
        ("", ["ana@acme.io", "bo@acme.io"], 3, None, ("bo@acme.io", "roster")),  # round-robin
        ("Ana", ["ana@acme.io"], 0, "sales@acme.io", ("sales@acme.io", "sales_email")),
        (None, [], 0, "sales@acme.io", ("sales@acme.io", "sales_email")),
        (None, [], 0, None, (None, None)),
    ],
)
def test_the_alert_email_goes_to_the_owner_else_the_roster_else_the_sales_address(
    owner: object,
    roster: list[str],
    turn: int,
    sales: str | None,
    expected: tuple[str | None, str | None],
) -> None:
    assert recipient(owner, roster, turn, sales) == expected
