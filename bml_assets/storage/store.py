"""The object store under the lake: keys mapped to bytes, published atomically and conditionally.

What belongs here: the ``Store`` protocol the lake is written against, its local
file-system implementation (``LocalStore``), ``store_for`` choosing one by the root's
URL scheme (the S3 implementation is ``s3.py``), what every store shares (the key check,
the condition check), and the two local-file primitives everything on this host shares
(``fsync_dir``, ``file_sha256``; the Vision cache uses them too). What stays out: parquet,
datasets, partitions and the ledger (``lake/``), and locks (``locks.py``).

Keys are POSIX relative paths (``futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet``);
the layout (``lake/layout.py``) makes them. A write is two steps, so the caller can check
what it wrote before anyone sees it: ``stage(key, data)`` puts the bytes somewhere durable
but invisible under ``key``, then ``Staged.publish(expect=...)`` makes them the object at
``key`` in one atomic step, if the object there is still what the caller expects:

- ``expect=ABSENT``: put-if-absent (no object at ``key``);
- ``expect=<version>``: put-if-match (the object's version token is still that one);
- ``expect=None``: unconditional.

A refused condition raises ``PreconditionFailed`` and leaves the object as it was.

``LocalStore``: staging writes a temporary file beside the target
(``.{name}.{32 hex}.tmp``, a name ``is_temp_name`` recognises so a sweep can find the
files of writers that died), fsyncs it; publishing checks the condition, renames it over
the target (atomic within one file system) and fsyncs the folder, so the new name
survives a power loss. Readers see the old file or the new one, never a torn one. The
condition is checked just before the rename: atomic against writers that hold the
partition's lock (every commit does, ``locks.py``), not against others. A version token
is ``{mtime_ns}:{inode}``: a rename always brings a new inode, and the mtime tells a
rewrite in place.

An object store fits the same shape (``s3://bucket/prefix``, ``S3Store`` in ``s3.py``):
staging keeps the bytes in memory, publishing is one conditional PUT (``If-None-Match: *``
/ ``If-Match: <ETag>``, atomic on the server, no rename), the version token is the ETag,
and there are no temporary objects to sweep; its locks are advisory locks in PostgreSQL
(``locks.py``). A server that ignores the conditional headers is refused at start-up
(``ensure_writable``), never used silently unsafe.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat as stat_module
import tempfile
import uuid
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple, Protocol, Self
from urllib.parse import unquote, urlsplit

import pyarrow as pa

_BLOCK: Final = 1 << 20
TEMP_SUFFIX: Final = ".tmp"
# ``.{name}.{uuid4 hex}.tmp``: hidden (hive readers skip names starting with ".") and unique.
_TEMP_NAME: Final = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


# --------------------------------------------------------------------------- errors


class StoreError(OSError):
    """Base class of the store's own errors."""


class PreconditionFailed(StoreError):
    """A conditional put or delete found another object (or none) at its key: nothing changed."""

    def __init__(self, location: str, expected: str, found: str) -> None:
        self.location = location
        super().__init__(f"{location}: expected {expected}, found {found}; nothing was changed")


class PublishIncomplete(StoreError):
    """The new object is in place, but a step after the switch failed (the folder's fsync,
    its stat): it may not survive a power loss, and its version is unknown."""

    def __init__(self, location: str, cause: BaseException) -> None:
        self.location = location
        super().__init__(f"{location}: the new object is in place, but {type(cause).__name__}: {cause}")


class StoreNotWritable(StoreError):
    """The store's root cannot be created or written."""

    def __init__(self, root: str, reason: str) -> None:
        self.root = root
        self.reason = reason
        super().__init__(f"{root} is not writable ({reason})")


class UnsupportedStore(StoreError, ValueError):
    """A lake root whose URL scheme no store implements."""


# --------------------------------------------------------------------------- values


class ObjectStat(NamedTuple):
    """What the store says about one object: its size, its modification time (ns since the
    epoch; the ledger keeps both for the shallow scan) and its version token (``expect=``)."""

    size: int
    mtime_ns: int
    version: str


class _Absent:
    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Final = _Absent()
"""``expect=ABSENT``: publish only if no object is at the key."""

Expect = str | _Absent | None
"""A publication's condition: a version token, ``ABSENT``, or None (unconditional)."""

ParquetSource = str | pa.NativeFile
"""What pyarrow's readers open (``pq.ParquetFile``, ``pq.read_metadata``): a local path
(``LocalStore``), or an object store's file opened through ``pyarrow.fs``."""


# --------------------------------------------------------------------------- protocols


