"""Snapshots polled from REST while a day is live, and what the minute view takes from them.

What belongs here: turning the parsed premiumIndex / openInterest / bookTicker
answers of one poll into a ``schema.HOT_SNAPSHOTS`` row, and the snapshots of a
day into the per-stream shapes the join already understands (bookTicker minutes,
open-interest observations) plus the per-minute predicted funding. What stays
out: the polling itself (``days/rest_days.py``) and HTTP (``sources/rest.py``).

No look-ahead by construction: a snapshot is stamped with the exchange time of
its answer and only ever lands in that minute (or, within the bound, later ones).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain import schema
from bml_assets.domain.minutes import day_bounds_ms
from bml_assets.features.book import book_ticker_minutes
from bml_assets.features.timegrid import floor_minute, ms_to_timestamps

PREDICTED_FUNDING_SCHEMA = pa.schema(
    [pa.field("timestamp", schema.TIMESTAMP, nullable=False), pa.field("predicted_funding", schema.F64)]
)


def snapshot_row(premium: Mapping[str, Any], open_interest: Mapping[str, Any], book: Mapping[str, Any]) -> pa.Table:
    """One poll as a HOT_SNAPSHOTS row, stamped with the latest exchange time of the three answers.

    ``premium``: ``{"markPrice", "indexPrice", "lastFundingRate", "nextFundingTime", "time"}``;
    ``open_interest``: ``{"openInterest", "time"}``; ``book``: ``{"bidPrice", "bidQty",
    "askPrice", "askQty", "time", "lastUpdateId"}`` (numbers already parsed).
    """
    observed = max(int(premium["time"]), int(open_interest["time"]), int(book["time"]))
    values: dict[str, list[Any]] = {
        "observation_time": [observed],
        "mark_price": [float(premium["markPrice"])],
        "index_price": [float(premium["indexPrice"])],
        "predicted_funding": [float(premium["lastFundingRate"])],
        "next_funding_time": [int(premium["nextFundingTime"])],
        "open_interest": [float(open_interest["openInterest"])],
        "bid_price": [float(book["bidPrice"])],
        "bid_qty": [float(book["bidQty"])],
        "ask_price": [float(book["askPrice"])],
        "ask_qty": [float(book["askQty"])],
        "book_update_id": [int(book["lastUpdateId"])],
    }
    arrays = [
        ms_to_timestamps(np.asarray(values["observation_time"], dtype=np.int64))
        if name == "observation_time"
        else pa.array(values[name], type=type_)
        for name, type_ in ((c.name, c.type) for c in schema.HOT_SNAPSHOTS.columns)
    ]
    return pa.Table.from_arrays(arrays, schema=schema.HOT_SNAPSHOTS.arrow_schema)


def append_snapshots(existing: pa.Table | None, new: pa.Table) -> pa.Table:
    """``existing`` plus ``new``, sorted by observation time, one row per instant (the first kept)."""
    table = new if existing is None else pa.concat_tables([existing, new])
    ms = pc.cast(table.column("observation_time"), pa.int64()).to_numpy()
    order = np.argsort(ms, kind="stable")
    ms_sorted = ms[order]
    keep = np.ones(len(ms_sorted), dtype=bool)
    keep[1:] = ms_sorted[1:] != ms_sorted[:-1]
    return table.take(pa.array(order[keep]))


def _in_day(snapshots: pa.Table, day: dt.date) -> pa.Table:
    start, end = day_bounds_ms(day)
    ms = pc.cast(snapshots.column("observation_time"), pa.int64())
    return snapshots.filter(pc.and_(pc.greater_equal(ms, start), pc.less(ms, end)))


def book_from_snapshots(snapshots: pa.Table, day: dt.date, *, source: str) -> pa.Table:
    """The day's polled book snapshots as ``schema.BOOK_TICKER`` minutes."""
    snaps = _in_day(snapshots, day)
    ms = pc.cast(snaps.column("observation_time"), pa.int64())
    raw = pa.table(
        {
            "update_id": snaps.column("book_update_id"),
            "best_bid_price": snaps.column("bid_price"),
            "best_bid_qty": snaps.column("bid_qty"),
            "best_ask_price": snaps.column("ask_price"),
            "best_ask_qty": snaps.column("ask_qty"),
            "transaction_time": ms,
            "event_time": ms,
        }
    )
    return book_ticker_minutes(raw, day, source=source)


def predicted_funding_minutes(snapshots: pa.Table, day: dt.date) -> pa.Table:
    """Column 57: the last polled ``lastFundingRate`` of each minute that has a poll."""
    snaps = _in_day(snapshots, day)
    ms = pc.cast(snaps.column("observation_time"), pa.int64()).to_numpy()
    minute = floor_minute(ms)
    # snapshots are sorted by time: the last of each minute is where the minute changes
    last = np.ones(len(minute), dtype=bool)
    last[:-1] = minute[1:] != minute[:-1]
    return pa.Table.from_arrays(
        [ms_to_timestamps(minute[last]), snaps.column("predicted_funding").take(pa.array(np.flatnonzero(last)))],
        schema=PREDICTED_FUNDING_SCHEMA,
    )


def open_interest_observations(snapshots: pa.Table) -> pa.Table:
    """Polled open interest as ``schema.METRICS`` observations (the other columns NULL)."""
    n = snapshots.num_rows
    columns = {
        "observation_time": snapshots.column("observation_time"),
        "oi_contracts": snapshots.column("open_interest"),
        "oi_value_usdt": pa.nulls(n, schema.F64),
        "top_trader_ls_ratio_acct": pa.nulls(n, schema.F64),
        "global_ls_ratio_acct": pa.nulls(n, schema.F64),
    }
    return pa.table(columns, schema=schema.METRICS.arrow_schema)
