"""The atomic commit of one partition's parquet file (SPEC §7), and the upkeep around it.

What belongs here: the commit protocol, written once against the lake's store and
locks (``lake.py``, ``storage/``): the schema check, deterministic parquet encoding,
stage-verify-publish, the ledger's compare-and-swap that follows it (with the
minute view's watermark, in the same transaction), recording a partition as
unavailable, checking a committed file against its row, sweeping the temporaries
of dead writers and re-recording the stat of an intact file.

What stays out: deciding *what* to commit (``days/``, the assets), the blocking data rules
(passed in as ``validate``), the ledger's SQL (``ledger.py``), keys (``layout.py``),
how bytes are stored (``storage/store.py``) and Dagster (the IO manager is built on
top of this module). Reading a partition back is ``Lake.read``.

The commit, under the partition's exclusive lock (``Lake.lock``):

1. read the ledger row; its content_hash is the ``expected`` value of the CAS;
2. check the table's schema against the dataset's and run ``validate`` (and, with a
   watermark, check that every minute up to it is a row or a confirmed source gap) —
   nothing has touched the lake yet;
3. stage the encoded bytes (``Store.stage``: locally a temporary file beside the target,
   fsynced; on S3 in memory), re-read their footer, hash the staged bytes;
4. if those bytes are already the committed file, drop the staged copy (no rewrite);
5. publish them over the target (``Staged.publish``: put-if-match against the version
   the commit saw, or put-if-absent; locally a rename, then the folder's fsync; on S3 one
   conditional PUT);
6. ``Ledger.commit_partition(..., expected_content_hash=expected)`` — the commit point;
   with a watermark, ``Ledger.commit_partition_and_watermark``, one transaction.

Crash safety and repair. Readers see either the old file or the new one, never a
torn file. Before step 5 any failure discards the staged copy and leaves the target
and the ledger as they were. After step 5 the new file stays and the error is raised
as ``CommitIncomplete``: the ledger then still names the old hash (or nothing), and
``verify_partition`` reports the mismatch. Re-running the commit repairs it: the
re-run reads the ledger's (old) hash as ``expected``, sees that its bytes differ from
what the ledger records, publishes its file over the target and CAS-updates the row
from that old hash, so file and ledger agree again. A commit never trusts the ledger
alone for "already committed": it skips the rewrite only when the file in the store
really has the new hash *and* the ledger records it.

Temporary files of a writer that died (kill -9, power loss) are swept by the next
commit of the same partition: it holds the partition's lock, so no live writer can
own them. ``sweep_temp_files`` does the same on demand (the repair sensor and ``bml
scan --sweep`` call it for the strays the scan reports), and ``refresh_file_stat``
re-records the size and mtime of a file whose bytes are still the committed ones
(touched, copied, or committed before the ledger kept them).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bml_assets.domain.minutes import DAY_MS, MINUTE_MS, datetime_to_ms, day_start_ms
from bml_assets.domain.schema import MINUTE_VIEW, Dataset, schema_hash
from bml_assets.lake.lake import DEFAULT_LOCK_TIMEOUT_S, Lake, LakeError, SchemaMismatch, schema_differences
from bml_assets.lake.layout import file_key, folder_key, partition_label
from bml_assets.lake.ledger import UNAVAILABLE_STATUSES, CommitConflict, Ledger, PartitionRecord
from bml_assets.storage.locks import LockTimeout
from bml_assets.storage.store import ABSENT, ObjectStat, PublishIncomplete, Staged

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


class CommitIncomplete(LakeError):
    """The new file is in place but the ledger was not updated; re-run the commit to re-sync."""

    def __init__(self, partition: str, path: str, content_hash: str, ledger_content_hash: str | None) -> None:
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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class CommitResult:
    """``path``: where the file is (the store's location); ``watermark``: the symbol's
    watermark when this commit moved it, else None."""

    path: str
    content_hash: str
    row_count: int
    rewritten: bool
    previous_content_hash: str | None
    watermark: datetime | None = None


@dataclass(frozen=True)
class PartitionCheck:
    """File versus ledger for one partition (``verify_partition``)."""

    path: str
    ledger_status: str | None
    ledger_content_hash: str | None
    file_content_hash: str | None
    problem: str | None

    @property
    def consistent(self) -> bool:
        return self.problem is None


# --------------------------------------------------------------------------- helpers


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


def gap_minutes(day: date, source_gaps: Sequence[Mapping[str, Any]]) -> set[int]:
    """The confirmed source-gap minutes (epoch ms) of ``source_gaps`` that fall in ``day``
    (entries ``{"minute": ISO, ...}``; anything else is ignored)."""
    start = day_start_ms(day)
    out: set[int] = set()
    for gap in source_gaps:
        value = gap.get("minute") if isinstance(gap, Mapping) else None
        if not isinstance(value, str):
            continue
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        ms = datetime_to_ms(moment)
        if start <= ms < start + DAY_MS and ms % MINUTE_MS == 0:
            out.add(ms)
    return out


def _check_watermark(
    table: pa.Table, dataset: Dataset, day: date, watermark: datetime, gaps: Sequence[Mapping[str, Any]], label: str
) -> None:
    """A watermark moves with the minute view only, to a minute of its day, and never past a
    minute that is neither a row of the table nor a confirmed source gap."""
    if dataset is not MINUTE_VIEW:
        raise ValueError(f"{label}: only a minute view commit moves the watermark")
    if watermark.tzinfo is None:
        raise ValueError(f"{label}: the watermark {watermark!r} must be timezone-aware")
    start, target = day_start_ms(day), datetime_to_ms(watermark)
    if not start <= target < start + DAY_MS or target % MINUTE_MS:
        raise ValueError(f"{label}: the watermark {watermark.isoformat()} is not a minute of {day.isoformat()}")
    grid = np.arange(start, target + MINUTE_MS, MINUTE_MS, dtype=np.int64)
    # The minute view's schema was checked: timestamp[ms, UTC], so the integers are epoch ms.
    present = np.asarray(table.column(dataset.time_column).cast(pa.int64()).to_numpy(), dtype=np.int64)
    held = np.union1d(present, np.fromiter(gap_minutes(day, gaps), dtype=np.int64))
    missing = np.setdiff1d(grid, held)
    if missing.size:
        first = datetime.fromtimestamp(int(missing[0]) / 1000, UTC).isoformat()
        raise ValueError(
            f"{label}: the watermark cannot move to {watermark.isoformat()}: minute {first} is neither a row "
            "nor a confirmed source gap"
        )


def _json_copy(value: Any, what: str) -> Any:
    """Checked here, before any file is written: failing on it after the publication
    would leave the ledger behind the file for a reason a re-run cannot fix."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (str, int, float, bool, None, lists, dicts): {exc}") from None