class Staged(Protocol):
    """Bytes written for ``key`` but not yet visible there (``Store.stage``). A context
    manager: leaving it discards what was not published."""

    key: str

    @property
    def location(self) -> str: ...

    def source(self) -> ParquetSource:
        """The staged bytes as pyarrow opens them (to check them before publishing)."""
        ...

    def sha256(self) -> str:
        """The sha256 of the staged bytes as stored (read back, not as handed in)."""
        ...

    def publish(self, *, expect: Expect) -> ObjectStat:
        """Make the staged bytes the object at ``key`` if ``expect`` holds; return its stat.
        Raises ``PreconditionFailed`` (nothing changed), ``PublishIncomplete`` (published,
        not confirmed), or an ``OSError`` of the switch itself (nothing changed)."""
        ...

    def discard(self) -> None:
        """Drop the staged bytes (a no-op once published)."""
        ...

    def __enter__(self) -> Self: ...

    def __exit__(self, *exc: object) -> None: ...


class Store(Protocol):
    """Keys to bytes; see the module docstring for the write protocol."""

    @property
    def root(self) -> str:
        """Where the store is, for messages: a local folder, or a URL."""
        ...

    def location(self, key: str) -> str:
        """Where one key's object is, for messages (a local path, or a URL)."""
        ...

    def stage(self, key: str, data: bytes) -> Staged: ...

    def put(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectStat:
        """``stage`` then ``publish``: the whole write in one call."""
        ...

    def read(self, key: str) -> bytes:
        """The object's bytes; ``FileNotFoundError`` when there is none."""
        ...

    def source(self, key: str) -> ParquetSource:
        """The object as pyarrow's readers open it (no check that it exists)."""
        ...

    def stat(self, key: str) -> ObjectStat | None:
        """The object's stat, or None when there is no object (or no regular file) at ``key``."""
        ...

    def sha256(self, key: str) -> str:
        """The sha256 of the object's bytes; ``FileNotFoundError`` when there is none."""
        ...

    def list(self, prefix: str) -> list[str]:
        """The keys of the objects under the folder ``prefix``, sorted, temporaries left out."""
        ...

    def delete(self, key: str, *, expect: Expect = None) -> bool:
        """Remove the object if ``expect`` holds; whether there was one to remove."""
        ...

    def temp_files(self, folder: str) -> list[str]:
        """The keys of staged objects left directly in ``folder`` (by live or dead writers), sorted."""
        ...

    def ensure_writable(self) -> str:
        """Create the root if needed and prove it writable (``StoreNotWritable``); return
        its canonical location."""
        ...


# --------------------------------------------------------------------------- local files


def fsync_dir(directory: str | Path) -> None:
    """Make the entries of ``directory`` (a rename, a new file) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: str | Path) -> str:
    """The sha256 of a local file's bytes, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def local_stat(path: str | Path) -> ObjectStat | None:
    """``ObjectStat`` of a local regular file, or None (absent, not a file, not reachable)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat_module.S_ISREG(st.st_mode):
        return None
    return ObjectStat(st.st_size, st.st_mtime_ns, f"{st.st_mtime_ns}:{st.st_ino}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one ``LocalStore.stage`` gives its temporary files."""
    return _TEMP_NAME.fullmatch(name) is not None


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so a new
    folder survives a power loss together with its file."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # created concurrently by another writer
        fsync_dir(path.parent)


def checked_key(key: str) -> str:
    """``key`` if it is a relative POSIX path with no way out of the store's root, else ``ValueError``."""
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"invalid store key {key!r}: expected a relative POSIX path inside the store")
    return key


def check_condition(location: str, expect: Expect, current: ObjectStat | None) -> None:
    """``PreconditionFailed`` unless the object's ``current`` stat satisfies ``expect``."""
    if expect is None:
        return
    if isinstance(expect, _Absent):
        if current is not None:
            raise PreconditionFailed(location, "no object", f"version {current.version}")
    elif current is None:
        raise PreconditionFailed(location, f"version {expect}", "no object")
    elif current.version != expect:
        raise PreconditionFailed(location, f"version {expect}", f"version {current.version}")


