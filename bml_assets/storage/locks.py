"""Named exclusive locks that serialise the writers of one partition, across threads and processes.

What belongs here: the ``Locks`` protocol (hold a named lock with a timeout; ask whether
someone holds it), its local implementation on ``flock`` (``FileLocks``), the shared
one on PostgreSQL advisory locks (``AdvisoryLocks``), and ``locks_for`` choosing one for
a lake root. What stays out: what is locked and why (``lake/``: one lock per partition,
taken by every commit), and the store (``store.py``).

``FileLocks`` keeps one lock file per name under a folder (the lake's
``_state/locks``), outside the data tree so readers never see them. A lock file is
never deleted: unlinking one lets a third writer lock a new inode while the second
still waits on the old one. ``flock`` holds across processes on one host.

A lake shared by several hosts (``s3://``) takes ``AdvisoryLocks`` in its PostgreSQL
state database: ``pg_try_advisory_lock(bigint)`` on a stable 64-bit hash of the name
(blake2b, the same in every process and on every host), polled with backoff up to the
timeout, on a connection of its own held for the whole block. The lock is the
session's: when the holder dies (kill -9, a lost host) PostgreSQL ends the session and
the lock goes with it. A connection lost while the block runs cannot be noticed inside
it; the block's writes stay safe because each is conditional anyway (the store's
put-if-match, the ledger's compare-and-swap: a second writer makes one of them fail,
never a silent overwrite), and leaving the block then raises ``LockLost`` instead of
returning as if the lock had held. TCP keepalives make a dead connection show within
about half a minute.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import urlsplit

import sqlalchemy as sa
from sqlalchemy.engine.url import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from bml_assets.domain.redaction import redact_url
from bml_assets.storage.store import StoreError, UnsupportedStore, local_root

STATE_DIR_NAME: Final = "_state"
LOCKS_DIR_NAME: Final = "locks"
_BUSY: Final = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class LockTimeout(StoreError, TimeoutError):
    """Another writer held the lock for longer than the timeout."""

    def __init__(self, what: str, location: str, timeout: float) -> None:
        self.location = location
        super().__init__(f"{what}: another writer held the lock {location} for more than {timeout:g} s")


class LockLost(StoreError):
    """The connection holding an advisory lock broke while its block ran: the block may have
    run partly without the lock (its conditional writes still refused any overwrite)."""


class Locks(Protocol):
    """Exclusive locks by name (``dataset/SYMBOL/YYYY-MM-DD``)."""

    def location(self, name: str) -> str:
        """Where the lock is, for messages."""
        ...

    def hold(self, name: str, *, timeout: float, what: str | None = None) -> AbstractContextManager[None]:
        """Hold the lock, waiting up to ``timeout`` seconds (0: not at all), then raise
        ``LockTimeout`` whose message starts with ``what`` (default: the name)."""
        ...

    def busy(self, name: str) -> bool:
        """Whether someone holds the lock at this moment (creates nothing)."""
        ...


class FileLocks:
    """``flock`` on ``{folder}/{name}.lock`` (see the module docstring)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def __repr__(self) -> str:
        return f"FileLocks({str(self.folder)!r})"

    def location(self, name: str) -> str:
        return str(self.folder.joinpath(*name.split("/"))) + ".lock"

    @contextmanager
    def hold(self, name: str, *, timeout: float, what: str | None = None) -> Iterator[None]:
        path = self.location(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            deadline = time.monotonic() + timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in _BUSY:
                        raise
                if time.monotonic() >= deadline:
                    raise LockTimeout(what or name, path, timeout)
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def busy(self, name: str) -> bool:
        try:
            fd = os.open(self.location(name), os.O_RDONLY)
        except FileNotFoundError:
            return False  # never locked
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in _BUSY:
                    return True
                raise
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)


def lock_key(name: str) -> int:
    """The advisory lock's key of ``name``: a signed 64-bit blake2b of it (Python's ``hash``
    differs per process). A collision would only serialise two partitions' writers."""
    return int.from_bytes(hashlib.blake2b(f"bml:{name}".encode(), digest_size=8).digest(), "big", signed=True)


# libpq's TCP keepalives: a connection whose peer is gone fails within ~30 s, not hours.
_KEEPALIVES: Final = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
_TRY_LOCK: Final = sa.text("SELECT pg_try_advisory_lock(:key)")
_UNLOCK: Final = sa.text("SELECT pg_advisory_unlock(:key)")
# A bigint advisory key shows in pg_locks as classid (high 32 bits), objid (low 32), objsubid 1.
_HELD: Final = sa.text(
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid::text::bigint = :high AND objid::text::bigint = :low AND objsubid = 1)"
)


