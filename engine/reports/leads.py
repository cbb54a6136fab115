"""Reading leads back: one lead with its ledger and stage history, lists, the funnel, and the
reasons behind a score. Shapes follow docs/design.md's JSON section."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from engine.address import normalise_email
from engine.db import reading
from engine.db.schema import (
    ALERTS,
    EVENTS,
    LEADS,
    LEDGER,
    NAMED_SCORES,
    OUTBOX,
    SCORES,
    STAGES,
    current_ledger,
)
from engine.errors import InvalidRecord
from engine.rules import spec
from engine.status import OutboxStatus
from engine.timeutil import isoformat


def _summary(row: Any, scores: dict[str, int], named: dict[str, tuple[int, str]]) -> dict[str, Any]:
    return {
        "email": row["email"],
        "score": row["score"],
        "scores": scores,
        "totals": {name: total for name, (total, _) in named.items()},
        "bands": {name: band for name, (_, band) in named.items()},
        "temperature": row["temperature"],
        "stage": row["stage"],
        "stage_entered_at": isoformat(row["stage_entered_at"]),
        "subscribed": row["subscribed"],
        "tags": list(row["tags"]),
        "attributes": dict(row["attributes"]),
    }


def named_scores(conn: Connection, lead_ids: list[int]) -> dict[int, dict[str, tuple[int, str]]]:
    """Each lead's named scores: name → (total, band), in name order."""
    found: dict[int, dict[str, tuple[int, str]]] = {lead_id: {} for lead_id in lead_ids}
    query = (
        select(
            NAMED_SCORES.c.lead_id, NAMED_SCORES.c.name, NAMED_SCORES.c.total, NAMED_SCORES.c.band
        )
        .where(NAMED_SCORES.c.lead_id.in_(lead_ids))
        .order_by(NAMED_SCORES.c.lead_id, NAMED_SCORES.c.name)
    )
    for lead_id, name, total, band in conn.execute(query):
        found[lead_id][name] = (total, band)
    return found


