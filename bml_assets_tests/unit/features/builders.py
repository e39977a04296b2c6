"""Tiny hand-built tables for the feature tests: parsed-CSV shapes and per-stream shapes.

Times are written as text (``"2024-03-01 10:00:30.5"``, UTC) and turned into epoch ms
here; no formula of the code under test is used.
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from bml_assets.domain import schema

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def ms(text: str) -> int:
    """Epoch milliseconds of a UTC time written as ``YYYY-MM-DD HH:MM[:SS[.fff]]``."""
    return (utc(text) - _EPOCH) // dt.timedelta(milliseconds=1)


def utc(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def timestamps(texts: list[str]) -> pa.Array:
    return pa.array([ms(t) for t in texts], type=pa.int64()).cast(schema.TIMESTAMP)


def raw_klines(rows: list[tuple]) -> pa.Table:
    """Parsed klines CSV: rows of (open_time text, open, high, low, close, volume,
    quote_volume, count, taker_buy_volume, taker_buy_quote_volume)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(10)]
    open_time = [ms(t) for t in columns[0]]
    return pa.table(
        {
            "open_time": pa.array(open_time, type=pa.int64()),
            "open": pa.array(columns[1], type=pa.float64()),
            "high": pa.array(columns[2], type=pa.float64()),
            "low": pa.array(columns[3], type=pa.float64()),
            "close": pa.array(columns[4], type=pa.float64()),
            "volume": pa.array(columns[5], type=pa.float64()),
            "close_time": pa.array([t + 59_999 for t in open_time], type=pa.int64()),
            "quote_volume": pa.array(columns[6], type=pa.float64()),
            "count": pa.array(columns[7], type=pa.int64()),
            "taker_buy_volume": pa.array(columns[8], type=pa.float64()),
            "taker_buy_quote_volume": pa.array(columns[9], type=pa.float64()),
        }
    )


def raw_agg_trades(rows: list[tuple]) -> pa.Table:
    """Parsed aggTrades CSV: rows of (agg_trade_id, price, quantity, first_trade_id,
    last_trade_id, transact_time text, is_buyer_maker)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(7)]
    return pa.table(
        {
            "agg_trade_id": pa.array(columns[0], type=pa.int64()),
            "price": pa.array(columns[1], type=pa.float64()),
            "quantity": pa.array(columns[2], type=pa.float64()),
            "first_trade_id": pa.array(columns[3], type=pa.int64()),
            "last_trade_id": pa.array(columns[4], type=pa.int64()),
            "transact_time": pa.array([ms(t) for t in columns[5]], type=pa.int64()),
            "is_buyer_maker": pa.array(columns[6], type=pa.bool_()),
        }
    )


def raw_book_ticker(rows: list[tuple]) -> pa.Table:
    """Parsed bookTicker CSV: rows of (update_id, bid, bid_qty, ask, ask_qty, transaction_time text)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(6)]
    tx = [ms(t) for t in columns[5]]
    return pa.table(
        {
            "update_id": pa.array(columns[0], type=pa.int64()),
            "best_bid_price": pa.array(columns[1], type=pa.float64()),
            "best_bid_qty": pa.array(columns[2], type=pa.float64()),
            "best_ask_price": pa.array(columns[3], type=pa.float64()),
            "best_ask_qty": pa.array(columns[4], type=pa.float64()),
            "transaction_time": pa.array(tx, type=pa.int64()),
            "event_time": pa.array([t + 3 for t in tx], type=pa.int64()),
        }
    )


def raw_metrics(rows: list[tuple]) -> pa.Table:
    """Parsed metrics CSV: rows of (create_time label text, sum_open_interest,
    sum_open_interest_value, count_toptrader_long_short_ratio, count_long_short_ratio)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(5)]
    n = len(rows)
    return pa.table(
        {
            "create_time": pa.array([ms(t) for t in columns[0]], type=pa.int64()),
            "symbol": pa.array(["BTCUSDT"] * n, type=pa.string()),
            "sum_open_interest": pa.array(columns[1], type=pa.float64()),
            "sum_open_interest_value": pa.array(columns[2], type=pa.float64()),
            "count_toptrader_long_short_ratio": pa.array(columns[3], type=pa.float64()),
            "sum_toptrader_long_short_ratio": pa.array([9.99] * n, type=pa.float64()),
            "count_long_short_ratio": pa.array(columns[4], type=pa.float64()),
            "sum_taker_long_short_vol_ratio": pa.array([8.88] * n, type=pa.float64()),
        }
    )


def raw_funding(rows: list[tuple]) -> pa.Table:
    """Parsed fundingRate CSV: rows of (calc_time text, funding_interval_hours, last_funding_rate)."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in range(3)]
    return pa.table(
        {
            "calc_time": pa.array([ms(t) for t in columns[0]], type=pa.int64()),
            "funding_interval_hours": pa.array(columns[1], type=pa.int64()),
            "last_funding_rate": pa.array(columns[2], type=pa.float64()),
        }
    )


def dataset_table(dataset: schema.Dataset, rows: list[tuple]) -> pa.Table:
    """A per-stream table in ``dataset``'s exact shape: rows of values in its column
    order, the time column written as text."""
    columns = list(zip(*rows, strict=True)) if rows else [[] for _ in dataset.columns]
    arrays = [
        timestamps(list(values)) if name == dataset.time_column else pa.array(list(values), type=type_)
        for (name, type_), values in zip(((c.name, c.type) for c in dataset.columns), columns, strict=True)
    ]
    return pa.Table.from_arrays(arrays, schema=dataset.arrow_schema)


def column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist()
