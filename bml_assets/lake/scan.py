"""The consistency scan of the lake: the ledger and the files of every dataset, checked against each other.

What belongs here: one pass over symbols × days that reads the ledger once for the
whole range (every dataset: the minute view and the per-stream tables), looks at
the files, and turns every disagreement into a ``Problem``; it also lists the stray
temporary files it meets (in partition folders, and in the Vision zip cache when
asked). Neither side is trusted alone: a ledger row may claim a file that is gone
or different, and a file may be torn, old or hold fewer minutes than it should.

What stays out: deciding what to do about a problem (``repair.py`` rebuilds the
partition and sweeps the strays), Dagster, and any network access
(``vision_published`` is passed in). The scan writes nothing.

Shallow and deep. Per committed file the shallow scan (the repair sensor's, every
tick) makes one stat (``Store.stat``) and compares size and mtime with what the commit
recorded; only when they differ, or the row predates them (NULL), does it read the
parquet footer (readable, row count, schema) and, for a changed file, hash it. A
truncated, emptied, rewritten or deleted file therefore shows in a shallow scan;
only an edit that keeps size and mtime needs the deep scan, which hashes every file
and reads its time column (and, for the minute view, its HARD columns). A file whose
size or mtime changed but whose bytes are the committed ones (``touch``, a copy
without mtimes) is not a problem: it is listed in ``ScanReport.restat`` so the
sweep re-records its stat and later shallow scans need no hash.

Kinds of problem, per (dataset, symbol, day):

- ``not_built``: no minute-view ledger row for a day before ``today`` (and on or
  after the symbol's listing day, when known);
- ``file_missing``, ``unreadable``, ``schema_outdated``, ``content_hash_mismatch``,
  ``ledger_stale``: a ``committed`` row and its file disagree (every dataset; a
  ``schema_outdated`` comes from the ledger's ``schema_hash`` or the file's schema; a
  file that only lacks nullable columns still reads, with them NULL: ``Lake.read``);
- ``missing_minutes`` (minute view): a closed day lacks minutes that are not
  confirmed source gaps of its ledger row (a shallow scan counts them from the ledger);
- ``timestamp_disorder``: time column not strictly increasing (every dataset, deep),
  or, in the minute view, not on a minute or outside the day;
- ``hard_nulls`` (minute view): a NULL in a HARD column;
- ``incomplete``: a committed row that records fillable streams as missing (SPEC §8);
  the detail names each stream and why, and the builds in a row that ended so;
- ``not_published_stale`` (minute view): a ``not_published`` row for a day more than
  ``STALE_NOT_PUBLISHED_DAYS`` before ``today`` (Vision should have it by now);
- ``provisional`` (minute view): a REST-built stream on a day Vision has published
  (only when ``vision_published`` is given).

A stream table has rows only for days a build reached, and ``not_published`` /
``not_listed`` are final answers for some streams (a past day's hot snapshots), so
only its committed rows are checked. ``not_listed`` rows are never problems, and
neither is a day before the symbol's listing. A file lying where the ledger records
``not_listed``/``not_published`` is not reported (``record_unavailable`` refuses to
hide such a file; deleting it is a human decision).

Stray files: a commit's ``.part.parquet.<uuid>.tmp`` in a partition folder whose
lock nobody holds (a live commit holds the lock for as long as its file exists), and
(``outside_strays``, from ``sources.vision.stale_cache_files``) a Vision download or
sidecar ``*.part`` the cache judges stale. A shallow scan lists the folders of committed files, a deep
scan every partition folder (a temporary file beside no committed file, left by a
killed first commit, is also swept by the partition's next commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bml_assets.domain.minutes import (
    DAY_MS,
    MINUTE_MS,
    MINUTES_PER_DAY,
    day_bounds_ms,
    day_start_ms,
    ms_to_datetime,
)
from bml_assets.domain.provenance import provisional_streams
from bml_assets.domain.schema import DATASETS, HARD_COLUMNS, MINUTE_VIEW, Dataset, schema_hash
from bml_assets.lake.commit import gap_minutes
from bml_assets.lake.lake import Lake, absent_nullable_columns, schema_differences
from bml_assets.lake.layout import day_file_key, day_folder_key, file_key_of, symbol_folder_key
from bml_assets.lake.ledger import FileState, Ledger, PartitionRecord
from bml_assets.storage.store import ObjectStat, Store

MAX_LISTED_MINUTES: Final = 50
"""Minutes listed per problem; the detail gives the full count."""
STALE_NOT_PUBLISHED_DAYS: Final = 7
"""A ``not_published`` day older than this many days before ``today`` is a problem."""
SCHEMA_HASHES: Final = {name: schema_hash(d.arrow_schema) for name, d in DATASETS.items()}
CURRENT_SCHEMA_HASH: Final = SCHEMA_HASHES[MINUTE_VIEW.name]
TIME_COLUMN: Final = MINUTE_VIEW.time_column
READ_COLUMNS: Final = (TIME_COLUMN, *(c for c in HARD_COLUMNS if c != TIME_COLUMN))
_DATASET_ORDER: Final = {name: i for i, name in enumerate(DATASETS)}
# What reading a damaged file raises: besides I/O and Arrow errors, pyarrow decodes a
# corrupt footer's strings and numbers as it goes (UnicodeDecodeError, OverflowError).
DAMAGED_FILE_ERRORS: Final = (OSError, ValueError, ArithmeticError, pa.ArrowException)

Row = PartitionRecord | FileState
"""A ledger row as the scan reads it: full for the minute view, its file's state for a stream table."""


