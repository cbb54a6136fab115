"""Ingest, step 4: a batch's rows and leads into SQL in bulk (appends by COPY on PostgreSQL,
one ``executemany`` per table otherwise), the leads' versions checked so a concurrent writer
makes the batch retry instead of losing an update."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection

from engine.db import append_rows, update_rows, upsert_rows
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
    # On PostgreSQL the batch locked its leads when it read them.
    record_moves(conn, rows.stages, locked=True)
    enroll_and_exit(conn, rows)
    if leads:
        write_leads(conn, ruleset, leads, now)


def enroll_and_exit(conn: Connection, rows: Rows) -> None:
    """Enrollments that start (a lead is enrolled in a campaign once) and that end."""
    if rows.enroll:
        upsert_rows(conn, ENROLLMENTS, rows.enroll, ["lead_id", "campaign"])
    # An enrollment ends once: a later exit of the same one in the batch would find it ended.
    ends = {(row["lead_id"], row["campaign"]): row for row in reversed(rows.exit)}
    update_rows(
        conn,
        ENROLLMENTS,
        list(ends.values()),
        match=["lead_id", "campaign"],
        constants={"status": EnrollmentStatus.EXITED, "next_due_at": None},
        where={"status": EnrollmentStatus.ACTIVE},
    )


def write_leads(conn: Connection, ruleset: Ruleset, leads: list[LoadedLead], now: datetime) -> None:
    """The leads' rows, components and named scores as scored (by ingest or a rescore); a lead
    whose row version moved meanwhile is a ConflictError."""
    updated = update_rows(
        conn,
        LEADS,
        [
            {
                "id": lead.id,
                "version": lead.version,
                "attributes": {k: v for k, v in lead.state.attributes.items() if k != "email"},
                "score": score,
                "temperature": ruleset.band(score),
                "stage": lead.state.stage,
                "stage_entered_at": lead.stage_entered_at,
                "tags": lead.state.tags,
                "subscribed": lead.subscribed,
                "account_domain": account_domain(lead.state.attributes, lead.email),
                "time_due_at": lead.due_at,
            }
            for lead in leads
            for score in [ruleset.lead_score(lead.state.scores)]
        ],
        match=["id", "version"],
        constants={"ruleset_version": ruleset.version, "updated_at": now},
        increment="version",
    )
    if updated != len(leads):
        raise ConflictError("a lead changed during the batch")
    # One upsert for the component rows that changed: new leads and new components insert,
    # others update.
    upsert_rows(
        conn,
        SCORES,
        [
            {
                "lead_id": lead.id,
                "component": name,
                "value": row[0],
                "rose_at": row[1],
                "peak": row[2],
                "decay_steps": row[3],
            }
            for lead in leads
            for name, value in lead.state.scores.items()
            for rose_at, peak, steps in [lead.decay.get(name, [None, 0, 0])]
            for row in [(value, rose_at, peak or 0, steps or 0)]
            if lead.stored.get(name) != row
        ],
        ["lead_id", "component"],
        replace=["value", "rose_at", "peak", "decay_steps"],
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
    upsert_rows(conn, NAMED_SCORES, rows, ["lead_id", "name"], replace=["total", "band"])
