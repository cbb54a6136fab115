"""event feedback columns

Revision ID: 0009
Revises: 0007
Create Date: 2026-12-02 08:00:00

The outbox row and campaign a piece of feedback is about, as columns of ``event``
(``outbox_id``, ``campaign``), with a partial index over the events that have either: the
dashboard's campaign figures read them instead of every feedback event's JSON. Events stored
before are filled in set-based SQL by the rules of ``engine.ingest.feedback``: ``outbox_id``
where ``properties.outbox_id`` is a row id (digits, as text or a number), ``campaign`` from
``properties.category`` (the first of a list) else ``properties.campaign``.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAMED = "outbox_id IS NOT NULL OR campaign IS NOT NULL"
MAX_ROW_ID = 2**31 - 1

# SQLite's JSON1: json_type says what a value is ('text', 'integer', 'array', ...).
SQLITE = f"""
UPDATE event SET
  outbox_id = CASE
    WHEN json_type(properties, '$.outbox_id') = 'integer'
         AND json_extract(properties, '$.outbox_id') BETWEEN 1 AND {MAX_ROW_ID}
      THEN json_extract(properties, '$.outbox_id')
    WHEN json_type(properties, '$.outbox_id') = 'text'
         AND json_extract(properties, '$.outbox_id') NOT GLOB '*[^0-9]*'
         AND length(json_extract(properties, '$.outbox_id')) BETWEEN 1 AND 18
         AND CAST(json_extract(properties, '$.outbox_id') AS INTEGER) BETWEEN 1 AND {MAX_ROW_ID}
      THEN CAST(json_extract(properties, '$.outbox_id') AS INTEGER)
  END,
  campaign = substr(COALESCE(
    CASE WHEN json_type(properties, '$.category[0]') IN ('text', 'integer', 'real')
      THEN CAST(json_extract(properties, '$.category[0]') AS TEXT) END,
    CASE WHEN json_type(properties, '$.category') IN ('text', 'integer', 'real')
      THEN CAST(json_extract(properties, '$.category') AS TEXT) END,
    CASE WHEN json_type(properties, '$.campaign') IN ('text', 'integer', 'real')
      THEN CAST(json_extract(properties, '$.campaign') AS TEXT) END
  ), 1, 200)
WHERE json_extract(properties, '$.outbox_id') IS NOT NULL
   OR json_extract(properties, '$.category') IS NOT NULL
   OR json_extract(properties, '$.campaign') IS NOT NULL
"""

# PostgreSQL's json: json_typeof says what a value is ('string', 'number', 'array', ...).
POSTGRESQL = f"""
UPDATE event SET
  outbox_id = CASE
    WHEN json_typeof(properties -> 'outbox_id') IN ('string', 'number')
         AND properties ->> 'outbox_id' ~ '^[0-9]{{1,18}}$'
         AND (properties ->> 'outbox_id')::bigint BETWEEN 1 AND {MAX_ROW_ID}
      THEN (properties ->> 'outbox_id')::bigint
  END,
  campaign = left(COALESCE(
    CASE WHEN json_typeof(properties -> 'category') = 'array'
              AND json_typeof(properties -> 'category' -> 0) IN ('string', 'number')
      THEN properties -> 'category' ->> 0 END,
    CASE WHEN json_typeof(properties -> 'category') IN ('string', 'number')
      THEN properties ->> 'category' END,
    CASE WHEN json_typeof(properties -> 'campaign') IN ('string', 'number')
      THEN properties ->> 'campaign' END
  ), 200)
WHERE properties ->> 'outbox_id' IS NOT NULL
   OR properties ->> 'category' IS NOT NULL
   OR properties ->> 'campaign' IS NOT NULL
"""


def upgrade() -> None:
    with op.batch_alter_table("event") as batch:
        batch.add_column(sa.Column("outbox_id", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("campaign", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
    dialect = op.get_bind().dialect.name
    op.execute(POSTGRESQL if dialect == "postgresql" else SQLITE)
    op.create_index(
        "ix_event_feedback",
        "event",
        ["type", "campaign", "outbox_id", "lead_id"],
        unique=False,
        sqlite_where=sa.text(NAMED),
        postgresql_where=sa.text(NAMED),
    )


def downgrade() -> None:
    op.drop_index("ix_event_feedback", table_name="event")
    with op.batch_alter_table("event") as batch:
        batch.drop_column("campaign")
        batch.drop_column("outbox_id")
