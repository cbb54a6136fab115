"""Which ruleset (and which campaigns) are in force: one service for the CLI, the API and the
scheduler.

The ruleset in force lives in the database: the latest ``ruleset_apply`` row (written by
``nurture rules apply`` / ``rollback``; an empty database adopts the files' version on first
use). Saving a file changes nothing live: a process whose files differ says so once in its log
(and ``nurture rules status`` says so), and a broken file only matters to ``rules check`` and
``status``. Every process sees a newly applied version within ``RECHECK`` seconds: the compiled
version is cached per database and the latest apply id read again at most that often.

The campaigns folder is versioned as before: a broken folder leaves its last good version
(kept in ``ruleset_version``) in force. Versions are keyed by the folder's resolved path."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import Connection, Engine, select, update
from sqlalchemy.exc import IntegrityError

from engine.campaigns.compile import CompiledCampaigns
from engine.campaigns.load import parse_campaigns
from engine.campaigns.spec import Campaign
from engine.db import reading
from engine.db.schema import APPLIES, VERSIONS
from engine.errors import NurtureError, Problem, ProblemsError
from engine.home import compile_checked, compile_text, read_sources, read_text, ruleset_files
from engine.render.templates import Renderer
from engine.rules.compile import CompiledRuleset, CompileError
from engine.rules.spec import Ruleset, version_of
from engine.settings import Settings
from engine.timeutil import utcnow

log = logging.getLogger(__name__)

RECHECK = 2.0  # seconds between two reads of the latest apply id, per process and database
DIFFER = "files differ from the version in force; run nurture rules plan/apply"


@dataclass(frozen=True)
class Applied:
    """A ``ruleset_apply`` row: a version that came into force."""

    id: int
    name: str
    version: str
    source: str
    kind: str  # adopt, apply, rollback
    note: str | None
    commit: str | None
    applied_at: datetime
    finished_at: datetime | None
    leads_rescored: int
    seconds: float | None


@dataclass
class InForce:
    compiled: CompiledRuleset
    # Problems of the file on disk (which the version in force does not depend on).
    problems: list[Problem] = field(default_factory=list)
    applied: Applied | None = None
    file_version: str | None = None  # the version of the file on disk, when it compiles

    @property
    def differs(self) -> bool:
        """The files hold another version than the one in force (or a broken one)."""
        return bool(self.problems) or (
            self.file_version is not None and self.file_version != self.compiled.ruleset.version
        )


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


def _applied(row: object) -> Applied:
    return Applied(*(getattr(row, name) for name in Applied.__dataclass_fields__))


def latest_apply(conn: Connection) -> Applied | None:
    """The version in force (None: an empty database that has adopted nothing yet)."""
    row = conn.execute(select(APPLIES).order_by(APPLIES.c.id.desc()).limit(1)).first()
    return None if row is None else _applied(row)


def apply_history(conn: Connection) -> list[Applied]:
    """Every version that came into force, oldest first."""
    return [_applied(row) for row in conn.execute(select(APPLIES).order_by(APPLIES.c.id))]


def record_apply(
    db: Engine,
    ruleset: Ruleset,
    kind: str,
    note: str | None = None,
    commit: str | None = None,
) -> Applied:
    """Make ``ruleset`` the version in force for every process (this one at once)."""
    applied = _insert_apply(db, ruleset, kind, note, commit)
    forget(db)
    return applied


def _insert_apply(
    db: Engine, ruleset: Ruleset, kind: str, note: str | None, commit: str | None
) -> Applied:
    with db.begin() as conn:
        inserted = conn.execute(
            APPLIES.insert().values(
                name=ruleset.name,
                version=ruleset.version,
                source=ruleset.source,
                note=note,
                commit=commit,
                kind=kind,
                applied_at=utcnow(),
                leads_rescored=0,
            )
        ).inserted_primary_key
        assert inserted is not None
        row = conn.execute(select(APPLIES).where(APPLIES.c.id == inserted[0])).one()
    return _applied(row)


def finish_apply(db: Engine, apply_id: int, leads: int, seconds: float) -> None:
    with db.begin() as conn:
        conn.execute(
            update(APPLIES)
            .where(APPLIES.c.id == apply_id)
            .values(finished_at=utcnow(), leads_rescored=leads, seconds=round(seconds, 3))
        )


@dataclass
class _Cached:
    checked: float  # time.monotonic() of the last read of the latest apply id
    in_force: InForce
    fingerprint: str | None = None  # of the file on disk when last read
    told: set[str] = field(default_factory=set)  # file versions already logged as differing


_CACHE: dict[str, _Cached] = {}
_LOCK = threading.Lock()


def forget(db: Engine) -> None:
    """Read the version in force again on next use (this process just applied one)."""
    with _LOCK:
        _CACHE.pop(str(db.url), None)


def ruleset_in_force(db: Engine, settings: Settings, refresh: bool = False) -> InForce:
    """The version in force (adopting the files' on an empty database), with what the files
        on disk hold. The compiled version is cached; the latest apply id is read again every
    ``RECHECK`` seconds (``refresh``: now)."""
    key = str(db.url)
    with _LOCK:
        cached = _CACHE.get(key)
        now = time.monotonic()
        if cached is not None and not refresh and now - cached.checked < RECHECK:
            # The files are read every time (as cheap as hashing them): an edit is seen at once.
            _check_files(cached, settings)
            return cached.in_force
        with reading(db) as conn:
            applied = latest_apply_id(conn)
        adopted = None
        if applied is None:
            adopted = compile_checked(choose_file(settings), settings.home)
            _insert_apply(db, adopted.ruleset, "adopt", None, None)
            cached = None
        if (
            cached is None
            or cached.in_force.applied is None
            or (applied is not None and cached.in_force.applied.id != applied)
        ):
            in_force = _load(db, settings, adopted)
            cached = _Cached(now, in_force, told=cached.told if cached else set())
            _CACHE[key] = cached
        cached.checked = now
        _check_files(cached, settings)
        return cached.in_force


def latest_apply_id(conn: Connection) -> int | None:
    return conn.execute(select(APPLIES.c.id).order_by(APPLIES.c.id.desc()).limit(1)).scalar()


def _load(db: Engine, settings: Settings, adopted: CompiledRuleset | None = None) -> InForce:
    """The latest apply, compiled; ``adopted``: the file's ruleset this process just adopted,
    not compiled again when the latest apply is its source (a new database's first command)."""
    with reading(db) as conn:
        applied = latest_apply(conn)
    assert applied is not None
    if adopted is not None and adopted.ruleset.source == applied.source:
        return InForce(adopted, applied=applied)
    try:
        path = str(choose_file(settings))
    except NoRuleset:
        path = f"{applied.name} (version {applied.version} in force)"
    compiled = compile_text(applied.source, path, settings.home)
    return InForce(compiled, applied=applied)


def _check_files(cached: _Cached, settings: Settings) -> None:
    """What the ruleset file holds, compiled again only when its text changed; a version that
    differs from the one in force is logged once per process."""
    in_force = cached.in_force
    try:
        path = choose_file(settings)
        text = read_text(path)
    except (NoRuleset, ProblemsError):
        return
    fingerprint = _fingerprint(text)
    if fingerprint == cached.fingerprint:
        return
    cached.fingerprint = fingerprint
    in_force.problems, in_force.file_version = [], version_of(text)
    if in_force.file_version == in_force.compiled.ruleset.version:
        return
    try:
        compile_checked(path, settings.home)
    except ProblemsError as error:
        in_force.problems = error.problems
    if in_force.file_version not in cached.told:
        cached.told.add(in_force.file_version)
        log.warning("%s: %s", path, DIFFER)


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
