"""replayable scores

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 07:30:00

Scores become a function of the event log and the ruleset version in force:
- ``event.attributes``: the profile attributes a record set (None for events stored before),
  so a lead can be replayed from its events;
- ``lead.ruleset_version``: the version the lead's stored state is under (None: scored before
  versions were tracked; ``nurture rules apply`` rescores it);
- ``stage_history.rescore``: a stage move made by a rescore rather than an event;
- ``ruleset_apply``: every version that came into force (adopted by an empty database, applied,
  rolled back); the latest row is the version in force.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("event", sa.Column("attributes", sa.JSON(), nullable=True))
    op.add_column(
        "lead",
        sa.Column("ruleset_version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    )
    op.add_column(
        "stage_history",
        sa.Column("rescore", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_table(
        "ruleset_apply",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("commit", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("kind", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("applied_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("finished_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("leads_rescored", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("ruleset_apply")
    with op.batch_alter_table("stage_history") as batch:
        batch.drop_column("rescore")
    with op.batch_alter_table("lead") as batch:
        batch.drop_column("ruleset_version")
    with op.batch_alter_table("event") as batch:
        batch.drop_column("attributes")