_engines: dict[tuple[int, str], sa.Engine] = {}
_engines_lock = threading.Lock()


def _lock_engine(state_url: str) -> sa.Engine:
    """One engine per database and process: a lake is opened often (per command, per run),
    and each engine would keep its own idle connections. Keyed by pid too, so a forked child
    never uses (or closes) a connection of its parent's."""
    with _engines_lock:
        key = (os.getpid(), state_url)
        engine = _engines.get(key)
        if engine is None:
            url = make_url(state_url)
            keepalives = _KEEPALIVES if url.get_driver_name() in ("psycopg2", "psycopg") else {}
            # AUTOCOMMIT: a lock held for minutes must not keep a transaction (and its snapshot)
            # open. The pool keeps connections for the next lock; one in doubt is discarded.
            engine = sa.create_engine(
                state_url,
                isolation_level="AUTOCOMMIT",
                pool_pre_ping=True,
                pool_size=4,
                max_overflow=-1,
                connect_args=keepalives,
            )
            _engines[key] = engine
        return engine


class AdvisoryLocks:
    """PostgreSQL advisory locks in the database at ``state_url`` (see the module docstring)."""

    def __init__(self, state_url: str) -> None:
        url = make_url(state_url)
        if url.get_backend_name() != "postgresql":
            raise UnsupportedStore(f"advisory locks need PostgreSQL, not {redact_url(state_url)!r}")
        self._shown = redact_url(state_url)
        self._engine = _lock_engine(state_url)

    def __repr__(self) -> str:
        return f"AdvisoryLocks({self._shown!r})"

    def location(self, name: str) -> str:
        return f"advisory lock {lock_key(name)} ({name}) in {self._shown}"

    @contextmanager
    def hold(self, name: str, *, timeout: float, what: str | None = None) -> Iterator[None]:
        key = lock_key(name)
        connection = self._engine.connect()
        try:
            deadline = time.monotonic() + timeout
            delay = 0.005
            while not connection.execute(_TRY_LOCK, {"key": key}).scalar_one():
                if time.monotonic() >= deadline:
                    raise LockTimeout(what or name, self.location(name), timeout)
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            failed = True
            try:
                yield
                failed = False
            finally:
                self._release(connection, key, name, raise_lost=not failed)
        finally:
            connection.close()

    def _release(self, connection: sa.Connection, key: int, name: str, *, raise_lost: bool) -> None:
        """Unlock; a broken connection or a lock no longer held is ``LockLost`` (unless the
        block already failed: its own error is the one to see)."""
        try:
            released = bool(connection.execute(_UNLOCK, {"key": key}).scalar_one())
            problem = None if released else "PostgreSQL says this session no longer held it"
        except DBAPIError as exc:
            problem = f"its connection broke ({type(exc.orig).__name__}: {str(exc.orig).strip()})"
        if problem is None:
            return
        connection.invalidate()  # never hand a connection in doubt to the next holder
        if raise_lost:
            raise LockLost(
                f"{self.location(name)} was lost while held: {problem}; the block's conditional writes "
                "kept the data safe, but check the partition (verify_partition) before trusting the result"
            )

    def busy(self, name: str) -> bool:
        key = lock_key(name)
        with self._engine.connect() as connection:
            return bool(
                connection.execute(_HELD, {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF}).scalar_one()
            )


def locks_for(root: str | Path, *, state_url: str = "") -> Locks:
    """The locks of a lake root: a local lake keeps ``FileLocks`` in ``{root}/_state/locks``;
    an ``s3://`` lake takes ``AdvisoryLocks`` in the PostgreSQL database at ``state_url``."""
    folder = local_root(root)
    if folder is not None:
        return FileLocks(folder.expanduser() / STATE_DIR_NAME / LOCKS_DIR_NAME)
    scheme = urlsplit(str(root)).scheme
    if scheme != "s3":
        raise UnsupportedStore(f"lake root {root!r}: unknown scheme {scheme!r}; no locks for it")
    try:
        backend = make_url(state_url).get_backend_name() if state_url else ""
    except ArgumentError:
        backend = ""
    if backend != "postgresql":
        given = redact_url(state_url) if state_url else "nothing"
        raise UnsupportedStore(
            f"lake root {root!r} is shared object storage: the writers of a partition, on any host, take "
            f"advisory locks in a PostgreSQL state database, but BML_STATE_URL is {given}; set it to "
            "postgresql+psycopg2://user:password@host/db"
        )
    return AdvisoryLocks(state_url)