class LocalStaged:
    """A temporary file beside the target, written and fsynced (``LocalStore.stage``)."""

    def __init__(self, store: LocalStore, key: str, tmp: str) -> None:
        self.key = key
        self._store = store
        self._tmp = tmp
        self._done = False

    @property
    def location(self) -> str:
        return self._tmp

    def source(self) -> ParquetSource:
        return self._tmp

    def sha256(self) -> str:
        return file_sha256(self._tmp)

    def publish(self, *, expect: Expect) -> ObjectStat:
        if self._done:
            raise StoreError(f"{self._tmp}: already published or discarded")
        target = self._store.location(self.key)
        check_condition(target, expect, local_stat(target))
        os.replace(self._tmp, target)
        self._done = True
        try:
            fsync_dir(os.path.dirname(target))
            published = local_stat(target)
            if published is None:
                raise FileNotFoundError(f"{target} is gone right after the rename")
        except OSError as exc:
            raise PublishIncomplete(target, exc) from exc
        return published

    def discard(self) -> None:
        if not self._done:
            self._done = True
            Path(self._tmp).unlink(missing_ok=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.discard()


class LocalStore:
    """A folder of the local file system (see the module docstring for the guarantees)."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root).expanduser()
        self._root = str(self.path)
        # Keys are joined by string concatenation: the whole-lake file check stats a
        # million of them per tick, and pathlib would cost more than the stat.
        self._prefix = self._root.rstrip(os.sep) + os.sep
        self._native = os.sep == "/"

    def __repr__(self) -> str:
        return f"LocalStore({self._root!r})"

    @property
    def root(self) -> str:
        return self._root

    def location(self, key: str) -> str:
        return self._prefix + (key if self._native else key.replace("/", os.sep))

    def _checked(self, key: str) -> str:
        """The location of a key that is about to be written or removed: no way out of the root."""
        return self.location(checked_key(key))

    def stage(self, key: str, data: bytes) -> LocalStaged:
        target = Path(self._checked(key))
        _make_dirs(target.parent)
        tmp = str(target.with_name(f".{target.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}"))
        try:
            with open(tmp, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return LocalStaged(self, key, tmp)

    def put(self, key: str, data: bytes, *, expect: Expect = None) -> ObjectStat:
        with self.stage(key, data) as staged:
            return staged.publish(expect=expect)

    def read(self, key: str) -> bytes:
        with open(self.location(key), "rb") as f:
            return f.read()

    def source(self, key: str) -> ParquetSource:
        return self.location(key)

    def stat(self, key: str) -> ObjectStat | None:
        return local_stat(self.location(key))

    def sha256(self, key: str) -> str:
        return file_sha256(self.location(key))

    def list(self, prefix: str) -> list[str]:
        base = self.location(prefix.rstrip("/")) if prefix.strip("/") else self._root
        keys: list[str] = []
        for folder, _dirs, names in os.walk(base):
            relative = os.path.relpath(folder, self._root).replace(os.sep, "/")
            for name in names:
                if not is_temp_name(name):
                    keys.append(name if relative == "." else f"{relative}/{name}")
        return sorted(keys)

    def delete(self, key: str, *, expect: Expect = None) -> bool:
        location = self._checked(key)
        check_condition(location, expect, local_stat(location))
        try:
            os.unlink(location)
        except FileNotFoundError:
            return False
        return True

    def temp_files(self, folder: str) -> list[str]:
        try:
            names = os.listdir(self.location(folder))
        except OSError:  # no folder (never written), or not a folder
            return []
        # The common case is the partition's file alone: a cheap test before the pattern.
        return sorted(f"{folder}/{n}" for n in names if n.startswith(".") and is_temp_name(n))

    def ensure_writable(self) -> str:
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.path, prefix=".bml_write_check_", delete=True):
                pass
        except OSError as exc:
            raise StoreNotWritable(self._root, exc.strerror or str(exc)) from None
        return str(self.path.resolve())


# --------------------------------------------------------------------------- choosing a store


def local_root(root: str | Path) -> Path | None:
    """The local folder a lake root names (a path, or a ``file://`` URL), else None."""
    if isinstance(root, Path):
        return root
    parts = urlsplit(root)
    if parts.scheme == "" or (len(parts.scheme) == 1 and os.name == "nt"):  # a path (C:\ on Windows)
        return Path(root)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise UnsupportedStore(f"lake root {root!r}: a file:// URL must name this host (file:///path)")
        return Path(unquote(parts.path))
    return None


def store_for(root: str | Path, *, s3_endpoint_url: str = "") -> Store:
    """The store of a lake root: a local path or ``file://`` URL is a ``LocalStore``, an
    ``s3://bucket/prefix`` URL an ``S3Store`` (at ``s3_endpoint_url``, default AWS); any other
    scheme is refused, naming the root."""
    folder = local_root(root)
    if folder is not None:
        return LocalStore(folder)
    scheme = urlsplit(str(root)).scheme
    if scheme == "s3":
        try:
            from bml_assets.storage.s3 import S3Store  # boto3 is an optional extra
        except ImportError as exc:
            raise UnsupportedStore(f"lake root {root!r}: {exc}") from exc
        return S3Store(str(root), endpoint_url=s3_endpoint_url)
    raise UnsupportedStore(f"lake root {root!r}: unknown scheme {scheme!r}; use a local folder or a file:// URL")
