"""The revisions of the ledger's tables, oldest first (``0001``, ``0002``, ...); Alembic loads them."""
