"""``nurture rules check`` and ``nurture rules test``: rulesets before they go live."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from engine.cli.app import open_db, rules_app
from engine.cli.output import JsonFlag, emit_json, out
from engine.errors import NurtureError, ProblemsError
from engine.home import check_folder, compile_checked, load_cases, ruleset_files
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
        except ProblemsError as error:
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