class ProblemKind(StrEnum):
    """What is wrong with a partition; declared from the most to the least fundamental."""

    NOT_BUILT = "not_built"
    FILE_MISSING = "file_missing"
    UNREADABLE = "unreadable"
    SCHEMA_OUTDATED = "schema_outdated"
    CONTENT_HASH_MISMATCH = "content_hash_mismatch"
    LEDGER_STALE = "ledger_stale"  # same bytes, but the row's counts no longer describe them
    MISSING_MINUTES = "missing_minutes"
    TIMESTAMP_DISORDER = "timestamp_disorder"
    HARD_NULLS = "hard_nulls"
    INCOMPLETE = "incomplete"
    NOT_PUBLISHED_STALE = "not_published_stale"
    PROVISIONAL = "provisional"


FILE_DAMAGE: Final = frozenset(
    {
        ProblemKind.FILE_MISSING,
        ProblemKind.UNREADABLE,
        ProblemKind.SCHEMA_OUTDATED,
        ProblemKind.CONTENT_HASH_MISMATCH,
        ProblemKind.LEDGER_STALE,
    }
)
"""What ``damaged_files`` reports: a committed file gone or not as committed."""
_KIND_ORDER: Final = {k: i for i, k in enumerate(ProblemKind)}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one (symbol, day) partition of ``dataset``; ``minutes`` are ISO
    minute starts (UTC), at most ``MAX_LISTED_MINUTES`` of them (``detail`` has the count).

    An ``incomplete`` problem also carries its row's ``committed_at`` and
    ``incomplete_builds``: the repair's backoff is counted from them."""

    symbol: str
    day: dt.date
    kind: ProblemKind
    detail: str
    minutes: tuple[str, ...] = ()
    dataset: str = MINUTE_VIEW.name
    committed_at: dt.datetime | None = None
    incomplete_builds: int = 0

    @property
    def sort_key(self) -> tuple[dt.date, str, int, int]:
        return (self.day, self.symbol, _KIND_ORDER[ProblemKind(self.kind)], _DATASET_ORDER.get(self.dataset, 99))

    def to_row(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "symbol": self.symbol,
            "date": self.day.isoformat(),
            "kind": str(self.kind),
            "detail": self.detail,
            "minutes": list(self.minutes),
        }


