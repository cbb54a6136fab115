"""The ``nurture`` command: the edge where people meet the flow. Each command reads settings,
opens the database (migrating it first), and calls the layer that does the work; one module per
command group, registered on :data:`engine.cli.app.app`."""

from __future__ import annotations

from engine.cli import analysis, ingest, leads, outbox, reports, rules, run
from engine.cli.app import app

__all__ = ["analysis", "app", "ingest", "leads", "main", "outbox", "reports", "rules", "run"]


def main() -> None:
    app()
