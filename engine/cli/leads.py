"""``nurture lead``, ``leads``, ``alerts``: leads and alerts as sales and marketers read them."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from engine.cli.app import app, open_db, scoring
from engine.cli.output import JsonFlag, emit_json, fail, out
from engine.errors import NurtureError
from engine.replay.asof import as_of as replayed
from engine.replay.asof import version_compiled
from engine.reports import leads as report
from engine.settings import get_settings
from engine.timeutil import parse_instant


@app.command("lead")
def lead_command(
    email: str,
    versions: Annotated[
        bool, typer.Option("--versions", help="Ledger rows of every ruleset version, grouped.")
    ] = False,
    as_of: Annotated[
        str | None, typer.Option("--as-of", help="Scores as of this time (replayed).")
    ] = None,
    ruleset: Annotated[
        str | None, typer.Option("--ruleset", help="With --as-of: a version of rules history.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """One lead: scores, temperature, stage, the ledger and stage history."""
    settings = get_settings()
    db = open_db(settings)
    compiled = scoring(db, settings).compiled
    try:
        if as_of is not None:
            if ruleset is not None:
                compiled = version_compiled(db, settings, ruleset)
            detail = replayed(db, compiled, email, parse_instant(as_of))
        else:
            detail = report.lead_detail(db, email, compiled.ruleset.claimed, versions)
    except NurtureError as error:
        raise fail(str(error)) from None
    if detail is None:
        raise fail(f"no lead {email}")
    if as_json:
        emit_json(detail)
        return
    if as_of is not None:
        out.print(
            f"as of {detail['as_of']} under version {detail['ruleset_version']} "
            f"({detail['events']} events replayed)",
            highlight=False,
        )
    out.print(
        f"[bold]{detail['email']}[/bold]  score {detail['score']}  "
        f"{detail['temperature']}  stage {detail['stage']}",
        highlight=False,
    )
    scores = "  ".join(f"{name} {value}" for name, value in detail["scores"].items())
    out.print(f"scores: {scores}", highlight=False)
    for name, total in detail["totals"].items():
        out.print(f"{name}: {total} ({detail['bands'][name]})", highlight=False)
    if detail["tags"]:
        out.print(f"tags: {', '.join(detail['tags'])}", highlight=False)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in detail["ledger"]:
        groups.setdefault(row["ruleset_version"] if versions else "", []).append(row)
    for version, rows in groups.items() or [("", [])]:
        title = f"ledger of version {version}" if versions else "ledger"
        if versions and version == detail.get("ruleset_version"):
            title += " (in force for this lead)"
        ledger = Table("at", "rule", "component", "delta", "score after", "event", title=title)
        for row in rows:
            ledger.add_row(
                row["at"],
                row["rule"],
                row["component"],
                f"{row['delta']:+d}",
                str(row["score_after"]),
                row["event_id"] or "",
            )
        out.print(ledger)
    if as_of is not None:
        return
    stages = Table("at", "from", "to", "rule", title="stage history")
    for row in detail["stage_history"]:
        stages.add_row(row["at"], row["from"] or "", row["to"], row["rule"])
    out.print(stages)
    for alert in detail["alerts"]:
        out.print(
            f"alert {alert['created_at']} {alert['rule']}: {_alert_status(alert)}; email "
            f"{_delivery(alert['email'])}; webhook {_delivery(alert['webhook'])}",
            highlight=False,
            markup=False,
        )


def _alert_status(alert: dict[str, Any]) -> str:
    return f"suppressed: {alert['suppressed']}" if alert["suppressed"] else str(alert["status"])


def _delivery(delivery: dict[str, Any] | None) -> str:
    if delivery is None:
        return "—"
    text = f"{delivery['status']} ({delivery['tries']} tries)"
    if delivery["to"]:
        text = f"{delivery['to']}: {text}"
    return f"{text}: {delivery['error']}" if delivery["error"] else text


@app.command("alerts")
def alerts_command(
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Recent sales alerts: whom they went to, the email's and the webhook's status, tries and
    last error, or why an alert was suppressed."""
    rows = report.alerts(open_db(get_settings()), limit)
    if as_json:
        emit_json(rows)
        return
    if not rows:
        out.print("no alerts yet")
        return
    table = Table("created", "lead", "rule", "score", "status", "email", "webhook")
    for row in rows:
        table.add_row(
            row["created_at"],
            row["lead"],
            row["rule"],
            str(row["score"]),
            _alert_status(row),
            _delivery(row["email"]),
            _delivery(row["webhook"]),
        )
    out.print(table)


@app.command("leads")
def leads_command(
    temperature: Annotated[str | None, typer.Option(help="cold, warm, hot, ...")] = None,
    stage: Annotated[str | None, typer.Option(help="A funnel stage, e.g. mql.")] = None,
    band: Annotated[
        str | None, typer.Option(help="A named score's band, e.g. health=at_risk.")
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many, highest score first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Leads by score, filtered by temperature, stage and named-score band."""
    try:
        wanted = report.band_filter(band) if band else None
    except NurtureError as error:
        raise fail(f"--band: {error}") from None
    rows = report.list_leads(open_db(get_settings()), temperature, stage, limit, band=wanted)
    if as_json:
        emit_json(rows)
        return
    named = sorted({name for row in rows for name in row["totals"]})
    table = Table("email", "score", "temperature", *named, "stage", "company", "title")
    for row in rows:
        attributes = row["attributes"]
        table.add_row(
            row["email"],
            str(row["score"]),
            row["temperature"],
            *(f"{row['totals'][n]} {row['bands'][n]}" if n in row["totals"] else "" for n in named),
            row["stage"],
            str(attributes.get("company", "")),
            str(attributes.get("job_title", "")),
        )
    out.print(table)
