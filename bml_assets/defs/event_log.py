"""The Dagster event log of the instance the ``bml`` commands run in: Dagster's own SQLite
event log (the same files, tables and rows under ``$DAGSTER_HOME/history/runs``), with its
database connections kept open.

Dagster's ``SqliteEventLogStorage`` creates a SQLAlchemy engine, opens a connection and
closes it again for every event it stores (``_connect``); closing the last connection of a
WAL database checkpoints it. A one-day run stores ≈ 200 events, so that was ≈ 1.2 s of a
3-4 s run on 2 cores (bench/results.md, issue 11 item 2). ``KeptOpenSqliteEventLogStorage``
keeps one engine with one connection per shard (the index and the few runs written last),
used under Dagster's own lock as before, so each event costs its insert and commit only.

What belongs here: that storage and the override that selects it (``kept_open_overrides``).
What stays out: which instance is opened and when (``orchestration/runner.py``). The
daemon and the webserver keep Dagster's default storage from dagster.yaml: both read and
write the same files.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SQLITE_BUSY_TIMEOUT_SECONDS, SqliteEventLogStorage
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

# The index shard and the runs written last: a backfill writes one run after another, so
# older runs' connections are closed instead of piling up (one file handle each).
MAX_OPEN_SHARDS = 4


class KeptOpenSqliteEventLogStorage(SqliteEventLogStorage):
    """``SqliteEventLogStorage`` that keeps a connection per shard open between events."""

    def __init__(self, base_dir: str, inst_data: Any = None) -> None:
        # Before Dagster's __init__: a new home's index is created (and reindexed) in it.
        self._engines: OrderedDict[str, Engine] = OrderedDict()
        super().__init__(base_dir, inst_data=inst_data)

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Any) -> KeptOpenSqliteEventLogStorage:
        return cls(inst_data=inst_data, **config_value)

    @property
    def open_shards(self) -> tuple[str, ...]:
        """The shards whose connection is open, least recently used first."""
        return tuple(self._engines)

    @contextmanager
    def _connect(self, shard: str) -> Iterator[Connection]:
        # Dagster's lock, held as Dagster holds it: one user of the storage's connections at a time.
        with self._db_lock:
            engine = self._engines.get(shard)
            if engine is None:
                engine = create_engine(
                    self.conn_string_for_shard(shard),
                    # One connection, reused; other threads may use it, one at a time (the lock).
                    poolclass=StaticPool,
                    connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS, "check_same_thread": False},
                )
                if shard not in self._initialized_dbs:
                    self._initdb(engine)
                    self._initialized_dbs.add(shard)
                self._engines[shard] = engine
                while len(self._engines) > MAX_OPEN_SHARDS:
                    self._engines.popitem(last=False)[1].dispose()
            self._engines.move_to_end(shard)
            # The transaction ends with the block (commit, or rollback on error), as before:
            # no snapshot is held open between events.
            with engine.connect() as conn, conn.begin():
                yield conn

    def dispose(self) -> None:
        with self._db_lock:
            while self._engines:
                self._engines.popitem()[1].dispose()
        super().dispose()


def kept_open_overrides(home: Path) -> dict[str, Any]:
    """Instance config overrides that select ``KeptOpenSqliteEventLogStorage`` over the event
    log Dagster would use in ``home`` (its default directory), for ``InstanceRef.from_dir``."""
    default = InstanceRef.config_defaults(str(home))["event_log_storage"]
    return {
        "event_log_storage": {
            "module": __name__,
            "class": KeptOpenSqliteEventLogStorage.__name__,
            "config": {"base_dir": default.config_dict["base_dir"]},
        }
    }