@dataclass(frozen=True)
class StrayFile:
    """A temporary file no live writer owns: a commit's in a partition folder (``dataset``,
    ``symbol`` and ``day`` set), or an unfinished download in the Vision cache (None)."""

    path: Path
    bytes: int
    mtime: dt.datetime
    dataset: str | None = None
    symbol: str | None = None
    day: dt.date | None = None

    @property
    def where(self) -> str:
        return "lake" if self.dataset is not None else "vision cache"

    def to_row(self) -> dict[str, Any]:
        return {
            "where": self.where,
            "path": str(self.path),
            "bytes": self.bytes,
            "mtime": self.mtime.isoformat(),
            "dataset": self.dataset,
            "symbol": self.symbol,
            "date": self.day.isoformat() if self.day is not None else None,
        }


@dataclass
class ScanReport:
    """The outcome of one scan: ``checked`` (symbol, day) partitions and ``files`` committed
    files looked at, ``problems`` sorted by (day, symbol, kind, dataset), ``strays`` (stray
    temporary files), and ``restat``: (dataset, symbol, day) of intact files whose size or
    mtime the ledger does not know (the sweep re-records them)."""

    problems: list[Problem]
    checked: int
    start: dt.date | None = None
    end: dt.date | None = None
    deep: bool = True
    symbols: tuple[str, ...] = field(default_factory=tuple)
    strays: list[StrayFile] = field(default_factory=list)
    restat: list[tuple[str, str, dt.date]] = field(default_factory=list)
    files: int = 0

    @property
    def clean(self) -> bool:
        """No problem and no stray file (a stale stat is bookkeeping, not a problem)."""
        return not self.problems and not self.strays

    def by_kind(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.problems:
            counts[str(p.kind)] = counts.get(str(p.kind), 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: _KIND_ORDER[ProblemKind(kv[0])]))

    def to_rows(self) -> list[dict[str, Any]]:
        return [p.to_row() for p in self.problems]

    def partitions(self) -> list[tuple[str, dt.date]]:
        """The (symbol, day) partitions with at least one problem, by (day, symbol)."""
        return sorted({(p.symbol, p.day) for p in self.problems}, key=lambda sd: (sd[1], sd[0]))


# --------------------------------------------------------------------------- helpers


def minute_iso(ms: int) -> str:
    """``2024-03-02T10:00:00+00:00``, the form the minute view's source gaps use."""
    return ms_to_datetime(ms).isoformat()


def _listed(values: Sequence[int] | np.ndarray) -> tuple[str, ...]:
    return tuple(minute_iso(int(v)) for v in list(values)[:MAX_LISTED_MINUTES])


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n <= MAX_LISTED_MINUTES else f" (first {MAX_LISTED_MINUTES} listed)")


def _ns_time(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.UTC)


def source_gap_minutes(record: PartitionRecord) -> set[int]:
    """The confirmed source-gap minutes (epoch ms) of a ledger row that fall in its day."""
    return gap_minutes(record.day, record.source_gaps)


def _days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    for i in range((end - start).days + 1):
        yield start + dt.timedelta(days=i)


# --------------------------------------------------------------------------- the checks


def _ledger_problems(record: Row, *, closed: bool) -> list[Problem]:
    """What the ledger row alone says is wrong (the shallow scan's view of the content)."""
    p: list[Problem] = []
    sym, day, ds = record.symbol, record.day, record.dataset
    current = SCHEMA_HASHES[ds]
    if record.schema_hash != current:
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.SCHEMA_OUTDATED,
                f"the ledger records schema_hash {record.schema_hash}, the current layout is {current}",
                dataset=ds,
            )
        )
    if record.incomplete:
        p.append(_incomplete_problem(record))
    if not isinstance(record, PartitionRecord):
        return p  # a stream table: the checks below are the minute view's (whose rows are read in full)
    start = day_start_ms(day)
    outside = [
        f"{name} {minute_iso(v)}"
        for name, v in (("min_ts", record.min_ts), ("max_ts", record.max_ts))
        if v is not None and not start <= v < start + DAY_MS
    ]
    if outside:
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.TIMESTAMP_DISORDER,
                "the ledger records " + ", ".join(outside) + " outside the day",
            )
        )
    if closed and record.row_count is not None:
        gaps = len(source_gap_minutes(record))
        unaccounted = MINUTES_PER_DAY - record.row_count - gaps
        if unaccounted > 0:
            p.append(
                Problem(
                    sym,
                    day,
                    ProblemKind.MISSING_MINUTES,
                    f"the ledger records {record.row_count} rows and {gaps} source-gap minutes: "
                    f"{unaccounted} minutes unaccounted for",
                )
            )
    return p


