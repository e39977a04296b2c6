"""Per-minute aggregates of a day's aggTrades (``schema.TRADE_FLOW``).

What belongs here: bucketing aggTrades by ``transact_time`` into minutes
(``minute <= t < minute + 60 s``) and every per-minute sum, count, maximum and the
realised volatility the minute view takes from trades (SPEC §5 columns 2, 19, 23-24,
26-31), plus the per-side quantity sums the checks compare with klines. What stays
out: parsing, de-duplication (the parser's job), and the klines-based columns.

Vectorised with numpy (``reduceat`` over runs of equal minutes): a day can hold
millions of trades.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

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

WHALE_NOTIONAL = 100_000.0
RETAIL_NOTIONAL = 1_000.0
# price × quantity is computed in binary floating point; a trade whose decimal notional
# is exactly a threshold may come out one ulp off (195312.5 × 0.00512 = 1000.0000000000001).
# Thresholds are widened by this relative amount, far below any tick × lot-step granularity.
THRESHOLD_REL_TOL = 1e-12


class TradeOutsideDay(OutsideDayError):
    """An aggTrade whose ``transact_time`` is not inside the partition's day."""


@dataclass(frozen=True)
class _Trades:
    """The day's aggTrades as numpy columns, ordered by (transact_time, agg_trade_id)."""

    agg_trade_id: np.ndarray
    price: np.ndarray
    quantity: np.ndarray
    first_trade_id: np.ndarray
    last_trade_id: np.ndarray
    transact_time: np.ndarray
    is_buyer_maker: np.ndarray

    def take(self, order: np.ndarray) -> _Trades:
        return _Trades(**{name: getattr(self, name)[order] for name in self.__dataclass_fields__})

    def slice(self, start: int, stop: int) -> _Trades:
        return _Trades(**{name: getattr(self, name)[start:stop] for name in self.__dataclass_fields__})

    @staticmethod
    def concat(first: _Trades, second: _Trades) -> _Trades:
        return _Trades(
            **{
                name: np.concatenate([getattr(first, name), getattr(second, name)])
                for name in first.__dataclass_fields__
            }
        )


def trade_flow(agg: pa.Table, day: dt.date, *, source: str) -> pa.Table:
    """One ``schema.TRADE_FLOW`` row per minute of ``day`` with at least one trade.

    ``agg`` holds the parsed aggTrades columns; the rows need not be in order (they are
    ordered by (transact_time, agg_trade_id) here) but must be unique. A trade outside
    ``day`` raises ``TradeOutsideDay`` naming ``source`` and the 1-based row.
    """
    trades = _read_trades(agg, day, source=source)
    if not is_sorted_by(trades.transact_time, trades.agg_trade_id):
        trades = trades.take(np.lexsort((trades.agg_trade_id, trades.transact_time)))
    return _aggregate(trades)


class TradeFlowBuilder:
    """``trade_flow`` over record batches, for files already in (transact_time,
    agg_trade_id) order — as Vision writes them — so a day of millions of trades is
    never held whole.

    Each minute is still aggregated from one contiguous array (the last, possibly
    unfinished minute of a batch is carried into the next), so the result is
    identical to ``trade_flow`` on the whole table. ``add`` returns False as soon as
    the rows are not strictly ordered (unsorted or duplicated input): the caller
    then falls back to the sort-and-deduplicate path.
    """

    def __init__(self, day: dt.date, *, source: str) -> None:
        self.day = day
        self.source = source
        self.rows = 0
        self._carry: _Trades | None = None
        self._parts: list[pa.Table] = []

    def add(self, batch: pa.RecordBatch | pa.Table) -> bool:
        trades = _read_trades(batch, self.day, source=self.source)
        self.rows += len(trades.agg_trade_id)
        if self._carry is not None:
            trades = _Trades.concat(self._carry, trades)
        if not is_sorted_by(trades.transact_time, trades.agg_trade_id):
            return False
        n = len(trades.transact_time)
        if n == 0:
            return True
        minute = floor_minute(trades.transact_time)
        # Rows of the last minute may continue in the next batch: keep them back.
        cut = int(np.searchsorted(minute, minute[-1], side="left"))
        if cut:
            self._parts.append(_aggregate(trades.slice(0, cut)))
        # a copy: the batch's memory can go
        self._carry = trades.slice(cut, n).take(np.arange(n - cut))
        return True

    def finish(self) -> pa.Table:
        if self._carry is not None and len(self._carry.agg_trade_id):
            self._parts.append(_aggregate(self._carry))
            self._carry = None
        if not self._parts:
            return schema.TRADE_FLOW.arrow_schema.empty_table()
        return pa.concat_tables(self._parts).combine_chunks()


