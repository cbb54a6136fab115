"""Every setting is documented: each field of ``engine.settings.Settings`` has a row in the
README's "Settings (environment)" table, under its variable (``NURTURE_<NAME>`` or an alias such
as ``SENDGRID_API_KEY``), and each row names a setting that exists."""

from __future__ import annotations

import re

from pydantic import AliasChoices

from engine.settings import Settings
from tests.helpers import ROOT


def documented() -> set[str]:
    """The variables in the first column of the README's settings table."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Settings (environment)\n", 1)[1].split("\n## ", 1)[0]
    first_cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([A-Z][A-Z0-9_]*)`", cell)}


def variables(name: str) -> set[str]:
    """The environment variables that set the field ``name``."""
    alias = Settings.model_fields[name].validation_alias
    if isinstance(alias, AliasChoices):
        return {choice for choice in alias.choices if isinstance(choice, str)}
    return {f"NURTURE_{name.upper()}"}


def test_every_setting_has_a_row_in_the_readme() -> None:
    table = documented()
    missing = [name for name in Settings.model_fields if not variables(name) & table]
    assert missing == [], f"settings missing from README's Settings (environment): {missing}"


def test_every_row_of_the_table_is_a_setting() -> None:
    known = set().union(*(variables(name) for name in Settings.model_fields))
    assert documented() - known == set()
