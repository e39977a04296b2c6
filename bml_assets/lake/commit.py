"""The atomic commit of one partition's parquet file (SPEC §7), and reading it back.

What belongs here: the per-partition lock, the schema check, deterministic
parquet encoding, the write-fsync-verify-rename sequence, the ledger update
that follows it, recording a partition as unavailable, and reading or checking
a committed file.

What stays out: deciding *what* to commit (the assets), the blocking data rules
(passed in as ``validate``), the ledger's SQL (``ledger.py``), paths
(``layout.py``) and Dagster (the IO manager is built on top of this module).

The commit, under an exclusive ``flock`` on the partition's lock file:

1. read the ledger row; its content_hash is the ``expected`` value of the CAS;
2. check the table's schema against the dataset's and run ``validate`` — nothing
   has touched the lake yet;
3. write ``.part.parquet.<uuid>.tmp`` beside the target, fsync, re-read its footer,
   hash its bytes;
4. if those bytes are already the committed file, drop the temporary file (no rewrite);
5. ``os.replace`` it over the target (atomic), fsync the folder;
6. ``Ledger.commit_partition(..., expected_content_hash=expected)``.

Crash safety and repair. Readers see either the old file or the new one, never a
torn file. Before step 5 any failure removes the temporary file and leaves the
target and the ledger as they were. After step 5 the new file stays and the
error is raised as ``CommitIncomplete``: the ledger then still names the old
hash (or nothing), and ``verify_partition`` reports the mismatch. Re-running the
commit repairs it: the re-run reads the ledger's (old) hash as ``expected``, sees
that its bytes differ from what the ledger records, renames its file over the
target and CAS-updates the row from that old hash, so file and ledger agree
again. A commit never trusts the ledger alone for "already committed": it skips
the rewrite only when the file on disk really has the new hash *and* the
ledger records it.

Temporary files of a writer that died (kill -9, power loss) are swept by the
next commit of the same partition: it holds the partition's lock, so no live
writer can own them. ``sweep_temp_files`` does the same on demand (the repair
sensor and ``bml scan --sweep`` call it for the strays the scan reports), and
``refresh_file_stat`` re-records the size and mtime of a file whose bytes are
still the committed ones (touched, copied, or committed before the ledger kept them).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bml_assets.domain.schema import Dataset, schema_hash
from bml_assets.lake.layout import (
    lock_path,
    partition_dir,
    partition_label,
    partition_path,
    relative_partition_path,
    temp_files,
    temp_path,
)
from bml_assets.lake.ledger import UNAVAILABLE_STATUSES, CommitConflict, Ledger, PartitionRecord

DEFAULT_LOCK_TIMEOUT_S: Final = 300.0

# Fixed encoder settings: the same table must always give the same bytes (and
# hence the same content hash) with a given pyarrow version. A different
# pyarrow version may write different bytes (its name is in the footer); the
# partition is then simply rewritten once.
PARQUET_OPTIONS: Final[Mapping[str, Any]] = {
    "compression": "zstd",
    "compression_level": 3,
    "use_dictionary": True,
    "write_statistics": True,
    "version": "2.6",
    "data_page_version": "1.0",
    "row_group_size": 1 << 20,
    "store_schema": True,  # keeps timestamp[ms, tz=UTC] exact on read
}

_TIME_UNIT_TO_MS: Final[Mapping[str, tuple[int, int]]] = {  # (multiply, floor-divide)
    "s": (1000, 1),
    "ms": (1, 1),
    "us": (1, 1000),
    "ns": (1, 1_000_000),
}


# --------------------------------------------------------------------------- errors


class LakeError(RuntimeError):
    """Base class of this module's errors."""


class SchemaMismatch(LakeError, ValueError):
    """A table (or a stored file) does not have the dataset's exact schema."""

    def __init__(self, partition: str, differences: Sequence[str], *, what: str = "the table") -> None:
        self.partition = partition
        self.differences = list(differences)
        super().__init__(f"{partition}: {what} does not match the dataset schema: " + "; ".join(self.differences))


class LockTimeout(LakeError, TimeoutError):
    """Another writer held the partition's lock for longer than the timeout."""


class CommitIncomplete(LakeError):
    """The new file is in place but the ledger was not updated; re-run the commit to re-sync."""

    def __init__(self, partition: str, path: Path, content_hash: str, ledger_content_hash: str | None) -> None:
        self.partition = partition
        self.path = path
        self.content_hash = content_hash
        self.ledger_content_hash = ledger_content_hash
        super().__init__(
            f"{partition}: the new file is in place at {path} (sha256 {content_hash}), but the ledger was not "
            f"updated and still records {ledger_content_hash or 'no file'}; the file is complete — re-run the "
            "commit to re-sync the ledger"
        )


