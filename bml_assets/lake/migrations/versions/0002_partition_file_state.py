"""The ledger's layout version 2: what a committed partition's file and completeness are.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

``partitions`` gains the committed file's size and mtime (the shallow scan compares them
with the store's stat), the fillable streams it lacks (``missing_streams``, SPEC §8) and
how many builds in a row left it so (``incomplete_builds``). Nullable, so rows already
there keep NULL (the ledger reads NULL as "none" and 0). ``schema_version`` becomes 2.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = (
    ("file_bytes", sa.BigInteger),
    ("file_mtime_ns", sa.BigInteger),
    ("missing_streams", sa.JSON),
    ("incomplete_builds", sa.Integer),
)

_ledger_meta = sa.table("ledger_meta", sa.column("key", sa.String), sa.column("value", sa.Text))


def _set_schema_version(value: str) -> None:
    op.execute(_ledger_meta.update().where(_ledger_meta.c.key == "schema_version").values(value=value))


def upgrade() -> None:
    # ADD COLUMN on both dialects (SQLite's batch mode needs no table copy for it).
    with op.batch_alter_table("partitions") as batch:
        for name, type_ in _COLUMNS:
            batch.add_column(sa.Column(name, type_))
    _set_schema_version("2")


def downgrade() -> None:
    # Plain DROP COLUMN (SQLite >= 3.35): a batch copy of the table would lose its CHECK constraints.
    for name, _type in reversed(_COLUMNS):
        op.drop_column("partitions", name)
    _set_schema_version("1")
