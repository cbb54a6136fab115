"""The files a marketing team keeps in git under ``NURTURE_HOME``: rulesets (and their tests),
campaigns, templates and trained models. Reading them is here, at the edge; parsing and checking
them is the pure core's (``rules``, ``campaigns``, ``render``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from sqlalchemy import Engine

from engine.campaigns.load import parse_campaigns
from engine.campaigns.spec import Campaign
from engine.errors import Problem, ProblemsError
from engine.ingest.unseen import unseen
from engine.render.templates import Renderer
from engine.rules.compile import CompiledRuleset, CompileError, compile_ruleset
from engine.rules.lint import pattern_cautions, warnings
from engine.rules.load import model_path_problem, parse_ruleset, refused_model
from engine.rules.source import MAX_SOURCE
from engine.rules.spec import ModelLoader, Predictor, Ruleset
from engine.rules.testing import Case, parse_cases
from engine.settings import Settings, get_settings


def read_text(path: Path) -> str:
    """A file's text; a ProblemsError naming it when it cannot be read, or when it is larger
    than any ruleset, campaign or test file may be (read no further than that)."""
    limit = MAX_SOURCE * 4  # bytes: UTF-8 takes at most 4 a character
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
        if len(data) > limit:
            raise ProblemsError(
                [
                    Problem(
                        str(path),
                        1,
                        f"over {limit:,} bytes: a file has at most {MAX_SOURCE:,} characters",
                    )
                ]
            )
        return data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ProblemsError([Problem(str(path), 1, f"cannot read: {error}")]) from None


def model_loader(home: Path) -> ModelLoader:
    """Loads a ruleset's ``model:`` paths, relative to ``home``: only files that are under
    ``home/models`` once symbolic links are followed (see ``model_path_problem``)."""
    folder = home / "models"

    def load(path: str) -> Predictor:
        from engine.analysis.predict import ModelError, load_model  # scikit-learn only when used

        file = _inside(folder, home / path) if model_path_problem(path) is None else None
        if file is None:
            raise ModelError(refused_model(path))
        try:
            return load_model(file)
        except ModelError as error:
            raise ModelError(f"{error} (paths are relative to {home})") from None

    return load


def _inside(folder: Path, path: Path) -> Path | None:
    """``path`` with its links resolved, when that lies in ``folder``; else None."""
    try:
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(folder.resolve()) else None
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the OS refuses
        return None


def load_ruleset(path: Path, home: Path | None = None) -> Ruleset:
    """The ruleset in ``path``, its models loaded from ``home`` (default ``NURTURE_HOME``)."""
    models = model_loader(home if home is not None else get_settings().home)
    return parse_ruleset(read_text(path), str(path), models)


def compile_checked(path: Path, home: Path | None = None) -> CompiledRuleset:
    """Load and compile, every failure as a ProblemsError naming the file."""
    return compile_text(read_text(path), str(path), home)


def compile_text(text: str, path: str, home: Path | None = None) -> CompiledRuleset:
    """Parse and compile the ruleset ``text`` (of file ``path``), every failure as a
    ProblemsError naming the file."""
    models = model_loader(home if home is not None else get_settings().home)
    ruleset = parse_ruleset(text, path, models)
    try:
        return compile_ruleset(ruleset)
    except CompileError as error:
        raise ProblemsError([Problem(path, error.line or 1, str(error))]) from None


def ruleset_files(path: Path) -> Iterator[Path]:
    """The ruleset files under PATH (a file, or a folder's *.yaml/*.yml without tests/)."""
    if path.is_file():
        yield path
        return
    for candidate in sorted(path.glob("*.y*ml")):
        if candidate.suffix in (".yaml", ".yml"):
            yield candidate


def read_sources(folder: Path) -> dict[str, str]:
    """Path → text of every campaign file in ``folder`` (none when it does not exist)."""
    files = ruleset_files(folder) if folder.is_dir() else iter(())
    return {str(path): read_text(path) for path in files}


def load_campaigns(
    folder: Path, ruleset: Ruleset, templates: Iterable[str] | None = None
) -> list[Campaign]:
    return parse_campaigns(read_sources(folder), ruleset, templates)


def load_cases(path: Path) -> list[Case]:
    return parse_cases(read_text(path), str(path))


@dataclass
class FolderCheck:
    """What ``nurture rules check`` found: what is fine, problems (errors) and cautions."""

    ok: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    cautions: list[Problem] = field(default_factory=list)


def unknown_targets(ruleset: Ruleset, settings: Settings) -> list[Problem]:
    """Rules alerting a target the settings do not define: their alerts would be suppressed."""
    return [
        Problem(
            ruleset.path,
            rule.line,
            f"rule {rule.name!r} alerts {target!r}, which NURTURE_ALERT_TARGETS does not define "
            "here: its alerts will be suppressed until it does",
        )
        for rule in ruleset.rules
        for target in rule.then.alert
        if settings.alert_target(target) is None
    ]


def check_folder(path: Path, db: Engine | None = None) -> FolderCheck:
    """Rulesets (and their tests) under ``path``; then the campaigns and templates beside it,
    campaigns checked against the first good ruleset, templates rendered for a sample lead.
    With ``db``, rules reading what its leads and events never had are cautions too."""
    found = FolderCheck()
    rulesets = []
    files = list(ruleset_files(path)) if path.exists() else []
    if not files:
        found.problems.append(Problem(str(path), 1, "no ruleset files (*.yaml) here"))
    for file in files:
        try:
            compiled = compile_checked(file)
        except ProblemsError as error:
            found.problems.extend(error.problems)
            continue
        # A version is compiled once per process: its ruleset may name another file it was in.
        ruleset = replace(compiled.ruleset, path=str(file))
        rulesets.append(ruleset)
        found.cautions += warnings(ruleset)
        found.cautions += unknown_targets(ruleset, get_settings())
        if db is not None:
            found.cautions += unseen(ruleset, db)
        found.ok.append(
            f"{file}: ruleset {ruleset.name}, {len(ruleset.rules)} rules, v{ruleset.version}"
        )
    tests = path / "tests" if path.is_dir() else path.parent / "tests"
    for file in sorted(tests.glob("*.yaml")) if tests.is_dir() else []:
        try:
            found.ok.append(f"{file}: {len(load_cases(file))} test cases")
        except ProblemsError as error:
            found.problems.extend(error.problems)
    home = (path if path.is_dir() else path.parent).parent
    renderer = Renderer(home / "templates")
    templates = renderer.names()
    found.problems += [
        Problem(broken.file or str(home / "templates"), broken.line or 1, broken.message)
        for broken in renderer.check()
    ]
    if templates:
        found.ok.append(
            f"{home / 'templates'}: {len(templates)} templates render for a sample lead"
        )
    if rulesets and (home / "campaigns").is_dir():
        try:
            campaigns = load_campaigns(home / "campaigns", rulesets[0], templates)
            found.ok += [f"{c.path}: campaign {c.name}, {len(c.steps)} steps" for c in campaigns]
            for campaign in campaigns:
                conditions = [campaign.audience, campaign.exit_when]
                conditions += [step.when for step in campaign.steps]
                for condition in conditions:
                    if condition is not None:
                        label = f"campaign {campaign.name!r}"
                        found.cautions += pattern_cautions(campaign.path, label, condition)
        except ProblemsError as error:
            found.problems.extend(error.problems)
    return found
