"""Whether an ``alert: TARGET`` firing pages anyone, and whom: pure functions of what the
database holds about the lead.

One page per lead, target and transition. A firing is suppressed when

- its event is older than ``NURTURE_ALERT_MAX_AGE`` (a backfill of old history pages nobody);
- the lead's last alert to the same target was less than ``NURTURE_ALERT_COOLDOWN`` earlier
  (event time), so a lead flapping around a threshold pages once;
- or, for ``sales``, the lead has not re-armed: since its last alert its score never fell below
  ``hot - NURTURE_ALERT_REARM_MARGIN`` (band hysteresis: a lead that stays hot for months is one
  transition, however many alerting rules fire).

Only alerts that were delivered count as "last"; suppressed ones do not.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from engine.address import address_or_none
from engine.settings import SALES
from engine.timeutil import isoformat


@dataclass(frozen=True)
class Policy:
    cooldown: timedelta
    rearm_below: int  # the hot band's lower bound minus the re-arm margin
    max_age: timedelta


@dataclass(frozen=True)
class Firing:
    action_id: int
    lead_id: int
    at: datetime  # the triggering event's time
    score: int  # the lead's score now
    target: str = SALES

    @property
    def key(self) -> tuple[int, str]:
        return (self.lead_id, self.target)


@dataclass(frozen=True)
class LastAlert:
    at: datetime
    score: int  # the lead's score when it was alerted
    lowest_since: int | None  # the lowest score in its ledger after that, if it changed


def decide(
    firings: Sequence[Firing],
    last: Mapping[tuple[int, str], LastAlert],
    policy: Policy,
    now: datetime,
) -> dict[int, str | None]:
    """Action id → None (alert) or why it is suppressed. ``last``: by (lead id, target).
    ``firings`` in time order: an alert decided here is the "last alert" of the lead's later
    firings to the same target in the same batch."""
    latest = dict(last)
    decided: dict[int, str | None] = {}
    for firing in firings:
        reason = _suppressed(firing, latest.get(firing.key), policy, now)
        decided[firing.action_id] = reason
        if reason is None:
            latest[firing.key] = LastAlert(firing.at, firing.score, None)
    return decided


def _suppressed(
    firing: Firing, last: LastAlert | None, policy: Policy, now: datetime
) -> str | None:
    if now - firing.at > policy.max_age:
        return f"stale: the event is older than NURTURE_ALERT_MAX_AGE ({policy.max_age})"
    if last is None:
        return None
    if firing.at - last.at < policy.cooldown:
        return (
            f"cooldown: alerted at {isoformat(last.at)}, within NURTURE_ALERT_COOLDOWN "
            f"({policy.cooldown})"
        )
    lowest = min(last.score, last.lowest_since if last.lowest_since is not None else last.score)
    if firing.target == SALES and lowest >= policy.rearm_below:
        return (
            f"not re-armed: the score has not fallen below {policy.rearm_below} "
            "since the last alert"
        )
    return None


def recipient(
    owner: object, roster: Sequence[str], turn: int, team: str | None, target: str = SALES
) -> tuple[str | None, str | None]:
    """Who the alert email goes to, and why: the person the lead's owner attribute names when it
    is an address, else the roster's rep at ``turn`` (round-robin; the caller writes them back
    as the owner), else the target's team address (``sales_email`` for sales, ``email`` for
    the others). (None, None) when there is nobody."""
    address = address_or_none(owner)
    if address is not None:
        return address, "owner"
    if roster and not owner:
        return roster[turn % len(roster)], "roster"
    if team:
        return team, "sales_email" if target == SALES else "email"
    return None, None
