"""``nurture ingest``: files and stdin through the ingest stage, with a progress bar."""

from __future__ import annotations

import io
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Annotated

import typer

from engine import heap
from engine.cli.app import app, open_db, scoring
from engine.cli.output import JsonFlag, emit_json, err, fail, out, progress_bar
from engine.ingest.batch import IngestResult, ingest
from engine.ingest.parallel import ingest_parallel
from engine.ingest.parse import parse_stream
from engine.settings import get_settings


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def print_ingest(result: IngestResult, as_json: bool) -> None:
    if as_json:
        emit_json({**result.as_json(), "alerts": result.alerts})
        return
    for rejection in result.rejected[:50]:
        err.print(f"line {rejection.line}: {rejection.error}", highlight=False, markup=False)
    if len(result.rejected) > 50:
        err.print(f"... and {len(result.rejected) - 50} more rejected lines")
    out.print(
        f"accepted {result.accepted}, duplicates {result.duplicates}, "
        f"rejected {len(result.rejected)}, alerts {result.alerts}"
    )


@app.command("ingest")
def ingest_command(
    file: Annotated[str, typer.Argument(help="JSON Lines or CSV of events or leads; - for stdin.")],
    backfill: Annotated[
        bool,
        typer.Option(
            "--backfill",
            help="History, not news: score everything but page sales for none of it.",
        ),
    ] = False,
    as_json: JsonFlag = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            max=64,
            help="Processes scoring the file side by side, each the leads of one slice of it "
            "(on SQLite they evaluate side by side and take turns to write).",
        ),
    ] = 1,
) -> None:
    """Score events and lead profiles. Idempotent by event id; bad lines are reported. Profile
    records (and with --backfill every record) alert no one; the count of alerts is printed."""
    settings = get_settings()
    db = open_db(settings)
    active = scoring(db, settings)
    with ExitStack() as stack:
        if file == "-":
            stream, total = sys.stdin, None
            if isinstance(stream, io.TextIOWrapper):
                # No newline translation, as for files: a bare CR inside a row must reach the
                # reader.
                stream.reconfigure(errors="surrogateescape", newline="")
            if workers > 1:
                # Each worker reads the whole input: keep stdin in a file they can all open.
                spool = stack.enter_context(
                    tempfile.NamedTemporaryFile(
                        "w", encoding="utf-8", errors="surrogateescape", newline=""
                    )
                )
                shutil.copyfileobj(stream, spool)
                spool.flush()
                path = Path(spool.name)
        else:
            path = Path(file)
            if not path.is_file():
                raise fail(f"{file}: no such file")
            stream = path.open(encoding="utf-8", errors="surrogateescape", newline="")
            total = _count_lines(path)
        stack.enter_context(stream)
        advance = stack.enter_context(progress_bar(total, err.is_terminal and not as_json))
        if workers > 1:
            result = ingest_parallel(
                db,
                active.compiled,
                path,
                workers,
                batch_size=settings.batch_size,
                on_progress=advance,
                campaigns=active.campaigns,
                name=file,
                backfill=backfill,
                alert_max_age=settings.alert_max_age,
            )
        else:
            heap.settle()  # as each worker does: its collections are ~10 % of scoring's CPU
            result = ingest(
                db,
                active.compiled,
                parse_stream(stream, file),
                batch_size=settings.batch_size,
                on_progress=advance,
                campaigns=active.campaigns,
                backfill=backfill,
                alert_max_age=settings.alert_max_age,
            )
    print_ingest(result, as_json)
    if result.rejected:
        raise typer.Exit(1)
