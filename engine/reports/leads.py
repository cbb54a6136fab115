"""Reading leads back: one lead with its ledger and stage history, lists, the funnel, and the
reasons behind a score. Shapes follow docs/design.md's JSON section."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, func, select

from engine.address import normalise_email
from engine.db import reading
from engine.db.schema import ALERTS, EVENTS, LEADS, LEDGER, OUTBOX, SCORES, STAGES
from engine.rules import spec
from engine.status import OutboxStatus
from engine.timeutil import isoformat


def _summary(row: Any, scores: dict[str, int]) -> dict[str, Any]:
    return {
        "email": row["email"],
        "score": row["score"],
        "scores": scores,
        "temperature": row["temperature"],
        "stage": row["stage"],
        "stage_entered_at": isoformat(row["stage_entered_at"]),
        "subscribed": row["subscribed"],
        "tags": list(row["tags"]),
        "attributes": dict(row["attributes"]),
    }


def lead_detail(db: Engine, email: str) -> dict[str, Any] | None:
    with reading(db) as conn:
        row = (
            conn.execute(select(LEADS).where(LEADS.c.email == normalise_email(email)))
            .mappings()
            .first()
        )
        if row is None:
            return None
        lead_id = row["id"]
        scores = dict(
            conn.execute(
                select(SCORES.c.component, SCORES.c.value).where(SCORES.c.lead_id == lead_id)
            ).all()
        )
        ledger = conn.execute(
            select(LEDGER).where(LEDGER.c.lead_id == lead_id).order_by(LEDGER.c.at, LEDGER.c.id)
        ).mappings()
        stages = conn.execute(
            select(STAGES).where(STAGES.c.lead_id == lead_id).order_by(STAGES.c.at, STAGES.c.id)
        ).mappings()
        events = conn.execute(
            select(EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties)
            .where(EVENTS.c.lead_id == lead_id)
            .order_by(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc())
            .limit(20)
        ).mappings()
        detail = _summary(row, scores)
        detail["ledger"] = [
            {
                "rule": r["rule"],
                "component": r["component"],
                "delta": r["delta"],
                "score_after": r["score_after"],
                "event_id": r["event_id"],
                "at": isoformat(r["at"]),
            }
            for r in ledger
        ]
        detail["stage_history"] = [
            {
                "from": r["from_stage"],
                "to": r["to_stage"],
                "rule": r["rule"],
                "at": isoformat(r["at"]),
            }
            for r in stages
        ]
        detail["recent_events"] = [
            {
                "id": r["event_id"],
                "type": r["type"],
                "occurred_at": isoformat(r["occurred_at"]),
                "properties": r["properties"],
            }
            for r in events
        ]
        detail["reasons"] = reasons_by_lead(conn, [lead_id])[lead_id]
        detail["alerts"] = _alerts(conn, ALERTS.c.lead_id == lead_id, 20)
        return detail


def list_leads(
    db: Engine,
    temperature: str | None = None,
    stage: str | None = None,
    limit: int = 50,
    exclude_stages: tuple[str, ...] = (),
    offset: int = 0,
) -> list[dict[str, Any]]:
    query = select(LEADS).order_by(LEADS.c.score.desc(), LEADS.c.id).limit(limit).offset(offset)
    if exclude_stages:
        query = query.where(LEADS.c.stage.not_in(exclude_stages))
    if temperature:
        query = query.where(LEADS.c.temperature == temperature)
    if stage:
        query = query.where(LEADS.c.stage == stage)
    with reading(db) as conn:
        rows = list(conn.execute(query).mappings())
        scores: dict[int, dict[str, int]] = {row["id"]: {} for row in rows}
        for lead_id, component, value in conn.execute(
            select(SCORES.c.lead_id, SCORES.c.component, SCORES.c.value).where(
                SCORES.c.lead_id.in_(list(scores))
            )
        ):
            scores[lead_id][component] = value
    return [_summary(row, scores[row["id"]]) for row in rows]


def reasons_for(db: Engine, emails: list[str], limit: int = 3) -> dict[str, list[dict[str, Any]]]:
    """Top reasons for several leads in one query."""
    with reading(db) as conn:
        query = select(LEADS.c.id, LEADS.c.email).where(LEADS.c.email.in_(emails))
        ids = {lead_id: email for lead_id, email in conn.execute(query)}
        by_id = reasons_by_lead(conn, list(ids), limit)
    return {email: [] for email in emails} | {ids[i]: rows for i, rows in by_id.items()}


def reasons_by_lead(
    conn: Connection, lead_ids: list[int], limit: int = 3
) -> dict[int, list[dict[str, Any]]]:
    """The rules that contributed most to each lead's score, net of decay and negative signals
    (rules with a positive total, largest first), per lead id, in one query."""
    query = (
        select(LEDGER.c.lead_id, LEDGER.c.rule, func.sum(LEDGER.c.delta), func.count())
        .where(LEDGER.c.lead_id.in_(lead_ids))
        .group_by(LEDGER.c.lead_id, LEDGER.c.rule)
    )
    found: dict[int, list[dict[str, Any]]] = {lead_id: [] for lead_id in lead_ids}
    for lead_id, rule, points, times in conn.execute(query):
        if points > 0:
            found[lead_id].append({"rule": rule, "points": int(points), "times": int(times)})
    return {
        lead_id: sorted(rows, key=lambda r: (-r["points"], r["rule"]))[:limit]
        for lead_id, rows in found.items()
    }


def funnel(db: Engine, ruleset: spec.Ruleset) -> dict[str, Any]:
    """Leads per stage now, in funnel order with exits last, and per temperature band."""
    with reading(db) as conn:
        by_stage: dict[str, int] = {
            s: int(n)
            for s, n in conn.execute(select(LEADS.c.stage, func.count()).group_by(LEADS.c.stage))
        }
        by_band: dict[str, int] = {
            t: int(n)
            for t, n in conn.execute(
                select(LEADS.c.temperature, func.count()).group_by(LEADS.c.temperature)
            )
        }
    stages = [{"stage": s, "leads": by_stage.pop(s, 0)} for s in ruleset.all_stages]
    stages += [{"stage": s, "leads": n} for s, n in sorted(by_stage.items())]
    bands = {band: by_band.get(band, 0) for band, _ in ruleset.temperature}
    return {"stages": stages, "temperatures": bands}


def emails_by_template(db: Engine) -> list[tuple[str, str, int]]:
    """(campaign, template, emails sent) in campaign then template order."""
    query = (
        select(OUTBOX.c.campaign, OUTBOX.c.template, func.count())
        .where(OUTBOX.c.status == OutboxStatus.SENT)
        .group_by(OUTBOX.c.campaign, OUTBOX.c.template)
        .order_by(OUTBOX.c.campaign, OUTBOX.c.template)
    )
    with reading(db) as conn:
        return [(c, t, int(n)) for c, t, n in conn.execute(query)]


def alerts(db: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """The latest sales alerts, newest first, each with how its email and webhook fared."""
    with reading(db) as conn:
        return _alerts(conn, None, limit)


def _alerts(conn: Connection, where: Any, limit: int) -> list[dict[str, Any]]:
    query = (
        select(ALERTS, LEADS.c.email)
        .join(LEADS, LEADS.c.id == ALERTS.c.lead_id)
        .order_by(ALERTS.c.created_at.desc(), ALERTS.c.id.desc())
        .limit(limit)
    )
    rows = list(conn.execute(query if where is None else query.where(where)).mappings())
    deliveries: dict[int, dict[str, Any]] = {row["id"]: {} for row in rows}
    outbox = select(
        OUTBOX.c.alert_id,
        OUTBOX.c.kind,
        OUTBOX.c.to_email,
        OUTBOX.c.status,
        OUTBOX.c.attempts,
        OUTBOX.c.last_error,
        OUTBOX.c.sent_at,
    ).where(OUTBOX.c.alert_id.in_(list(deliveries)))
    for message in conn.execute(outbox).mappings():
        channel = "webhook" if message["kind"] == "webhook" else "email"
        deliveries[message["alert_id"]][channel] = {
            "to": message["to_email"] or None,
            "status": message["status"],
            "tries": message["attempts"],
            "error": message["last_error"],
            "sent_at": isoformat(message["sent_at"]) if message["sent_at"] else None,
        }
    return [
        {
            "id": row["id"],
            "lead": row["email"],
            "rule": row["rule"],
            "event_id": row["event_id"],
            "at": isoformat(row["at"]),
            "created_at": isoformat(row["created_at"]),
            "status": _alert_status(row["suppressed"], deliveries[row["id"]]),
            "suppressed": row["suppressed"],
            "owner": row["owner"],
            "owner_source": row["owner_source"],
            "score": row["score"],
            "temperature": row["temperature"],
            "stage": row["stage"],
            "reasons": row["reasons"],
            "email": deliveries[row["id"]].get("email"),
            "webhook": deliveries[row["id"]].get("webhook"),
        }
        for row in rows
    ]


def _alert_status(suppressed: str | None, deliveries: dict[str, dict[str, Any]]) -> str:
    """suppressed, failed (a channel gave up), sending (a channel is queued or retrying), sent."""
    if suppressed is not None:
        return "suppressed"
    states = {d["status"] for d in deliveries.values()}
    if "failed" in states:
        return "failed"
    if states - {"sent"}:
        return "sending"
    return "sent"
