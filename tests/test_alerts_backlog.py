"""A backlog of pending alerts (an import that makes many leads hot at once) is taken a batch at
a time in the order of its index, on SQLite and PostgreSQL: no batch reads and sorts the whole
backlog, which made draining it grow with the square of its length."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from engine.alerts.enqueue import BATCH, pending
from engine.db.schema import ACTIONS
from tests.plans import analyze, bare_leads, query_plan

NOW = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)


def test_a_batch_of_pending_alerts_is_read_in_index_order_not_sorted(db: sa.Engine) -> None:
    lead_ids = bare_leads(db, 3000, NOW, score=80, temperature="hot")
    # Alerts mixed with the enrollments every import also writes; times out of id order.
    with db.begin() as conn:
        conn.execute(
            sa.insert(ACTIONS),
            [{"lead_id": lead, "kind": kind, "target": "sales", "rule": "hot",
              "at": NOW - timedelta(seconds=(lead * 7919) % 3000), "status": status}
             for lead in lead_ids
             for kind, status in (("alert", "pending"), ("enroll", "applied"))],
        )  # fmt: skip
    analyze(db)
    plan = query_plan(db, pending(BATCH))
    assert "ix_lead_action_kind_status_at" in plan, plan
    assert "Sort" not in plan and "TEMP B-TREE" not in plan, plan
    with db.connect() as conn:
        taken = [(row.at, row.id) for row in conn.execute(pending(BATCH)).all()]
        everything = conn.execute(
            sa.select(ACTIONS.c.at, ACTIONS.c.id).where(ACTIONS.c.kind == "alert")
        ).all()
    assert taken == sorted((at, id_) for at, id_ in everything)[:BATCH]
