"""Per-minute top-of-book features from a day's bookTicker snapshots (``schema.BOOK_TICKER``).

What belongs here: bucketing snapshots by ``transaction_time``, the minute means of
SPEC §5 columns 38-42, ``micro_price_close`` (column 14) of the minute's last snapshot
— the one with the largest (transaction_time, update_id) — and that last snapshot's own
values (``last_*``), which the minute view carries forward into minutes without a
snapshot. What stays out: the as-of fill itself (``slow_series.py``), parsing.

A snapshot whose ``bid_qty + ask_qty`` is 0 has no imbalance and no micro price; one
whose mid is not positive has no ``spread_pct``. Such snapshots are left out of those
means (NULL when all are), but still count for the spread and depth means.
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.features.timegrid import (
    OutsideDayError,
    check_inside_day,
    column_numpy,
    floor_minute,
    group_starts,
    is_sorted_by,
    ms_to_timestamps,
)


class SnapshotOutsideDay(OutsideDayError):
    """A bookTicker snapshot whose ``transaction_time`` is not inside the partition's day."""


def book_ticker_minutes(book: pa.Table, day: dt.date, *, source: str) -> pa.Table:
    """One ``schema.BOOK_TICKER`` row per minute of ``day`` with at least one snapshot.

    Rows need not be in order; a snapshot outside ``day`` raises ``SnapshotOutsideDay``.
    """
    tx_time = column_numpy(book, "transaction_time", np.int64, source=source)
    update_id = column_numpy(book, "update_id", np.int64, source=source)
    check_inside_day(tx_time, day, source=source, what="transaction_time", error=SnapshotOutsideDay)
    order = None if is_sorted_by(tx_time, update_id) else np.lexsort((update_id, tx_time))

    def ordered(values: np.ndarray) -> np.ndarray:
        return values if order is None else values[order]

    tx_time = ordered(tx_time)
    bid = ordered(column_numpy(book, "best_bid_price", np.float64, source=source))
    bid_qty = ordered(column_numpy(book, "best_bid_qty", np.float64, source=source))
    ask = ordered(column_numpy(book, "best_ask_price", np.float64, source=source))
    ask_qty = ordered(column_numpy(book, "best_ask_qty", np.float64, source=source))

    minute = floor_minute(tx_time)
    starts = group_starts(minute)
    ends = np.append(starts[1:], len(minute)) if len(minute) else starts
    last = ends - 1
    counts = ends - starts

    depth = bid_qty + ask_qty
    mid = (bid + ask) / 2
    spread = ask - bid
    with np.errstate(divide="ignore", invalid="ignore"):
        imbalance = np.where(depth != 0, (bid_qty - ask_qty) / depth, np.nan)
        micro = np.where(depth != 0, (bid * ask_qty + ask * bid_qty) / depth, np.nan)
        spread_pct = np.where(mid > 0, spread / mid, np.nan)

    def mean(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts) / counts if len(values) else values[:0]

    columns: dict[str, pa.Array] = {
        "timestamp": ms_to_timestamps(minute[starts]),
        "snapshot_count": pa.array(counts, type=pa.int64()),
        "micro_price_close": _nan_to_null(micro[last]),
        "avg_spread_usdt": pa.array(mean(spread)),
        "bid_ask_imbalance": _nan_to_null(_mean_leaving_out_nan(imbalance, starts)),
        "avg_bid_depth": pa.array(mean(bid_qty)),
        "avg_ask_depth": pa.array(mean(ask_qty)),
        "spread_pct": _nan_to_null(_mean_leaving_out_nan(spread_pct, starts)),
        "last_transaction_time": pa.array(tx_time[last], type=pa.int64()),
        "last_spread_usdt": pa.array(spread[last]),
        "last_bid_ask_imbalance": _nan_to_null(imbalance[last]),
        "last_bid_qty": pa.array(bid_qty[last]),
        "last_ask_qty": pa.array(ask_qty[last]),
        "last_spread_pct": _nan_to_null(spread_pct[last]),
    }
    return pa.Table.from_arrays(
        [columns[name] for name in schema.BOOK_TICKER.column_names], schema=schema.BOOK_TICKER.arrow_schema
    )


def _mean_leaving_out_nan(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per-run mean of the non-NaN values; NaN for a run with none."""
    if len(values) == 0:
        return values
    valid = ~np.isnan(values)
    sums = np.add.reduceat(np.where(valid, values, 0.0), starts)
    counts = np.add.reduceat(valid.astype(np.int64), starts)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def _nan_to_null(values: np.ndarray) -> pa.Array:
    return pa.array(values, type=pa.float64(), from_pandas=True)
