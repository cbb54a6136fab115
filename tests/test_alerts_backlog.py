"""A backlog of pending alerts (an import that makes many leads hot at once) is taken a batch at
a time in the order of its index, on SQLite and PostgreSQL: no batch reads and sorts the whole
backlog, which made draining it grow with the square of its length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from engine.alerts.enqueue import BATCH, pending
from engine.db.schema import ACTIONS, LEADS

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def test_a_batch_of_pending_alerts_is_read_in_index_order_not_sorted(db: sa.Engine) -> None:
    with db.begin() as conn:
        conn.execute(
            sa.insert(LEADS),
            [{"email": f"l{i}@example.com", "attributes": {}, "score": 80, "temperature": "hot",
              "stage": "lead", "stage_entered_at": NOW, "tags": [], "subscribed": True,
              "version": 0, "created_at": NOW, "updated_at": NOW} for i in range(3000)],
        )  # fmt: skip
        lead_ids = [row[0] for row in conn.execute(sa.select(LEADS.c.id)).all()]
        # Alerts mixed with the enrollments every import also writes; times out of id order.
        conn.execute(
            sa.insert(ACTIONS),
            [{"lead_id": lead, "kind": kind, "target": "sales", "rule": "hot",
              "at": NOW - timedelta(seconds=(lead * 7919) % 3000), "status": status}
             for lead in lead_ids
             for kind, status in (("alert", "pending"), ("enroll", "applied"))],
        )  # fmt: skip
    with db.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE")  # as autovacuum keeps a live database
    compiled = pending(BATCH).compile(dialect=db.dialect)
    sqlite = db.dialect.name == "sqlite"
    params = compiled.construct_params()
    args: Any = tuple(params[n] for n in compiled.positiontup or ()) if sqlite else params
    with db.connect() as conn:
        plan = " | ".join(
            str(row[-1])
            for row in conn.exec_driver_sql(
                ("EXPLAIN QUERY PLAN " if sqlite else "EXPLAIN ") + str(compiled), args
            ).all()
        )
        assert "ix_lead_action_kind_status_at" in plan, plan
        assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
        taken = [(row.at, row.id) for row in conn.execute(pending(BATCH)).all()]
        everything = conn.execute(
            sa.select(ACTIONS.c.at, ACTIONS.c.id).where(ACTIONS.c.kind == "alert")
        ).all()
    assert taken == sorted((at, id_) for at, id_ in everything)[:BATCH]