def _sweep(lake: Lake, folder: str) -> list[str]:
    """Remove the temporary files of dead writers in ``folder``; return their locations. Only
    called under the partition's lock, so none of them can belong to a live commit."""
    removed = []
    for key in lake.store.temp_files(folder):
        lake.store.delete(key)
        removed.append(lake.store.location(key))
    return removed


def _verified(staged: Staged, data: bytes, table: pa.Table, dataset: Dataset, label: str) -> str:
    """Check the staged copy's footer and bytes against what was encoded; return its sha256."""
    where = staged.location
    metadata = pq.read_metadata(staged.source())
    if metadata.num_rows != table.num_rows:
        raise LakeError(f"{label}: {where} reads back {metadata.num_rows} rows, {table.num_rows} were written")
    stored_schema = pq.read_schema(staged.source())
    if not stored_schema.equals(dataset.arrow_schema, check_metadata=False):
        raise SchemaMismatch(label, schema_differences(stored_schema, dataset.arrow_schema), what=f"the file {where}")
    content_hash = staged.sha256()
    if content_hash != hashlib.sha256(data).hexdigest():
        raise LakeError(f"{label}: {where} as stored differs from the bytes written")
    return content_hash


def _with_stat(record: PartitionRecord, st: ObjectStat) -> PartitionRecord:
    """``record`` with the size and mtime of the file as published (the shallow scan's reference)."""
    return replace(record, file_bytes=st.size, file_mtime_ns=st.mtime_ns)


def _incomplete_builds(previous: PartitionRecord | None, missing: Sequence[Mapping[str, Any]]) -> int:
    """Builds in a row that left the partition lacking the same streams: the repair backoff's count."""
    if not missing:
        return 0
    if previous is None or not previous.incomplete:
        return 1
    same = {m.get("stream") for m in previous.missing_streams} == {m.get("stream") for m in missing}
    return previous.incomplete_builds + 1 if same else 1


