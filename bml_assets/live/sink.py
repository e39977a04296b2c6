"""Closed live minutes into the lake: ``futures/um/live_1m/symbol=S/date=D/part.parquet``.

What belongs here: turning ``live_1m`` rows (dicts by column name, ``aggregate.close_minute``)
into the registry's Arrow table, and committing them through the lake's one atomic commit
(``lake/commit.py``) with its compare-and-swap, blocking rules (``quality.py``) and ledger
row, whose provenance records the minute ranges each family covered. What stays out: what
a row holds (``aggregate.py``), when minutes close (``core.py``).

Idempotent: ``commit`` appends the minutes the day's table does not hold yet and keeps
the ones it holds (a minute committed once is final), so committing a minute again, or
a restarted collector committing the minutes around its restart, never doubles or loses
one; nothing new, no commit. ``replace_day`` (a rebuild from the spool) replaces the
day's table whole. Each commit is based on the content hash the sink last saw
(``based_on``): if another writer committed in between, the day is read again and the
commit retried once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain.minutes import MINUTE_MS, day_of_ms, ms_to_datetime
from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.commit import NOT_BASED, CommitResult, NotBased, commit_table
from bml_assets.lake.lake import Lake
from bml_assets.lake.layout import partition_label
from bml_assets.lake.ledger import CommitConflict, Ledger
from bml_assets.quality import enforce_blocking

_TIME: Final = LIVE_1M.time_column
_FAMILY_FLAGS: Final = {"public": "public_covered", "market": "market_covered"}


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """``live_1m`` rows (the minute as epoch ms in the time column) as the registry's table."""
    arrays = []
    for c in LIVE_1M.columns:
        values = [r[c.name] for r in rows]
        if c.name == _TIME:
            arrays.append(pa.array(values, type=pa.int64()).cast(c.type))
        else:
            arrays.append(pa.array(values, type=c.type))
    return pa.Table.from_arrays(arrays, schema=LIVE_1M.arrow_schema)


def _minutes(table: pa.Table) -> list[int]:
    return table.column(_TIME).cast(pa.int64()).to_pylist()


def covered_ranges(table: pa.Table) -> dict[str, list[list[str]]]:
    """Per family, the covered minutes as ``[first, end)`` ranges of ISO times (the provenance)."""
    minutes = _minutes(table)
    out: dict[str, list[list[str]]] = {}
    for family, column in _FAMILY_FLAGS.items():
        ranges: list[list[int]] = []
        for minute, covered in zip(minutes, table.column(column).to_pylist(), strict=True):
            if not covered:
                continue
            if ranges and ranges[-1][1] == minute:
                ranges[-1][1] = minute + MINUTE_MS
            else:
                ranges.append([minute, minute + MINUTE_MS])
        out[family] = [[ms_to_datetime(a).isoformat(), ms_to_datetime(b).isoformat()] for a, b in ranges]
    return out


def provenance(table: pa.Table) -> dict[str, Any]:
    return {"live": {"status": "live", "minutes": table.num_rows, "covered": covered_ranges(table)}}


class LiveSink:
    """Commits closed minutes of the live table, one commit per (symbol, day) per call."""

    def __init__(self, lake: Lake, ledger: Ledger) -> None:
        self.lake = lake
        self.ledger = ledger
        # (symbol, day) -> (committed table, its content hash): no re-read per minute.
        self._days: dict[tuple[str, dt.date], tuple[pa.Table, str]] = {}

    def commit(self, symbol: str, rows: Iterable[Mapping[str, Any]]) -> list[CommitResult]:
        """Append ``rows`` the lake does not hold yet to their days' tables; commit each day
        that got new minutes. A minute already committed keeps its committed row."""
        by_day: dict[dt.date, list[Mapping[str, Any]]] = {}
        for row in rows:
            by_day.setdefault(day_of_ms(row[_TIME]), []).append(row)
        return [r for day, day_rows in sorted(by_day.items()) if (r := self._append(symbol, day, day_rows))]

    def replace_day(self, symbol: str, day: dt.date, rows: Sequence[Mapping[str, Any]]) -> CommitResult:
        """Make ``rows`` the whole ``live_1m`` table of (symbol, day) (a rebuild)."""
        ordered = sorted((r for r in rows if day_of_ms(r[_TIME]) == day), key=lambda r: r[_TIME])
        table = rows_table(ordered)
        result = self._commit(symbol, day, table, based_on=NOT_BASED)
        self._days[(symbol, day)] = (table, result.content_hash)
        return result

    def committed(self, symbol: str, day: dt.date) -> pa.Table | None:
        """The day's committed table (None when there is none)."""
        record = self.ledger.get_partition(LIVE_1M, symbol, day)
        if record is None or record.status != "committed" or record.content_hash is None:
            return None
        return self.lake.read(LIVE_1M, symbol, day)

    def _base(self, symbol: str, day: dt.date) -> tuple[pa.Table | None, str | None]:
        cached = self._days.get((symbol, day))
        if cached is not None:
            return cached
        record = self.ledger.get_partition(LIVE_1M, symbol, day)
        if record is None or record.status != "committed" or record.content_hash is None:
            return None, None
        return self.lake.read(LIVE_1M, symbol, day), record.content_hash

    def _append(self, symbol: str, day: dt.date, rows: Sequence[Mapping[str, Any]]) -> CommitResult | None:
        for attempt in (1, 2):
            base, base_hash = self._base(symbol, day)
            held = set(_minutes(base)) if base is not None else set()
            fresh: dict[int, Mapping[str, Any]] = {}
            for row in rows:
                if row[_TIME] not in held:
                    fresh.setdefault(row[_TIME], row)  # the first close of a minute is final
            if not fresh:
                return None
            new = rows_table([fresh[m] for m in sorted(fresh)])
            table = new if base is None else pa.concat_tables([base, new])
            table = table.take(pc.sort_indices(table, [(_TIME, "ascending")]))
            try:
                result = self._commit(symbol, day, table, based_on=base_hash)
            except CommitConflict:
                self._days.pop((symbol, day), None)
                if attempt == 2:
                    raise
                continue
            self._days[(symbol, day)] = (table, result.content_hash)
            return result
        return None  # pragma: no cover - the loop returns or raises

    def _commit(self, symbol: str, day: dt.date, table: pa.Table, *, based_on: str | NotBased | None) -> CommitResult:
        """``based_on``: the content hash the table was built on (the CAS), or ``NOT_BASED`` (a rebuild)."""
        label = partition_label(LIVE_1M, symbol, day)
        return commit_table(
            table,
            lake=self.lake,
            ledger=self.ledger,
            dataset=LIVE_1M,
            symbol=symbol,
            day=day,
            validate=lambda t: enforce_blocking(t, day, label=label, dataset=LIVE_1M),
            provenance=provenance(table),
            based_on=based_on,
        )
