"""Alembic's environment for the ledger's migrations: Alembic runs it, nothing imports it.

bml runs every migration on a connection it opened itself, inside its own transaction and
lock (``upgrade_to_head``); the connection arrives in ``config.attributes``. There is no
offline (``--sql``) mode: a migration may look at the database (``0003``).
"""

from alembic import context

from bml_assets.lake.migrations import context_options

connection = context.config.attributes.get("connection")
if connection is None or context.is_offline_mode():
    raise RuntimeError(
        "the ledger's migrations run on a connection bml opens: use `bml db upgrade` (or Ledger.init), "
        "not the alembic command line"
    )
context.configure(connection=connection, **context_options())
with context.begin_transaction():
    context.run_migrations()
