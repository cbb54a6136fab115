"""outbox: no index on lead_id alone, alerts' index only over alerts' messages

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 16:40:00

Every message written updated seven indexes. ``ix_outbox_message_lead_id`` repeated the first
column of ``ix_outbox_lead_created`` (lead_id, created_at, status), which answers every lookup by
lead; ``ix_outbox_message_alert_id`` held an entry (NULL) for every campaign email, though only
an alert's messages are ever looked up by alert. The first is dropped, the second kept only
where ``alert_id`` is set: the server's work per message written drops, no query's plan needs
what is gone.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ALERTS_ONLY = sa.text("alert_id IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_outbox_message_lead_id", table_name="outbox_message")
    op.drop_index("ix_outbox_message_alert_id", table_name="outbox_message")
    op.create_index(
        "ix_outbox_message_alert_id",
        "outbox_message",
        ["alert_id"],
        sqlite_where=ALERTS_ONLY,
        postgresql_where=ALERTS_ONLY,
    )


def downgrade() -> None:
    op.drop_index("ix_outbox_message_alert_id", table_name="outbox_message")
    op.create_index("ix_outbox_message_alert_id", "outbox_message", ["alert_id"])
    op.create_index("ix_outbox_message_lead_id", "outbox_message", ["lead_id"])
