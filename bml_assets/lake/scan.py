"""The consistency scan of the minute view: the ledger and the files, checked against each other.

What belongs here: one pass over symbols × days that reads the ledger once for the
whole range and looks at the files (``os.stat`` only, or, in a deep scan, the bytes,
the footer and the timestamp + HARD columns), and turns every disagreement into a
``Problem``. Neither side is trusted alone: a ledger row may claim a file that is
gone or different, and a file may be torn, old or hold fewer minutes than it should.

What stays out: deciding what to do about a problem (``repair.py`` rebuilds the
partition), Dagster, and any network access (``vision_published`` is passed in).

Kinds of problem, per (symbol, day):

- ``not_built``: no ledger row for a day before ``today`` (and on or after the
  symbol's listing day, when known);
- ``file_missing``, ``unreadable``, ``schema_outdated``, ``content_hash_mismatch``:
  the ledger's ``committed`` row and the file disagree (a ``schema_outdated`` comes
  from the ledger's ``schema_hash`` or the file's own Arrow schema);
- ``missing_minutes``: a closed day lacks minutes that are not confirmed source
  gaps of its ledger row (a shallow scan can only count them from the ledger);
- ``timestamp_disorder``: timestamps not strictly increasing, not on a minute,
  or outside the day; ``hard_nulls``: a NULL in a HARD column;
- ``not_published_stale``: a ``not_published`` row for a day more than
  ``STALE_NOT_PUBLISHED_DAYS`` before ``today`` (Vision should have it by now);
- ``provisional``: a REST-built stream on a day Vision has published (only when
  ``vision_published`` is given).

``not_listed`` rows are never problems, and neither is a day before the symbol's
listing. A file lying where the ledger records ``not_listed``/``not_published`` is
not reported (``record_unavailable`` refuses to hide such a file; deleting it is a
human decision).
"""

from __future__ import annotations

import datetime as dt
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bml_assets.lake.commit import file_sha256, schema_differences
from bml_assets.lake.io_manager import provisional_streams
from bml_assets.lake.layout import PART_FILE_NAME, partition_path
from bml_assets.lake.ledger import Ledger, PartitionRecord
from bml_assets.schema import HARD_COLUMNS, MINUTE_VIEW, schema_hash

MINUTES_PER_DAY: Final = 1440
MINUTE_MS: Final = 60_000
DAY_MS: Final = MINUTES_PER_DAY * MINUTE_MS
MAX_LISTED_MINUTES: Final = 50
"""Minutes listed per problem; the detail gives the full count."""
STALE_NOT_PUBLISHED_DAYS: Final = 7
"""A ``not_published`` day older than this many days before ``today`` is a problem."""
CURRENT_SCHEMA_HASH: Final = schema_hash(MINUTE_VIEW.arrow_schema)
TIME_COLUMN: Final = MINUTE_VIEW.time_column
READ_COLUMNS: Final = (TIME_COLUMN, *(c for c in HARD_COLUMNS if c != TIME_COLUMN))


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
    NOT_PUBLISHED_STALE = "not_published_stale"
    PROVISIONAL = "provisional"


_KIND_ORDER: Final = {k: i for i, k in enumerate(ProblemKind)}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one (symbol, day) partition; ``minutes`` are ISO minute
    starts (UTC), at most ``MAX_LISTED_MINUTES`` of them (``detail`` has the count)."""

    symbol: str
    day: dt.date
    kind: ProblemKind
    detail: str
    minutes: tuple[str, ...] = ()

    @property
    def sort_key(self) -> tuple[dt.date, str, int]:
        return (self.day, self.symbol, _KIND_ORDER[ProblemKind(self.kind)])

    def to_row(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "date": self.day.isoformat(),
            "kind": str(self.kind),
            "detail": self.detail,
            "minutes": list(self.minutes),
        }


@dataclass
class ScanReport:
    """The outcome of one scan: ``checked`` (symbol, day) partitions, ``problems`` sorted
    by (day, symbol, kind)."""

    problems: list[Problem]
    checked: int
    start: dt.date | None = None
    end: dt.date | None = None
    deep: bool = True
    symbols: tuple[str, ...] = field(default_factory=tuple)

    @property
    def clean(self) -> bool:
        return not self.problems

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


def _day_start_ms(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)


def minute_iso(ms: int) -> str:
    """``2024-03-02T10:00:00+00:00``, the form the minute view's source gaps use."""
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat()


def _listed(values: Sequence[int] | np.ndarray) -> tuple[str, ...]:
    return tuple(minute_iso(int(v)) for v in list(values)[:MAX_LISTED_MINUTES])


