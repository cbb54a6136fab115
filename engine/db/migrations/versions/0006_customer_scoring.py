"""customer scoring: named scores, time evaluation, alert targets

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 10:00:00

``lead_named_score`` holds each lead's named scores (``scores:`` in a ruleset) with their bands,
indexed for `nurture leads --band NAME=BAND` and the overview's distributions.
``lead.time_due_at`` is when the lead's time-dependent inputs next change: the scheduler's time
evaluation reads the leads due from its index alone, so its cost follows the leads that changed.
``alert.target`` names who an alert is for (``sales``, or a target from NURTURE_ALERT_TARGETS).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "lead_named_score",
        sa.Column("lead_id", sa.Integer(), sa.ForeignKey("lead.id"), primary_key=True),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=64), primary_key=True),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("band", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
    )
    op.create_index("ix_lead_named_score_band", "lead_named_score", ["name", "band"])
    op.add_column(
        "lead", sa.Column("time_due_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
    )
    op.create_index("ix_lead_time_due", "lead", ["time_due_at"])
    op.add_column(
        "alert",
        sa.Column(
            "target",
            sqlmodel.sql.sqltypes.AutoString(length=200),
            nullable=False,
            server_default="sales",
        ),
    )
    op.create_index("ix_alert_lead_target_at", "alert", ["lead_id", "target", "at"])


def downgrade() -> None:
    op.drop_index("ix_alert_lead_target_at", table_name="alert")
    with op.batch_alter_table("alert") as batch:
        batch.drop_column("target")
    op.drop_index("ix_lead_time_due", table_name="lead")
    with op.batch_alter_table("lead") as batch:
        batch.drop_column("time_due_at")
    op.drop_index("ix_lead_named_score_band", table_name="lead_named_score")
    op.drop_table("lead_named_score")
