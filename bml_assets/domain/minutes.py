"""Minute arithmetic: the UTC day and the minute in epoch milliseconds, declared once.

What belongs here: the lengths (``MINUTE_MS``, ``HOUR_MS``, ``DAY_MS``,
``MINUTES_PER_DAY``), the bounds of a UTC day in epoch milliseconds, flooring an
instant to its minute, the conversions between epoch milliseconds and aware UTC
datetimes, and the text an error message gives an instant. Plain integers and
datetimes only. What stays out: Arrow and numpy columns (``features/timegrid.py``
works on those, with these constants), and anything about a stream or a table.

All times are epoch milliseconds, UTC; a minute is named by its start and a day
is ``[start, start + DAY_MS)``.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

MINUTE_MS: Final = 60_000
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS
MINUTES_PER_DAY: Final = DAY_MS // MINUTE_MS

_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS: Final = dt.timedelta(milliseconds=1)


def day_start(day: dt.date) -> dt.datetime:
    """``day`` 00:00 UTC, as an aware datetime."""
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)


def day_start_ms(day: dt.date) -> int:
    """Epoch milliseconds of ``day`` 00:00 UTC."""
    return (day_start(day) - _EPOCH) // _ONE_MS


def day_bounds_ms(day: dt.date) -> tuple[int, int]:
    """``[start, end)`` of ``day`` in epoch milliseconds."""
    start = day_start_ms(day)
    return start, start + DAY_MS


def day_of_ms(ms: int) -> dt.date:
    """The UTC day an epoch-millisecond instant falls in."""
    return dt.date(1970, 1, 1) + dt.timedelta(days=ms // DAY_MS)


def floor_minute_ms(ms: int) -> int:
    """Start of the minute the epoch-millisecond instant ``ms`` falls in."""
    return ms - ms % MINUTE_MS


def ms_to_datetime(ms: int) -> dt.datetime:
    """An epoch-millisecond instant as an aware UTC datetime (exact: no float on the way)."""
    return _EPOCH + dt.timedelta(milliseconds=int(ms))


def datetime_to_ms(t: dt.datetime) -> int:
    """Epoch milliseconds of an aware datetime (sub-millisecond parts dropped, towards the past)."""
    if t.tzinfo is None:
        raise ValueError(f"a naive datetime has no instant: {t.isoformat()} (give it a timezone)")
    return (t - _EPOCH) // _ONE_MS


def describe_ms(ms: int) -> str:
    """``2024-01-02T03:04:05.678Z (1704164645678)``, for error messages."""
    try:
        text = ms_to_datetime(ms).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        text = "out of range"
    return f"{text} ({ms})"
