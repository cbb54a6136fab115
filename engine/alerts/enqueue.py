"""Pending ``alert: sales`` actions → alert rows and their outbox rows, one transaction per batch.

The step is serialised across processes (``pg_advisory_xact_lock`` on PostgreSQL; ``BEGIN
IMMEDIATE`` already does it on SQLite), so cooldowns and the roster's round-robin see every
earlier decision. The batch's leads are locked like ingest locks them (``FOR UPDATE``, in id
order), because a rep from the roster is written back as the lead's ``owner``. Everything is
loaded in a few set-based queries, decided in memory (:mod:`.decide`), and written in bulk: the
alerts (``action_id`` unique: an action yields at most one alert), an ``alert`` email and a
``webhook`` outbox row per delivered alert (idempotency keys ``alert:<id>:email`` /
``alert:<id>:webhook``), owners, and the actions' new status (``applied`` or ``suppressed``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, select, text, update

from engine.alerts.content import AlertView, display_name, email_parts, lead_url, slack_payload
from engine.alerts.decide import Firing, LastAlert, Policy, decide, recipient
from engine.db import upsert
from engine.db.schema import ACTIONS, ALERTS, EVENTS, LEADS, LEDGER, OUTBOX
from engine.reports.leads import reasons_by_lead
from engine.send.dispatch import WEBHOOK
from engine.settings import Settings
from engine.status import ActionStatus, OutboxStatus
from engine.timeutil import isoformat

EMAIL = "alert"  # the outbox kind of an alert email
KINDS = (EMAIL, WEBHOOK)
LOCK_KEY = 0x6E757274  # the advisory lock that serialises this step ("nurt")
RECENT_EVENTS = 5
BATCH = 200


@dataclass
class EnqueueReport:
    created: int = 0
    suppressed: int = 0


def any_pending(conn: Connection) -> bool:
    """One index lookup: is there an alert action to decide?"""
    query = select(ACTIONS.c.id).where(
        ACTIONS.c.kind == "alert", ACTIONS.c.status == ActionStatus.PENDING
    )
    return conn.execute(query.limit(1)).first() is not None


def enqueue(
    db: Engine, settings: Settings, hot: int, now: datetime, batch: int = BATCH
) -> EnqueueReport:
    """Decide every pending alert action, a batch per transaction, until none is left."""
    margin = settings.alert_rearm_margin
    policy = Policy(settings.alert_cooldown, hot - margin, settings.alert_max_age)
    report = EnqueueReport()
    while True:
        with db.begin() as conn:
            done = _Batch(conn, settings, policy, now).run(batch)
        report.created += done.created
        report.suppressed += done.suppressed
        if done.created + done.suppressed < batch:
            return report


class _Batch:
    def __init__(self, conn: Connection, settings: Settings, policy: Policy, now: datetime) -> None:
        self.conn = conn
        self.settings = settings
        self.policy = policy
        self.now = now
        self.pg = conn.dialect.name == "postgresql"

    def run(self, size: int) -> EnqueueReport:
        conn = self.conn
        if self.pg:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
        actions = conn.execute(
            select(ACTIONS.c.id, ACTIONS.c.lead_id, ACTIONS.c.rule, ACTIONS.c.event_id)
            .add_columns(ACTIONS.c.at)
            .where(ACTIONS.c.kind == "alert", ACTIONS.c.status == ActionStatus.PENDING)
            .order_by(ACTIONS.c.at, ACTIONS.c.id)
            .limit(size)
        ).all()
        if not actions:
            return EnqueueReport()
        lead_ids = sorted({a.lead_id for a in actions})
        locking = select(LEADS).where(LEADS.c.id.in_(lead_ids)).order_by(LEADS.c.id)
        leads = {
            row["id"]: row
            for row in conn.execute(locking.with_for_update() if self.pg else locking).mappings()
        }
        decided = decide(
            [Firing(a.id, a.lead_id, a.at, leads[a.lead_id]["score"]) for a in actions],
            self._last_alerts(lead_ids),
            self.policy,
            self.now,
        )
        delivered = [a for a in actions if decided[a.id] is None]
        reasons = reasons_by_lead(conn, lead_ids) if delivered else {}
        events = self._recent_events(lead_ids) if delivered else {}
        received = self._received([a.event_id for a in actions if a.event_id])
        turn = self._next_turn() if self.settings.roster else 0
        owners: dict[int, Any] = {}  # lead → the owner written back (a rep from the roster)
        alerts, views = [], {}
        for action in actions:
            lead = leads[action.lead_id]
            attributes = dict(lead["attributes"])
            row = {
                "lead_id": action.lead_id,
                "action_id": action.id,
                "rule": action.rule,
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
            if row["suppressed"] is not None:
                continue
            owner = owners.get(action.lead_id, attributes.get("owner"))
            to, source = recipient(owner, self.settings.roster, turn, self.settings.sales_email)
            if source == "roster":
                row["roster_turn"] = turn
                turn += 1
                owners[action.lead_id] = to
            if to is None and not self.settings.sales_webhook_url:
                row["suppressed"] = (
                    "nowhere to send: set NURTURE_SALES_WEBHOOK_URL, NURTURE_SALES_ROSTER or "
                    "NURTURE_SALES_EMAIL"
                )
                continue
            row.update(owner=to, owner_source=source, reasons=reasons[action.lead_id])
            views[action.id] = AlertView(
                email=lead["email"],
                name=display_name(attributes),
                company=_text(attributes.get("company")),
                job_title=_text(attributes.get("job_title")),
                score=lead["score"],
                temperature=lead["temperature"],
                stage=lead["stage"],
                rule=action.rule,
                reasons=row["reasons"],
                events=events.get(action.lead_id, []),
                url=lead_url(self.settings.public_url, lead["email"]),
                owner=owners.get(action.lead_id, _text(attributes.get("owner"))),
            )
        self._write(alerts, views, leads, owners)
        suppressed = sum(1 for row in alerts if row["suppressed"] is not None)
        return EnqueueReport(len(alerts) - suppressed, suppressed)

    # -- load ---------------------------------------------------------------------------------
    def _last_alerts(self, lead_ids: list[int]) -> dict[int, LastAlert]:
        """Each lead's last delivered alert, and the lowest score its ledger shows since."""
        latest = (
            select(ALERTS.c.lead_id, func.max(ALERTS.c.at).label("at"))
            .where(ALERTS.c.lead_id.in_(lead_ids), ALERTS.c.suppressed.is_(None))
            .group_by(ALERTS.c.lead_id)
            .subquery()
        )
        found = {
            lead_id: LastAlert(at, score, None)
            for lead_id, at, score in self.conn.execute(
                select(ALERTS.c.lead_id, ALERTS.c.at, func.min(ALERTS.c.score))
                .join(latest, (latest.c.lead_id == ALERTS.c.lead_id) & (latest.c.at == ALERTS.c.at))
                .where(ALERTS.c.suppressed.is_(None))
                .group_by(ALERTS.c.lead_id, ALERTS.c.at)
            )
        }
        if found:
            lowest = (
                select(LEDGER.c.lead_id, func.min(LEDGER.c.score_after))
                .join(latest, (latest.c.lead_id == LEDGER.c.lead_id) & (LEDGER.c.at > latest.c.at))
                .group_by(LEDGER.c.lead_id)
            )
            for lead_id, score in self.conn.execute(lowest):
                last = found[lead_id]
                found[lead_id] = LastAlert(last.at, last.score, score)
        return found

    def _recent_events(self, lead_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        rank = (
            func.row_number()
            .over(
                partition_by=EVENTS.c.lead_id,
                order_by=(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc()),
            )
            .label("rank")
        )
        ranked = (
            select(EVENTS.c.lead_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties, rank)
            .where(EVENTS.c.lead_id.in_(lead_ids))
            .subquery()
        )
        found: dict[int, list[dict[str, Any]]] = {}
        query = select(ranked).where(ranked.c.rank <= RECENT_EVENTS).order_by(ranked.c.rank)
        for row in self.conn.execute(query):
            properties = row.properties or {}
            detail = properties.get("url") or properties.get("title") or properties.get("name")
            found.setdefault(row.lead_id, []).append(
                {"type": row.type, "at": isoformat(row.occurred_at), "detail": _text(detail)}
            )
        return found

    def _received(self, event_ids: list[str]) -> dict[str, datetime]:
        query = select(EVENTS.c.event_id, EVENTS.c.received_at).where(
            EVENTS.c.event_id.in_(event_ids)
        )
        return {event_id: at for event_id, at in self.conn.execute(query)}

    def _next_turn(self) -> int:
        last = self.conn.execute(select(func.max(ALERTS.c.roster_turn))).scalar()
        return 0 if last is None else int(last) + 1

    # -- write --------------------------------------------------------------------------------
    def _write(
        self,
        alerts: list[dict[str, Any]],
        views: dict[int, AlertView],
        leads: dict[int, Any],
        owners: dict[int, Any],
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
            if self.settings.sales_webhook_url:
                messages.append(
                    {**base, "idempotency_key": f"alert:{alert_id}:webhook", "kind": WEBHOOK,
                     "to_email": "", "subject": "", "html": "", "text": "",
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
                    {"b_id": lead, "b_attributes": {**leads[lead]["attributes"], "owner": rep}}
                    for lead, rep in owners.items()
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


def _text(value: object) -> str | None:
    return None if value is None or value == "" else str(value)
