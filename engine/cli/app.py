"""The ``nurture`` command's Typer apps, and what every command opens: the database (migrated
first) and the ruleset and campaigns in force."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from sqlalchemy import Engine
from typer.core import TyperGroup

from engine import db as database
from engine.active import Active, InForce, NoRuleset, active, ruleset_in_force
from engine.cli.output import err, fail
from engine.errors import NurtureError, ProblemsError
from engine.settings import Settings


class Commands(TyperGroup):
    """The root command: an error the user can act on (:class:`NurtureError`: a bad setting, an
    unreachable database, ...) ends any command with its sentence and exit 1, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer.Context; typed loosely as typer vendors click
        try:
            return super().invoke(ctx)
        except NurtureError as error:
            raise fail(str(error)) from None


app = typer.Typer(
    help="Rules-engine lead scoring and nurturing.", no_args_is_help=True, cls=Commands
)
rules_app = typer.Typer(
    help="Check, test, plan and apply rulesets; the version in force.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
model_app = typer.Typer(help="Predictive scores that rulesets can read.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")


def open_db(settings: Settings) -> Engine:
    """The database, migrated; one sentence and exit 1 (see ``Commands``) when it cannot be."""
    return database.open_database(settings.database_url)


def in_force(db: Engine, settings: Settings) -> InForce:
    """The ruleset in force, read again now (status, plan); exit 1 when there is none."""
    try:
        return ruleset_in_force(db, settings, refresh=True)
    except (NoRuleset, ProblemsError) as error:
        raise fail(str(error)) from None


def scoring(db: Engine, settings: Settings) -> Active:
    """The ruleset and campaigns in force, warnings printed; exit 1 when there is no ruleset."""
    try:
        found = active(db, settings)
    except NoRuleset as error:
        raise fail(str(error)) from None
    for warning in found.warnings:
        err.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    return found
