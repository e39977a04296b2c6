"""Named exclusive locks that serialise the writers of one partition, across threads and processes.

What belongs here: the ``Locks`` protocol (hold a named lock with a timeout; ask whether
someone holds it), its local implementation on ``flock`` (``FileLocks``), and
``locks_for`` choosing one for a lake root. What stays out: what is locked and why
(``lake/``: one lock per partition, taken by every commit), and the store (``store.py``).

``FileLocks`` keeps one lock file per name under a folder (the lake's
``_state/locks``), outside the data tree so readers never see them. A lock file is
never deleted: unlinking one lets a third writer lock a new inode while the second
still waits on the old one. ``flock`` holds across processes on one host; a lake
shared by several hosts (issue 12) takes advisory locks in PostgreSQL instead
(``pg_advisory_lock`` on a hash of the name), which fit the same protocol.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Final, Protocol

from bml_assets.storage.store import StoreError, UnsupportedStore, local_root

STATE_DIR_NAME: Final = "_state"
LOCKS_DIR_NAME: Final = "locks"
_BUSY: Final = (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK)


class LockTimeout(StoreError, TimeoutError):
    """Another writer held the lock for longer than the timeout."""

    def __init__(self, what: str, location: str, timeout: float) -> None:
        self.location = location
        super().__init__(f"{what}: another writer held the lock {location} for more than {timeout:g} s")


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


def locks_for(root: str | Path, *, state_url: str = "") -> Locks:
    """The locks of a lake root: a local lake keeps ``FileLocks`` in ``{root}/_state/locks``."""
    folder = local_root(root)
    if folder is None:
        raise UnsupportedStore(
            f"lake root {root!r}: only a local lake has file locks; a shared lake takes advisory locks "
            "in the state database (not supported yet)"
        )
    return FileLocks(folder.expanduser() / STATE_DIR_NAME / LOCKS_DIR_NAME)
