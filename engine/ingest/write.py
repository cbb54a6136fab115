"""Ingest, step 4: a batch's rows and leads into SQL in bulk (appends by COPY on PostgreSQL,
one ``executemany`` per table otherwise), the leads' versions checked so a concurrent writer
makes the batch retry instead of losing an update."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, bindparam, update

from engine.db import append_rows, execute_many, upsert
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
from engine.errors import NurtureError
from engine.ingest.outcome import LoadedLead, Rows
from engine.rules.account import account_domain
from engine.rules.spec import Ruleset
from engine.status import EnrollmentStatus


class ConflictError(NurtureError):
    """A lead's version moved under the batch; the batch is retried."""


def write(
    conn: Connection, ruleset: Ruleset, rows: Rows, leads: list[LoadedLead], now: datetime
) -> None:
    for table, batch in (
        (EVENTS, rows.events),
        (LEDGER, rows.ledger),
        (FIRINGS, rows.firings),
        (ACTIONS, rows.actions),
    ):
        if batch:
            append_rows(conn, table, batch)
    # Stage changes keep the pipeline rollups in step, so they go through their one writer.
    record_moves(conn, rows.stages)
    enroll_and_exit(conn, rows)
    if leads:
        write_leads(conn, ruleset, leads, now)


def enroll_and_exit(conn: Connection, rows: Rows) -> None:
    """Enrollments that start (a lead is enrolled in a campaign once) and that end."""
    if rows.enroll:
        execute_many(
            conn,
            upsert(conn, ENROLLMENTS).on_conflict_do_nothing(
                index_elements=["lead_id", "campaign"]
            ),
            rows.enroll,
        )
    if rows.exit:
        execute_many(
            conn,
            update(ENROLLMENTS)
            .where(
                ENROLLMENTS.c.lead_id == bindparam("b_lead"),
                ENROLLMENTS.c.campaign == bindparam("b_campaign"),
                ENROLLMENTS.c.status == EnrollmentStatus.ACTIVE,
            )
            .values(
                status=EnrollmentStatus.EXITED,
                ended_at=bindparam("b_at"),
                reason=bindparam("b_reason"),
                next_due_at=None,
            ),
            rows.exit,
        )


def write_leads(conn: Connection, ruleset: Ruleset, leads: list[LoadedLead], now: datetime) -> None:
    """The leads' rows, components and named scores as scored (by ingest or a rescore); a lead
    whose row version moved meanwhile is a ConflictError."""
    updated = execute_many(
        conn,
        update(LEADS)
        .where(LEADS.c.id == bindparam("b_id"), LEADS.c.version == bindparam("b_version"))
        .values(
            attributes=bindparam("b_attributes"),
            score=bindparam("b_score"),
            temperature=bindparam("b_temperature"),
            stage=bindparam("b_stage"),
            stage_entered_at=bindparam("b_entered"),
            tags=bindparam("b_tags"),
            subscribed=bindparam("b_subscribed"),
            account_domain=bindparam("b_account"),
            time_due_at=bindparam("b_due"),
            ruleset_version=ruleset.version,
            version=LEADS.c.version + 1,
            updated_at=now,
        ),
        [
            {
                "b_id": lead.id,
                "b_version": lead.version,
                "b_attributes": {k: v for k, v in lead.state.attributes.items() if k != "email"},
                "b_score": score,
                "b_temperature": ruleset.band(score),
                "b_stage": lead.state.stage,
                "b_entered": lead.stage_entered_at,
                "b_tags": lead.state.tags,
                "b_subscribed": lead.subscribed,
                "b_account": account_domain(lead.state.attributes, lead.email),
                "b_due": lead.due_at,
            }
            for lead in leads
            for score in [ruleset.lead_score(lead.state.scores)]
        ],
    )
    if updated.rowcount != len(leads):
        raise ConflictError("a lead changed during the batch")
    # One upsert for every component row: new leads and new components insert, others update.
    statement = upsert(conn, SCORES)
    execute_many(
        conn,
        statement.on_conflict_do_update(
            index_elements=["lead_id", "component"],
            set_={
                "value": statement.excluded.value,
                "rose_at": statement.excluded.rose_at,
                "peak": statement.excluded.peak,
                "decay_steps": statement.excluded.decay_steps,
            },
        ),
        [
            {
                "lead_id": lead.id,
                "component": name,
                "value": value,
                "rose_at": rose_at,
                "peak": peak or 0,
                "decay_steps": steps or 0,
            }
            for lead in leads
            for name, value in lead.state.scores.items()
            for rose_at, peak, steps in [lead.decay.get(name, [None, 0, 0])]
        ],
    )
    if ruleset.scores:
        _write_named_scores(conn, ruleset, leads)


def _write_named_scores(conn: Connection, ruleset: Ruleset, leads: list[LoadedLead]) -> None:
    """Each lead's named scores and bands, as its components now make them."""
    rows = []
    for lead in leads:
        totals = ruleset.totals(lead.state.scores)
        bands = ruleset.named_bands(totals)
        rows += [
            {"lead_id": lead.id, "name": name, "total": total, "band": bands[name]}
            for name, total in totals.items()
        ]
    statement = upsert(conn, NAMED_SCORES)
    execute_many(
        conn,
        statement.on_conflict_do_update(
            index_elements=["lead_id", "name"],
            set_={"total": statement.excluded.total, "band": statement.excluded.band},
        ),
        rows,
    )
