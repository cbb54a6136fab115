"""``nurture outbox``: messages waiting, held (a template error) or failed, with their errors;
``--release`` renders a held message again once its template is fixed, ``--retry`` puts a
failed one back in the queue."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from engine.cli.app import app, open_db, scoring
from engine.cli.output import JsonFlag, cell, emit_json, fail, out
from engine.errors import NurtureError
from engine.schedule.jobs import release
from engine.send import outbox
from engine.settings import get_settings
from engine.status import OutboxStatus
from engine.timeutil import utcnow


class Listed(StrEnum):
    """What ``--status`` takes: the statuses of messages that are not done."""

    QUEUED = OutboxStatus.QUEUED.value
    HELD = OutboxStatus.HELD.value
    FAILED = OutboxStatus.FAILED.value


@app.command("outbox")
def outbox_command(
    status: Annotated[
        list[Listed] | None, typer.Option(help="Only these (repeatable); default all three.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, longest due first.")] = 100,
    release_id: Annotated[
        int | None,
        typer.Option("--release", help="Render held message ID again now and queue it."),
    ] = None,
    retry_id: Annotated[
        int | None, typer.Option("--retry", help="Put failed message ID back in the queue.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Messages queued, held or failed, with their errors; release a held one or retry a failed
    one."""
    settings = get_settings()
    db = open_db(settings)
    if release_id is not None and retry_id is not None:
        raise fail("give --release or --retry, not both")
    if release_id is None and retry_id is None:
        statuses = [str(s) for s in status] if status else list(outbox.LISTED)
        rows = outbox.messages(db, statuses, limit)
        if as_json:
            emit_json(rows)
        else:
            _table(rows)
        return
    try:
        if release_id is not None:
            scoring(db, settings)
            done = release(db, settings, release_id, utcnow())
        else:
            done = outbox.retry(db, retry_id or 0, utcnow())
    except NurtureError as error:
        raise fail(str(error)) from None
    if as_json:
        emit_json(done)
    if done["status"] == OutboxStatus.HELD:  # the template still fails: held with the new error
        raise fail(f"outbox message {done['id']} is still held: {done['last_error']}")
    if not as_json:
        out.print(f"outbox message {done['id']}: queued, due {done['next_attempt_at']}")


def _table(rows: list[dict[str, Any]]) -> None:
    """The messages, then each error on a line of its own (they are long, and the point)."""
    if not rows:
        out.print("no messages")
        return
    names = ("id", "status", "to", "campaign", "step", "subject", "tries", "due")
    table = Table(*(Column(name, overflow="fold") for name in names))  # cut nothing off
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["status"],
            cell(row["to"]),
            cell(row["campaign"] or row["kind"]),
            cell(row["step"]),
            cell(row["subject"]),
            str(row["attempts"]),
            row["next_attempt_at"],
        )
    out.print(table)
    for row in rows:
        if row["last_error"]:
            out.print(f"{row['id']} {row['status']}: {row['last_error']}", markup=False)