def _count(n: int, what: str) -> str:
    return f"{n} {what}" + ("" if n <= MAX_LISTED_MINUTES else f" (first {MAX_LISTED_MINUTES} listed)")


def source_gap_minutes(record: PartitionRecord) -> set[int]:
    """The confirmed source-gap minutes (epoch ms) of a ledger row that fall in its day."""
    start = _day_start_ms(record.day)
    out: set[int] = set()
    for gap in record.source_gaps:
        value = gap.get("minute") if isinstance(gap, Mapping) else None
        if not isinstance(value, str):
            continue
        try:
            moment = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        ms = int(moment.timestamp() * 1000)
        if start <= ms < start + DAY_MS and ms % MINUTE_MS == 0:
            out.add(ms)
    return out


def _is_file(path: str | Path) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _days(start: dt.date, end: dt.date) -> Iterator[dt.date]:
    for i in range((end - start).days + 1):
        yield start + dt.timedelta(days=i)


# --------------------------------------------------------------------------- the checks


def _ledger_problems(record: PartitionRecord, *, closed: bool) -> list[Problem]:
    """What the ledger row alone says is wrong (the shallow scan's view of the content)."""
    p: list[Problem] = []
    sym, day = record.symbol, record.day
    if record.schema_hash != CURRENT_SCHEMA_HASH:
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.SCHEMA_OUTDATED,
                f"the ledger records schema_hash {record.schema_hash}, the current layout is {CURRENT_SCHEMA_HASH}",
            )
        )
    start = _day_start_ms(day)
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


def _file_problems(record: PartitionRecord, path: str, *, closed: bool) -> list[Problem]:
    """Read the file: bytes against the ledger's hash, footer schema, timestamps, HARD NULLs."""
    p: list[Problem] = []
    sym, day = record.symbol, record.day
    try:
        actual = file_sha256(Path(path))
    except OSError as exc:
        return [Problem(sym, day, ProblemKind.UNREADABLE, f"cannot read {path}: {exc}")]
    if actual != record.content_hash:
        p.append(
            Problem(
                sym,
                day,
                ProblemKind.CONTENT_HASH_MISMATCH,
                f"{path} has sha256 {actual}, the ledger records {record.content_hash}",
            )
        )
    try:
        with pq.ParquetFile(path) as f:
            differences = schema_differences(f.schema_arrow, MINUTE_VIEW.arrow_schema)
            if differences:
                p.append(
                    Problem(sym, day, ProblemKind.SCHEMA_OUTDATED, f"the file {path}: " + "; ".join(differences[:5]))
                )
                return p
            table = f.read(columns=list(READ_COLUMNS))
    except (OSError, pa.ArrowException) as exc:
        p.append(Problem(sym, day, ProblemKind.UNREADABLE, f"cannot read {path} as parquet: {exc}"))
        return p
    p += _content_problems(sym, day, table, source_gap_minutes(record), closed=closed)
    return p