class UnavailableButCommitted(LakeError):
    """A partition was to be recorded as unavailable, but a committed file exists."""


class PartitionNotFound(LakeError, FileNotFoundError):
    """No committed file at the partition's path."""


class PartitionUnreadable(LakeError):
    """The partition's file exists but cannot be read as parquet."""


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CommitResult:
    path: Path
    content_hash: str
    row_count: int
    rewritten: bool
    previous_content_hash: str | None


@dataclass(frozen=True)
class PartitionCheck:
    """File versus ledger for one partition (``verify_partition``)."""

    path: Path
    ledger_status: str | None
    ledger_content_hash: str | None
    file_content_hash: str | None
    problem: str | None

    @property
    def consistent(self) -> bool:
        return self.problem is None


# --------------------------------------------------------------------------- helpers


def schema_differences(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Human-readable differences in names, order and types (nullability and metadata ignored)."""
    out: list[str] = []
    a_names, e_names = list(actual.names), list(expected.names)
    duplicated = sorted({n for n in a_names if a_names.count(n) > 1})
    missing = [n for n in e_names if n not in a_names]
    extra = [n for n in a_names if n not in e_names]
    if duplicated:
        out.append(f"duplicated columns: {', '.join(duplicated)}")
    if missing:
        out.append(f"missing columns: {', '.join(missing)}")
    if extra:
        out.append(f"unexpected columns: {', '.join(extra)}")
    if not (duplicated or missing or extra) and a_names != e_names:
        i = next(i for i, (a, e) in enumerate(zip(a_names, e_names, strict=True)) if a != e)
        out.append(f"columns out of order: position {i + 1} holds {a_names[i]!r} where {e_names[i]!r} belongs")
    if not duplicated:
        for f in expected:
            if f.name in a_names:
                got = actual.field(f.name).type
                if got != f.type:
                    out.append(f"column {f.name!r} has type {got}, expected {f.type}")
    return out


def _canonical_table(table: pa.Table, dataset: Dataset, label: str) -> pa.Table:
    """``table`` re-labelled with the dataset's exact schema, one chunk per column, no metadata."""
    schema = dataset.arrow_schema
    differences = schema_differences(table.schema, schema)
    if differences:
        raise SchemaMismatch(label, differences)
    nulls = [
        f"{f.name} ({table.column(f.name).null_count})"
        for f in schema
        if not f.nullable and table.column(f.name).null_count
    ]
    if nulls:
        raise SchemaMismatch(label, [f"non-nullable columns hold NULLs: {', '.join(nulls)}"])
    # One chunk per column and no schema metadata (pandas', field-level), so
    # byte-identical output does not depend on how the caller built the table.
    combined = table.combine_chunks()
    return pa.Table.from_arrays([combined.column(f.name) for f in schema], schema=schema)


def encode_parquet(table: pa.Table) -> bytes:
    """Deterministic parquet bytes of ``table`` (fixed options, no timestamps, no pandas metadata)."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _time_bounds(table: pa.Table, dataset: Dataset) -> tuple[int | None, int | None]:
    """(min, max) of the time column in epoch milliseconds; None for an empty table."""
    column = table.column(dataset.time_column)
    if len(column) == 0 or column.null_count == len(column):
        return None, None
    if not pa.types.is_timestamp(column.type):
        raise SchemaMismatch(
            f"dataset {dataset.name}", [f"time column {dataset.time_column!r} is {column.type}, not a timestamp"]
        )
    mul, div = _TIME_UNIT_TO_MS[column.type.unit]
    bounds = pc.min_max(column.cast(pa.int64()))
    return bounds["min"].as_py() * mul // div, bounds["max"].as_py() * mul // div


def _json_copy(value: Any, what: str) -> Any:
    """Checked here, before any file is written: failing on it after the rename
    would leave the ledger behind the file for a reason a re-run cannot fix."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (str, int, float, bool, None, lists, dicts): {exc}") from None


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _make_dirs(directory: Path) -> None:
    """``mkdir -p`` that fsyncs the parent of every folder it creates, so a new
    partition folder survives a power loss together with its file."""
    missing: list[Path] = []
    current = directory
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            continue  # created concurrently by a writer of another partition
        _fsync_dir(path.parent)


