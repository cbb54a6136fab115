"""dashboard sessions

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 05:00:00

The dashboard signs people in with a session of its own instead of keeping the API token in a
cookie: one row per session, keyed by the SHA-256 of its random id (the id itself is only in the
browser), with the fingerprint of the API token it was opened with and when it expires. Signing
out deletes the row.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "dashboard_session",
        sa.Column("id_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("credential", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index(
        op.f("ix_dashboard_session_expires_at"), "dashboard_session", ["expires_at"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_dashboard_session_expires_at"), table_name="dashboard_session")
    op.drop_table("dashboard_session")
