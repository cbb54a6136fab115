"""The ``nurture`` command: the edge where people meet the flow. Each command reads settings,
opens the database (migrating it first), and calls the layer that does the work; one module per
command group, registered on :data:`engine.cli.app.app`."""

from __future__ import annotations

from rich.markup import escape

from engine.cli import analysis, ingest, leads, reports, rules, run
from engine.cli.app import app
from engine.cli.output import err
from engine.errors import NurtureError

__all__ = ["analysis", "app", "ingest", "leads", "main", "reports", "rules", "run"]


def main() -> None:
    """The ``nurture`` script: a NurtureError anywhere is one line on stderr and exit 1."""
    try:
        app()
    except NurtureError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False)
        raise SystemExit(1) from None