@contextmanager
def partition_lock(
    lake_root: Path, dataset: Dataset, symbol: str, day: date, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S
) -> Iterator[Path]:
    """Hold the partition's exclusive lock (``flock``; across threads and processes on one host).

    Waits up to ``timeout`` seconds, then raises ``LockTimeout``. The lock file
    is never deleted: unlinking a lock file lets a third writer lock a new
    inode while the second still waits on the old one.
    """
    path = lock_path(lake_root, dataset, symbol, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
            if time.monotonic() >= deadline:
                raise LockTimeout(
                    f"{partition_label(dataset, symbol, day)}: another writer held the lock {path} "
                    f"for more than {timeout:g} s"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sweep_temp_files(directory: Path) -> list[Path]:
    """Remove temporary files of dead writers; return them. Only called under the
    partition's lock, so none of them can belong to a live commit."""
    stale = temp_files(directory)
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def _write_verified(table: pa.Table, tmp: Path, dataset: Dataset, label: str) -> str:
    """Write ``table`` to ``tmp`` durably, check its footer, return the sha256 of the bytes on disk."""
    data = encode_parquet(table)
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    metadata = pq.read_metadata(tmp)
    if metadata.num_rows != table.num_rows:
        raise LakeError(f"{label}: {tmp} reads back {metadata.num_rows} rows, {table.num_rows} were written")
    stored_schema = pq.read_schema(tmp)
    if not stored_schema.equals(dataset.arrow_schema, check_metadata=False):
        raise SchemaMismatch(label, schema_differences(stored_schema, dataset.arrow_schema), what=f"the file {tmp}")
    content_hash = file_sha256(tmp)
    if content_hash != hashlib.sha256(data).hexdigest():
        raise LakeError(f"{label}: {tmp} on disk differs from the bytes written")
    return content_hash


def _with_stat(record: PartitionRecord, path: Path) -> PartitionRecord:
    """``record`` with the size and mtime of the file now at ``path`` (the shallow scan's reference)."""
    st = os.stat(path)
    return replace(record, file_bytes=st.st_size, file_mtime_ns=st.st_mtime_ns)


def _incomplete_builds(previous: PartitionRecord | None, missing: Sequence[Mapping[str, Any]]) -> int:
    """Builds in a row that left the partition lacking the same streams: the repair backoff's count."""
    if not missing:
        return 0
    if previous is None or not previous.incomplete:
        return 1
    same = {m.get("stream") for m in previous.missing_streams} == {m.get("stream") for m in missing}
    return previous.incomplete_builds + 1 if same else 1


# --------------------------------------------------------------------------- API


class NotBased:
    """``commit_table(based_on=...)`` default: the table replaces whatever is there."""


NOT_BASED = NotBased()


def commit_table(
    table: pa.Table,
    *,
    lake_root: Path,
    ledger: Ledger,
    dataset: Dataset,
    symbol: str,
    day: date,
    validate: Callable[[pa.Table], None],
    provenance: Mapping[str, Any],
    source_gaps: Sequence[Mapping[str, Any]] = (),
    missing_streams: Sequence[Mapping[str, Any]] = (),
    message: str | None = None,
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    based_on: str | NotBased | None = NOT_BASED,
) -> CommitResult:
    """Atomically replace one partition's file with ``table`` and record it in the ledger.

    ``missing_streams``: the fillable streams the table lacks and why (SPEC §8); the
    ledger counts how many builds in a row left the partition incomplete.

    ``based_on``: the content hash of the committed table ``table`` was built from (an
    incremental update; None: built on an empty partition). If the ledger no longer
    holds it — another writer committed in between — ``CommitConflict`` is raised and
    nothing is written, so a slower writer never overwrites a newer commit.

    Raises ``SchemaMismatch``, whatever ``validate`` raises, ``LockTimeout`` or
    ``CommitConflict`` with the lake and ledger unchanged; ``CommitIncomplete``
    when the new file is in place but the ledger update failed (re-run to repair).
    """
    lake_root = Path(lake_root)
    label = partition_label(dataset, symbol, day)
    target = partition_path(lake_root, dataset, symbol, day)
    provenance_json = _json_copy(dict(provenance), f"{label}: provenance")
    gaps_json = _json_copy([dict(g) for g in source_gaps], f"{label}: source_gaps")
    missing_json = _json_copy([dict(m) for m in missing_streams], f"{label}: missing_streams")

    with partition_lock(lake_root, dataset, symbol, day, timeout=lock_timeout):
        previous = ledger.get_partition(dataset, symbol, day)
        expected = previous.content_hash if previous is not None else None
        if not isinstance(based_on, NotBased) and based_on != expected:
            raise CommitConflict(label, based_on, expected, row_exists=previous is not None)

        canonical = _canonical_table(table, dataset, label)
        validate(table)
        min_ts, max_ts = _time_bounds(canonical, dataset)

        _make_dirs(target.parent)
        _sweep_temp_files(target.parent)
        tmp = temp_path(target)
        renamed = False
        try:
            content_hash = _write_verified(canonical, tmp, dataset, label)
            record = PartitionRecord(
                dataset=dataset.name,
                symbol=symbol,
                day=day,
                status="committed",
                committed_at=datetime.now(UTC),
                path=relative_partition_path(dataset, symbol, day).as_posix(),
                row_count=canonical.num_rows,
                min_ts=min_ts,
                max_ts=max_ts,
                schema_hash=schema_hash(dataset.arrow_schema),
                content_hash=content_hash,
                provenance=provenance_json,
                source_gaps=gaps_json,
                missing_streams=missing_json,
                incomplete_builds=_incomplete_builds(previous, missing_json),
                message=message if message is not None else (previous.message if previous is not None else None),
            )
            if content_hash == expected and target.is_file() and file_sha256(target) == content_hash:
                assert previous is not None
                # Same bytes: keep the file. The ledger row is refreshed only if it no longer
                # describes them (other sources, a stale schema hash or row count, a note).
                record = _with_stat(record, target)
                if replace(previous, committed_at=record.committed_at) != record:
                    ledger.commit_partition(record, expected_content_hash=expected)
                return CommitResult(target, content_hash, canonical.num_rows, False, expected)
            os.replace(tmp, target)
            renamed = True
        finally:
            # Before the rename the commit surely failed (or was a no-op): the
            # temporary file is garbage. After it, the name no longer exists.
            if not renamed:
                tmp.unlink(missing_ok=True)

        try:
            _fsync_dir(target.parent)
            ledger.commit_partition(_with_stat(record, target), expected_content_hash=expected)
        except Exception as exc:
            raise CommitIncomplete(label, target, content_hash, expected) from exc

    return CommitResult(target, content_hash, canonical.num_rows, True, expected)


def record_unavailable(
    *,
    lake_root: Path,
    ledger: Ledger,
    dataset: Dataset,
    symbol: str,
    day: date,
    status: Literal["not_listed", "not_published"],
    message: str,
    provenance: Mapping[str, Any],
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> None:
    """Record that a partition has no file, and why (``not_listed``: the symbol did
    not trade that day; ``not_published``: the source has not published it yet).

    Never deletes data: if a file exists at the partition's path, raises
    ``UnavailableButCommitted`` and changes nothing. A ledger row claiming a file
    that is gone from disk is replaced (CAS from its hash).
    """
    if status not in UNAVAILABLE_STATUSES:
        raise ValueError(f"status must be one of {', '.join(UNAVAILABLE_STATUSES)}, got {status!r}")
    lake_root = Path(lake_root)
    label = partition_label(dataset, symbol, day)
    target = partition_path(lake_root, dataset, symbol, day)
    provenance_json = _json_copy(dict(provenance), f"{label}: provenance")

    with partition_lock(lake_root, dataset, symbol, day, timeout=lock_timeout):
        previous = ledger.get_partition(dataset, symbol, day)
        if target.exists():
            ledger_state = (
                "the ledger has no row for it"
                if previous is None
                else f"the ledger records it as {previous.status} (content_hash {previous.content_hash})"
            )
            raise UnavailableButCommitted(
                f"{label}: refusing to record it as {status} ({message}): a committed file exists at {target} and "
                f"{ledger_state}; the file is kept — delete it deliberately if the source really withdrew this day"
            )
        ledger.commit_partition(
            PartitionRecord(
                dataset=dataset.name,
                symbol=symbol,
                day=day,
                status=status,
                committed_at=datetime.now(UTC),
                provenance=provenance_json,
                message=message,
            ),
            expected_content_hash=previous.content_hash if previous is not None else None,
        )


def read_partition(lake_root: Path, dataset: Dataset, symbol: str, day: date, *, check_schema: bool = True) -> pa.Table:
    """The committed table of one partition.

    Raises ``PartitionNotFound`` / ``PartitionUnreadable`` naming the path, and
    ``SchemaMismatch`` when the file was written with another schema.
    """
    label = partition_label(dataset, symbol, day)
    path = partition_path(Path(lake_root), dataset, symbol, day)
    if not path.is_file():
        raise PartitionNotFound(f"{label}: no committed file at {path}")
    try:
        # ParquetFile, not pq.read_table: the latter would treat the hive folder
        # names as partition columns and add symbol/date to the table.
        with pq.ParquetFile(path) as f:
            table = f.read()
    except (OSError, pa.ArrowException) as exc:
        raise PartitionUnreadable(f"{label}: cannot read {path} as parquet: {exc}") from exc
    if check_schema:
        differences = schema_differences(table.schema, dataset.arrow_schema)
        if differences:
            raise SchemaMismatch(label, differences, what=f"the file {path}")
    return table


def verify_partition(lake_root: Path, ledger: Ledger, dataset: Dataset, symbol: str, day: date) -> PartitionCheck:
    """Compare the file on disk with the ledger row (no lock taken; a snapshot)."""
    path = partition_path(Path(lake_root), dataset, symbol, day)
    row = ledger.get_partition(dataset, symbol, day)
    file_hash = file_sha256(path) if path.is_file() else None
    status = row.status if row is not None else None
    ledger_hash = row.content_hash if row is not None else None
    problem: str | None = None
    if ledger_hash is not None and file_hash is None:
        problem = f"the ledger records a file (sha256 {ledger_hash}) but {path} is missing"
    elif file_hash is not None and ledger_hash is None:
        problem = f"{path} exists (sha256 {file_hash}) but the ledger records {status or 'nothing'} for it"
    elif file_hash != ledger_hash:
        problem = (
            f"{path} has sha256 {file_hash} but the ledger records {ledger_hash} "
            "(a commit stopped after its rename?) — re-run the commit to re-sync"
        )
    return PartitionCheck(path, status, ledger_hash, file_hash, problem)


# --------------------------------------------------------------------------- upkeep


def partition_busy(lake_root: Path, dataset: Dataset, symbol: str, day: date) -> bool:
    """Whether a writer holds the partition's lock at this moment (creates nothing).

    A temporary file in a partition whose lock is free belongs to a writer that died:
    a live commit holds the lock from before it creates its file until after the rename.
    """
    path = lock_path(Path(lake_root), dataset, symbol, day)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False  # never locked, so never written by a commit
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def sweep_temp_files(lake_root: Path, dataset: Dataset, symbol: str, day: date) -> list[Path] | None:
    """Remove the temporary files dead writers left in one partition's folder; return them.

    Takes the partition's lock without waiting, as a commit would before sweeping: when
    a writer holds it (the file may be its own), nothing is removed and None is returned.
    """
    directory = partition_dir(Path(lake_root), dataset, symbol, day)
    if not temp_files(directory):
        return []
    try:
        with partition_lock(Path(lake_root), dataset, symbol, day, timeout=0):
            return _sweep_temp_files(directory)
    except LockTimeout:
        return None


def refresh_file_stat(lake_root: Path, ledger: Ledger, dataset: Dataset, symbol: str, day: date) -> bool:
    """Re-record the size and mtime of a committed file whose bytes are still the ledger's.

    For the shallow scan, which trusts a file whose ``os.stat`` matches the ledger and
    reads (and hashes) one that does not: after a ``touch``, a copy without mtimes, or
    on a row written before the ledger kept them. Under the partition's lock, taken
    without waiting; the file is hashed first and the row is CAS-updated from the same
    content hash, so only a file proven unchanged is re-described. Returns whether the
    row was updated (False: busy, not committed, unchanged, or the bytes differ).
    """
    lake_root = Path(lake_root)
    path = partition_path(lake_root, dataset, symbol, day)
    try:
        with partition_lock(lake_root, dataset, symbol, day, timeout=0):
            record = ledger.get_partition(dataset, symbol, day)
            if record is None or record.status != "committed":
                return False
            before = os.stat(path)
            if (before.st_size, before.st_mtime_ns) == (record.file_bytes, record.file_mtime_ns):
                return False
            if file_sha256(path) != record.content_hash:
                return False
            after = os.stat(path)
            if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                return False  # changed while being hashed: leave it to the next scan
            ledger.commit_partition(
                replace(record, file_bytes=after.st_size, file_mtime_ns=after.st_mtime_ns),
                expected_content_hash=record.content_hash,
            )
            return True
    except (LockTimeout, FileNotFoundError):
        return False
