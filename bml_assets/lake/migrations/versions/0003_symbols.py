"""The exchange's symbol universe (``bml symbols sync``) joins the migrated tables.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02

Before migrations the ``symbols`` table was created on its first use, so a pre-migration
ledger that synced the universe already has it: it is created here only when absent (the
adoption of a pre-migration ledger then checks that it matches). Not a layout change for
readers of the other tables, so ``schema_version`` stays 2.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("symbols"):
        return
    op.create_table(
        "symbols",
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("onboard_date", sa.Date),
        sa.Column("delist_date", sa.Date),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("symbols")
