"""Which ruleset is in force. A file that fails its checks never replaces the last good version:
each good version's source is kept in ``ruleset_version`` and a broken file falls back to it.

Versions are keyed by the file's resolved path (``NURTURE_HOME=.`` and ``/srv/x`` are one file),
and ``loaded_at`` marks when a version last came into force, so a revert to an older version is
what a later broken edit falls back to."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from engine.rules.compile import CompiledRuleset, CompileError, compile_ruleset
from engine.rules.load import Problem, RulesetError, load_ruleset, parse_ruleset, ruleset_files
from engine.settings import Settings
from engine.store.db import reading
from engine.store.schema import RulesetVersion
from engine.timeutil import utcnow

VERSIONS = RulesetVersion.__table__  # type: ignore[attr-defined]


@dataclass
class InForce:
    compiled: CompiledRuleset
    # Problems of the file on disk when it was rejected and an earlier version kept in force.
    problems: list[Problem] = field(default_factory=list)


class NoRuleset(Exception):
    pass


def choose_file(settings: Settings) -> Path:
    folder = settings.rulesets_dir
    if settings.ruleset:
        for candidate in (Path(settings.ruleset), folder / f"{settings.ruleset}.yaml"):
            if candidate.is_file():
                return candidate
        raise NoRuleset(f"NURTURE_RULESET={settings.ruleset}: no such ruleset in {folder}")
    files = list(ruleset_files(folder)) if folder.is_dir() else []
    if len(files) == 1:
        return files[0]
    if not files:
        raise NoRuleset(f"no ruleset in {folder}: set NURTURE_HOME or write {folder}/NAME.yaml")
    names = ", ".join(f.stem for f in files)
    raise NoRuleset(f"several rulesets in {folder} ({names}): set NURTURE_RULESET to one")


def compile_checked(path: Path) -> CompiledRuleset:
    """Load and compile, every failure as a RulesetError naming the file."""
    ruleset = load_ruleset(path)
    try:
        return compile_ruleset(ruleset)
    except CompileError as error:
        raise RulesetError([Problem(str(path), 1, str(error))]) from None


def ruleset_in_force(db: Engine, settings: Settings) -> InForce:
    path = choose_file(settings)
    key = str(path.resolve())
    latest = (
        select(VERSIONS.c.id, VERSIONS.c.name, VERSIONS.c.version, VERSIONS.c.source)
        .where(VERSIONS.c.path == key)
        .order_by(VERSIONS.c.loaded_at.desc(), VERSIONS.c.id.desc())
        .limit(1)
    )
    try:
        compiled = compile_checked(path)
    except RulesetError as error:
        with reading(db) as connection:
            last = connection.execute(latest).first()
        if last is None:
            raise
        return InForce(compile_ruleset(parse_ruleset(last.source, str(path))), error.problems)
    ruleset = compiled.ruleset
    with db.begin() as connection:
        last = connection.execute(latest).first()
        if last is not None and (last.name, last.version) == (ruleset.name, ruleset.version):
            return InForce(compiled)  # already the one in force: nothing to write
        known = connection.execute(
            select(VERSIONS.c.id).where(
                VERSIONS.c.name == ruleset.name, VERSIONS.c.version == ruleset.version
            )
        ).first()
        if known is not None:
            # An earlier version back in force (a revert): it is now the one to fall back to.
            connection.execute(
                update(VERSIONS)
                .where(VERSIONS.c.id == known.id)
                .values(path=key, loaded_at=utcnow())
            )
        else:
            try:
                with connection.begin_nested():
                    connection.execute(
                        VERSIONS.insert().values(
                            name=ruleset.name,
                            version=ruleset.version,
                            path=key,
                            source=ruleset.source,
                            loaded_at=utcnow(),
                        )
                    )
            except IntegrityError:
                pass  # another process recorded the same version first
    return InForce(compiled)
