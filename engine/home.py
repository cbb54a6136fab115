"""The files a marketing team keeps in git under ``NURTURE_HOME``: rulesets (and their tests),
campaigns, templates and trained models. Reading them is here, at the edge; parsing and checking
them is the pure core's (``rules``, ``campaigns``, ``render``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.campaigns.load import parse_campaigns
from engine.campaigns.spec import Campaign
from engine.errors import Problem, ProblemsError
from engine.render.templates import Renderer
from engine.rules.compile import CompiledRuleset, CompileError, compile_ruleset
from engine.rules.lint import warnings
from engine.rules.load import parse_ruleset
from engine.rules.spec import ModelLoader, Predictor, Ruleset
from engine.rules.testing import Case, parse_cases
from engine.settings import Settings, get_settings


def read_text(path: Path) -> str:
    """A file's text; a ProblemsError naming it when it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ProblemsError([Problem(str(path), 1, f"cannot read: {error}")]) from None


def model_loader(home: Path) -> ModelLoader:
    """Loads a ruleset's ``model:`` paths, relative to ``home``."""

    def load(path: str) -> Predictor:
        from engine.analysis.predict import ModelError, load_model  # scikit-learn only when used

        try:
            return load_model(home / path)
        except ModelError as error:
            raise ModelError(f"{error} (paths are relative to {home})") from None

    return load


def load_ruleset(path: Path, home: Path | None = None) -> Ruleset:
    """The ruleset in ``path``, its models loaded from ``home`` (default ``NURTURE_HOME``)."""
    models = model_loader(home if home is not None else get_settings().home)
    return parse_ruleset(read_text(path), str(path), models)


def compile_checked(path: Path, home: Path | None = None) -> CompiledRuleset:
    """Load and compile, every failure as a ProblemsError naming the file."""
    ruleset = load_ruleset(path, home)
    try:
        return compile_ruleset(ruleset)
    except CompileError as error:
        raise ProblemsError([Problem(str(path), 1, str(error))]) from None


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


def check_folder(path: Path) -> FolderCheck:
    """Rulesets (and their tests) under ``path``; then the campaigns and templates beside it,
    campaigns checked against the first good ruleset, templates rendered for a sample lead."""
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
        ruleset = compiled.ruleset
        rulesets.append(ruleset)
        found.cautions += warnings(ruleset)
        found.cautions += unknown_targets(ruleset, get_settings())
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
        except ProblemsError as error:
            found.problems.extend(error.problems)
    return found
