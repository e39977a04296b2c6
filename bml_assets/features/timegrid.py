"""Arrow and numpy helpers on time columns, shared by the feature modules.

What belongs here: the minute grid of a span as a numpy array, flooring arrays of
instants to their minutes, the conversions between Arrow timestamp columns and
int64 milliseconds, reading a required column as a numpy array, sortedness and run
starts of key arrays, and the "row outside its day" error the per-stream transforms
raise. What stays out: the minute arithmetic on plain numbers and datetimes and its
constants (``domain/minutes.py``), any formula of a column (each stream's module
owns its own) and any I/O.

All times inside ``features/`` are int64 milliseconds since the epoch, UTC; a
minute is named by its start. Arrow tables carry ``timestamp[ms, tz=UTC]``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain.minutes import MINUTE_MS, day_bounds_ms, describe_ms
from bml_assets.domain.schema import TIMESTAMP

ArrayLike = pa.Array | pa.ChunkedArray | np.ndarray


class OutsideDayError(ValueError):
    """A source row whose time is not inside the partition's UTC day.

    ``column`` and ``value_ms`` let the caller find the row in the file as written:
    the row number in the message counts rows of the (sorted) table it was given.
    """

    def __init__(self, message: str, *, column: str = "", value_ms: int | None = None, detail: str = "") -> None:
        super().__init__(message)
        self.column = column
        self.value_ms = value_ms
        self.detail = detail or message


def floor_minute(ms: np.ndarray) -> np.ndarray:
    """Start of the minute each millisecond instant falls in (an array; one instant:
    ``minutes.floor_minute_ms``)."""
    return ms - np.mod(ms, MINUTE_MS)


def minute_grid_ms(start_ms: int, end_ms: int) -> np.ndarray:
    """Every minute start in ``[start_ms, end_ms)``; both ends minute-aligned."""
    return np.arange(start_ms, end_ms, MINUTE_MS, dtype=np.int64)


def to_ms(values: ArrayLike) -> np.ndarray:
    """int64 epoch milliseconds from an Arrow timestamp/int64 array or a numpy array.

    Nulls are not allowed: times are keys.
    """
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "M":
            return values.astype("datetime64[ms]").astype(np.int64)
        return values.astype(np.int64, copy=False)
    if values.null_count:
        raise ValueError("a time column contains NULL")
    if pa.types.is_timestamp(values.type):
        values = pc.cast(values, pa.timestamp("ms", tz=values.type.tz)).cast(pa.int64())
    return np.asarray(values.to_numpy(), dtype=np.int64)


def ms_to_timestamps(ms: np.ndarray) -> pa.Array:
    """An Arrow ``timestamp[ms, tz=UTC]`` array from epoch milliseconds."""
    return pa.array(np.asarray(ms, dtype=np.int64), type=pa.int64()).cast(TIMESTAMP)


def column_numpy(table: pa.Table, name: str, dtype: type | np.dtype, *, source: str) -> np.ndarray:
    """A required, non-NULL column of ``table`` as a numpy array of ``dtype``."""
    if name not in table.column_names:
        raise ValueError(f"{source}: column {name!r} is missing (have {table.column_names})")
    column = table.column(name)
    if column.null_count:
        row = first_true_row(column.is_null().to_numpy(zero_copy_only=False))
        raise ValueError(f"{source}: column {name!r} is empty at row {row}")
    return np.asarray(column.to_numpy(zero_copy_only=False), dtype=dtype)


def first_true_row(mask: np.ndarray) -> int:
    """1-based position of the first True in ``mask`` (the row number in messages)."""
    return int(np.argmax(mask)) + 1


def check_inside_day(
    times_ms: np.ndarray,
    day: dt.date,
    *,
    source: str,
    what: str,
    error: type[OutsideDayError],
    minute_aligned: bool = False,
) -> None:
    """Raise ``error`` naming the first row whose time is outside ``day``
    (or, with ``minute_aligned``, not on a whole minute)."""
    start, end = day_bounds_ms(day)
    bad = (times_ms < start) | (times_ms >= end)
    if minute_aligned:
        bad |= np.mod(times_ms, MINUTE_MS) != 0
    if bad.any():
        row = first_true_row(bad)
        reason = "a whole minute inside" if minute_aligned else "inside"
        value = int(times_ms[row - 1])
        detail = f"{what} {describe_ms(value)} is not {reason} {day.isoformat()} UTC"
        raise error(f"{source}: row {row}: {detail}", column=what, value_ms=value, detail=detail)


def is_sorted_by(primary: np.ndarray, secondary: np.ndarray) -> bool:
    """True when rows are strictly increasing in ``(primary, secondary)``."""
    if len(primary) < 2:
        return True
    d1 = np.diff(primary)
    return bool(np.all((d1 > 0) | ((d1 == 0) & (np.diff(secondary) > 0))))


def group_starts(keys: np.ndarray) -> np.ndarray:
    """Start positions of the runs of equal values in sorted ``keys`` (empty for no rows)."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.int64)
    change = np.empty(len(keys), dtype=bool)
    change[0] = True
    np.not_equal(keys[1:], keys[:-1], out=change[1:])
    return np.flatnonzero(change)
