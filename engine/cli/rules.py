"""``nurture rules``: rulesets before they go live (``check``, ``test``), what a version would
change on the live leads (``plan``), making it the version in force (``apply``, ``rollback``),
and where things stand (``status``, ``history``)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from engine import heap
from engine.active import DIFFER, NoRuleset, apply_history, choose_file
from engine.cli.app import in_force as current
from engine.cli.app import open_db, rules_app
from engine.cli.output import JsonFlag, cell, emit_json, err, fail, out, progress_bar
from engine.db import reading
from engine.errors import NurtureError, ProblemsError
from engine.home import check_folder, compile_checked, compile_text, load_cases, ruleset_files
from engine.replay.run import apply, plan, remaining
from engine.replay.summary import Summary
from engine.rules.compile import CompiledRuleset
from engine.rules.source import read_yaml
from engine.rules.testing import CaseResult, run_case
from engine.settings import Settings, get_settings


def _stored(settings: Settings) -> Engine | None:
    """The database to compare the rules with, when there is one: ``rules check`` also runs
    where none is (CI, an editor), and creates none (a SQLite file that does not exist)."""
    try:
        url = make_url(settings.database_url)
        if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
            return None
        return open_db(settings)
    except (ArgumentError, NurtureError):
        return None


@rules_app.command("check")
def check_command(
    path: Annotated[Path | None, typer.Argument(help="A ruleset file or folder.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Validate rulesets, campaigns and templates: every problem with file, line and a plain
    sentence; warnings about rules reading attributes or event types the database never had."""
    settings = get_settings()
    found = check_folder(path or settings.rulesets_dir, _stored(settings))
    ok, problems, cautions = found.ok, found.problems, found.cautions
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


def run_tests(folder: Path) -> tuple[list[CaseResult], list[str]]:
    """The cases in ``folder``/tests/*.yaml run against their rulesets: results and errors."""
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
        except ProblemsError as error:
            problems.append(str(error))
    return results, problems


