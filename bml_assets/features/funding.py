"""Funding settlements (``schema.FUNDING``) and the funding step functions of the minute view.

What belongs here: snapping fundingRate ``calc_time`` to its settlement minute, picking
the settlements that matter for one day, and SPEC §5 columns 56 (``funding_rate``) and
58 (``next_funding_time``) for a set of minutes. What stays out: parsing and the live
predicted rate (column 57).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain import schema
from bml_assets.domain.minutes import HOUR_MS, MINUTE_MS, day_bounds_ms
from bml_assets.features.timegrid import floor_minute, ms_to_timestamps, to_ms


def funding_settlements(raw: pa.Table) -> pa.Table:
    """``schema.FUNDING`` rows from a parsed fundingRate file: ``calc_time`` (which lands a
    few ms after the settlement instant) floored to its minute; sorted and unique on the
    instant (a repeated instant keeps its last row)."""
    instant = floor_minute(to_ms(raw.column("calc_time")))
    order = np.argsort(instant, kind="stable")
    ordered = instant[order]
    keep = np.ones(len(ordered), dtype=bool)
    keep[:-1] = ordered[1:] != ordered[:-1]
    take = pa.array(order[keep])
    return pa.Table.from_arrays(
        [
            ms_to_timestamps(ordered[keep]),
            raw.column("last_funding_rate").cast(pa.float64()).take(take),
            raw.column("funding_interval_hours").cast(pa.int64()).take(take),
        ],
        schema=schema.FUNDING.arrow_schema,
    )


def settlements_for_day(settlements: pa.Table, day: dt.date) -> pa.Table:
    """The settlements relevant to ``day``: the last one before its start (if any), all
    inside it, and the first one at or after its end (if known), sorted. ``settlements``
    is a ``schema.FUNDING`` table, unique on ``settlement_time``."""
    start, end = day_bounds_ms(day)
    settlements = settlements.sort_by("settlement_time")
    instant = to_ms(settlements.column("settlement_time"))
    first = max(int(np.searchsorted(instant, start, side="left")) - 1, 0)
    stop = min(int(np.searchsorted(instant, end, side="left")) + 1, len(instant))
    return settlements.slice(first, max(stop - first, 0))


def funding_rate_at(minutes_ms: np.ndarray, settlements: pa.Table) -> pa.Array:
    """Column 56 for each minute: the rate of the latest settlement whose instant is
    before the minute's end (< minute start + 60 s); NULL before the first one.
    A step function: not bounded by the forward-fill limit."""
    instant, rate, _ = _settlement_arrays(settlements)
    if len(instant) == 0:
        return pa.nulls(len(minutes_ms), pa.float64())
    idx = np.searchsorted(instant, minutes_ms + MINUTE_MS, side="left") - 1
    known = idx >= 0
    return _mask(rate.take(pa.array(np.where(known, idx, 0), type=pa.int64())), known, pa.float64())


def next_funding_time_at(minutes_ms: np.ndarray, settlements: pa.Table) -> pa.Array:
    """Column 58 for each minute (int64 ms): the first settlement instant strictly after
    the minute start; past the end of the history, the last settlement plus as many of
    its ``funding_interval_hours`` as needed to pass the minute start. NULL with no
    settlement at all (or when the last one has no usable interval)."""
    instant, _, last_interval = _settlement_arrays(settlements)
    n = len(minutes_ms)
    if len(instant) == 0:
        return pa.nulls(n, pa.int64())
    after = np.searchsorted(instant, minutes_ms, side="right")
    known = after < len(instant)
    result = instant[np.minimum(after, len(instant) - 1)].copy()

    if last_interval is not None and last_interval > 0:
        step = int(last_interval) * HOUR_MS
        steps = (minutes_ms - instant[-1]) // step + 1
        result = np.where(known, result, instant[-1] + steps * step)
        return pa.array(result, type=pa.int64())
    return _mask(pa.array(result, type=pa.int64()), known, pa.int64())


def _settlement_arrays(settlements: pa.Table) -> tuple[np.ndarray, pa.Array, int | None]:
    """(instants in ms, sorted; their rates; the interval in hours of the last one) of a
    ``schema.FUNDING`` table."""
    instant = to_ms(settlements.column("settlement_time"))
    order = np.argsort(instant, kind="stable")
    take = pa.array(order, type=pa.int64())
    rate = settlements.column("funding_rate").take(take).combine_chunks()
    intervals = settlements.column("funding_interval_hours").take(take)
    last_interval = intervals[len(intervals) - 1].as_py() if len(intervals) else None
    return instant[order], rate, last_interval


def _mask(values: pa.Array, keep: np.ndarray, type_: pa.DataType) -> pa.Array:
    """``values`` where ``keep``, NULL elsewhere."""
    return pc.if_else(pa.array(keep, type=pa.bool_()), values, pa.scalar(None, type=type_))
