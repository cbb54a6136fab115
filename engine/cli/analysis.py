"""``nurture backtest`` and ``nurture model train``: rulesets and models against past leads."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from engine.cli.app import app, model_app
from engine.cli.output import JsonFlag, emit_json, fail, out
from engine.errors import NurtureError
from engine.home import compile_checked
from engine.rules.spec import NAME
from engine.settings import get_settings


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
    from engine.analysis.backtest import backtest, plot_report
    from engine.analysis.pastleads import read_past_leads

    try:
        rows = read_past_leads(leads, outcome)
        files = {"ruleset": ruleset} | ({"against": against} if against else {})
        reports = {key: backtest(compile_checked(file), rows) for key, file in files.items()}
    except NurtureError as error:
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
        row(f"band {band}", lambda r, b=band: _groupcell(r["bands"].get(b)))
    row("hot precision", lambda r: f"{r['hot']['precision']:.1%}")
    row("hot recall", lambda r: f"{r['hot']['recall']:.1%}")
    for stage in dict.fromkeys(stage for r in reports.values() for stage in r["stages"]):
        row(f"stage {stage}", lambda r, s=stage: _groupcell(r["stages"].get(s)))
    for index in range(len(first["deciles"])):
        row(f"decile {index + 1}", lambda r, i=index: _decilecell(r["deciles"][i]))
    out.print(table)


def _groupcell(group: dict[str, Any] | None) -> str:
    if not group:
        return ""
    rate = "" if group["rate"] is None else f"{group['rate']:.1%} "
    return f"{rate}({group['converted']:,} of {group['leads']:,})"


def _decilecell(decile: dict[str, Any]) -> str:
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
    from engine.analysis.pastleads import read_past_leads, resolve_column
    from engine.analysis.predict import ALGORITHMS, save, train

    if algorithm not in ALGORITHMS:
        raise fail(f"--algorithm: {algorithm!r}; use {' or '.join(ALGORITHMS)}")
    model_name = name or leads.stem
    if not NAME.fullmatch(model_name):
        raise fail(f"--name: {model_name!r}; use letters, digits and - _ .")
    try:
        rows = read_past_leads(leads, outcome)
        skipped = {resolve_column(rows.columns, column, str(leads)) for column in exclude or []}
        columns = [column for column in rows.columns if column not in skipped]
        trained = train(rows.attributes, rows.outcomes, columns, algorithm)
    except NurtureError as error:
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