def lead_detail(
    db: Engine, email: str, claimed: Collection[str] = (), versions: bool = False
) -> dict[str, Any] | None:
    """One lead with its ledger, stage history, recent events, alerts and the top reasons
    behind its lead score (``claimed``: the components of named scores, left out of them).
    The ledger is the one of the version the lead is scored under; ``versions``: every
    version's rows, each naming its version."""
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
        ledger_query = select(LEDGER).where(LEDGER.c.lead_id == lead_id)
        if not versions and row["ruleset_version"] is not None:
            ledger_query = ledger_query.where(LEDGER.c.ruleset_version == row["ruleset_version"])
        ledger = conn.execute(ledger_query.order_by(LEDGER.c.at, LEDGER.c.id)).mappings()
        stages = conn.execute(
            select(STAGES).where(STAGES.c.lead_id == lead_id).order_by(STAGES.c.at, STAGES.c.id)
        ).mappings()
        events = conn.execute(
            select(EVENTS.c.event_id, EVENTS.c.type, EVENTS.c.occurred_at, EVENTS.c.properties)
            .where(EVENTS.c.lead_id == lead_id)
            .order_by(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc())
            .limit(20)
        ).mappings()
        detail = _summary(row, scores, named_scores(conn, [lead_id])[lead_id])
        detail["ledger"] = [
            {
                "rule": r["rule"],
                "component": r["component"],
                "delta": r["delta"],
                "score_after": r["score_after"],
                "event_id": r["event_id"],
                "at": isoformat(r["at"]),
                "ruleset_version": r["ruleset_version"],
            }
            for r in ledger
        ]
        detail["ruleset_version"] = row["ruleset_version"]
        detail["stage_history"] = [
            {
                "from": r["from_stage"],
                "to": r["to_stage"],
                "rule": r["rule"],
                "at": isoformat(r["at"]),
                "rescore": r["rescore"],
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
        detail["reasons"] = reasons_by_lead(conn, [lead_id], claimed=claimed)[lead_id]
        detail["alerts"] = _alerts(conn, ALERTS.c.lead_id == lead_id, 20)
        return detail


def band_filter(text: str) -> tuple[str, str]:
    """``health=at_risk`` → (score, band); InvalidRecord naming the shape otherwise."""
    name, _, band = text.partition("=")
    if not name.strip() or not band.strip():
        raise InvalidRecord(f"band {text!r}: write SCORE=BAND, e.g. health=at_risk")
    return name.strip(), band.strip()


def list_leads(
    db: Engine,
    temperature: str | None = None,
    stage: str | None = None,
    limit: int = 50,
    exclude_stages: tuple[str, ...] = (),
    offset: int = 0,
    band: tuple[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Leads by lead score, highest first; ``band``: (named score, band) they are in."""
    query = select(LEADS).order_by(LEADS.c.score.desc(), LEADS.c.id).limit(limit).offset(offset)
    if exclude_stages:
        query = query.where(LEADS.c.stage.not_in(exclude_stages))
    if temperature:
        query = query.where(LEADS.c.temperature == temperature)
    if stage:
        query = query.where(LEADS.c.stage == stage)
    if band is not None:
        query = query.where(
            LEADS.c.id.in_(
                select(NAMED_SCORES.c.lead_id).where(
                    NAMED_SCORES.c.name == band[0], NAMED_SCORES.c.band == band[1]
                )
            )
        )
    with reading(db) as conn:
        rows = list(conn.execute(query).mappings())
        scores: dict[int, dict[str, int]] = {row["id"]: {} for row in rows}
        for lead_id, component, value in conn.execute(
            select(SCORES.c.lead_id, SCORES.c.component, SCORES.c.value).where(
                SCORES.c.lead_id.in_(list(scores))
            )
        ):
            scores[lead_id][component] = value
        named = named_scores(conn, list(scores))
    return [_summary(row, scores[row["id"]], named[row["id"]]) for row in rows]


def reasons_for(
    db: Engine, emails: list[str], limit: int = 3, claimed: Collection[str] = ()
) -> dict[str, list[dict[str, Any]]]:
    """Top reasons for several leads in one query."""
    with reading(db) as conn:
        query = select(LEADS.c.id, LEADS.c.email).where(LEADS.c.email.in_(emails))
        ids = {lead_id: email for lead_id, email in conn.execute(query)}
        by_id = reasons_by_lead(conn, list(ids), limit, claimed)
    return {email: [] for email in emails} | {ids[i]: rows for i, rows in by_id.items()}


def reasons_by_lead(
    conn: Connection,
    lead_ids: list[int],
    limit: int = 3,
    claimed: Collection[str] = (),
    only: Collection[str] | None = None,
) -> dict[int, list[dict[str, Any]]]:
    """The rules that contributed most to each lead's score, net of decay and negative signals
    (rules with a positive total, largest first), per lead id, in one query. ``claimed``:
    components left out (those of named scores); ``only``: the components counted."""
    query = (
        select(LEDGER.c.lead_id, LEDGER.c.rule, func.sum(LEDGER.c.delta), func.count())
        .where(LEDGER.c.lead_id.in_(lead_ids), current_ledger())
        .group_by(LEDGER.c.lead_id, LEDGER.c.rule)
    )
    if claimed:
        query = query.where(LEDGER.c.component.not_in(list(claimed)))
    if only is not None:
        query = query.where(LEDGER.c.component.in_(list(only)))
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


def band_counts(db: Engine, ruleset: spec.Ruleset) -> dict[str, dict[str, int]]:
    """Leads per band of each named score, bands in ascending order (zeros included)."""
    with reading(db) as conn:
        counts = {
            (name, band): int(n)
            for name, band, n in conn.execute(
                select(NAMED_SCORES.c.name, NAMED_SCORES.c.band, func.count()).group_by(
                    NAMED_SCORES.c.name, NAMED_SCORES.c.band
                )
            )
        }
    return {
        score.name: {band: counts.get((score.name, band), 0) for band, _ in score.bands}
        for score in ruleset.scores
    }


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
            "target": row["target"],
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