@rules_app.command("test")
def test_command(
    path: Annotated[Path | None, typer.Argument(help="The rulesets folder.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run the cases in rulesets/tests/*.yaml: pass/fail with expected vs actual."""
    folder = path or get_settings().rulesets_dir
    results, problems = run_tests(folder)
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


def _ruleset_file(path: Path | None, settings: Settings) -> Path:
    """PATH (a ruleset file, or a folder holding one), else the ruleset file of the home."""
    if path is not None and path.is_file():
        return path
    if path is not None:
        settings = settings.model_copy(update={"home": path.parent, "rulesets_dir": path})
    try:
        return choose_file(settings)
    except NoRuleset as error:
        raise fail(str(error)) from None


def _git_commit(folder: Path) -> str | None:
    """The commit of the git work tree holding ``folder`` (None: not in one)."""
    try:
        found = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except OSError:
        return None
    return found.stdout.strip() or None if found.returncode == 0 else None


def _print_summary(summary: Summary, verb: str) -> None:
    report = summary.as_json()
    out.print(
        f"{report['leads']} leads replayed ({report['events']} events); "
        f"score {verb} for {report['score_changed']}",
        highlight=False,
    )
    if report["deltas"]:
        out.print(
            "score deltas: " + ", ".join(f"{k}: {n}" for k, n in report["deltas"].items()),
            highlight=False,
        )
    _print_matrix("temperature", report["temperature"])
    for name, matrix in report["bands"].items():
        _print_matrix(name, matrix)
    for move in report["stage_moves"]:
        out.print(
            f"stage {move['from']} → {move['to']}: {move['leads']} leads (forward only)",
            highlight=False,
        )
    held = report["left_alone"]
    if held["leads"]:
        names = ", ".join(
            f"{h['email']} ({h['stage']}, replay: {h['replayed']})" for h in held["examples"][:5]
        )
        out.print(
            f"left in their stage (a rescore never moves back or out of an exit): "
            f"{held['leads']}: {names}",
            highlight=False,
        )
    hot = report["newly_hot"]
    out.print(
        f"newly hot: {hot['leads']}"
        + (f" ({', '.join(hot['examples'][:5])})" if hot["examples"] else "")
        + f"; newly alerting: {report['newly_alerting']}",
        highlight=False,
    )
    for kind, counts in report["enrollments"].items():
        for campaign, n in counts.items():
            out.print(f"enrollments that {kind}: {campaign} {n}", highlight=False)
    for entry in report["biggest"][:5]:
        out.print(
            f"[bold]{entry['email']}[/bold] {entry['before']} → {entry['after']} "
            f"({entry['delta']:+d})",
            highlight=False,
        )
        for row in entry["ledger_after"][-8:]:
            out.print(
                f"    {row['at']} {row['rule']} {row['component']} {row['delta']:+d} "
                f"→ {row['score_after']}",
                highlight=False,
                markup=False,
            )


def _print_matrix(name: str, matrix: dict[str, dict[str, int]]) -> None:
    afters = sorted({a for row in matrix.values() for a in row})
    table = Table(f"{name}: before \\ after", *afters)
    for before, row in matrix.items():
        table.add_row(before, *(str(row.get(a, "")) for a in afters))
    out.print(table)


WorkersOption = Annotated[
    int, typer.Option("--workers", min=1, help="Processes, each a slice of the leads.")
]


@rules_app.command("plan")
def plan_command(
    path: Annotated[Path | None, typer.Argument(help="A ruleset file or folder.")] = None,
    workers: WorkersOption = 1,
    as_json: JsonFlag = False,
) -> None:
    """What the files' ruleset would change on the live leads (replayed; nothing written)."""
    settings = get_settings()
    file = _ruleset_file(path, settings)
    try:
        compiled = compile_checked(file, settings.home)
    except ProblemsError as error:
        raise fail(str(error)) from None
    db = open_db(settings)
    in_force = current(db, settings).compiled.ruleset
    total = remaining(db, "")
    started = time.monotonic()
    heap.settle()  # a replay scores like ingest: see engine.heap
    with progress_bar(total, err.is_terminal and not as_json) as advance:
        summary = plan(db, settings, compiled, workers, advance, str(file))
    seconds = time.monotonic() - started
    if as_json:
        emit_json(
            {
                "in_force": in_force.version,
                "planned": compiled.ruleset.version,
                "seconds": round(seconds, 3),
                **summary.as_json(),
            }
        )
        return
    out.print(
        f"plan: {compiled.ruleset.name} v{compiled.ruleset.version} against the version in "
        f"force v{in_force.version} ({seconds:.1f} s)",
        highlight=False,
    )
    _print_summary(summary, "would change")


def _apply(
    compiled: CompiledRuleset,
    kind: str,
    note: str | None,
    commit: str | None,
    alert: bool,
    workers: int,
    path: str,
) -> None:
    settings = get_settings()
    db = open_db(settings)
    total = remaining(db, compiled.ruleset.version)
    heap.settle()
    with progress_bar(total, err.is_terminal) as advance:
        result = apply(db, settings, compiled, kind, note, commit, alert, workers, advance, path)
    rate = result.summary.events / result.seconds if result.seconds else 0.0
    if result.resumed and not result.summary.leads:
        out.print(
            f"{compiled.ruleset.name} v{compiled.ruleset.version} is in force; every lead is "
            "scored under it: nothing to do",
            highlight=False,
        )
        return
    state = "finished the rescore: " if result.resumed else ""
    out.print(
        f"{state}{compiled.ruleset.name} v{compiled.ruleset.version} is in force; "
        f"{result.summary.leads} leads rescored in {result.seconds:.1f} s "
        f"({result.summary.events} events, {rate:,.0f} events/s)",
        highlight=False,
    )
    if result.summary.leads:
        _print_summary(result.summary, "changed")


@rules_app.command("apply")
def apply_command(
    path: Annotated[Path | None, typer.Argument(help="A ruleset file or folder.")] = None,
    message: Annotated[
        str | None, typer.Option("-m", "--message", help="A note kept with the version.")
    ] = None,
    alert: Annotated[
        bool, typer.Option("--alert", help="Alert once for leads the rescore makes newly hot.")
    ] = False,
    workers: WorkersOption = 1,
) -> None:
    """Check and test the files' ruleset, make it the version in force for every process, and
    rescore every lead by replaying its events (resumable: run it again after a kill)."""
    settings = get_settings()
    file = _ruleset_file(path, settings)
    folder = file.parent
    found = check_folder(folder)
    if found.problems:
        for issue in found.problems:
            err.print(f"[red]error[/red] {escape(str(issue))}", highlight=False)
        raise fail("rules check failed: nothing applied")
    results, problems = run_tests(folder)
    failed = [r for r in results if not r.passed]
    if failed or problems:
        for result in failed:
            err.print(f"[red]FAIL[/red] {result.name} ({result.file}:{result.line})")
        for problem in problems:
            err.print(f"[red]error[/red] {escape(problem)}", highlight=False)
        raise fail("ruleset tests failed: nothing applied")
    compiled = compile_checked(file, settings.home)
    _apply(compiled, "apply", message, _git_commit(folder), alert, workers, str(file))


@rules_app.command("rollback")
def rollback_command(
    version: Annotated[
        str | None, typer.Argument(help="A version of `rules history` (default: the previous).")
    ] = None,
    message: Annotated[str | None, typer.Option("-m", "--message", help="A note.")] = None,
    alert: Annotated[bool, typer.Option("--alert", help="As for apply.")] = False,
    workers: WorkersOption = 1,
) -> None:
    """Apply an earlier version again (the same plan/apply semantics)."""
    settings = get_settings()
    db = open_db(settings)
    with reading(db) as conn:
        history = apply_history(conn)
    if not history:
        raise fail("no version has been in force yet")
    current = history[-1].version
    earlier = [row for row in reversed(history) if row.version != current]
    if version is not None:
        earlier = [row for row in reversed(history) if row.version.startswith(version)]
    if not earlier:
        raise fail(f"no earlier version {version or ''} in `nurture rules history`".strip())
    target = earlier[0]
    try:
        path = str(choose_file(settings))
    except NoRuleset:
        path = target.name
    compiled = compile_text(target.source, path, settings.home)
    _apply(compiled, "rollback", message, target.commit, alert, workers, path)


@rules_app.command("status")
def status_command(as_json: JsonFlag = False) -> None:
    """The version in force, how far its rescore got, and whether the files differ."""
    settings = get_settings()
    db = open_db(settings)
    in_force = current(db, settings)
    ruleset = in_force.compiled.ruleset
    applied = in_force.applied
    left = remaining(db, ruleset.version)
    data = {
        "name": ruleset.name,
        "version": ruleset.version,
        "applied_at": applied.applied_at if applied else None,
        "kind": applied.kind if applied else None,
        "note": applied.note if applied else None,
        "finished": applied is not None and applied.finished_at is not None and not left,
        "leads_under_other_versions": left,
        "files_version": in_force.file_version,
        "files_differ": in_force.differs,
        "file_problems": [str(p) for p in in_force.problems],
    }
    if as_json:
        emit_json(data)
        return
    out.print(
        f"in force: {ruleset.name} v{ruleset.version} ({data['kind']} {data['applied_at']})",
        highlight=False,
    )
    if left:
        out.print(
            f"{left} leads still under another version: run nurture rules apply to finish",
            highlight=False,
        )
    if in_force.problems:
        out.print("[red]the ruleset file has errors[/red] (the version in force is kept):")
        for found in in_force.problems:
            out.print(f"  {escape(str(found))}", highlight=False)
    elif in_force.differs:
        out.print(f"files (v{in_force.file_version}): {DIFFER}", highlight=False)
    else:
        out.print("files match the version in force", highlight=False)


@rules_app.command("history")
def history_command(as_json: JsonFlag = False) -> None:
    """Every version that came into force: when, how, note, commit, rules, leads rescored,
    time taken."""
    settings = get_settings()
    db = open_db(settings)
    with reading(db) as conn:
        history = apply_history(conn)
    rows: list[dict[str, Any]] = [
        {
            "version": row.version,
            "name": row.name,
            "kind": row.kind,
            "applied_at": row.applied_at,
            "finished_at": row.finished_at,
            "note": row.note,
            "commit": row.commit,
            "rules": _rule_count(row.source),
            "leads_rescored": row.leads_rescored,
            "seconds": row.seconds,
        }
        for row in history
    ]
    if as_json:
        emit_json(rows)
        return
    table = Table("applied", "version", "kind", "rules", "leads", "seconds", "note", "commit")
    for row in rows:
        table.add_row(
            str(row["applied_at"]),
            str(row["version"]),
            str(row["kind"]),
            str(row["rules"]),
            str(row["leads_rescored"]),
            cell(row["seconds"]),
            row["note"] or "",
            (row["commit"] or "")[:10],
        )
    out.print(table)


def _rule_count(source: str) -> int:
    """How many rules a stored version has (its YAML's ``rules`` list)."""
    try:
        data = read_yaml(source, "ruleset")
    except ProblemsError:
        return 0
    rules = data.get("rules") if isinstance(data, dict) else None
    return len(rules) if isinstance(rules, list) else 0
