"""``nurture pipeline`` and ``nurture accounts``: the funnel and account reports."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Column, Table

from engine.cli.app import app, open_db, scoring
from engine.cli.output import JsonFlag, cell, emit_json, fail, out
from engine.reports.accounts import hottest_accounts
from engine.reports.pipeline import OptionError, pipeline, report_options
from engine.settings import get_settings


@app.command("pipeline")
def pipeline_command(
    since: Annotated[str | None, typer.Option(help="Period start, ISO date or time.")] = None,
    until: Annotated[str | None, typer.Option(help="Period end (excluded).")] = None,
    stuck_days: Annotated[
        list[str] | None,
        typer.Option(help="Days in a stage before a lead is stuck: N, or STAGE=N (repeatable)."),
    ] = None,
    cohort: Annotated[bool, typer.Option("--cohort", help="Also by month leads entered.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Funnel report: leads per stage, conversion, time in stage, stuck leads, backward moves and
    exits with their rules."""
    settings = get_settings()
    db = open_db(settings)
    ruleset = scoring(db, settings).compiled.ruleset
    try:
        options = report_options(ruleset, since, until, stuck_days, cohort)
    except OptionError as error:
        raise fail(f"--{error.option.replace('_', '-')}: {error.problem}") from None
    data = pipeline(db, ruleset, **options)
    if as_json:
        emit_json(data)
        return
    period = data["period"]
    title = f"pipeline {period['since'] or 'start'} → {period['until'] or 'now'}"
    stages = Table(
        "stage", "leads", "entered", "→ next", "rate", "median d", "p90 d", "stuck", title=title
    )
    for row in data["stages"]:
        rate = row["conversion_rate"]
        stages.add_row(
            row["stage"],
            str(row["leads"]),
            str(row["entered"]),
            cell(row["converted_to_next"]),
            "" if rate is None else f"{rate:.0%}",
            cell(row["median_days"]),
            cell(row["p90_days"]),
            cell(row["stuck"]),
        )
    out.print(stages)
    for key, heading in (("backward", "backward moves"), ("exits", "exits")):
        moves = Table("from", "to", "rule", "moves", title=heading)
        for move in data[key]:
            moves.add_row(move["from"], move["to"], move["rule"], str(move["moves"]))
        out.print(moves)
    if data["cohorts"] is not None:
        funnel, exits = ruleset.stages, ruleset.exits
        cohorts = Table(
            Column("cohort", no_wrap=True), "leads", *funnel, *exits, title="cohorts: reached"
        )
        for row in data["cohorts"]:
            cohorts.add_row(
                row["cohort"],
                str(row["leads"]),
                *(str(row["reached"][s]) for s in funnel),
                *(str(row["exits"][s]) for s in exits),
            )
        out.print(cohorts)


@app.command("accounts")
def accounts_command(
    limit: Annotated[int, typer.Option(help="At most this many, hottest first.")] = 20,
    as_json: JsonFlag = False,
) -> None:
    """The hottest accounts (leads grouped by company domain; free mail left out)."""
    settings = get_settings()
    db = open_db(settings)
    ruleset = scoring(db, settings).compiled.ruleset
    rows = hottest_accounts(db, ruleset, limit)
    if as_json:
        emit_json(rows)
        return
    bands = [band for band, _ in ruleset.temperature]
    title = f"accounts by {ruleset.account_aggregate} of lead scores"
    table = Table("domain", "score", "leads", "hottest lead", *bands, title=title)
    for row in rows:
        hottest = row["hottest"]
        table.add_row(
            row["domain"],
            str(row["score"]),
            str(row["leads"]),
            f"{hottest['email']} ({hottest['score']})",
            *(str(row["temperatures"][band]) for band in bands),
        )
    out.print(table)
