"""stage stays and pipeline rollups

Revision ID: 0010
Revises: 0007
Create Date: 2026-12-02 07:30:00

The pipeline report reads these instead of walking every stage change with window functions:
``stage_stay`` (one row per ``stage_history`` row: the stay's length, the stages the lead entered
after it as bits of ``stage_code``, its previous entry into the stage), and per UTC day the
stays begun (``stage_entry_day``), ended stays by length bucket (``stage_length_day``), moves
(``stage_move_day``) and leads by their first move and the stages they reached
(``stage_cohort_day``). Existing history is backfilled here set-based, the way
``engine.db.rollup.record_moves`` keeps them afterwards (its rules are frozen below).
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_CODES = 62
# Inlined, not bound: grouping by an expression needs the same SQL text in SELECT and GROUP BY.
DAY = sa.literal_column("86400", sa.BigInteger)
HISTORY = sa.table(
    "stage_history",
    sa.column("id", sa.Integer),
    sa.column("lead_id", sa.Integer),
    sa.column("from_stage", sa.String),
    sa.column("to_stage", sa.String),
    sa.column("rule", sa.String),
    sa.column("at", sa.DateTime),
)
# Each rollup's key columns (then its counter, n).
COUNTERS = {
    "stage_entry_day": ["stage", "day", "later", "reentry"],
    "stage_length_day": ["stage", "day", "bucket"],
    "stage_move_day": ["day", "from_stage", "to_stage", "rule"],
    "stage_cohort_day": ["day", "reached"],
}
STAY = sa.table(
    "stage_stay",
    *(sa.column(name) for name in ("lead_id", "seq", "stage", "entered_at", "later")),
    *(sa.column(name) for name in ("prev_entered_at", "stay", "bucket")),
)


def upgrade() -> None:
    stage = sqlmodel.sql.sqltypes.AutoString(length=64)
    op.create_table(
        "stage_code",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", stage, nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "stage_stay",
        sa.Column("lead_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stage", stage, nullable=False),
        sa.Column("entered_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("later", sa.BigInteger(), nullable=False),
        sa.Column("prev_entered_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("stay", sa.BigInteger(), nullable=True),
        sa.Column("bucket", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["lead_id"], ["lead.id"]),
        sa.PrimaryKeyConstraint("lead_id", "seq"),
    )
    counters: list[tuple[str, list[sa.Column[Any]]]] = [
        (
            "stage_entry_day",
            [
                sa.Column("stage", stage, nullable=False),
                sa.Column("day", sa.Integer(), nullable=False),
                sa.Column("later", sa.BigInteger(), autoincrement=False, nullable=False),
                sa.Column("reentry", sa.Boolean(), nullable=False),
            ],
        ),
        (
            "stage_length_day",
            [
                sa.Column("stage", stage, nullable=False),
                sa.Column("day", sa.Integer(), nullable=False),
                sa.Column("bucket", sa.Integer(), nullable=False),
            ],
        ),
        (
            "stage_move_day",
            [
                sa.Column("day", sa.Integer(), nullable=False),
                sa.Column("from_stage", stage, nullable=False),
                sa.Column("to_stage", stage, nullable=False),
                sa.Column("rule", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
            ],
        ),
        (
            "stage_cohort_day",
            [
                sa.Column("day", sa.Integer(), nullable=False),
                sa.Column("reached", sa.BigInteger(), autoincrement=False, nullable=False),
            ],
        ),
    ]
    for name, keys in counters:
        op.create_table(
            name,
            *keys,
            sa.Column("n", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint(*(key.name for key in keys)),
        )
    _backfill()
    op.create_index(
        "ix_stage_stay_entered",
        "stage_stay",
        ["entered_at", "stage", "later", "prev_entered_at", "bucket", "seq"],
    )
    # The changes of a period's partial days, read from the index alone.
    op.drop_index("ix_stage_history_at", table_name="stage_history")
    op.create_index(
        "ix_stage_history_at", "stage_history", ["at", "from_stage", "to_stage", "rule"]
    )
    op.create_index(
        "ix_stage_stay_reentry", "stage_stay", ["prev_entered_at", "entered_at", "stage", "later"]
    )
    op.create_index("ix_stage_stay_length", "stage_stay", ["stage", "bucket", "stay", "entered_at"])


def _backfill() -> None:
    conn = op.get_bind()
    postgres = conn.dialect.name == "postgresql"
    conn.execute(
        sa.text(
            "INSERT INTO stage_code (name) SELECT DISTINCT to_stage FROM stage_history "
            "ORDER BY to_stage"
        )
    )
    bits = {
        name: 1 << (id_ - 1)
        for id_, name in conn.execute(sa.text("SELECT id, name FROM stage_code"))
    }
    if bits and max(bits.values()).bit_length() > MAX_CODES:
        raise RuntimeError(f"more than {MAX_CODES} distinct stage names in stage_history")

    def secs(at: Any) -> Any:  # whole epoch seconds, as the pipeline report truncates them
        if postgres:
            return sa.cast(sa.func.floor(sa.extract("epoch", at)), sa.BigInteger)
        return sa.func.unixepoch(at, type_=sa.BigInteger)

    h = HISTORY.c
    lead_order = {"partition_by": h.lead_id, "order_by": (h.at, h.id)}
    after = {"partition_by": h.lead_id, "order_by": (h.at.desc(), h.id.desc()), "rows": (None, -1)}
    later = sum(
        (
            sa.func.coalesce(
                sa.func.max(sa.case((h.to_stage == name, bit), else_=0)).over(**after), 0
            )
            for name, bit in bits.items()
        ),
        sa.literal(0, sa.BigInteger),
    )
    moves = sa.select(
        h.lead_id,
        (sa.func.row_number().over(**lead_order) - 1).label("seq"),
        h.to_stage.label("stage"),
        h.at.label("entered_at"),
        later.label("later"),
        sa.func.lag(h.at)
        .over(partition_by=(h.lead_id, h.to_stage), order_by=(h.at, h.id))
        .label("prev_entered_at"),
        (sa.cast(sa.func.lead(secs(h.at)).over(**lead_order), sa.BigInteger) - secs(h.at)).label(
            "stay"
        ),
    ).subquery("moves")
    bucket = sa.case(
        (moves.c.stay < 2 * 86400, moves.c.stay // 3600), else_=46 + moves.c.stay // 86400
    )
    columns = [c.name for c in STAY.columns]
    conn.execute(
        STAY.insert().from_select(
            columns, sa.select(*(moves.c[name] for name in columns[:-1]), bucket)
        )
    )
    s = STAY.c
    day = secs(s.entered_at) // DAY
    bit = sa.case(bits, value=s.stage, else_=0) if bits else sa.literal(0)
    reached = s.later.op("|")(bit)
    reentry = s.prev_entered_at.is_not(None)
    rollups = {
        "stage_entry_day": sa.select(s.stage, day, s.later, reentry, sa.func.count()).group_by(
            s.stage, day, s.later, reentry
        ),
        "stage_length_day": sa.select(s.stage, day, s.bucket, sa.func.count())
        .where(s.stay.is_not(None))
        .group_by(s.stage, day, s.bucket),
        "stage_cohort_day": sa.select(day, reached, sa.func.count())
        .where(s.seq == 0)
        .group_by(day, reached),
        "stage_move_day": sa.select(
            secs(h.at) // DAY, h.from_stage, h.to_stage, h.rule, sa.func.count()
        )
        .where(h.from_stage.is_not(None))
        .group_by(secs(h.at) // DAY, h.from_stage, h.to_stage, h.rule),
    }
    for name, query in rollups.items():
        table = sa.table(name, *(sa.column(c) for c in COUNTERS[name]), sa.column("n"))
        conn.execute(table.insert().from_select([*COUNTERS[name], "n"], query))


def downgrade() -> None:
    op.drop_index("ix_stage_history_at", table_name="stage_history")
    op.create_index("ix_stage_history_at", "stage_history", ["at"])
    for name in ("stage_cohort_day", "stage_move_day", "stage_length_day", "stage_entry_day"):
        op.drop_table(name)
    for index in ("ix_stage_stay_length", "ix_stage_stay_reentry", "ix_stage_stay_entered"):
        op.drop_index(index, table_name="stage_stay")
    op.drop_table("stage_stay")
    op.drop_table("stage_code")
