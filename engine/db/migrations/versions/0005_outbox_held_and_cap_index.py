"""outbox: held messages have no parts; an index for frequency caps

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23 11:05:00

A message whose template fails is held with its error and no subject, html or text (never blank
ones), so those columns become nullable. Frequency caps read each lead's recent messages: the
index on (lead_id, created_at, status) answers that without reading the rows, whose large html
and text would otherwise be read from overflow pages for every lead of every batch.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox_message") as batch:
        for column in ("subject", "html", "text"):
            batch.alter_column(column, existing_type=sa.Text(), nullable=True)
    op.create_index("ix_outbox_lead_created", "outbox_message", ["lead_id", "created_at", "status"])


def downgrade() -> None:
    op.drop_index("ix_outbox_lead_created", table_name="outbox_message")
    with op.batch_alter_table("outbox_message") as batch:
        for column in ("subject", "html", "text"):
            batch.alter_column(column, existing_type=sa.Text(), nullable=False)
