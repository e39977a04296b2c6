"""The ledger's layout version 1: partitions, source_files, watermark, ledger_meta.

Revision ID: 0001
Revises:
Create Date: 2026-12-02

The tables as the first ledger (before migrations) created them with ``create_all``;
``ledger_meta.schema_version`` is set to 1. A pre-migration ledger at schema_version 1
is stamped here (``bml_assets.lake.migrations``) rather than created.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "partitions",
        sa.Column("dataset", sa.String(64), primary_key=True),
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("date", sa.Date, primary_key=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("row_count", sa.BigInteger),
        sa.Column("min_ts", sa.BigInteger),
        sa.Column("max_ts", sa.BigInteger),
        sa.Column("schema_hash", sa.String(64)),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("provenance", sa.JSON, nullable=False),
        sa.Column("source_gaps", sa.JSON, nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("status IN ('committed', 'not_listed', 'not_published')", name="ck_partitions_status"),
        sa.CheckConstraint(
            "status <> 'committed' OR content_hash IS NOT NULL", name="ck_partitions_committed_has_hash"
        ),
    )
    op.create_table(
        "source_files",
        sa.Column("url", sa.Text, primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("checksum_verified", sa.Boolean, nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "watermark",
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("last_complete_minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    ledger_meta = op.create_table(
        "ledger_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.bulk_insert(ledger_meta, [{"key": "schema_version", "value": "1"}])


def downgrade() -> None:
    for name in ("ledger_meta", "watermark", "source_files", "partitions"):
        op.drop_table(name)
