"""Pending ``alert: TARGET`` actions → alert rows and their outbox rows, one transaction per
batch.

The step is serialised across processes (``pg_advisory_xact_lock`` on PostgreSQL; ``BEGIN
IMMEDIATE`` already does it on SQLite), so cooldowns and the rosters' round-robin see every
earlier decision. The batch's leads are locked like ingest locks them (``FOR UPDATE``, in id
order), because a rep from a roster is written back as the lead's owner attribute (``owner``
for sales, the target's ``owner`` setting otherwise). Everything is loaded in a few set-based
queries, decided in memory (:mod:`.decide`), and written in bulk: the alerts (``action_id``
unique: an action yields at most one alert), an ``alert`` email and a ``webhook`` outbox row
per delivered alert (idempotency keys ``alert:<id>:email`` / ``alert:<id>:webhook``; the
webhook row's ``to_email`` names the target whose URL it goes to), owners, and the actions' new
status (``applied`` or ``suppressed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, Select, bindparam, func, select, text, update

from engine.alerts.content import AlertView, display_name, email_parts, lead_url, slack_payload
from engine.alerts.context import (
    purchase_types,
    recent_changes,
    recent_events,
    recent_purchases,
)
from engine.alerts.decide import Firing, LastAlert, Policy, decide, recipient
from engine.db import upsert
from engine.db.schema import ACTIONS, ALERTS, EVENTS, LEADS, LEDGER, OUTBOX, current_ledger
from engine.reports.leads import named_scores, reasons_by_lead
from engine.rules.spec import Ruleset
from engine.send.dispatch import WEBHOOK
from engine.settings import SALES, Settings
from engine.status import ActionStatus, OutboxStatus

EMAIL = "alert"  # the outbox kind of an alert email
KINDS = (EMAIL, WEBHOOK)
LOCK_KEY = 0x6E757274  # the advisory lock that serialises this step ("nurt")
BATCH = 200


@dataclass
class EnqueueReport:
    created: int = 0
    suppressed: int = 0


def any_pending(conn: Connection) -> bool:
    """One index lookup: is there an alert action to decide?"""
    return conn.execute(pending(1)).first() is not None


def pending(size: int) -> Select[Any]:
    """The first ``size`` pending alert actions, oldest first: read in the order of their index
    (``ix_lead_action_kind_status_at``), so a batch costs the same however long the backlog."""
    return (
        select(ACTIONS.c.id, ACTIONS.c.lead_id, ACTIONS.c.rule, ACTIONS.c.event_id)
        .add_columns(ACTIONS.c.at, ACTIONS.c.target)
        .where(ACTIONS.c.kind == "alert", ACTIONS.c.status == ActionStatus.PENDING)
        .order_by(ACTIONS.c.at, ACTIONS.c.id)
        .limit(size)
    )


def enqueue(
    db: Engine, settings: Settings, ruleset: Ruleset, now: datetime, batch: int = BATCH
) -> EnqueueReport:
    """Decide every pending alert action, a batch per transaction, until none is left."""
    hot = ruleset.temperature[-1][1]
    policy = Policy(
        settings.alert_cooldown, hot - settings.alert_rearm_margin, settings.alert_max_age
    )
    report = EnqueueReport()
    while True:
        with db.begin() as conn:
            done = _Batch(conn, settings, ruleset, policy, now).run(batch)
        report.created += done.created
        report.suppressed += done.suppressed
        if done.created + done.suppressed < batch:
            return report


class _Batch:
    def __init__(
        self,
        conn: Connection,
        settings: Settings,
        ruleset: Ruleset,
        policy: Policy,
        now: datetime,
    ) -> None:
        self.conn = conn
        self.settings = settings
        self.ruleset = ruleset
        self.policy = policy
        self.now = now
        self.pg = conn.dialect.name == "postgresql"

    def run(self, size: int) -> EnqueueReport:
        conn = self.conn
        if self.pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        actions = conn.execute(pending(size)).all()
        if not actions:
            return EnqueueReport()
        lead_ids = sorted({a.lead_id for a in actions})
        locking = select(LEADS).where(LEADS.c.id.in_(lead_ids)).order_by(LEADS.c.id)
        leads = {
            row["id"]: row
            for row in conn.execute(locking.with_for_update() if self.pg else locking).mappings()
        }
        decided = decide(
            [Firing(a.id, a.lead_id, a.at, leads[a.lead_id]["score"], a.target) for a in actions],
            self._last_alerts(lead_ids),
            self.policy,
            self.now,
        )
        shown = self._shown(lead_ids, [a for a in actions if decided[a.id] is None])
        received = self._received([a.event_id for a in actions if a.event_id])
        turns = {target: self._next_turn(target) for target in {a.target for a in actions}}
        owners: dict[int, dict[str, str]] = {}  # lead → attribute → rep written back
        alerts, views = [], {}
        for action in actions:
            lead = leads[action.lead_id]
            row = {
                "lead_id": action.lead_id,
                "action_id": action.id,
                "rule": action.rule,
                "target": action.target,
                "event_id": action.event_id,
                "at": action.at,
                "received_at": received.get(action.event_id, self.now),
                "created_at": self.now,
                "suppressed": decided[action.id],
                "owner": None,
                "owner_source": None,
                "roster_turn": None,
                "score": lead["score"],
                "temperature": lead["temperature"],
                "stage": lead["stage"],
                "reasons": [],
            }
            alerts.append(row)
            if row["suppressed"] is None:
                view = self._view(action, lead, row, shown, turns, owners)
                if view is not None:
                    views[action.id] = view
        self._write(alerts, views, leads, owners)
        suppressed = sum(1 for row in alerts if row["suppressed"] is not None)
        return EnqueueReport(len(alerts) - suppressed, suppressed)

    def _view(
        self,
        action: Any,
        lead: Any,
        row: dict[str, Any],
        shown: Shown,
        turns: dict[str, int],
        owners: dict[int, dict[str, str]],
    ) -> AlertView | None:
        """Whom an alert that pages goes to, and what it says; None (the row suppressed with
        the reason) when its target has nobody to send to."""
        target = self.settings.alert_target(action.target)
        if target is None:
            row["suppressed"] = (
                f"no alert target {action.target!r}: define it in NURTURE_ALERT_TARGETS"
            )
            return None
        attribute = target.owner or "owner"
        attributes = dict(lead["attributes"])
        owner = owners.get(action.lead_id, {}).get(attribute, attributes.get(attribute))
        turn = turns[action.target]
        to, source = recipient(owner, target.roster, turn, target.email, action.target)
        if source == "roster":
            row["roster_turn"] = turn
            turns[action.target] = turn + 1
            owners.setdefault(action.lead_id, {})[attribute] = str(to)
        if to is None and not target.webhook_url:
            row["suppressed"] = (
                "nowhere to send: set NURTURE_SALES_WEBHOOK_URL, NURTURE_SALES_ROSTER or "
                "NURTURE_SALES_EMAIL"
                if action.target == SALES
                else f"nowhere to send: give {action.target!r} in NURTURE_ALERT_TARGETS a "
                "roster, an email or a webhook_url"
            )
            return None
        row.update(owner=to, owner_source=source, reasons=shown.reasons[action.lead_id])
        customer = action.target != SALES
        return AlertView(
            email=lead["email"],
            name=display_name(attributes),
            company=_text(attributes.get("company")),
            job_title=_text(attributes.get("job_title")),
            score=lead["score"],
            temperature=lead["temperature"],
            stage=lead["stage"],
            rule=action.rule,
            reasons=row["reasons"],
            events=shown.events.get(action.lead_id, []),
            url=lead_url(self.settings.public_url, lead["email"]),
            owner=str(to) if source in ("owner", "roster") else _text(owner),
            target=action.target,
            named=shown.named.get(action.lead_id, {}),
            changes=shown.changes.get(action.lead_id, []) if customer else [],
            purchases=shown.purchases.get(action.lead_id, []) if customer else [],
        )

    def _shown(self, lead_ids: list[int], delivered: list[Any]) -> Shown:
        """What the delivered alerts show, loaded for all their leads at once."""
        if not delivered:
            return Shown({}, {}, {}, {}, {})
        customers = sorted({a.lead_id for a in delivered if a.target != SALES})
        return Shown(
            reasons=reasons_by_lead(self.conn, lead_ids, claimed=self.ruleset.claimed),
            events=recent_events(self.conn, lead_ids),
            named=named_scores(self.conn, lead_ids),
            changes=recent_changes(self.conn, customers) if customers else {},
            purchases=recent_purchases(self.conn, customers, purchase_types(self.ruleset))
            if customers
            else {},
        )

    # -- load ---------------------------------------------------------------------------------
    def _last_alerts(self, lead_ids: list[int]) -> dict[tuple[int, str], LastAlert]:
        """Each lead's last delivered alert per target, and the lowest lead score its ledger
        shows since."""
        key = (ALERTS.c.lead_id, ALERTS.c.target)
        latest = (
            select(*key, func.max(ALERTS.c.at).label("at"))
            .where(ALERTS.c.lead_id.in_(lead_ids), ALERTS.c.suppressed.is_(None))
            .group_by(*key)
            .subquery()
        )
        found = {
            (lead_id, target): LastAlert(at, score, None)
            for lead_id, target, at, score in self.conn.execute(
                select(*key, ALERTS.c.at, func.min(ALERTS.c.score))
                .join(
                    latest,
                    (latest.c.lead_id == ALERTS.c.lead_id)
                    & (latest.c.target == ALERTS.c.target)
                    & (latest.c.at == ALERTS.c.at),
                )
                .where(ALERTS.c.suppressed.is_(None))
                .group_by(*key, ALERTS.c.at)
            )
        }
        if found:
            lowest = (
                select(latest.c.lead_id, latest.c.target, func.min(LEDGER.c.score_after))
                .join(latest, (latest.c.lead_id == LEDGER.c.lead_id) & (LEDGER.c.at > latest.c.at))
                .where(LEDGER.c.component.not_in(list(self.ruleset.claimed)), current_ledger())
                .group_by(latest.c.lead_id, latest.c.target)
            )
            for lead_id, target, score in self.conn.execute(lowest):
                last = found[(lead_id, target)]
                found[(lead_id, target)] = LastAlert(last.at, last.score, score)
        return found

    def _received(self, event_ids: list[str]) -> dict[str, datetime]:
        query = select(EVENTS.c.event_id, EVENTS.c.received_at).where(
            EVENTS.c.event_id.in_(event_ids)
        )
        return {event_id: at for event_id, at in self.conn.execute(query)}

    def _next_turn(self, target: str) -> int:
        """The next round-robin position of ``target``'s roster."""
        query = select(func.max(ALERTS.c.roster_turn)).where(ALERTS.c.target == target)
        last = self.conn.execute(query).scalar()
        return 0 if last is None else int(last) + 1

    # -- write --------------------------------------------------------------------------------
    def _write(
        self,
        alerts: list[dict[str, Any]],
        views: dict[int, AlertView],
        leads: dict[int, Any],
        owners: dict[int, dict[str, str]],
    ) -> None:
        conn = self.conn
        conn.execute(
            upsert(conn, ALERTS).on_conflict_do_nothing(index_elements=["action_id"]), alerts
        )
        written = select(ALERTS.c.action_id, ALERTS.c.id).where(
            ALERTS.c.action_id.in_([row["action_id"] for row in alerts])
        )
        ids = {action_id: alert_id for action_id, alert_id in conn.execute(written)}
        messages = []
        for row in alerts:
            view = views.get(row["action_id"])
            if view is None:
                continue
            alert_id = ids[row["action_id"]]
            base = {
                "lead_id": row["lead_id"],
                "alert_id": alert_id,
                "status": OutboxStatus.QUEUED,
                "attempts": 0,
                "next_attempt_at": self.now,
                "created_at": self.now,
                "headers": {},
                "from_email": self.settings.alert_sender,
                "from_name": "nurture",
                "payload": None,
            }
            if row["owner"]:
                subject, html, body = email_parts(view)
                messages.append(
                    {**base, "idempotency_key": f"alert:{alert_id}:email", "kind": EMAIL,
                     "to_email": row["owner"], "subject": subject, "html": html, "text": body}
                )  # fmt: skip
            target = self.settings.alert_target(row["target"])
            if target is not None and target.webhook_url:
                messages.append(
                    {**base, "idempotency_key": f"alert:{alert_id}:webhook", "kind": WEBHOOK,
                     "to_email": row["target"], "subject": "", "html": "", "text": "",
                     "payload": slack_payload(view)}
                )  # fmt: skip
        if messages:
            conn.execute(
                upsert(conn, OUTBOX).on_conflict_do_nothing(index_elements=["idempotency_key"]),
                messages,
            )
        if owners:
            conn.execute(
                update(LEADS)
                .where(LEADS.c.id == bindparam("b_id"))
                .values(attributes=bindparam("b_attributes"), version=LEADS.c.version + 1),
                [
                    {"b_id": lead, "b_attributes": {**leads[lead]["attributes"], **reps}}
                    for lead, reps in owners.items()
                ],
            )
        conn.execute(
            update(ACTIONS)
            .where(ACTIONS.c.id == bindparam("b_id"))
            .values(status=bindparam("b_status")),
            [
                {
                    "b_id": row["action_id"],
                    "b_status": ActionStatus.APPLIED
                    if row["suppressed"] is None
                    else ActionStatus.SUPPRESSED,
                }
                for row in alerts
            ],
        )


@dataclass(frozen=True)
class Shown:
    """Per lead id: what its alerts show."""

    reasons: dict[int, list[dict[str, Any]]]
    events: dict[int, list[dict[str, Any]]]
    named: dict[int, dict[str, tuple[int, str]]]
    changes: dict[int, list[dict[str, Any]]]
    purchases: dict[int, list[dict[str, Any]]]


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
