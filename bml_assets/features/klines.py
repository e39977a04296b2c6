"""1-minute klines (trade, mark price, index price, premium index) as stored per-stream tables.

What belongs here: turning a parsed Vision klines CSV (``open_time`` … ``taker_buy_quote_volume``)
into the ``schema.KLINES`` / price-kline ``Dataset`` shape — the minute as a UTC timestamp,
only the columns the dataset keeps — and the check that every row is a whole minute of the
partition's day. What stays out: parsing (``sources/vision_csv.py``) and the minute view's
formulas on klines (``minute_view.py``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.domain.minutes import describe_ms
from bml_assets.features.timegrid import OutsideDayError, check_inside_day, column_numpy, ms_to_timestamps


class KlineOutsideDay(OutsideDayError):
    """A kline whose ``open_time`` is not a whole minute of the partition's day."""


def kline_table(raw: pa.Table, day: dt.date, dataset: schema.Dataset, *, source: str) -> pa.Table:
    """The day's klines in ``dataset``'s shape, sorted by minute.

    ``raw`` holds the parsed CSV columns (``open_time`` int64 ms, prices/volumes float64,
    ``count`` int64). Every ``open_time`` must be minute-aligned and inside ``day``, else
    ``KlineOutsideDay`` names ``source``, the 1-based row and the time. A minute present
    twice (the parser de-duplicates, so this means a broken input) is a ``ValueError``.
    """
    if dataset not in schema.KLINE_DATASETS:
        raise ValueError(f"{dataset.name} is not a klines dataset")
    open_time = column_numpy(raw, "open_time", np.int64, source=source)
    check_inside_day(open_time, day, source=source, what="open_time", error=KlineOutsideDay, minute_aligned=True)

    order = np.argsort(open_time, kind="stable")
    ordered = open_time[order]
    repeated = np.flatnonzero(ordered[1:] == ordered[:-1])
    if len(repeated):
        raise ValueError(f"{source}: open_time {describe_ms(int(ordered[repeated[0]]))} appears more than once")

    take = pa.array(order)
    arrays = [
        ms_to_timestamps(ordered) if name == "timestamp" else _value_column(raw, name, type_, source).take(take)
        for name, type_ in ((c.name, c.type) for c in dataset.columns)
    ]
    return pa.Table.from_arrays(arrays, schema=dataset.arrow_schema)


def _value_column(raw: pa.Table, name: str, type_: pa.DataType, source: str) -> pa.ChunkedArray:
    if name not in raw.column_names:
        raise ValueError(f"{source}: column {name!r} is missing (have {raw.column_names})")
    return raw.column(name).cast(type_)
