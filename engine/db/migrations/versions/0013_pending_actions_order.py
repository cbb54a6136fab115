"""lead_action: pending alerts read in the alerts job's order; the unused status index dropped

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 20:15:00

The alerts job takes pending alert actions by ``at, id``, 200 a batch. With the index on
``(kind, status)`` alone, both databases read and sorted the whole backlog for each batch (an
import that makes many leads hot at once): 100,000 pending cost ~25 ms a batch, so draining
them grew with the square of the backlog. Ending the index in ``at, id`` gives the order
itself. No statement reads ``status`` alone (the others go by ``lead_id``), so its index was
one more write for every action ingest stores.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_lead_action_kind_status", table_name="lead_action")
    op.drop_index("ix_lead_action_status", table_name="lead_action")
    op.create_index("ix_lead_action_kind_status_at", "lead_action", ["kind", "status", "at", "id"])


def downgrade() -> None:
    op.drop_index("ix_lead_action_kind_status_at", table_name="lead_action")
    op.create_index("ix_lead_action_status", "lead_action", ["status"])
    op.create_index("ix_lead_action_kind_status", "lead_action", ["kind", "status"])
