"""The ``nurture`` command: the edge where people meet the flow. Each command reads settings,
opens the database (migrating it first), and calls the layer that does the work."""

from __future__ import annotations

import io
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Column, Table
from sqlalchemy import Engine

from engine import report
from engine.accounts import hottest_accounts
from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.load import load_campaigns
from engine.ingest.parse import parse_stream
from engine.pipeline import OptionError, pipeline, report_options
from engine.render import Renderer
from engine.rules.lint import warnings
from engine.rules.load import Problem, RulesetError, ruleset_files
from engine.rules.testing import CaseResult, load_cases, run_case
from engine.schedule.jobs import Jobs
from engine.settings import Settings, get_settings
from engine.store import db as database
from engine.store.rulesets import (
    InForce,
    NoRuleset,
    campaigns_in_force,
    compile_checked,
    ruleset_in_force,
)
from engine.store.scoring import IngestResult, ingest
from engine.timeutil import isoformat, parse_instant, utcnow

app = typer.Typer(help="Rules-engine lead scoring and nurturing.", no_args_is_help=True)
rules_app = typer.Typer(help="Check and test rulesets.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Predictive scores that rulesets can read.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False)
    return typer.Exit(1)


def open_db(settings: Settings) -> Engine:
    database.upgrade(settings.database_url)
    return database.connect(settings.database_url)


def in_force(db: Engine, settings: Settings) -> InForce:
    try:
        active = ruleset_in_force(db, settings)
    except NoRuleset as error:
        raise fail(str(error)) from None
    except RulesetError as error:
        raise fail(f"the ruleset has errors and no earlier version is in force:\n{error}") from None
    if active.problems:
        version = active.compiled.ruleset.version
        err.print(
            f"[yellow]warning:[/yellow] the ruleset file has errors; version {version} stays "
            "in force:\n" + escape("\n".join(str(p) for p in active.problems)),
            highlight=False,
        )
    return active


def campaigns_for(db: Engine, settings: Settings, active: InForce) -> CompiledCampaigns | None:
    """The campaigns in force for scoring, or None (with the reason printed) when the campaigns
    folder has errors and no earlier good version: scoring goes on without enrolling anyone."""
    templates = Renderer(settings.templates_dir).names()
    try:
        campaigns = campaigns_in_force(db, settings, active.compiled.ruleset, templates)
    except RulesetError as error:
        err.print(
            "[yellow]warning:[/yellow] campaigns not applied (no good version yet):\n"
            + escape(str(error)),
            highlight=False,
        )
        return None
    if campaigns.problems:
        err.print(
            "[yellow]warning:[/yellow] the campaigns have errors; the last good version stays "
            "in force:\n" + escape("\n".join(str(p) for p in campaigns.problems)),
            highlight=False,
        )
    return campaigns.compiled


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


@contextmanager
def progress_bar(total: int | None, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    columns = [TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("scoring", total=total)
        yield lambda n: progress.advance(task, n)


def _count_lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def print_ingest(result: IngestResult, as_json: bool) -> None:
    if as_json:
        emit_json(result.as_json())
        return
    for rejection in result.rejected[:50]:
        err.print(f"line {rejection.line}: {rejection.error}", highlight=False, markup=False)
    if len(result.rejected) > 50:
        err.print(f"... and {len(result.rejected) - 50} more rejected lines")
    out.print(
        f"accepted {result.accepted}, duplicates {result.duplicates}, "
        f"rejected {len(result.rejected)}"
    )


@app.command("ingest")
def ingest_command(
    file: Annotated[str, typer.Argument(help="JSON Lines or CSV of events or leads; - for stdin.")],
    as_json: JsonFlag = False,
) -> None:
    """Score events and lead profiles. Idempotent by event id; bad lines are reported."""
    settings = get_settings()
    db = open_db(settings)
    active = in_force(db, settings)
    if file == "-":
        stream, total = sys.stdin, None
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="surrogateescape")
    else:
        path = Path(file)
        if not path.is_file():
            raise fail(f"{file}: no such file")
        stream = path.open(encoding="utf-8", errors="surrogateescape", newline="")
        total = _count_lines(path)
    with stream, progress_bar(total, err.is_terminal and not as_json) as advance:
        result = ingest(
            db,
            active.compiled,
            parse_stream(stream, file),
            batch_size=settings.batch_size,
            on_progress=advance,
            campaigns=campaigns_for(db, settings, active),
        )
    print_ingest(result, as_json)
    if result.rejected:
        raise typer.Exit(1)


@app.command("lead")
def lead_command(email: str, as_json: JsonFlag = False) -> None:
    """One lead: scores, temperature, stage, the ledger and stage history."""
    settings = get_settings()
    try:
        detail = report.lead_detail(open_db(settings), email)
    except ValueError as error:
        raise fail(str(error)) from None
    if detail is None:
        raise fail(f"no lead {email}")
    if as_json:
        emit_json(detail)
        return
    out.print(
        f"[bold]{detail['email']}[/bold]  score {detail['score']}  "
        f"{detail['temperature']}  stage {detail['stage']}",
        highlight=False,
    )
    scores = "  ".join(f"{name} {value}" for name, value in detail["scores"].items())
    out.print(f"scores: {scores}", highlight=False)
    if detail["tags"]:
        out.print(f"tags: {', '.join(detail['tags'])}", highlight=False)
    ledger = Table("at", "rule", "component", "delta", "score after", "event", title="ledger")
    for row in detail["ledger"]:
        ledger.add_row(
            row["at"],
            row["rule"],
            row["component"],
            f"{row['delta']:+d}",
            str(row["score_after"]),
            row["event_id"] or "",
        )
    out.print(ledger)
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
    limit: Annotated[int, typer.Option(help="At most this many, highest score first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """Leads by score, filtered by temperature and stage."""
    rows = report.list_leads(open_db(get_settings()), temperature, stage, limit)
    if as_json:
        emit_json(rows)
        return
    table = Table("email", "score", "temperature", "stage", "company", "title")
    for row in rows:
        attributes = row["attributes"]
        table.add_row(
            row["email"],
            str(row["score"]),
            row["temperature"],
            row["stage"],
            str(attributes.get("company", "")),
            str(attributes.get("job_title", "")),
        )
    out.print(table)


@app.command("tick")
def tick_command(
    now: Annotated[
        str | None, typer.Option(help="ISO time to run as (default: now), for tests and cron.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run all due scheduled work once: decay, due campaign steps, dispatch, sales alerts."""
    settings = get_settings()
    try:
        moment = parse_instant(now) if now else utcnow()
    except ValueError as error:
        raise fail(f"--now: {error}") from None
    db = open_db(settings)
    in_force(db, settings)
    try:
        result = Jobs(db, settings).tick(moment)
    except (RulesetError, ValueError) as error:
        raise fail(str(error)) from None
    if as_json:
        emit_json(result.as_json())
        return
    steps, sent, alerts = result.steps, result.dispatch, result.alerts.as_json()
    for warning in result.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    for held in steps.errors:
        err.print(f"[red]held[/red] {escape(held)}", highlight=False)
    out.print(
        f"{isoformat(moment)}: decay {result.decayed} ledger rows; steps: queued {steps.queued}, "
        f"held {steps.held}, deferred {steps.deferred}, skipped {steps.skipped}, exited "
        f"{steps.exited}, completed {steps.completed}; dispatch: sent {sent.sent}, retried "
        f"{sent.retried}, failed {sent.failed}, suppressed {sent.suppressed}; alerts: created "
        f"{alerts['created']}, suppressed {alerts['suppressed']}, delivered {alerts['sent']}, "
        f"retried {alerts['retried']}, failed {alerts['failed']}",
        highlight=False,
    )


@app.command("worker")
def worker_command() -> None:
    """The scheduler and dispatcher only (no HTTP), for scale-out: run as many as you like."""
    from apscheduler.schedulers.blocking import BlockingScheduler

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = get_settings()
    db = open_db(settings)
    in_force(db, settings)
    scheduler = BlockingScheduler(timezone="UTC")
    Jobs(db, settings).schedule(scheduler)
    err.print(
        f"worker: decay, campaign steps, dispatch and alerts via the {settings.mail_backend} "
        "backend"
    )
    with suppress(KeyboardInterrupt, SystemExit):
        scheduler.start()


@app.command("serve")
def serve_command(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
) -> None:
    """The HTTP API, the dashboard and the scheduler in one process."""
    import uvicorn

    from engine.api.app import create_app

    settings = get_settings()
    db = open_db(settings)
    in_force(db, settings)
    settings.access_token()  # creates the kept token file before anyone is told to read it
    # Where the token is, never the token itself: this line ends up in logs.
    where = "NURTURE_API_TOKEN" if settings.api_token else f"in {settings.token_file}"
    err.print(
        f"nurture: API, dashboard and scheduler on http://{host}:{port} "
        f"(API reference at /docs); the API token is {where}",
        highlight=False,
    )
    uvicorn.run(create_app(settings, db, scheduler=True), host=host, port=port)


def _check_folder(path: Path) -> tuple[list[str], list[Problem], list[Problem]]:
    """Rulesets (and their tests) under ``path``; then the campaigns and templates beside it,
    campaigns checked against the first good ruleset, templates rendered for a sample lead."""
    ok, problems, cautions = [], [], []
    rulesets = []
    files = list(ruleset_files(path)) if path.exists() else []
    if not files:
        problems.append(Problem(str(path), 1, "no ruleset files (*.yaml) here"))
    for file in files:
        try:
            compiled = compile_checked(file)
        except RulesetError as error:
            problems.extend(error.problems)
            continue
        ruleset = compiled.ruleset
        rulesets.append(ruleset)
        cautions += warnings(ruleset)
        ok.append(f"{file}: ruleset {ruleset.name}, {len(ruleset.rules)} rules, v{ruleset.version}")
    tests = path / "tests" if path.is_dir() else path.parent / "tests"
    for file in sorted(tests.glob("*.yaml")) if tests.is_dir() else []:
        try:
            ok.append(f"{file}: {len(load_cases(file))} test cases")
        except RulesetError as error:
            problems.extend(error.problems)
    home = (path if path.is_dir() else path.parent).parent
    renderer = Renderer(home / "templates")
    templates = renderer.names()
    problems += [
        Problem(broken.file or str(home / "templates"), broken.line or 1, broken.message)
        for broken in renderer.check()
    ]
    if templates:
        ok.append(f"{home / 'templates'}: {len(templates)} templates render for a sample lead")
    if rulesets and (home / "campaigns").is_dir():
        try:
            found = load_campaigns(home / "campaigns", rulesets[0], templates)
            ok += [f"{c.path}: campaign {c.name}, {len(c.steps)} steps" for c in found]
        except RulesetError as error:
            problems.extend(error.problems)
    return ok, problems, cautions


@rules_app.command("check")
def check_command(
    path: Annotated[Path | None, typer.Argument(help="A ruleset file or folder.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate rulesets, campaigns and templates: every problem with file, line and a plain
    sentence."""
    ok, problems, cautions = _check_folder(path or get_settings().rulesets_dir)
    if as_json:
        emit_json(
            {
                "ok": ok,
                "problems": [
                    {"file": p.file, "line": p.line, "error": p.message} for p in problems
                ],
                "warnings": [
                    {"file": w.file, "line": w.line, "warning": w.message} for w in cautions
                ],
            }
        )
    else:
        for line in ok:
            out.print(f"[green]ok[/green] {line}", highlight=False)
        for caution in cautions:
            out.print(f"[yellow]warning[/yellow] {escape(str(caution))}", highlight=False)
        for problem in problems:
            out.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
    if problems:
        raise typer.Exit(1)


@rules_app.command("test")
def test_command(
    path: Annotated[Path | None, typer.Argument(help="The rulesets folder.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the cases in rulesets/tests/*.yaml: pass/fail with expected vs actual."""
    folder = path or get_settings().rulesets_dir
    rulesets = {f.stem: f for f in ruleset_files(folder)} if folder.is_dir() else {}
    results: list[CaseResult] = []
    problems: list[str] = []
    for file in sorted((folder / "tests").glob("*.yaml")):
        target = rulesets.get(file.stem) or (
            next(iter(rulesets.values())) if len(rulesets) == 1 else None
        )
        if target is None:
            problems.append(f"{file}: no ruleset {file.stem}.yaml in {folder}")
            continue
        try:
            compiled = compile_checked(target)
            results += [run_case(compiled, case) for case in load_cases(file)]
        except RulesetError as error:
            problems.append(str(error))
    failed = [r for r in results if not r.passed]
    if as_json:
        emit_json(
            {
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "errors": problems,
                "cases": [
                    {"name": r.name, "file": r.file, "line": r.line, "failures": r.failures}
                    for r in results
                ],
            }
        )
    else:
        for result in results:
            if result.passed:
                out.print(f"[green]PASS[/green] {result.name}", highlight=False)
            else:
                out.print(
                    f"[red]FAIL[/red] {result.name} ({result.file}:{result.line})", highlight=False
                )
                for failure in result.failures:
                    out.print(f"     {failure}", highlight=False, markup=False)
        for problem in problems:
            out.print(f"[red]error[/red] {escape(str(problem))}", highlight=False)
        out.print(f"{len(results) - len(failed)} cases passed, {len(failed)} cases failed")
    if failed or problems or not results:
        raise typer.Exit(1)


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


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
    ruleset = in_force(db, settings).compiled.ruleset
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
            _cell(row["converted_to_next"]),
            "" if rate is None else f"{rate:.0%}",
            _cell(row["median_days"]),
            _cell(row["p90_days"]),
            _cell(row["stuck"]),
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
    ruleset = in_force(db, settings).compiled.ruleset
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


@db_app.command("upgrade")
def upgrade_command() -> None:
    """Apply migrations (every command also does this on start)."""
    settings = get_settings()
    database.upgrade(settings.database_url)
    out.print("database is up to date")


@app.command("demo")
def demo_command(
    leads: Annotated[int, typer.Option(help="How many sample leads.")] = 400,
    seed: Annotated[int, typer.Option(help="Seed of the sample data.")] = 7,
) -> None:
    """The main job on embedded defaults: score sample leads, run the scheduler for two
    simulated weeks (decay, campaign emails to the outbox), show the funnel and the emails."""
    from engine.demo import run_demo

    settings = get_settings()
    db = open_db(settings)
    active = in_force(db, settings)
    campaigns = campaigns_for(db, settings, active)
    run_demo(db, settings, active.compiled, campaigns, out, leads=leads, seed=seed)


@app.command("backtest")
def backtest_command(
    ruleset: Annotated[Path, typer.Option(help="The ruleset file to try.")],
    leads: Annotated[Path, typer.Option(help="CSV of past leads, one per row, with outcomes.")],
    outcome: Annotated[str, typer.Option(help="The 0/1 outcome column, e.g. Converted.")],
    against: Annotated[
        Path | None, typer.Option(help="A second ruleset to compare side by side.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(help="Write gains and bands as a PNG.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """How a ruleset ranks past leads with known outcomes, in memory (no database)."""
    from engine.backtest import BacktestError, backtest, plot_report
    from engine.pastleads import PastLeadsError, read_past_leads

    try:
        rows = read_past_leads(leads, outcome)
        files = {"ruleset": ruleset} | ({"against": against} if against else {})
        reports = {key: backtest(compile_checked(file), rows) for key, file in files.items()}
    except RulesetError as error:
        raise fail(str(error)) from None
    except (PastLeadsError, BacktestError) as error:
        raise fail(str(error)) from None
    if plot is not None:
        labelled = {f"{r['ruleset']} ({files[k].name})": r for k, r in reports.items()}
        plot_report(labelled, plot)
    if as_json:
        emit_json(reports if against else reports["ruleset"])
    else:
        print_backtest(reports)


def print_backtest(reports: dict[str, dict[str, Any]]) -> None:
    first = reports["ruleset"]
    out.print(
        f"{first['rows']} leads, {first['base_rate']:.1%} converted ({first['outcome']})",
        highlight=False,
    )
    table = Table("", *(f"{r['ruleset']} v{r['version']}" for r in reports.values()))

    def row(label: str, cell: Any) -> None:
        table.add_row(label, *(cell(r) for r in reports.values()))

    row("AUC", lambda r: f"{r['auc']:.3f}")
    if any("auc_parts" in r for r in reports.values()):
        for part in ("rules", "model", "mix"):
            row(f"  AUC of the {part}", lambda r, p=part: _auc_part(r, p))
    for band in dict.fromkeys(band for r in reports.values() for band in r["bands"]):
        row(f"band {band}", lambda r, b=band: _group_cell(r["bands"].get(b)))
    row("hot precision", lambda r: f"{r['hot']['precision']:.1%}")
    row("hot recall", lambda r: f"{r['hot']['recall']:.1%}")
    for stage in dict.fromkeys(stage for r in reports.values() for stage in r["stages"]):
        row(f"stage {stage}", lambda r, s=stage: _group_cell(r["stages"].get(s)))
    for index in range(len(first["deciles"])):
        row(f"decile {index + 1}", lambda r, i=index: _decile_cell(r["deciles"][i]))
    out.print(table)


def _group_cell(group: dict[str, Any] | None) -> str:
    if not group:
        return ""
    rate = "" if group["rate"] is None else f"{group['rate']:.1%} "
    return f"{rate}({group['converted']:,} of {group['leads']:,})"


def _decile_cell(decile: dict[str, Any]) -> str:
    return f"{decile['rate']:.1%} lift {decile['lift']:.2f} gain {decile['cumulative_gain']:.0%}"


def _auc_part(report: dict[str, Any], part: str) -> str:
    return f"{report['auc_parts'][part]:.3f}" if "auc_parts" in report else ""


@model_app.command("train")
def model_train_command(
    leads: Annotated[Path, typer.Option(help="CSV of past leads, one per row, with outcomes.")],
    outcome: Annotated[str, typer.Option(help="The 0/1 outcome column, e.g. Converted.")],
    exclude: Annotated[
        list[str] | None,
        typer.Option(help="A column the model must not use (ids, notes written after the fact)."),
    ] = None,
    algorithm: Annotated[str, typer.Option(help="logistic or boosting.")] = "logistic",
    name: Annotated[str | None, typer.Option(help="Model name (default: the CSV's name).")] = None,
    folder: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the model (default <NURTURE_HOME>/models)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Fit a predictive score on past leads; report its cross-validated AUC; save NAME-vN."""
    from engine.pastleads import PastLeadsError, read_past_leads, resolve_column
    from engine.predict import ALGORITHMS, ModelError, save, train

    if algorithm not in ALGORITHMS:
        raise fail(f"--algorithm: {algorithm!r}; use {' or '.join(ALGORITHMS)}")
    model_name = name or leads.stem
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*", model_name):
        raise fail(f"--name: {model_name!r}; use letters, digits and - _ .")
    try:
        rows = read_past_leads(leads, outcome)
        skipped = {resolve_column(rows.columns, column, str(leads)) for column in exclude or []}
        columns = [column for column in rows.columns if column not in skipped]
        trained = train(rows.attributes, rows.outcomes, columns, algorithm)
    except (PastLeadsError, ModelError) as error:
        raise fail(str(error)) from None
    extra = {"outcome": rows.outcome, "leads": str(leads), "excluded": sorted(skipped)}
    home = get_settings().home
    path = save(trained, folder or home / "models", model_name, extra)
    meta = {**trained.meta, "path": str(path), "version": path.stem}
    if as_json:
        emit_json(meta)
        return
    out.print(
        f"{path}: {meta['algorithm']} on {meta['rows']} leads, "
        f"{len(meta['numeric']) + len(meta['categorical'])} columns; "
        f"cross-validated AUC {meta['cv_auc']:.3f} ({len(meta['cv_auc_folds'])} folds)",
        highlight=False,
    )
    shown = path.relative_to(home) if path.is_relative_to(home) else path
    out.print(
        f"in a ruleset: components: {{predicted: {{min: 0, max: 100, model: {shown}}}}}",
        highlight=False,
        markup=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