def _incomplete_problem(record: Row) -> Problem:
    streams = []
    for m in record.missing_streams:
        name = m.get("stream", "?") if isinstance(m, Mapping) else str(m)
        reason = m.get("reason") if isinstance(m, Mapping) else None
        streams.append(f"{name} ({reason})" if reason else str(name))
    builds = max(record.incomplete_builds, 1)
    return Problem(
        record.symbol,
        record.day,
        ProblemKind.INCOMPLETE,
        f"missing {', '.join(streams)}; {builds} build(s) in a row ended so, the last at "
        f"{record.committed_at:%Y-%m-%d %H:%M:%S}Z",
        dataset=record.dataset,
        committed_at=record.committed_at,
        incomplete_builds=builds,
    )


def _schema_problem(record: Row, where: str, schema: pa.Schema, dataset: Dataset, differences: list[str]) -> Problem:
    """A file of another layout; one that only lacks nullable columns still reads (``Lake.read``)."""
    detail = f"the file {where}: " + "; ".join(differences[:5])
    if absent_nullable_columns(schema, dataset.arrow_schema) is not None:
        detail += " (it reads with them NULL until it is rebuilt)"
    return Problem(record.symbol, record.day, ProblemKind.SCHEMA_OUTDATED, detail, dataset=dataset.name)


def _file_problems(record: Row, store: Store, key: str, dataset: Dataset, *, closed: bool) -> list[Problem]:
    """Read the file: bytes against the ledger's hash, footer schema, the time column (its
    order, and the ledger's counts), and for the minute view the HARD columns."""
    p: list[Problem] = []
    sym, day, ds = record.symbol, record.day, dataset.name
    where = store.location(key)
    try:
        actual = store.sha256(key)
    except OSError as exc:
        return [Problem(sym, day, ProblemKind.UNREADABLE, f"cannot read {where}: {exc}", dataset=ds)]
    if actual != record.content_hash:
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.CONTENT_HASH_MISMATCH,
                f"{where} has sha256 {actual}, the ledger records {record.content_hash}",
                dataset=ds,
            )
        )
    minute_view = ds == MINUTE_VIEW.name
    try:
        with pq.ParquetFile(store.source(key)) as f:
            differences = schema_differences(f.schema_arrow, dataset.arrow_schema)
            if differences:
                p.append(_schema_problem(record, where, f.schema_arrow, dataset, differences))
                return p
            table = f.read(columns=list(READ_COLUMNS) if minute_view else [dataset.time_column])
    except DAMAGED_FILE_ERRORS as exc:
        p.append(Problem(sym, day, ProblemKind.UNREADABLE, f"cannot read {where} as parquet: {exc}", dataset=ds))
        return p
    if minute_view and isinstance(record, PartitionRecord):
        p += _content_problems(sym, day, table, source_gap_minutes(record), closed=closed)
    else:
        p += _order_problems(sym, day, ds, table.column(dataset.time_column))
    if not any(x.kind == ProblemKind.CONTENT_HASH_MISMATCH for x in p):
        p += _ledger_counts_problems(record, table.column(dataset.time_column))
    return p


