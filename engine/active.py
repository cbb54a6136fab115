"""Which ruleset (and which campaigns) are in force: one service for the CLI, the API and the
scheduler. A file that fails its checks never replaces
the last good version: each good version's source is kept in ``ruleset_version`` and a broken
file falls back to it. The campaigns folder is kept the same way, as one unit.

Versions are keyed by the file's resolved path (``NURTURE_HOME=.`` and ``/srv/x`` are one file),
and ``loaded_at`` marks when a version last came into force, so a revert to an older version is
what a later broken edit falls back to."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError

from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.load import parse_campaigns
from engine.campaigns.spec import Campaign
from engine.db import reading
from engine.db.schema import VERSIONS
from engine.errors import NurtureError, Problem, ProblemsError
from engine.home import compile_checked, compile_text, read_sources, read_text, ruleset_files
from engine.render.templates import Renderer
from engine.rules.compile import CompiledRuleset, CompileError
from engine.rules.spec import Ruleset, version_of
from engine.settings import Settings
from engine.timeutil import utcnow


@dataclass
class InForce:
    compiled: CompiledRuleset
    # Problems of the file on disk when it was rejected and an earlier version kept in force.
    problems: list[Problem] = field(default_factory=list)


class NoRuleset(NurtureError):
    """No ruleset can be in force: none on disk, or only a broken one and no earlier version."""


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


def _last_good(db: Engine, key: str) -> str | None:
    """The source of the version that last came into force from ``key`` (a resolved path)."""
    latest = (
        select(VERSIONS.c.source)
        .where(VERSIONS.c.path == key)
        .order_by(VERSIONS.c.loaded_at.desc(), VERSIONS.c.id.desc())
        .limit(1)
    )
    with reading(db) as connection:
        return connection.execute(latest).scalar()


def _remember(db: Engine, key: str, name: str, version: str, source: str) -> None:
    """Record ``version`` as the one in force for ``key``; a no-op when it already is."""
    with db.begin() as connection:
        last = connection.execute(
            select(VERSIONS.c.name, VERSIONS.c.version)
            .where(VERSIONS.c.path == key)
            .order_by(VERSIONS.c.loaded_at.desc(), VERSIONS.c.id.desc())
            .limit(1)
        ).first()
        if last is not None and (last.name, last.version) == (name, version):
            return
        known = connection.execute(
            select(VERSIONS.c.id).where(VERSIONS.c.name == name, VERSIONS.c.version == version)
        ).first()
        if known is not None:
            # An earlier version back in force (a revert): it is now the one to fall back to.
            connection.execute(
                update(VERSIONS)
                .where(VERSIONS.c.id == known.id)
                .values(path=key, loaded_at=utcnow())
            )
            return
        try:
            with connection.begin_nested():
                connection.execute(
                    VERSIONS.insert().values(
                        name=name, version=version, path=key, source=source, loaded_at=utcnow()
                    )
                )
        except IntegrityError:
            pass  # another process recorded the same version first


# The last answer per database and file (or folder), with a fingerprint of what was read:
# parsing YAML and recording the version cost tens of milliseconds, too much for every API
# request while the files stay the same. By content, not mtime, so an edit is seen at once; only
# the last answer, so a revert to an earlier text is worked out (and recorded) again.
_LAST: dict[tuple[str, str, str], tuple[str, object]] = {}


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogateescape")).hexdigest()


def ruleset_in_force(db: Engine, settings: Settings) -> InForce:
    path = choose_file(settings)
    try:
        text = read_text(path)
    except ProblemsError:
        text = ""  # unreadable or too large: the full load below says why
    slot, fingerprint = ("ruleset", str(db.url), str(path)), _fingerprint(text)
    last = _LAST.get(slot)
    if last is not None and last[0] == fingerprint and isinstance(last[1], InForce):
        return last[1]
    found = _ruleset_in_force(db, path, settings.home)
    _LAST[slot] = (fingerprint, found)
    return found


def _ruleset_in_force(db: Engine, path: Path, home: Path) -> InForce:
    key = str(path.resolve())
    try:
        compiled = compile_checked(path, home)
    except ProblemsError as error:
        source = _last_good(db, key)
        if source is None:
            raise
        try:
            kept = compile_text(source, str(path), home)
        except ProblemsError:
            # The version kept no longer passes (a bound added since): the file's problems
            # are the ones to fix.
            raise error from None
        return InForce(kept, error.problems)
    ruleset = compiled.ruleset
    _remember(db, key, ruleset.name, ruleset.version, ruleset.source)
    return InForce(compiled)


@dataclass
class CampaignsInForce:
    compiled: CompiledCampaigns
    problems: list[Problem] = field(default_factory=list)


def campaigns_in_force(
    db: Engine, settings: Settings, ruleset: Ruleset, templates: Iterable[str] | None = None
) -> CampaignsInForce:
    """The campaigns folder as one versioned unit: a broken file (or a step naming a missing
    template) leaves the last good set of campaigns in force, as for rulesets."""
    key = str(settings.campaigns_dir.resolve())
    names = sorted(templates) if templates is not None else None
    try:
        sources = read_sources(settings.campaigns_dir)
    except ProblemsError as error:
        return _kept_campaigns(db, key, ruleset, names, error)
    slot = ("campaigns", str(db.url), key)
    fingerprint = _fingerprint(
        ruleset.name, ruleset.version, json.dumps(sources, sort_keys=True), json.dumps(names)
    )
    last = _LAST.get(slot)
    if last is not None and last[0] == fingerprint:
        if isinstance(last[1], ProblemsError):
            raise ProblemsError(last[1].problems)  # a fresh one: a re-raise grows its traceback
        if isinstance(last[1], CampaignsInForce):
            return last[1]
    try:
        found = _campaigns_in_force(db, key, sources, ruleset, names)
    except ProblemsError as error:
        _LAST[slot] = (fingerprint, error)
        raise
    _LAST[slot] = (fingerprint, found)
    return found


def _campaigns_in_force(
    db: Engine, key: str, sources: dict[str, str], ruleset: Ruleset, names: list[str] | None
) -> CampaignsInForce:
    try:
        campaigns = parse_campaigns(sources, ruleset, names)
        compiled = compiled_campaigns(ruleset, campaigns, key)
    except ProblemsError as error:
        return _kept_campaigns(db, key, ruleset, names, error)
    if sources:
        source = json.dumps(sources, sort_keys=True)
        version = version_of(source)
        _remember(db, key, "campaigns:" + key[-150:], version, source)
    return CampaignsInForce(compiled)


def _kept_campaigns(
    db: Engine, key: str, ruleset: Ruleset, names: list[str] | None, error: ProblemsError
) -> CampaignsInForce:
    """The last good campaigns, with the problems of the folder on disk; else ``error``."""
    stored = _last_good(db, key)
    if stored is None:
        raise error
    try:
        kept = compiled_campaigns(ruleset, parse_campaigns(json.loads(stored), ruleset, names), key)
    except ProblemsError:
        raise error from None
    return CampaignsInForce(kept, error.problems)


def compiled_campaigns(ruleset: Ruleset, campaigns: list[Campaign], key: str) -> CompiledCampaigns:
    """The campaigns compiled; what the rules engine refuses as a ProblemsError on ``key``."""
    try:
        return CompiledCampaigns(ruleset, campaigns)
    except CompileError as error:
        raise ProblemsError([Problem(key, 1, str(error))]) from None


@dataclass
class Active:
    """What scoring runs with: the ruleset in force, the campaigns in force (None when the
    campaigns folder is broken with no good version: scoring goes on without enrolling anyone),
    and warnings about files on disk whose last good version stays in force."""

    compiled: CompiledRuleset
    campaigns: CompiledCampaigns | None
    warnings: list[str] = field(default_factory=list)


def active(db: Engine, settings: Settings) -> Active:
    """The ruleset and campaigns in force; NoRuleset when there is no ruleset to score with."""
    try:
        ruleset = ruleset_in_force(db, settings)
    except ProblemsError as error:
        raise NoRuleset(
            f"the ruleset has errors and no earlier version is in force:\n{error}"
        ) from None
    warnings = []
    if ruleset.problems:
        warnings.append(
            f"the ruleset file has errors; version {ruleset.compiled.ruleset.version} stays in "
            "force:\n" + "\n".join(str(p) for p in ruleset.problems)
        )
    templates = Renderer(settings.templates_dir).names()
    try:
        found = campaigns_in_force(db, settings, ruleset.compiled.ruleset, templates)
    except ProblemsError as error:
        warnings.append(f"campaigns not applied (no good version yet):\n{error}")
        return Active(ruleset.compiled, None, warnings)
    if found.problems:
        warnings.append(
            "the campaigns have errors; the last good version stays in force:\n"
            + "\n".join(str(p) for p in found.problems)
        )
    return Active(ruleset.compiled, found.compiled, warnings)