def _record(
    ledger: Ledger,
    record: PartitionRecord,
    expected: str | None,
    watermark: datetime | None,
    *,
    row_unchanged: bool = False,
) -> datetime | None:
    """The ledger side of a commit: the row's CAS (unless ``row_unchanged``) and, with a
    watermark, its move in the same transaction. Returns the watermark when it moved."""
    if watermark is None:
        if not row_unchanged:
            ledger.commit_partition(record, expected_content_hash=expected)
        return None
    return ledger.commit_partition_and_watermark(
        record, expected_content_hash=expected, watermark=watermark, row_unchanged=row_unchanged
    )


# --------------------------------------------------------------------------- API


class NotBased:
    """``commit_table(based_on=...)`` default: the table replaces whatever is there."""


NOT_BASED = NotBased()


def commit_table(
    table: pa.Table,
    *,
    lake: Lake,
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
    watermark: datetime | None = None,
) -> CommitResult:
    """Atomically replace one partition's file with ``table`` and record it in the ledger.

    ``missing_streams``: the fillable streams the table lacks and why (SPEC §8); the
    ledger counts how many builds in a row left the partition incomplete.

    ``based_on``: the content hash of the committed table ``table`` was built from (an
    incremental update; None: built on an empty partition). If the ledger no longer
    holds it — another writer committed in between — ``CommitConflict`` is raised and
    nothing is written, so a slower writer never overwrites a newer commit.

    ``watermark`` (the minute view): the last minute the commit may move the symbol's
    watermark to; the ledger moves it in the commit's own transaction when it continues
    the stored watermark (``Ledger.commit_partition_and_watermark``), also when the bytes
    are unchanged. Every minute of the day up to it must be a row or a source gap.

    Raises ``SchemaMismatch``, whatever ``validate`` raises, ``ValueError`` (a watermark
    past a hole), ``LockTimeout`` or ``CommitConflict`` with the lake and ledger unchanged;
    ``CommitIncomplete`` when the new file is in place but the ledger update failed (re-run
    to repair).
    """
    label = partition_label(dataset, symbol, day)
    key, folder = file_key(dataset, symbol, day), folder_key(dataset, symbol, day)
    store = lake.store
    provenance_json = _json_copy(dict(provenance), f"{label}: provenance")
    gaps_json = _json_copy([dict(g) for g in source_gaps], f"{label}: source_gaps")
    missing_json = _json_copy([dict(m) for m in missing_streams], f"{label}: missing_streams")

    with lake.lock(dataset, symbol, day, timeout=lock_timeout):
        previous = ledger.get_partition(dataset, symbol, day)
        expected = previous.content_hash if previous is not None else None
        if not isinstance(based_on, NotBased) and based_on != expected:
            raise CommitConflict(label, based_on, expected, row_exists=previous is not None)

        canonical = _canonical_table(table, dataset, label)
        validate(table)
        if watermark is not None:
            _check_watermark(canonical, dataset, day, watermark, gaps_json, label)
        min_ts, max_ts = _time_bounds(canonical, dataset)

        data = encode_parquet(canonical)
        _sweep(lake, folder)
        with store.stage(key, data) as staged:
            content_hash = _verified(staged, data, canonical, dataset, label)
            record = PartitionRecord(
                dataset=dataset.name,
                symbol=symbol,
                day=day,
                status="committed",
                committed_at=datetime.now(UTC),
                path=key,
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
            current = store.stat(key)
            if content_hash == expected and current is not None and store.sha256(key) == content_hash:
                assert previous is not None
                # Same bytes: keep the file (leaving the block drops the staged copy). The
                # ledger row is refreshed only if it no longer describes them (other sources,
                # a stale schema hash or row count, a note).
                record = _with_stat(record, current)
                unchanged = replace(previous, committed_at=record.committed_at) == record
                moved = _record(ledger, record, expected, watermark, row_unchanged=unchanged)
                return CommitResult(store.location(key), content_hash, canonical.num_rows, False, expected, moved)
            try:
                published = staged.publish(expect=current.version if current is not None else ABSENT)
            except PublishIncomplete as exc:
                raise CommitIncomplete(label, store.location(key), content_hash, expected) from exc

        try:
            moved = _record(ledger, _with_stat(record, published), expected, watermark)
        except Exception as exc:
            raise CommitIncomplete(label, store.location(key), content_hash, expected) from exc

    return CommitResult(store.location(key), content_hash, canonical.num_rows, True, expected, moved)


def record_unavailable(
    *,
    lake: Lake,
    ledger: Ledger,
    dataset: Dataset,
    symbol: str,
    day: date,
    status: Literal["not_listed", "not_published"],
    message: str,
    provenance: Mapping[str, Any],
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
) -> None:
    """Record that a partition has no file, and why (``not_listed``: the symbol did not
    trade that day; ``not_published``: the source has not published it yet).

    Never deletes data: if a file exists at the partition's key, raises
    ``UnavailableButCommitted`` and changes nothing. A ledger row claiming a file
    that is gone from the store is replaced (CAS from its hash).
    """
    if status not in UNAVAILABLE_STATUSES:
        raise ValueError(f"status must be one of {', '.join(UNAVAILABLE_STATUSES)}, got {status!r}")
    label = partition_label(dataset, symbol, day)
    provenance_json = _json_copy(dict(provenance), f"{label}: provenance")

    with lake.lock(dataset, symbol, day, timeout=lock_timeout):
        previous = ledger.get_partition(dataset, symbol, day)
        if lake.stat(dataset, symbol, day) is not None:
            ledger_state = (
                "the ledger has no row for it"
                if previous is None
                else f"the ledger records it as {previous.status} (content_hash {previous.content_hash})"
            )
            raise UnavailableButCommitted(
                f"{label}: refusing to record it as {status} ({message}): a committed file exists at "
                f"{lake.location(dataset, symbol, day)} and {ledger_state}; the file is kept — delete it "
                "deliberately if the source really withdrew this day"
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


def verify_partition(lake: Lake, ledger: Ledger, dataset: Dataset, symbol: str, day: date) -> PartitionCheck:
    """Compare the file in the store with the ledger row (no lock taken; a snapshot)."""
    path = lake.location(dataset, symbol, day)
    row = ledger.get_partition(dataset, symbol, day)
    try:
        file_hash: str | None = lake.sha256(dataset, symbol, day)
    except FileNotFoundError:
        file_hash = None
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
            "(a commit stopped after its publication?) — re-run the commit to re-sync"
        )
    return PartitionCheck(path, status, ledger_hash, file_hash, problem)


# --------------------------------------------------------------------------- upkeep


def sweep_temp_files(lake: Lake, dataset: Dataset, symbol: str, day: date) -> list[Path] | None:
    """Remove the temporary files dead writers left in one partition's folder; return them.

    Takes the partition's lock without waiting, as a commit would before sweeping: when
    a writer holds it (the file may be its own), nothing is removed and None is returned.
    Temporaries exist only in a store that stages in files, so they are local paths.
    """
    if not lake.temp_files(dataset, symbol, day):
        return []
    try:
        with lake.lock(dataset, symbol, day, timeout=0):
            return [Path(p) for p in _sweep(lake, folder_key(dataset, symbol, day))]
    except LockTimeout:
        return None


def refresh_file_stat(lake: Lake, ledger: Ledger, dataset: Dataset, symbol: str, day: date) -> bool:
    """Re-record the size and mtime of a committed file whose bytes are still the ledger's.

    For the shallow scan, which trusts a file whose stat matches the ledger and reads
    (and hashes) one that does not: after a ``touch``, a copy without mtimes, or on a
    row written before the ledger kept them. Under the partition's lock, taken without
    waiting; the file is hashed first and the row is CAS-updated from the same content
    hash, so only a file proven unchanged is re-described. Returns whether the row was
    updated (False: busy, not committed, unchanged, or the bytes differ).
    """
    try:
        with lake.lock(dataset, symbol, day, timeout=0):
            record = ledger.get_partition(dataset, symbol, day)
            if record is None or record.status != "committed":
                return False
            before = lake.stat(dataset, symbol, day)
            if before is None or (before.size, before.mtime_ns) == (record.file_bytes, record.file_mtime_ns):
                return False
            if lake.sha256(dataset, symbol, day) != record.content_hash:
                return False
            after = lake.stat(dataset, symbol, day)
            if after is None or (after.size, after.mtime_ns) != (before.size, before.mtime_ns):
                return False  # changed while being hashed: leave it to the next scan
            ledger.commit_partition(_with_stat(record, after), expected_content_hash=record.content_hash)
            return True
    except (LockTimeout, FileNotFoundError):
        return False