def _content_problems(sym: str, day: dt.date, table: pa.Table, gaps: set[int], *, closed: bool) -> list[Problem]:
    p: list[Problem] = []
    column = table.column(TIME_COLUMN)
    # The schema was checked: timestamp[ms, UTC], so the integers are epoch milliseconds.
    ts = np.asarray(pc.fill_null(column.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    valid = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    ts_valid = ts[valid]
    start, end = _day_start_ms(day), _day_start_ms(day) + DAY_MS

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


# --------------------------------------------------------------------------- the scan


def scan(
    lake_root: Path,
    ledger: Ledger,
    symbols: Sequence[str],
    start: dt.date,
    end: dt.date,
    *,
    today: dt.date,
    vision_published: Callable[[str, dt.date], bool] | None = None,
    deep: bool = True,
    listing_dates: Mapping[str, dt.date] | None = None,
) -> ScanReport:
    """Check every (symbol, day) of ``symbols`` × ``start..end`` (inclusive) of the minute view.

    One ledger query for the whole range; per partition one ``os.stat`` (``deep=False``)
    or, with ``deep=True``, the file's sha256, its footer and its timestamp + HARD
    columns. ``today`` is the first day that is not closed: it and later days are
    never ``not_built`` and never lack minutes. ``vision_published(symbol, day)`` is
    asked only for committed days with REST-built streams.
    """
    lake_root = Path(lake_root)
    symbols = tuple(dict.fromkeys(symbols))
    listing_dates = listing_dates or {}
    report = ScanReport(problems=[], checked=0, start=start, end=end, deep=deep, symbols=symbols)
    if end < start or not symbols:
        return report
    rows = {
        (r.symbol, r.day): r for r in ledger.partitions(dataset=MINUTE_VIEW.name, symbols=symbols, start=start, end=end)
    }
    stale_before = today - dt.timedelta(days=STALE_NOT_PUBLISHED_DAYS)
    problems: list[Problem] = []
    for symbol in symbols:
        listed_from = listing_dates.get(symbol)
        # One validated folder per symbol; per day only a string is formatted (pathlib
        # per partition costs more than the stat itself over years of days).
        symbol_dir = str(partition_path(lake_root, MINUTE_VIEW, symbol, start).parent.parent)
        for day in _days(start, end):
            if listed_from is not None and day < listed_from:
                continue  # before the listing nothing is owed
            record = rows.get((symbol, day))
            closed = day < today
            if record is None:
                if not closed:
                    continue
                report.checked += 1
                path = _file_of(symbol_dir, day)
                note = f"; a file exists at {path} without a ledger row" if _is_file(path) else ""
                problems.append(Problem(symbol, day, ProblemKind.NOT_BUILT, f"no ledger row{note}"))
                continue
            report.checked += 1
            if record.status == "not_listed":
                continue
            if record.status == "not_published":
                if day < stale_before:
                    problems.append(
                        Problem(
                            symbol,
                            day,
                            ProblemKind.NOT_PUBLISHED_STALE,
                            f"recorded not_published ({record.message}) at {record.committed_at:%Y-%m-%d %H:%M}Z, "
                            f"more than {STALE_NOT_PUBLISHED_DAYS} days before {today.isoformat()}",
                        )
                    )
                continue
            problems += _committed_problems(record, _file_of(symbol_dir, day), closed=closed, deep=deep)
            if vision_published is not None and closed:
                streams = provisional_streams(record.provenance)
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
    return report


def _file_of(symbol_dir: str, day: dt.date) -> str:
    """``partition_path`` of (symbol, day) given the symbol's folder, as a string."""
    return f"{symbol_dir}{os.sep}date={day.isoformat()}{os.sep}{PART_FILE_NAME}"


def _ledger_counts_problems(record: PartitionRecord, path: str) -> list[Problem]:
    """The ledger row's row count and time bounds against the file's (SPEC §7: the ledger
    describes the file)."""
    times = pq.read_table(path, columns=[MINUTE_VIEW.time_column]).column(0).cast(pa.int64())
    actual = (len(times), pc.min(times).as_py(), pc.max(times).as_py())
    claimed = (record.row_count, record.min_ts, record.max_ts)
    if actual == claimed:
        return []
    detail = f"the ledger records rows/min_ts/max_ts {claimed}, the file has {actual}"
    return [Problem(record.symbol, record.day, ProblemKind.LEDGER_STALE, detail)]


def _committed_problems(record: PartitionRecord, path: str, *, closed: bool, deep: bool) -> list[Problem]:
    if not _is_file(path):
        return [
            Problem(
                record.symbol,
                record.day,
                ProblemKind.FILE_MISSING,
                f"the ledger records a committed file (sha256 {record.content_hash}) but {path} is missing",
            )
        ]
    ledger_side = _ledger_problems(record, closed=closed)
    if not deep:
        return ledger_side
    file_side = _file_problems(record, path, closed=closed)
    # The file is the evidence for its own content: keep the ledger's claims only
    # where the file could not speak (unreadable, or a foreign schema).
    read_ok = not any(p.kind in (ProblemKind.UNREADABLE, ProblemKind.SCHEMA_OUTDATED) for p in file_side)
    content_kinds = (ProblemKind.MISSING_MINUTES, ProblemKind.TIMESTAMP_DISORDER)
    kept = [p for p in ledger_side if not (read_ok and p.kind in content_kinds)]
    merged = kept + file_side
    if read_ok and not any(p.kind == ProblemKind.CONTENT_HASH_MISMATCH for p in file_side):
        merged += _ledger_counts_problems(record, path)
    # One schema problem per partition is enough, with both reasons.
    schema = [p for p in merged if p.kind == ProblemKind.SCHEMA_OUTDATED]
    if len(schema) > 1:
        joined = Problem(record.symbol, record.day, ProblemKind.SCHEMA_OUTDATED, "; ".join(p.detail for p in schema))
        merged = [p for p in merged if p.kind != ProblemKind.SCHEMA_OUTDATED] + [joined]
    return merged