def _order_problems(sym: str, day: dt.date, ds: str, column: pa.ChunkedArray) -> list[Problem]:
    """A stream table's time column must be strictly increasing (what its commit validated)."""
    ts = np.asarray(pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    steps = np.flatnonzero(np.diff(ts) <= 0) + 1
    if not steps.size:
        return []
    return [
        Problem(
            sym,
            day,
            ProblemKind.TIMESTAMP_DISORDER,
            f"{column.type} column: {steps.size} not strictly increasing",
            _listed(sorted(set(ts[steps].tolist()))),
            dataset=ds,
        )
    ]


def _content_problems(sym: str, day: dt.date, table: pa.Table, gaps: set[int], *, closed: bool) -> list[Problem]:
    p: list[Problem] = []
    column = table.column(TIME_COLUMN)
    # The schema was checked: timestamp[ms, UTC], so the integers are epoch milliseconds.
    ts = np.asarray(pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    ts_valid = ts[valid]
    start, end = day_bounds_ms(day)

    disorder: list[str] = []
    bad: list[int] = []
    steps = np.flatnonzero(np.diff(ts_valid) <= 0) + 1
    if steps.size:
        disorder.append(f"{steps.size} not strictly increasing")
        bad += ts_valid[steps].tolist()
    outside = ts_valid[(ts_valid < start) | (ts_valid >= end)]
    if outside.size:
        disorder.append(f"{outside.size} outside {day.isoformat()}")
        bad += outside.tolist()
    unaligned = ts_valid[ts_valid % MINUTE_MS != 0]
    if unaligned.size:
        disorder.append(f"{unaligned.size} not at a minute start")
        bad += unaligned.tolist()
    if disorder:
        listed = sorted(set(bad))
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.TIMESTAMP_DISORDER,
                "timestamps: " + ", ".join(disorder) + f"; {_count(len(listed), 'minutes involved')}",
                _listed(listed),
            )
        )

    if closed:
        grid = np.arange(start, end, MINUTE_MS, dtype=np.int64)
        accounted = np.union1d(ts_valid, np.fromiter(gaps, dtype=np.int64, count=len(gaps)))
        missing = np.setdiff1d(grid, accounted, assume_unique=False)
        if missing.size:
            p.append(
                Problem(
                    sym,
                    day,
                    ProblemKind.MISSING_MINUTES,
                    f"{table.num_rows} rows, {len(gaps)} source-gap minutes: "
                    + _count(int(missing.size), "minutes missing"),
                    _listed(missing),
                )
            )

    null_rows = np.zeros(table.num_rows, dtype=bool)
    per_column: list[str] = []
    for name in READ_COLUMNS:
        col = table.column(name)
        if col.null_count:
            per_column.append(f"{name} ({col.null_count})")
            null_rows |= np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    if per_column:
        at = sorted({int(v) for v in ts[null_rows & valid]})
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.HARD_NULLS,
                "NULL in HARD columns: " + ", ".join(per_column) + f"; {_count(int(null_rows.sum()), 'rows')}",
                _listed(at),
            )
        )
    return p


def _ledger_counts_problems(record: Row, times: pa.ChunkedArray) -> list[Problem]:
    """The ledger row's row count and time bounds against the file's (SPEC §7: the ledger
    describes the file)."""
    ints = times.cast(pa.int64())
    actual = (len(ints), pc.min(ints).as_py(), pc.max(ints).as_py())
    claimed = (record.row_count, record.min_ts, record.max_ts)
    if actual == claimed:
        return []
    detail = f"the ledger records rows/min_ts/max_ts {claimed}, the file has {actual}"
    return [Problem(record.symbol, record.day, ProblemKind.LEDGER_STALE, detail, dataset=record.dataset)]


def _footer_problems(record: Row, store: Store, key: str, dataset: Dataset, size: int) -> tuple[list[Problem], bool]:
    """The shallow scan's read of a file whose stat the ledger does not confirm: the footer
    only. Returns the problems and whether the footer's row count differs from the ledger's."""
    sym, day, ds = record.symbol, record.day, dataset.name
    where = store.location(key)
    recorded = f"; the ledger recorded {record.file_bytes} bytes" if record.file_bytes is not None else ""
    try:
        metadata = pq.read_metadata(store.source(key))
        schema = metadata.schema.to_arrow_schema()
    except DAMAGED_FILE_ERRORS as exc:
        detail = f"cannot read the parquet footer of {where} ({size} bytes{recorded}): {exc}"
        return [Problem(sym, day, ProblemKind.UNREADABLE, detail, dataset=ds)], False
    differences = schema_differences(schema, dataset.arrow_schema)
    if differences:
        return [_schema_problem(record, where, schema, dataset, differences)], False
    return [], metadata.num_rows != record.row_count


