"""The state database's engine: one SQLAlchemy setup shared by the ledger and the REST budget.

What belongs here: creating the engine for ``BML_STATE_URL``. On SQLite: the
parent folder, WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for transactions
that will write, so several processes wait for each other instead of failing
with "database is locked". On PostgreSQL: a pre-pinged pool, and a probe of the
server for callers that wait out its restart (``server_probe``). What stays out:
tables and queries (``lake/ledger.py``, ``sources/rest_budget.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import make_url

# Execution option: transactions opened through an engine carrying it take the write lock first.
WRITE_OPTION = "bml_write"


def create_state_engine(
    url: str, *, busy_timeout_s: float, synchronous: str | None = None, write_by_default: bool = False
) -> Engine:
    """The engine for ``url``; ``synchronous`` sets SQLite's PRAGMA of that name (e.g. NORMAL
    for state that is cheap to lose), ``write_by_default`` makes every transaction a writer."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": busy_timeout_s})

    # pysqlite begins lazily and defers the write lock to the first write; two processes
    # that both read first would then fail instead of waiting. Taking over BEGIN
    # (SQLAlchemy's documented recipe) lets writers take the lock up front.
    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves
        cursor = dbapi_connection.cursor()
        try:
            # busy_timeout first: switching to WAL itself needs a lock.
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA foreign_keys = ON")
            if synchronous is not None:
                cursor.execute(f"PRAGMA synchronous = {synchronous}")
        finally:
            cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(WRITE_OPTION, write_by_default)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def server_probe(url: str) -> Callable[[], None] | None:
    """A check that the server behind ``url`` answers (a new connection and ``SELECT 1``; it
    raises the driver's error when not), for a caller waiting out a restart. None on SQLite:
    a file does not go away under a run."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return None
    # libpq's: a bounded connect, and keepalives so that a peer gone silent mid-query is given up.
    connect_args = (
        {"connect_timeout": 5, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 2}
        if parsed.get_backend_name() == "postgresql"
        else {}
    )
    # No pool: a probe must not be answered by a connection opened before the restart.
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool, connect_args=connect_args)

    def probe() -> None:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))

    return probe
