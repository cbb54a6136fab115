"""sales alerts

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 09:55:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("action_id", sa.Integer(), nullable=False),
        sa.Column("rule", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("event_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
        sa.Column("at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("received_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("suppressed", sa.Text(), nullable=True),
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=320), nullable=True),
        sa.Column("owner_source", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True),
        sa.Column("roster_turn", sa.Integer(), nullable=True),
        sa.Column("score", sa.Integer(), nullable=False),
        sa.Column("temperature", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("stage", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"]),
        sa.ForeignKeyConstraint(["action_id"], ["lead_action.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("action_id"),
    )
    op.create_index("ix_alert_lead_at", "alert", ["lead_id", "at"], unique=False)
    op.create_index(op.f("ix_alert_roster_turn"), "alert", ["roster_turn"], unique=False)
    op.create_index("ix_lead_action_kind_status", "lead_action", ["kind", "status"], unique=False)
    with op.batch_alter_table("outbox_message") as batch:
        batch.add_column(sa.Column("alert_id", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("payload", sa.JSON(), nullable=True))
        batch.create_foreign_key("fk_outbox_message_alert_id", "alert", ["alert_id"], ["id"])
        batch.create_index(op.f("ix_outbox_message_alert_id"), ["alert_id"], unique=False)
        batch.create_index(
            "ix_outbox_kind_status_due", ["kind", "status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox_message") as batch:
        batch.drop_index("ix_outbox_kind_status_due")
        batch.drop_index(op.f("ix_outbox_message_alert_id"))
        batch.drop_constraint("fk_outbox_message_alert_id", type_="foreignkey")
        batch.drop_column("payload")
        batch.drop_column("alert_id")
    op.drop_index("ix_lead_action_kind_status", table_name="lead_action")
    op.drop_index(op.f("ix_alert_roster_turn"), table_name="alert")
    op.drop_index("ix_alert_lead_at", table_name="alert")
    op.drop_table("alert")