def _shallow_problems(record: Row, store: Store, key: str, dataset: Dataset, st: ObjectStat) -> list[Problem]:
    """File against ledger by stat, then footer, then hash, each only when the one before
    leaves a doubt (see the module docstring)."""
    known = record.file_bytes is not None and record.file_mtime_ns is not None
    if known and (st.size, st.mtime_ns) == (record.file_bytes, record.file_mtime_ns):
        return []
    footer, rows_differ = _footer_problems(record, store, key, dataset, st.size)
    if footer:
        return footer
    if not known and not rows_differ:
        return []  # a row from before the ledger kept sizes: the footer check is the shallow one
    where = store.location(key)
    try:
        actual = store.sha256(key)
    except OSError as exc:
        return [
            Problem(
                record.symbol, record.day, ProblemKind.UNREADABLE, f"cannot read {where}: {exc}", dataset=dataset.name
            )
        ]
    if actual != record.content_hash:
        changed = (
            f" (now {st.size} bytes, modified {_ns_time(st.mtime_ns):%Y-%m-%d %H:%M:%S}Z; "
            f"committed as {record.file_bytes} bytes)"
            if known
            else ""
        )
        detail = f"{where} has sha256 {actual}, the ledger records {record.content_hash}{changed}"
        return [Problem(record.symbol, record.day, ProblemKind.CONTENT_HASH_MISMATCH, detail, dataset=dataset.name)]
    if rows_differ:
        detail = f"the ledger records {record.row_count} rows, the footer of the same bytes says otherwise"
        return [Problem(record.symbol, record.day, ProblemKind.LEDGER_STALE, detail, dataset=dataset.name)]
    return []  # the committed bytes with a new mtime: not a problem (``restat``)


def _committed_problems(
    record: Row, store: Store, key: str, dataset: Dataset, *, closed: bool, deep: bool
) -> tuple[list[Problem], bool]:
    """The problems of one committed partition, and whether its file is intact but its
    stat unknown to the ledger (to be re-recorded)."""
    st = store.stat(key)
    if st is None:
        detail = (
            f"the ledger records a committed file (sha256 {record.content_hash}) but {store.location(key)} is missing"
        )
        return [Problem(record.symbol, record.day, ProblemKind.FILE_MISSING, detail, dataset=dataset.name)], False
    stat_known = (st.size, st.mtime_ns) == (record.file_bytes, record.file_mtime_ns)
    ledger_side = _ledger_problems(record, closed=closed)
    if stat_known and not deep:
        return ledger_side, False  # the common case of every tick: the file is as committed
    file_side = (
        _file_problems(record, store, key, dataset, closed=closed)
        if deep
        else _shallow_problems(record, store, key, dataset, st)
    )
    # The file is the evidence for its own content: keep the ledger's claims only
    # where the file could not speak (unreadable, or a foreign schema).
    read_ok = not any(p.kind in (ProblemKind.UNREADABLE, ProblemKind.SCHEMA_OUTDATED) for p in file_side)
    content_kinds = (ProblemKind.MISSING_MINUTES, ProblemKind.TIMESTAMP_DISORDER)
    kept = [p for p in ledger_side if not (deep and read_ok and p.kind in content_kinds)]
    merged = kept + file_side
    # One schema problem per partition is enough, with both reasons.
    schema = [p for p in merged if p.kind == ProblemKind.SCHEMA_OUTDATED]
    if len(schema) > 1:
        joined = Problem(
            record.symbol,
            record.day,
            ProblemKind.SCHEMA_OUTDATED,
            "; ".join(p.detail for p in schema),
            dataset=dataset.name,
        )
        merged = [p for p in merged if p.kind != ProblemKind.SCHEMA_OUTDATED] + [joined]
    damaged = (
        ProblemKind.UNREADABLE,
        ProblemKind.SCHEMA_OUTDATED,
        ProblemKind.CONTENT_HASH_MISMATCH,
        ProblemKind.LEDGER_STALE,
    )
    restat = not stat_known and not any(p.kind in damaged for p in file_side)
    return merged, restat


