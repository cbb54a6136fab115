"""The plan a database chooses for a statement, on tables analyzed as a live database keeps
them: for the tests that hold a batch's read to its index (no sort of the whole backlog)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from engine.db.schema import LEADS


def bare_leads(db: sa.Engine, count: int, at: datetime, **values: Any) -> list[int]:
    """Insert ``count`` leads with nothing but the required columns (``values`` override them);
    their ids."""
    row = {"attributes": {}, "score": 0, "temperature": "cold", "stage": "lead",
           "stage_entered_at": at, "tags": [], "subscribed": True, "version": 0,
           "created_at": at, "updated_at": at} | values  # fmt: skip
    with db.begin() as conn:
        conn.execute(
            sa.insert(LEADS), [{**row, "email": f"l{i}@example.com"} for i in range(count)]
        )
        return [lead for (lead,) in conn.execute(sa.select(LEADS.c.id)).all()]


def analyze(db: sa.Engine) -> None:
    """The planner's statistics, as autovacuum keeps them in a live database."""
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")


def query_plan(
    db: sa.Engine, statement: sa.Select[Any], values: Mapping[str, Any] | None = None
) -> str:
    """``EXPLAIN`` (SQLite: ``EXPLAIN QUERY PLAN``) of ``statement`` with ``values`` bound, its
    lines joined by `` | ``."""
    compiled = statement.compile(dialect=db.dialect)
    params = compiled.construct_params(dict(values or {}))
    sqlite = db.dialect.name == "sqlite"
    args: Any = tuple(params[n] for n in compiled.positiontup or ()) if sqlite else params
    explain = "EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN "
    with db.connect() as conn:
        rows = conn.exec_driver_sql(explain + str(compiled), args).all()
    return " | ".join(str(row[-1]) for row in rows)