def _read_trades(agg: pa.Table | pa.RecordBatch, day: dt.date, *, source: str) -> _Trades:
    trades = _Trades(
        agg_trade_id=column_numpy(agg, "agg_trade_id", np.int64, source=source),
        price=column_numpy(agg, "price", np.float64, source=source),
        quantity=column_numpy(agg, "quantity", np.float64, source=source),
        first_trade_id=column_numpy(agg, "first_trade_id", np.int64, source=source),
        last_trade_id=column_numpy(agg, "last_trade_id", np.int64, source=source),
        transact_time=column_numpy(agg, "transact_time", np.int64, source=source),
        is_buyer_maker=column_numpy(agg, "is_buyer_maker", np.bool_, source=source),
    )
    # Values (prices, quantities, ids) are checked against their domains where the rows
    # are read (``checks.check_source_rows``), before they reach here.
    check_inside_day(trades.transact_time, day, source=source, what="transact_time", error=TradeOutsideDay)
    return trades


def _aggregate(t: _Trades) -> pa.Table:
    minute = floor_minute(t.transact_time)
    starts = group_starts(minute)
    n = len(minute)

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values, starts) if n else values[:0]

    def largest(values: np.ndarray) -> np.ndarray:
        return np.maximum.reduceat(values, starts) if n else values[:0]

    def smallest(values: np.ndarray) -> np.ndarray:
        return np.minimum.reduceat(values, starts) if n else values[:0]

    buy = ~t.is_buyer_maker  # the taker bought
    notional = t.price * t.quantity
    whale = notional >= WHALE_NOTIONAL * (1 - THRESHOLD_REL_TOL)
    retail = notional <= RETAIL_NOTIONAL * (1 + THRESHOLD_REL_TOL)
    trade_ids = t.last_trade_id - t.first_trade_id + 1
    zero = 0.0

    columns: dict[str, np.ndarray] = {
        "timestamp": minute[starts],
        "transact_time": largest(t.transact_time),
        "agg_trade_count": np.diff(np.append(starts, n)).astype(np.int64),
        "first_agg_trade_id": smallest(t.agg_trade_id),
        "last_agg_trade_id": largest(t.agg_trade_id),
        "quantity_sum": total(t.quantity),
        "notional_sum": total(notional),
        "max_trade_size_btc": largest(t.quantity),
        "taker_buy_qty": total(np.where(buy, t.quantity, zero)),
        "taker_sell_qty": total(np.where(buy, zero, t.quantity)),
        "count_buy_trades": total(np.where(buy, trade_ids, 0)),
        "count_sell_trades": total(np.where(buy, 0, trade_ids)),
        "vol_buy_whale_btc": total(np.where(buy & whale, t.quantity, zero)),
        "vol_sell_whale_btc": total(np.where(~buy & whale, t.quantity, zero)),
        "vol_buy_retail_btc": total(np.where(buy & retail, t.quantity, zero)),
        "vol_sell_retail_btc": total(np.where(~buy & retail, t.quantity, zero)),
        "whale_trade_count": total(whale.astype(np.int64)),
        "realized_vol_1m": np.sqrt(total(_squared_log_returns(t.price, minute))),
    }
    arrays = [
        ms_to_timestamps(columns[name]) if name == "timestamp" else pa.array(columns[name], type=type_)
        for name, type_ in ((c.name, c.type) for c in schema.TRADE_FLOW.columns)
    ]
    return pa.Table.from_arrays(arrays, schema=schema.TRADE_FLOW.arrow_schema)


def _squared_log_returns(price: np.ndarray, minute: np.ndarray) -> np.ndarray:
    """r_i² with r_i = ln(p_i / p_{i−1}) for a trade following another of the same minute,
    else 0 (the first trade of a minute opens no return)."""
    squared = np.zeros(len(price), dtype=np.float64)
    if len(price) > 1:
        r = np.log(price[1:] / price[:-1])
        squared[1:] = np.where(minute[1:] == minute[:-1], r * r, 0.0)
    return squared
