"""The column registry: every table the lake stores, declared once, as data.

What belongs here: the 58 columns of the canonical minute view (SPEC §5) and the
columns of the per-stream tables the source assets store, each with its Arrow
type, class, source and fill rule; and the things derived mechanically from those
declarations (pyarrow schemas, schema hashes, the docs' column table).

What stays out: validation rules (``checks.py`` derives the pandera schemas from
this module), formulas (``features/``), and any I/O. Nothing else in the package
lists column names of a stored table.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

TIMESTAMP = pa.timestamp("ms", tz="UTC")
I64 = pa.int64()
F64 = pa.float64()


class ColumnClass(StrEnum):
    """How a minute-view column is sourced (SPEC §5 "Classes")."""

    HARD = "HARD"  # must be present for a minute to be committed
    BACKFILL = "BACKFILL"  # computable from Vision/REST history
    LIVE = "LIVE"  # only while the live collector (or hot poller) runs


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    klass: ColumnClass
    source: str
    fill: str
    description: str

    @property
    def field(self) -> pa.Field:
        # The minute's timestamp is the only non-nullable column.
        return pa.field(self.name, self.type, nullable=self.name != "timestamp")


H, B, L = ColumnClass.HARD, ColumnClass.BACKFILL, ColumnClass.LIVE
_NONE = "NULL when not observed"
_ZERO_TRADES = "0 when the minute has no trades"
_BOOK = "mean over the minute's bookTicker snapshots; else as-of last snapshot, ffill ≤ BML_MAX_FFILL_MINUTES"
_SLOW = "as-of latest observation before minute end, ffill ≤ BML_MAX_FFILL_MINUTES, then NULL"

MINUTE_COLUMNS: tuple[Column, ...] = (
    Column("event_time", I64, L, "live", _NONE, "largest exchange event time E among live events of the minute"),
    Column(
        "transact_time",
        I64,
        B,
        "aggTrades",
        "NULL when the minute has no trades",
        "largest transact_time of the minute's trades",
    ),
    Column("arrival_time", I64, L, "live", _NONE, "local receive time (ms) of the event that set event_time"),
    Column("latency_engine", I64, L, "live", _NONE, "p95 of E − T over the minute's live events (ms)"),
    Column("latency_network", I64, L, "live", _NONE, "p95 of arrival − E (ms)"),
    Column("update_id_start", I64, L, "live", _NONE, "smallest U of the minute's depth updates"),
    Column("update_id_end", I64, L, "live", _NONE, "largest u of the minute's depth updates"),
    Column("timestamp", TIMESTAMP, H, "klines", "never NULL", "minute start (UTC)"),
    Column("open", F64, H, "klines", "never NULL", "klines open"),
    Column("high", F64, H, "klines", "never NULL", "klines high"),
    Column("low", F64, H, "klines", "never NULL", "klines low"),
    Column("close", F64, H, "klines", "never NULL", "klines close"),
    Column(
        "vwap_1m",
        F64,
        B,
        "klines",
        "close when volume is 0",
        "quote_volume / volume (= Σ notional / Σ quantity of the trades)",
    ),
    Column(
        "micro_price_close",
        F64,
        B,
        "bookTicker",
        "NULL when no snapshot in the minute",
        "(bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty) of the minute's last snapshot",
    ),
    Column("volume_btc", F64, H, "klines", "never NULL (0 allowed)", "klines volume (base asset)"),
    Column("volume_usdt", F64, H, "klines", "never NULL (0 allowed)", "klines quote_volume"),
    Column("trade_count", I64, H, "klines", "never NULL", "klines count (individual trades)"),
    Column("avg_trade_size_btc", F64, B, "klines", "0 when trade_count is 0", "volume_btc / trade_count"),
    Column("max_trade_size_btc", F64, B, "aggTrades", _ZERO_TRADES, "largest aggTrade quantity"),
    Column("taker_buy_vol_btc", F64, B, "klines", "never NULL when klines exist", "klines taker_buy_volume"),
    Column("taker_buy_vol_usdt", F64, B, "klines", "never NULL when klines exist", "klines taker_buy_quote_volume"),
    Column(
        "net_taker_vol_btc",
        F64,
        B,
        "klines",
        "never NULL when klines exist",
        "taker-buy quantity − taker-sell quantity",
    ),
    Column(
        "count_buy_trades",
        I64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ (last_trade_id − first_trade_id + 1) over taker-buy aggTrades",
    ),
    Column("count_sell_trades", I64, B, "aggTrades", _ZERO_TRADES, "the same over taker-sell aggTrades"),
    Column("taker_buy_ratio", F64, B, "klines", "NULL when volume is 0", "taker_buy_vol_btc / volume_btc"),
    Column(
        "vol_buy_whale_btc",
        F64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≥ 100 000",
    ),
    Column(
        "vol_sell_whale_btc",
        F64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≥ 100 000",
    ),
    Column(
        "vol_buy_retail_btc",
        F64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≤ 1 000",
    ),
    Column(
        "vol_sell_retail_btc",
        F64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≤ 1 000",
    ),
    Column(
        "whale_trade_count",
        I64,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "number of aggTrades with notional ≥ 100 000, both sides",
    ),
    Column(
        "realized_vol_1m",
        F64,
        B,
        "aggTrades",
        "0 with fewer than 2 trades",
        "sqrt(Σ ln(p_i/p_{i−1})²) over trades ordered by (transact_time, agg_trade_id)",
    ),
    Column("liq_long_vol_usdt", F64, L, "live", "0 when covered and none", "Σ ap × z of SELL-side forced orders"),
    Column("liq_short_vol_usdt", F64, L, "live", "0 when covered and none", "Σ ap × z of BUY-side forced orders"),
    Column("liq_long_count", I64, L, "live", "0 when covered and none", "number of SELL-side forced orders"),
    Column("liq_short_count", I64, L, "live", "0 when covered and none", "number of BUY-side forced orders"),
    Column("liq_avg_fill_price", F64, L, "live", "NULL when none", "Σ ap·z / Σ z over all forced orders"),
    Column("liq_unfilled_ratio", F64, L, "live", "NULL when none", "Σ (q − z) / Σ q"),
    Column("avg_spread_usdt", F64, B, "bookTicker", _BOOK, "mean of (ask − bid)"),
    Column(
        "bid_ask_imbalance",
        F64,
        B,
        "bookTicker",
        _BOOK,
        "mean of (bid_qty − ask_qty) / (bid_qty + ask_qty), zero denominators left out",
    ),
    Column("avg_bid_depth", F64, B, "bookTicker", _BOOK, "mean bid_qty"),
    Column("avg_ask_depth", F64, B, "bookTicker", _BOOK, "mean ask_qty"),
    Column("spread_pct", F64, B, "bookTicker", _BOOK, "mean of (ask − bid) / mid, a fraction"),
    Column("price_impact_100k", F64, L, "live", _NONE, "(avg fill of a 100 000 quote market buy − mid) / mid"),
    Column("oi_contracts", F64, B, "metrics", _SLOW, "open interest in base units"),
    Column("oi_value_usdt", F64, B, "metrics", _SLOW, "open interest value"),
    Column("top_trader_ls_ratio_acct", F64, B, "metrics", _SLOW, "top-trader long/short account ratio"),
    Column("global_ls_ratio_acct", F64, B, "metrics", _SLOW, "all-account long/short ratio"),
    Column("ls_ratio_divergence", F64, B, "metrics", _SLOW, "top_trader_ls_ratio_acct − global_ls_ratio_acct"),
    Column("top_trader_long_pct", F64, B, "metrics", _SLOW, "r / (1 + r), r = top_trader_ls_ratio_acct"),
    Column("top_trader_short_pct", F64, B, "metrics", _SLOW, "1 / (1 + r)"),
    Column("mark_price_open", F64, H, "markPriceKlines", "never NULL", "mark price klines open"),
    Column("mark_price_close", F64, H, "markPriceKlines", "never NULL", "mark price klines close"),
    Column("index_price_open", F64, H, "indexPriceKlines", "never NULL", "index price klines open"),
    Column("index_price_close", F64, H, "indexPriceKlines", "never NULL", "index price klines close"),
    Column(
        "premium_index", F64, B, "premiumIndexKlines", "NULL when that source is missing", "premium index klines close"
    ),
    Column(
        "funding_rate",
        F64,
        B,
        "fundingRate",
        "step function; NULL before the first known settlement",
        "rate of the latest settlement with instant < minute start + 60 s",
    ),
    Column(
        "predicted_funding",
        F64,
        L,
        "live / hot poller",
        _NONE,
        "last markPrice r of the minute, or premiumIndex lastFundingRate",
    ),
    Column(
        "next_funding_time",
        I64,
        B,
        "fundingRate",
        "last settlement + interval when history ends",
        "first settlement instant (ms) strictly after the minute start",
    ),
)
del H, B, L


@dataclass(frozen=True)
class Dataset:
    """A stored table of the lake: where it lives and what it holds."""

    name: str
    description: str
    columns: tuple[tuple[str, pa.DataType], ...]
    time_column: str = "timestamp"

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(n, t, nullable=n != self.time_column) for n, t in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [n for n, _ in self.columns]


def _f64(*names: str) -> tuple[tuple[str, pa.DataType], ...]:
    return tuple((n, F64) for n in names)


MINUTE_VIEW = Dataset(
    name="minute",
    description="the canonical 58-column 1-minute view (SPEC §5)",
    columns=tuple((c.name, c.type) for c in MINUTE_COLUMNS),
)

KLINES = Dataset(
    name="klines_1m",
    description="trade klines of the day, one row per minute Vision has",
    columns=(("timestamp", TIMESTAMP),)
    + _f64("open", "high", "low", "close", "volume", "quote_volume")
    + (("count", I64),)
    + _f64("taker_buy_volume", "taker_buy_quote_volume"),
)

_PRICE_KLINE_COLUMNS = (("timestamp", TIMESTAMP),) + _f64("open", "high", "low", "close")
MARK_PRICE_KLINES = Dataset("mark_price_klines_1m", "mark price klines of the day", _PRICE_KLINE_COLUMNS)
INDEX_PRICE_KLINES = Dataset("index_price_klines_1m", "index price klines of the day", _PRICE_KLINE_COLUMNS)
PREMIUM_INDEX_KLINES = Dataset("premium_index_klines_1m", "premium index klines of the day", _PRICE_KLINE_COLUMNS)

TRADE_FLOW = Dataset(
    name="trade_flow_1m",
    description="per-minute aggregates of the day's aggTrades; one row per minute with at least one trade",
    columns=(
        ("timestamp", TIMESTAMP),
        ("transact_time", I64),
        ("agg_trade_count", I64),
        ("first_agg_trade_id", I64),
        ("last_agg_trade_id", I64),
    )
    + _f64("quantity_sum", "notional_sum", "max_trade_size_btc", "taker_buy_qty", "taker_sell_qty")
    + (("count_buy_trades", I64), ("count_sell_trades", I64))
    + _f64("vol_buy_whale_btc", "vol_sell_whale_btc", "vol_buy_retail_btc", "vol_sell_retail_btc")
    + (("whale_trade_count", I64),)
    + _f64("realized_vol_1m"),
)

BOOK_TICKER = Dataset(
    name="book_ticker_1m",
    description="per-minute top-of-book features from bookTicker; one row per minute with at least one snapshot",
    columns=(("timestamp", TIMESTAMP), ("snapshot_count", I64))
    + _f64(
        "micro_price_close",
        "avg_spread_usdt",
        "bid_ask_imbalance",
        "avg_bid_depth",
        "avg_ask_depth",
        "spread_pct",
    )
    + (("last_transaction_time", I64),)
    # The minute's last snapshot, for the as-of fill of minutes without one.
    + _f64("last_spread_usdt", "last_bid_ask_imbalance", "last_bid_qty", "last_ask_qty", "last_spread_pct"),
)

METRICS = Dataset(
    name="metrics_5m",
    description="5-minute open interest and long/short snapshots, stamped with the time each was taken",
    columns=(("observation_time", TIMESTAMP),)
    + _f64("oi_contracts", "oi_value_usdt", "top_trader_ls_ratio_acct", "global_ls_ratio_acct"),
    time_column="observation_time",
)

FUNDING = Dataset(
    name="funding_settlements",
    description="funding settlements covering the day, including the last one before it",
    columns=(("settlement_time", TIMESTAMP), ("funding_rate", F64), ("funding_interval_hours", I64)),
    time_column="settlement_time",
)

HOT_SNAPSHOTS = Dataset(
    name="hot_snapshots",
    description="snapshots polled from REST (premiumIndex, openInterest, bookTicker) while the day was live",
    columns=(
        ("observation_time", TIMESTAMP),
        *_f64("mark_price", "index_price", "predicted_funding"),
        ("next_funding_time", I64),
        *_f64("open_interest", "bid_price", "bid_qty", "ask_price", "ask_qty"),
        ("book_update_id", I64),
    ),
    time_column="observation_time",
)

DATASETS: dict[str, Dataset] = {
    d.name: d
    for d in (
        MINUTE_VIEW,
        KLINES,
        MARK_PRICE_KLINES,
        INDEX_PRICE_KLINES,
        PREMIUM_INDEX_KLINES,
        TRADE_FLOW,
        BOOK_TICKER,
        METRICS,
        FUNDING,
        HOT_SNAPSHOTS,
    )
}

MINUTE_SCHEMA: pa.Schema = MINUTE_VIEW.arrow_schema
HARD_COLUMNS: tuple[str, ...] = tuple(c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.HARD)
BACKFILL_COLUMNS: tuple[str, ...] = tuple(c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.BACKFILL)
LIVE_COLUMNS: tuple[str, ...] = tuple(c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.LIVE)


def schema_hash(schema: pa.Schema) -> str:
    """A short stable hash of names, types and order; a file written by an older
    layout has a different one."""
    text = "\n".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def column_table_markdown() -> str:
    """The docs' column table, generated from the registry."""
    lines = ["| # | column | type | class | source | fill rule |", "| --- | --- | --- | --- | --- | --- |"]
    for i, c in enumerate(MINUTE_COLUMNS, start=1):
        lines.append(f"| {i} | `{c.name}` | {c.type} | {c.klass} | {c.source} | {c.fill} |")
    return "\n".join(lines)


assert len(MINUTE_COLUMNS) == 58, len(MINUTE_COLUMNS)