# --------------------------------------------------------------------------- stray files


def _lake_strays(lake: Lake, folder: str, dataset: Dataset, symbol: str, day: dt.date) -> list[StrayFile]:
    """The commit temporaries in one partition folder that no live commit owns."""
    store = lake.store
    temps = store.temp_files(folder)
    if not temps or lake.busy(dataset, symbol, day):
        return []
    out: list[StrayFile] = []
    for key in temps:
        st = store.stat(key)  # after the lock check: a file published meanwhile was a live commit's
        if st is None:
            continue
        out.append(StrayFile(Path(store.location(key)), st.size, _ns_time(st.mtime_ns), dataset.name, symbol, day))
    return out


def outside_strays(files: Iterable[tuple[Path, ObjectStat]]) -> list[StrayFile]:
    """Stray files outside the lake's partitions (e.g. the Vision cache's stale downloads,
    ``sources.vision.stale_cache_files``), as the scan reports them."""
    return [StrayFile(path, st.size, _ns_time(st.mtime_ns)) for path, st in files]


# --------------------------------------------------------------------------- the scan


def scan(
    lake: Lake,
    ledger: Ledger,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    today: dt.date,
    vision_published: Callable[[str, dt.date], bool] | None = None,
    deep: bool = True,
    listing_dates: Mapping[str, dt.date] | None = None,
    datasets: Sequence[Dataset] | None = None,
) -> ScanReport:
    """Check every (symbol, day) of ``symbols`` × ``start..end`` (inclusive) in every dataset.

    Two ledger queries for the whole range (the minute view's rows, the stream tables'
    file states); per committed file one folder listing (stray temporary files; a deep
    scan lists every partition folder) and one stat (``deep=False``; the footer and
    hash only for a file the stat does not confirm) or, with ``deep=True``, the file's
    sha256, its footer and its time column (and the minute view's HARD columns).
    ``today`` is the first day that is not closed: it and later days are never
    ``not_built`` and never lack minutes. ``vision_published(symbol, day)`` is asked
    only for committed days with REST-built streams. ``datasets``: default every
    dataset of ``schema.DATASETS``.
    """
    store = lake.store
    symbols = tuple(dict.fromkeys(symbols))
    chosen = tuple(datasets) if datasets is not None else tuple(DATASETS.values())
    listing_dates = listing_dates or {}
    report = ScanReport(problems=[], checked=0, start=start, end=end, deep=deep, symbols=symbols)
    if end < start or not symbols or not chosen:
        return report
    wanted = {d.name for d in chosen}
    with_minute = MINUTE_VIEW.name in wanted
    rows: dict[tuple[str, str, dt.date], Row] = {}
    if with_minute:
        rows.update(
            ((r.dataset, r.symbol, r.day), r)
            for r in ledger.partitions(MINUTE_VIEW, symbols=symbols, start=start, end=end)
        )
    streams = [d for d in chosen if d is not MINUTE_VIEW]
    if streams:
        rows.update(((r.dataset, r.symbol, r.day), r) for r in ledger.file_states(streams, symbols, start, end))
    stale_before = today - dt.timedelta(days=STALE_NOT_PUBLISHED_DAYS)
    problems: list[Problem] = []
    for symbol in symbols:
        listed_from = listing_dates.get(symbol)
        # One validated folder key per symbol and dataset; per day only strings are formatted.
        symbol_dirs = [(d, symbol_folder_key(d, symbol)) for d in chosen]
        for day in _days(start, end):
            if listed_from is not None and day < listed_from:
                continue  # before the listing nothing is owed
            closed = day < today
            day_iso = day.isoformat()
            minute = rows.get((MINUTE_VIEW.name, symbol, day))
            assert minute is None or isinstance(minute, PartitionRecord)
            if with_minute and (minute is not None or closed):
                report.checked += 1
            for dataset, symbol_dir in symbol_dirs:
                record = rows.get((dataset.name, symbol, day))
                key = day_file_key(symbol_dir, day_iso)
                if dataset is MINUTE_VIEW:
                    problems += _minute_row_problems(minute, symbol, day, store, key, closed, stale_before, today)
                committed = record is not None and record.status == "committed"
                if committed or deep:
                    # Stray temporaries: a shallow scan lists the folders of committed files
                    # only (most stream tables of old days have none); a deep scan every folder.
                    report.strays += _lake_strays(lake, day_folder_key(symbol_dir, day_iso), dataset, symbol, day)
                if not committed:
                    continue
                assert record is not None
                report.files += 1
                found, restat = _committed_problems(record, store, key, dataset, closed=closed, deep=deep)
                problems += found
                if restat:
                    report.restat.append((dataset.name, symbol, day))
            if vision_published is not None and closed and minute is not None and minute.status == "committed":
                streams = provisional_streams(minute.provenance)
                if streams and vision_published(symbol, day):
                    problems.append(
                        Problem(
                            symbol,
                            day,
                            ProblemKind.PROVISIONAL,
                            f"built from REST ({', '.join(streams)}) and Vision has published the day",
                        )
                    )
    problems.sort(key=lambda p: p.sort_key)
    report.problems = problems
    report.strays.sort(key=lambda f: (f.day or start, f.symbol or "", _DATASET_ORDER.get(f.dataset or "", 99), f.path))
    return report


