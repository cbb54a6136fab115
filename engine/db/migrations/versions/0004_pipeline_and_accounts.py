"""pipeline indexes and account domains

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 09:50:00

The pipeline report walks each lead's stage history in order and counts leads per stage and
time in stage; accounts group leads by ``lead.account_domain``, filled here for existing leads
with the same rule as ``engine.rules.account.account_domain`` (then).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# Frozen as it was when this migration was written: migrations import no live code.
FREE_MAIL = frozenset(
    """
    gmail.com googlemail.com yahoo.com yahoo.co.uk yahoo.fr ymail.com hotmail.com
    hotmail.co.uk hotmail.fr outlook.com live.com msn.com aol.com icloud.com me.com mac.com
    proton.me protonmail.com pm.me gmx.com gmx.de gmx.net web.de mail.com yandex.com yandex.ru
    mail.ru qq.com 163.com 126.com zoho.com fastmail.com hey.com tutanota.com
    """.split()  # noqa: SIM905  (one line per few domains: the list stays readable)
)


revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("lead", sa.Column("account_domain", sa.String(length=255), nullable=True))
    op.drop_index("ix_lead_stage", table_name="lead")
    op.create_index("ix_lead_stage_entered", "lead", ["stage", "stage_entered_at"])
    op.drop_index("ix_stage_history_lead_id", table_name="stage_history")
    op.create_index("ix_stage_history_lead_at", "stage_history", ["lead_id", "at", "id"])
    op.create_index("ix_stage_history_at", "stage_history", ["at"])
    # The `domain` attribute when it is a non-blank text, else the email's domain.
    if op.get_bind().dialect.name == "postgresql":
        attribute, is_text = "attributes->>'domain'", "json_typeof(attributes->'domain') = 'string'"
        from_email = "split_part(email, '@', 2)"
    else:
        attribute = "json_extract(attributes, '$.domain')"
        is_text = "json_type(attributes, '$.domain') = 'text'"
        from_email = "substr(email, instr(email, '@') + 1)"
    op.execute(
        f"UPDATE lead SET account_domain = lower(trim(CASE WHEN {is_text} "
        f"AND trim({attribute}) <> '' THEN {attribute} ELSE {from_email} END))"
    )
    lead = sa.table("lead", sa.column("account_domain", sa.String))
    op.execute(
        lead.update()
        .where(lead.c.account_domain.like("www.%"))
        .values(account_domain=sa.func.substr(lead.c.account_domain, 5))
    )
    op.execute(
        lead.update()
        .where(lead.c.account_domain.in_(sorted(FREE_MAIL)) | (lead.c.account_domain == ""))
        .values(account_domain=None)
    )
    op.create_index("ix_lead_account", "lead", ["account_domain", "score"])


def downgrade() -> None:
    op.drop_index("ix_lead_account", table_name="lead")
    op.drop_index("ix_stage_history_at", table_name="stage_history")
    op.drop_index("ix_stage_history_lead_at", table_name="stage_history")
    op.create_index("ix_stage_history_lead_id", "stage_history", ["lead_id"])
    op.drop_index("ix_lead_stage_entered", table_name="lead")
    op.create_index("ix_lead_stage", "lead", ["stage"])
    op.drop_column("lead", "account_domain")
