"""What the dashboard shows, read from the database: the funnel with stage-to-stage conversion,
the hot leads with their reasons and last events, campaign figures, and everything about one
lead. Each function takes the Engine, aggregates in SQL (lists are limited, so a page stays fast
on a large database) and returns plain data for the templates; ``engine.reports.leads``
supplies what it already computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, String, case, cast, func, or_, select

from engine.address import normalise_email
from engine.db import reading
from engine.db.schema import ENROLLMENTS, EVENTS, LEADS, OUTBOX, STAGES
from engine.errors import InvalidRecord
from engine.reports import leads as report
from engine.rules.spec import TIME_EVENT, Ruleset
from engine.status import OutboxStatus
from engine.timeutil import isoformat, parse_instant

# Email feedback events and the figure each one counts towards.
FEEDBACK = {"email_open": "opened", "email_click": "clicked", "unsubscribe": "unsubscribed"}


def funnel(db: Engine, ruleset: Ruleset) -> dict[str, Any]:
    """Leads per stage now (funnel order, exits last), how many ever reached each stage, the
    share of those that went on to the next one, and leads per temperature band.

    A lead has reached a stage when its furthest stage in the funnel (from its stage history) is
    that stage or a later one, so a lead that skipped a stage still counts as having passed it."""
    now = report.funnel(db, ruleset)
    order = {stage: i for i, stage in enumerate(ruleset.stages)}
    furthest = (
        select(func.max(case(order, value=STAGES.c.to_stage)).label("furthest"))
        .group_by(STAGES.c.lead_id)
        .subquery()
    )
    with reading(db) as conn:
        # Leads per furthest stage (its index in the funnel).
        ending_at: dict[int, int] = {
            int(i): int(n)
            for i, n in conn.execute(
                select(furthest.c.furthest, func.count())
                .where(furthest.c.furthest.is_not(None))
                .group_by(furthest.c.furthest)
            )
        }
    reached = [sum(ending_at.get(j, 0) for j in range(i, len(order))) for i in range(len(order))]
    stages = []
    for row in now["stages"]:
        i = order.get(row["stage"])
        entry: dict[str, Any] = {**row, "exit": i is None, "reached": None}
        entry.update(next=None, conversion=None)
        if i is not None:
            entry["reached"] = reached[i]
            if i + 1 < len(reached):
                entry["next"] = ruleset.stages[i + 1]
                entry["conversion"] = reached[i + 1] / reached[i] if reached[i] else None
        stages.append(entry)
    return {
        "stages": stages,
        "temperatures": now["temperatures"],
        "total": sum(row["leads"] for row in stages),
    }


def hot_leads(
    db: Engine, ruleset: Ruleset, limit: int = 20, events: int = 3
) -> list[dict[str, Any]]:
    """The hottest band's leads by score, exits left out (nobody's to call), each with the rules
    behind its score and its last few events."""
    hottest = ruleset.temperature[-1][0]
    leads = report.list_leads(db, temperature=hottest, limit=limit, exclude_stages=ruleset.exits)
    emails = [lead["email"] for lead in leads]
    reasons = report.reasons_for(db, emails, claimed=ruleset.claimed)
    latest = last_events(db, emails, events)
    return [
        {**lead, "reasons": reasons[lead["email"]], "events": latest[lead["email"]]}
        for lead in leads
    ]


def last_events(
    db: Engine, emails: Sequence[str], per_lead: int
) -> dict[str, list[dict[str, Any]]]:
    """The latest ``per_lead`` events of each of several leads, in one query (time evaluations
    are not something the lead did: left out)."""
    ranked = (
        select(
            LEADS.c.email,
            EVENTS.c.type,
            EVENTS.c.occurred_at,
            func.row_number()
            .over(
                partition_by=EVENTS.c.lead_id,
                order_by=(EVENTS.c.occurred_at.desc(), EVENTS.c.id.desc()),
            )
            .label("n"),
        )
        .join(LEADS, LEADS.c.id == EVENTS.c.lead_id)
        .where(LEADS.c.email.in_(list(emails)), EVENTS.c.type != TIME_EVENT)
        .subquery()
    )
    found: dict[str, list[dict[str, Any]]] = {email: [] for email in emails}
    query = (
        select(ranked.c.email, ranked.c.type, ranked.c.occurred_at)
        .where(ranked.c.n <= per_lead)
        .order_by(ranked.c.email, ranked.c.n)
    )
    with reading(db) as conn:
        for email, kind, at in conn.execute(query):
            found[email].append({"type": kind, "occurred_at": isoformat(at)})
    return found


def campaigns(db: Engine, limit: int = 50) -> list[dict[str, Any]]:
    """Per campaign: emails sent, leads they went to, and leads who opened, clicked or
    unsubscribed. Feedback events count for the campaign of the email their ``outbox_id``
    names (SendGrid's webhook), else the campaign they name themselves (the event's columns,
    filled from its properties by ``engine.ingest.feedback``)."""
    campaign = func.coalesce(OUTBOX.c.campaign, EVENTS.c.campaign).label("campaign")
    attributed = (
        select(EVENTS.c.lead_id, EVENTS.c.type, campaign)
        .select_from(EVENTS.outerjoin(OUTBOX, OUTBOX.c.id == EVENTS.c.outbox_id))
        .where(
            EVENTS.c.type.in_(list(FEEDBACK)),
            # What names neither is unattributed (and outside the partial index).
            or_(EVENTS.c.outbox_id.is_not(None), EVENTS.c.campaign.is_not(None)),
        )
        .subquery()
    )
    # An outbox id naming no email (and no campaign of the event's own) is unattributed: that
    # group is dropped below.
    feedback = select(
        attributed.c.campaign,
        *(
            func.count(func.distinct(case((attributed.c.type == kind, attributed.c.lead_id))))
            for kind in FEEDBACK
        ),
    ).group_by(attributed.c.campaign)
    sent = (
        select(OUTBOX.c.campaign, func.count(), func.count(func.distinct(OUTBOX.c.lead_id)))
        .where(OUTBOX.c.status == OutboxStatus.SENT, OUTBOX.c.campaign.is_not(None))
        .group_by(OUTBOX.c.campaign)
    )
    figures: dict[str, dict[str, Any]] = {}

    def entry(name: str) -> dict[str, Any]:
        empty = {"campaign": name, "sent": 0, "recipients": 0} | dict.fromkeys(FEEDBACK.values(), 0)
        return figures.setdefault(name, empty)

    with reading(db) as conn:
        for name, count, recipients in conn.execute(sent):
            entry(name).update(sent=int(count), recipients=int(recipients))
        for name, *counts in conn.execute(feedback):
            if name is not None:
                entry(str(name)).update(zip(FEEDBACK.values(), map(int, counts), strict=True))
    rows = sorted(figures.values(), key=lambda r: (-r["sent"], -r["opened"], r["campaign"]))
    for row in rows:
        for figure in FEEDBACK.values():
            row[f"{figure}_rate"] = row[figure] / row["recipients"] if row["recipients"] else None
    return rows[:limit]


def lead_page(db: Engine, email: str, ruleset: Ruleset | None = None) -> dict[str, Any] | None:
    """One lead as ``nurture lead`` shows it, with its score over time (and each named score's,
    with ``ruleset``), campaign enrollments and the emails it was sent (each marked opened /
    clicked from the feedback events)."""
    try:
        address = normalise_email(email)
    except InvalidRecord:
        return None  # not an address, so nobody's
    claimed = ruleset.claimed if ruleset is not None else {}
    detail = report.lead_detail(db, address, claimed)
    if detail is None:
        return None
    lead_id = select(LEADS.c.id).where(LEADS.c.email == address).scalar_subquery()
    with reading(db) as conn:
        enrollments = conn.execute(
            select(ENROLLMENTS)
            .where(ENROLLMENTS.c.lead_id == lead_id)
            .order_by(ENROLLMENTS.c.enrolled_at, ENROLLMENTS.c.id)
        ).mappings()
        detail["enrollments"] = [
            {
                "campaign": row["campaign"],
                "status": row["status"],
                "step": row["step"],
                "enrolled_at": isoformat(row["enrolled_at"]),
                "next_due_at": row["next_due_at"] and isoformat(row["next_due_at"]),
                "ended_at": row["ended_at"] and isoformat(row["ended_at"]),
                "reason": row["reason"],
            }
            for row in enrollments
        ]
        reactions: dict[str, set[str]] = {}
        for outbox_id, kind in conn.execute(
            select(EVENTS.c.outbox_id, EVENTS.c.type).where(
                EVENTS.c.lead_id == lead_id, EVENTS.c.type.in_(list(FEEDBACK))
            )
        ):
            if outbox_id is not None:
                reactions.setdefault(str(outbox_id), set()).add(FEEDBACK[kind])
        messages = conn.execute(
            select(
                cast(OUTBOX.c.id, String).label("id"),
                OUTBOX.c.campaign,
                OUTBOX.c.template,
                OUTBOX.c.subject,
                OUTBOX.c.status,
                OUTBOX.c.created_at,
                OUTBOX.c.sent_at,
                OUTBOX.c.last_error,
            )
            .where(OUTBOX.c.lead_id == lead_id)
            .order_by(OUTBOX.c.created_at.desc(), OUTBOX.c.id.desc())
            .limit(100)
        ).mappings()
        detail["emails"] = [
            {
                **row,
                "created_at": isoformat(row["created_at"]),
                "sent_at": row["sent_at"] and isoformat(row["sent_at"]),
                "reactions": sorted(reactions.get(row["id"], ())),
            }
            for row in messages
        ]
    # Each ledger row's score_after is the total of the score its component counts toward.
    detail["series"] = _series(detail["ledger"], lambda c: c not in claimed)
    detail["named_series"] = {
        score.name: _series(detail["ledger"], set(score.components).__contains__)
        for score in (ruleset.scores if ruleset is not None else ())
    }
    return detail


def _series(
    ledger: list[dict[str, Any]], counts: Callable[[str], bool]
) -> list[tuple[datetime, int]]:
    """(time, total after) of the ledger rows whose component ``counts``."""
    return [(parse_instant(r["at"]), r["score_after"]) for r in ledger if counts(r["component"])]