def damaged_files(
    lake: Lake,
    ledger: Ledger,
    *,
    symbols: Iterable[str] | None = None,
    start: dt.date | None = None,
    today: dt.date | None = None,
) -> list[Problem]:
    """The whole lake's committed files that are missing or not as committed, every dataset.

    One lean ledger read and one stat per file (about 3 s for a million files); only a
    file whose size or mtime differs from the commit's is read (footer, then hash), so a
    touched but intact file is no problem. Rows from before the ledger kept file stats
    are left to the windowed scan. ``symbols``/``start`` limit the answer to the
    partition set; ``today`` (default: none) leaves later days out.
    """
    store = lake.store
    stat = store.stat
    wanted = set(symbols) if symbols is not None else None
    first = start.isoformat() if start is not None else ""
    last = today.isoformat() if today is not None else "9999-12-31"
    suspects: list[tuple[str, str, dt.date, str]] = []
    for dataset, symbol, day, size, mtime in ledger.committed_file_stats():
        if (wanted is not None and symbol not in wanted) or not first <= day < last or dataset not in DATASETS:
            continue
        key = file_key_of(dataset, symbol, day)
        st = stat(key)
        if st is None or st.size != size or st.mtime_ns != mtime:
            suspects.append((dataset, symbol, dt.date.fromisoformat(day), key))
    problems: list[Problem] = []
    for dataset, symbol, day, key in suspects:
        record = ledger.get_partition(dataset, symbol, day)
        if record is None or record.status != "committed":
            continue  # changed since the read: a new commit owns it now
        found, _ = _committed_problems(record, store, key, DATASETS[dataset], closed=True, deep=False)
        problems += [p for p in found if p.kind in FILE_DAMAGE]
    problems.sort(key=lambda p: p.sort_key)
    return problems


def _minute_row_problems(
    record: PartitionRecord | None,
    symbol: str,
    day: dt.date,
    store: Store,
    key: str,
    closed: bool,
    stale_before: dt.date,
    today: dt.date,
) -> list[Problem]:
    """What the minute view's row (or its absence) owes beyond its file: a built day, a
    ``not_published`` answer that should have changed by now."""
    if record is None:
        if not closed:
            return []
        note = f"; a file exists at {store.location(key)} without a ledger row" if store.stat(key) is not None else ""
        return [Problem(symbol, day, ProblemKind.NOT_BUILT, f"no ledger row{note}")]
    if record.status == "not_published" and day < stale_before:
        return [
            Problem(
                symbol,
                day,
                ProblemKind.NOT_PUBLISHED_STALE,
                f"recorded not_published ({record.message}) at {record.committed_at:%Y-%m-%d %H:%M}Z, "
                f"more than {STALE_NOT_PUBLISHED_DAYS} days before {today.isoformat()}",
            )
        ]
    return []
