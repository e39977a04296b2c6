"""The column registry: every table the lake stores, declared once, as data.

What belongs here: the 58 columns of the canonical minute view (SPEC §5) and the
columns of the per-stream tables the source assets store, each with its Arrow
type and value domain (and, for the minute view, its class, source and fill
rule); each table's OHLC groups; the domains of the raw source rows that are
aggregated before they are stored (aggTrades, bookTicker); and the things derived
mechanically from those declarations (pyarrow schemas, schema hashes, the docs'
column table).

What stays out: validation code (``quality.py`` derives the pandera schemas and
the vectorised row checks from this module), formulas (``features/``), and any
I/O. Nothing else in the package lists column names of a stored table or the
domain of a column.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

TIMESTAMP = pa.timestamp("ms", tz="UTC")
I64 = pa.int64()
F64 = pa.float64()


# --- value domains ------------------------------------------------------------


@dataclass(frozen=True)
class Domain:
    """The values a column may hold besides NULL (whether NULL is allowed is the
    column class's business): finite numbers in ``[low, high]``.

    ``rule`` names the blocking check that enforces the domain, in every table
    that has a column of it. A ``minute_aligned`` domain (a time column) also
    requires whole minutes. Bounds are far outside anything Binance publishes:
    they catch a broken value (inf, NaN, 0 or a negative price, 1e308, 1e-300,
    microseconds read as milliseconds), not an unusual market.
    """

    rule: str
    low: float
    high: float
    description: str
    minute_aligned: bool = False

    def __str__(self) -> str:
        return self.description


# Epoch milliseconds from Binance's launch (2017-07) to 2100: a time outside is a
# unit slip (µs or s read as ms) or garbage.
EPOCH_MS_LOW = 1_483_228_800_000  # 2017-01-01T00:00:00Z
EPOCH_MS_HIGH = 4_102_444_800_000  # 2100-01-01T00:00:00Z
# The cheapest contracts quote near 1e-4 to 1e-6 (1000x-multiplied memecoins; spot
# SHIB/PEPE ~1e-5), the dearest (BTC) near 1e5: 1e-9 and 1e9 leave three orders of
# magnitude on each side.
PRICE_LOW, PRICE_HIGH = 1e-9, 1e9
# Base quantities stay below the largest token supplies (~1e15 units: SHIB 5.9e14,
# PEPE 4.2e14) and quote amounts (a minute's USDT volume, open interest value) below
# 1e12: 1e18 is out of reach of any real amount.
QUANTITY_HIGH = 1e18
# Ratios of like amounts (long/short account ratios, 0.1 to a few 10s) and the
# realised volatility (≤ sqrt(trades) × ln(PRICE_HIGH / PRICE_LOW) ≈ 4e4 for a
# million trades in a minute).
RATIO_HIGH = 1e6
# Signed fractions of a price: premium index (typically |x| < 1e-3), funding rates
# (capped by the exchange at a few % per interval), spread / mid (|x| < 2 for
# positive prices), price impact. 10 (= 1000 %) is beyond any of them.
RATE_BOUND = 10.0
DAY_MS = 86_400_000

PRICE = Domain("prices_positive_finite", PRICE_LOW, PRICE_HIGH, f"a price: finite, in [{PRICE_LOW:g}, {PRICE_HIGH:g}]")
# Ask − bid: negative while a snapshot shows a crossed book.
PRICE_DIFFERENCE = Domain(
    "price_differences_finite",
    -PRICE_HIGH,
    PRICE_HIGH,
    f"a price difference: finite, in [-{PRICE_HIGH:g}, {PRICE_HIGH:g}]",
)
QUANTITY = Domain(
    "quantities_non_negative_finite", 0.0, QUANTITY_HIGH, f"a quantity or amount: finite, in [0, {QUANTITY_HIGH:g}]"
)
QUANTITY_DIFFERENCE = Domain(
    "quantity_differences_finite",
    -QUANTITY_HIGH,
    QUANTITY_HIGH,
    f"a signed quantity: finite, in [-{QUANTITY_HIGH:g}, {QUANTITY_HIGH:g}]",
)
COUNT = Domain("counts_non_negative", 0, 10**15, "a count: an integer in [0, 1e15]")
ID = Domain("ids_non_negative", 0, 2**63 - 1, "an exchange id: a non-negative integer")
EPOCH_MS = Domain(
    "epoch_ms_in_range", EPOCH_MS_LOW, EPOCH_MS_HIGH - 1, "epoch milliseconds in [2017-01-01, 2100-01-01)"
)
# A latency beyond a day is a broken clock, not a slow network.
DURATION_MS = Domain("durations_within_a_day", -DAY_MS, DAY_MS, "a duration in ms: within ±1 day")
RATIO = Domain("ratios_non_negative_finite", 0.0, RATIO_HIGH, f"a ratio: finite, in [0, {RATIO_HIGH:g}]")
RATIO_DIFFERENCE = Domain(
    "ratio_differences_finite",
    -RATIO_HIGH,
    RATIO_HIGH,
    f"a difference of ratios: finite, in [-{RATIO_HIGH:g}, {RATIO_HIGH:g}]",
)
FRACTION = Domain("fractions_within_0_1", 0.0, 1.0, "a fraction: in [0, 1]")
SIGNED_FRACTION = Domain("signed_fractions_within_minus_1_1", -1.0, 1.0, "a signed fraction: in [-1, 1]")
RATE = Domain(
    "rates_finite_bounded",
    -RATE_BOUND,
    RATE_BOUND,
    f"a rate (fraction of a price): finite, in [-{RATE_BOUND:g}, {RATE_BOUND:g}]",
)
# Time columns (Arrow timestamps); the time rule of each table enforces them.
MINUTE = Domain("minute_starts", EPOCH_MS_LOW, EPOCH_MS_HIGH - 1, "a minute start (UTC)", minute_aligned=True)
INSTANT = Domain("instants", EPOCH_MS_LOW, EPOCH_MS_HIGH - 1, "an instant (UTC, ms)")


# --- columns ------------------------------------------------------------------


class ColumnClass(StrEnum):
    """How a minute-view column is sourced (SPEC §5 "Classes")."""

    HARD = "HARD"  # must be present for a minute to be committed
    BACKFILL = "BACKFILL"  # computable from Vision/REST history
    LIVE = "LIVE"  # only while the live collector (or hot poller) runs


@dataclass(frozen=True)
class Column:
    """One stored column. The minute view's columns also say how they are sourced
    (class, source stream, fill rule); a stream table's column needs only its
    name, type and domain."""

    name: str
    type: pa.DataType
    domain: Domain
    klass: ColumnClass | None = None
    source: str = ""
    fill: str = ""
    description: str = ""

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
    Column(
        "event_time", I64, EPOCH_MS, L, "live", _NONE, "largest exchange event time E among live events of the minute"
    ),
    Column(
        "transact_time",
        I64,
        EPOCH_MS,
        B,
        "aggTrades",
        "NULL when the minute has no trades",
        "largest transact_time of the minute's trades",
    ),
    Column("arrival_time", I64, EPOCH_MS, L, "live", _NONE, "local receive time (ms) of the event that set event_time"),
    Column("latency_engine", I64, DURATION_MS, L, "live", _NONE, "p95 of E − T over the minute's live events (ms)"),
    Column("latency_network", I64, DURATION_MS, L, "live", _NONE, "p95 of arrival − E (ms)"),
    Column("update_id_start", I64, ID, L, "live", _NONE, "smallest U of the minute's depth updates"),
    Column("update_id_end", I64, ID, L, "live", _NONE, "largest u of the minute's depth updates"),
    Column("timestamp", TIMESTAMP, MINUTE, H, "klines", "never NULL", "minute start (UTC)"),
    Column("open", F64, PRICE, H, "klines", "never NULL", "klines open"),
    Column("high", F64, PRICE, H, "klines", "never NULL", "klines high"),
    Column("low", F64, PRICE, H, "klines", "never NULL", "klines low"),
    Column("close", F64, PRICE, H, "klines", "never NULL", "klines close"),
    Column(
        "vwap_1m",
        F64,
        PRICE,
        B,
        "klines",
        "close when volume is 0",
        "quote_volume / volume (= Σ notional / Σ quantity of the trades)",
    ),
    Column(
        "micro_price_close",
        F64,
        PRICE,
        B,
        "bookTicker",
        "NULL when no snapshot in the minute",
        "(bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty) of the minute's last snapshot",
    ),
    Column("volume_btc", F64, QUANTITY, H, "klines", "never NULL (0 allowed)", "klines volume (base asset)"),
    Column("volume_usdt", F64, QUANTITY, H, "klines", "never NULL (0 allowed)", "klines quote_volume"),
    Column("trade_count", I64, COUNT, H, "klines", "never NULL", "klines count (individual trades)"),
    Column("avg_trade_size_btc", F64, QUANTITY, B, "klines", "0 when trade_count is 0", "volume_btc / trade_count"),
    Column("max_trade_size_btc", F64, QUANTITY, B, "aggTrades", _ZERO_TRADES, "largest aggTrade quantity"),
    Column("taker_buy_vol_btc", F64, QUANTITY, B, "klines", "never NULL when klines exist", "klines taker_buy_volume"),
    Column(
        "taker_buy_vol_usdt",
        F64,
        QUANTITY,
        B,
        "klines",
        "never NULL when klines exist",
        "klines taker_buy_quote_volume",
    ),
    Column(
        "net_taker_vol_btc",
        F64,
        QUANTITY_DIFFERENCE,
        B,
        "klines",
        "never NULL when klines exist",
        "taker-buy quantity − taker-sell quantity",
    ),
    Column(
        "count_buy_trades",
        I64,
        COUNT,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ (last_trade_id − first_trade_id + 1) over taker-buy aggTrades",
    ),
    Column("count_sell_trades", I64, COUNT, B, "aggTrades", _ZERO_TRADES, "the same over taker-sell aggTrades"),
    Column("taker_buy_ratio", F64, RATIO, B, "klines", "NULL when volume is 0", "taker_buy_vol_btc / volume_btc"),
    Column(
        "vol_buy_whale_btc",
        F64,
        QUANTITY,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≥ 100 000",
    ),
    Column(
        "vol_sell_whale_btc",
        F64,
        QUANTITY,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≥ 100 000",
    ),
    Column(
        "vol_buy_retail_btc",
        F64,
        QUANTITY,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≤ 1 000",
    ),
    Column(
        "vol_sell_retail_btc",
        F64,
        QUANTITY,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≤ 1 000",
    ),
    Column(
        "whale_trade_count",
        I64,
        COUNT,
        B,
        "aggTrades",
        _ZERO_TRADES,
        "number of aggTrades with notional ≥ 100 000, both sides",
    ),
    Column(
        "realized_vol_1m",
        F64,
        RATIO,
        B,
        "aggTrades",
        "0 with fewer than 2 trades",
        "sqrt(Σ ln(p_i/p_{i−1})²) over trades ordered by (transact_time, agg_trade_id)",
    ),
    Column(
        "liq_long_vol_usdt", F64, QUANTITY, L, "live", "0 when covered and none", "Σ ap × z of SELL-side forced orders"
    ),
    Column(
        "liq_short_vol_usdt", F64, QUANTITY, L, "live", "0 when covered and none", "Σ ap × z of BUY-side forced orders"
    ),
    Column("liq_long_count", I64, COUNT, L, "live", "0 when covered and none", "number of SELL-side forced orders"),
    Column("liq_short_count", I64, COUNT, L, "live", "0 when covered and none", "number of BUY-side forced orders"),
    Column("liq_avg_fill_price", F64, PRICE, L, "live", "NULL when none", "Σ ap·z / Σ z over all forced orders"),
    Column("liq_unfilled_ratio", F64, FRACTION, L, "live", "NULL when none", "Σ (q − z) / Σ q"),
    Column("avg_spread_usdt", F64, PRICE_DIFFERENCE, B, "bookTicker", _BOOK, "mean of (ask − bid)"),
    Column(
        "bid_ask_imbalance",
        F64,
        SIGNED_FRACTION,
        B,
        "bookTicker",
        _BOOK,
        "mean of (bid_qty − ask_qty) / (bid_qty + ask_qty), zero denominators left out",
    ),
    Column("avg_bid_depth", F64, QUANTITY, B, "bookTicker", _BOOK, "mean bid_qty"),
    Column("avg_ask_depth", F64, QUANTITY, B, "bookTicker", _BOOK, "mean ask_qty"),
    Column("spread_pct", F64, RATE, B, "bookTicker", _BOOK, "mean of (ask − bid) / mid, a fraction"),
    Column("price_impact_100k", F64, RATE, L, "live", _NONE, "(avg fill of a 100 000 quote market buy − mid) / mid"),
    Column("oi_contracts", F64, QUANTITY, B, "metrics", _SLOW, "open interest in base units"),
    Column("oi_value_usdt", F64, QUANTITY, B, "metrics", _SLOW, "open interest value"),
    Column("top_trader_ls_ratio_acct", F64, RATIO, B, "metrics", _SLOW, "top-trader long/short account ratio"),
    Column("global_ls_ratio_acct", F64, RATIO, B, "metrics", _SLOW, "all-account long/short ratio"),
    Column(
        "ls_ratio_divergence",
        F64,
        RATIO_DIFFERENCE,
        B,
        "metrics",
        _SLOW,
        "top_trader_ls_ratio_acct − global_ls_ratio_acct",
    ),
    Column("top_trader_long_pct", F64, FRACTION, B, "metrics", _SLOW, "r / (1 + r), r = top_trader_ls_ratio_acct"),
    Column("top_trader_short_pct", F64, FRACTION, B, "metrics", _SLOW, "1 / (1 + r)"),
    Column("mark_price_open", F64, PRICE, H, "markPriceKlines", "never NULL", "mark price klines open"),
    Column("mark_price_close", F64, PRICE, H, "markPriceKlines", "never NULL", "mark price klines close"),
    Column("index_price_open", F64, PRICE, H, "indexPriceKlines", "never NULL", "index price klines open"),
    Column("index_price_close", F64, PRICE, H, "indexPriceKlines", "never NULL", "index price klines close"),
    Column(
        "premium_index",
        F64,
        RATE,
        B,
        "premiumIndexKlines",
        "NULL when that source is missing",
        "premium index klines close",
    ),
    Column(
        "funding_rate",
        F64,
        RATE,
        B,
        "fundingRate",
        "step function; NULL before the first known settlement",
        "rate of the latest settlement with instant < minute start + 60 s",
    ),
    Column(
        "predicted_funding",
        F64,
        RATE,
        L,
        "live / hot poller",
        _NONE,
        "last markPrice r of the minute, or premiumIndex lastFundingRate",
    ),
    Column(
        "next_funding_time",
        I64,
        EPOCH_MS,
        B,
        "fundingRate",
        "last settlement + interval when history ends",
        "first settlement instant (ms) strictly after the minute start",
    ),
)
del H, B, L


@dataclass(frozen=True)
class OhlcGroup:
    """Four price columns of one bar: low ≤ min(open, close) ≤ max(open, close) ≤ high."""

    open: str
    high: str
    low: str
    close: str

    @property
    def names(self) -> tuple[str, str, str, str]:
        return (self.open, self.high, self.low, self.close)


OHLC = OhlcGroup("open", "high", "low", "close")


@dataclass(frozen=True)
class Dataset:
    """A stored table of the lake: where it lives and what it holds.

    ``within_day``: every time of the table is inside the partition's day. False for
    the tables that also carry the observations just before (or after) the day, which
    seed its first minutes (metrics, bookTicker) or bound its funding steps.
    """

    name: str
    description: str
    columns: tuple[Column, ...]
    time_column: str = "timestamp"
    ohlc: tuple[OhlcGroup, ...] = ()
    within_day: bool = True

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.name != self.time_column) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _cols(domain: Domain, *names: str, type_: pa.DataType = F64) -> tuple[Column, ...]:
    return tuple(Column(n, type_, domain) for n in names)


def _time(name: str, domain: Domain) -> tuple[Column, ...]:
    return (Column(name, TIMESTAMP, domain),)


MINUTE_VIEW = Dataset(
    name="minute",
    description="the canonical 58-column 1-minute view (SPEC §5)",
    columns=MINUTE_COLUMNS,
    ohlc=(OHLC,),
)

KLINES = Dataset(
    name="klines_1m",
    description="trade klines of the day, one row per minute Vision has",
    columns=_time("timestamp", MINUTE)
    + _cols(PRICE, "open", "high", "low", "close")
    + _cols(QUANTITY, "volume", "quote_volume")
    + _cols(COUNT, "count", type_=I64)
    + _cols(QUANTITY, "taker_buy_volume", "taker_buy_quote_volume"),
    ohlc=(OHLC,),
)

MARK_PRICE_KLINES = Dataset(
    "mark_price_klines_1m",
    "mark price klines of the day",
    _time("timestamp", MINUTE) + _cols(PRICE, "open", "high", "low", "close"),
    ohlc=(OHLC,),
)
INDEX_PRICE_KLINES = Dataset(
    "index_price_klines_1m",
    "index price klines of the day",
    _time("timestamp", MINUTE) + _cols(PRICE, "open", "high", "low", "close"),
    ohlc=(OHLC,),
)
# The premium index is a signed fraction of the index price, not a price.
PREMIUM_INDEX_KLINES = Dataset(
    "premium_index_klines_1m",
    "premium index klines of the day",
    _time("timestamp", MINUTE) + _cols(RATE, "open", "high", "low", "close"),
    ohlc=(OHLC,),
)

TRADE_FLOW = Dataset(
    name="trade_flow_1m",
    description="per-minute aggregates of the day's aggTrades; one row per minute with at least one trade",
    columns=_time("timestamp", MINUTE)
    + _cols(EPOCH_MS, "transact_time", type_=I64)
    + _cols(COUNT, "agg_trade_count", type_=I64)
    + _cols(ID, "first_agg_trade_id", "last_agg_trade_id", type_=I64)
    + _cols(QUANTITY, "quantity_sum", "notional_sum", "max_trade_size_btc", "taker_buy_qty", "taker_sell_qty")
    + _cols(COUNT, "count_buy_trades", "count_sell_trades", type_=I64)
    + _cols(QUANTITY, "vol_buy_whale_btc", "vol_sell_whale_btc", "vol_buy_retail_btc", "vol_sell_retail_btc")
    + _cols(COUNT, "whale_trade_count", type_=I64)
    + _cols(RATIO, "realized_vol_1m"),
)

BOOK_TICKER = Dataset(
    name="book_ticker_1m",
    description="per-minute top-of-book features from bookTicker; one row per minute with at least one snapshot",
    columns=_time("timestamp", MINUTE)
    + _cols(COUNT, "snapshot_count", type_=I64)
    + _cols(PRICE, "micro_price_close")
    + _cols(PRICE_DIFFERENCE, "avg_spread_usdt")
    + _cols(SIGNED_FRACTION, "bid_ask_imbalance")
    + _cols(QUANTITY, "avg_bid_depth", "avg_ask_depth")
    + _cols(RATE, "spread_pct")
    + _cols(EPOCH_MS, "last_transaction_time", type_=I64)
    # The minute's last snapshot, for the as-of fill of minutes without one.
    + _cols(PRICE_DIFFERENCE, "last_spread_usdt")
    + _cols(SIGNED_FRACTION, "last_bid_ask_imbalance")
    + _cols(QUANTITY, "last_bid_qty", "last_ask_qty")
    + _cols(RATE, "last_spread_pct"),
    # The previous day's last minute seeds the day's first minutes.
    within_day=False,
)

METRICS = Dataset(
    name="metrics_5m",
    description="5-minute open interest and long/short snapshots, stamped with the time each was taken",
    columns=_time("observation_time", INSTANT)
    + _cols(QUANTITY, "oi_contracts", "oi_value_usdt")
    + _cols(RATIO, "top_trader_ls_ratio_acct", "global_ls_ratio_acct"),
    time_column="observation_time",
    # The previous day's snapshots seed the day's first minutes.
    within_day=False,
)

FUNDING = Dataset(
    name="funding_settlements",
    description="funding settlements covering the day, including the last one before it",
    columns=_time("settlement_time", MINUTE)
    + _cols(RATE, "funding_rate")
    # 1, 4 or 8 on the exchange; REST derives it from the gap to the previous settlement.
    + _cols(COUNT, "funding_interval_hours", type_=I64),
    time_column="settlement_time",
    # The last settlement before the day and the first after it bound its steps.
    within_day=False,
)

HOT_SNAPSHOTS = Dataset(
    name="hot_snapshots",
    description="snapshots polled from REST (premiumIndex, openInterest, bookTicker) while the day was live",
    columns=_time("observation_time", INSTANT)
    + _cols(PRICE, "mark_price", "index_price")
    + _cols(RATE, "predicted_funding")
    + _cols(EPOCH_MS, "next_funding_time", type_=I64)
    + _cols(QUANTITY, "open_interest")
    + _cols(PRICE, "bid_price")
    + _cols(QUANTITY, "bid_qty")
    + _cols(PRICE, "ask_price")
    + _cols(QUANTITY, "ask_qty")
    + _cols(ID, "book_update_id", type_=I64),
    time_column="observation_time",
)


@dataclass(frozen=True)
class SourceRows:
    """Raw rows of a source stream that are aggregated before they are stored, so a
    bad one must be caught (and named at its row) before aggregation hides it.

    Column names as the parsers return them (``sources/vision_csv.py`` layouts, the
    same for REST); ``ordered`` pairs must satisfy ``first ≤ second``.
    """

    stream: str
    time_column: str  # epoch ms: names the minute of a bad row
    columns: tuple[tuple[str, Domain], ...]
    ordered: tuple[tuple[str, str], ...] = ()


AGG_TRADE_ROWS = SourceRows(
    "aggTrades",
    "transact_time",
    (
        ("agg_trade_id", ID),
        ("price", PRICE),
        ("quantity", QUANTITY),
        ("first_trade_id", ID),
        ("last_trade_id", ID),
        ("transact_time", EPOCH_MS),
    ),
    ordered=(("first_trade_id", "last_trade_id"),),
)
BOOK_TICKER_ROWS = SourceRows(
    "bookTicker",
    "transaction_time",
    (
        ("update_id", ID),
        ("best_bid_price", PRICE),
        ("best_bid_qty", QUANTITY),
        ("best_ask_price", PRICE),
        ("best_ask_qty", QUANTITY),
        ("transaction_time", EPOCH_MS),
        ("event_time", EPOCH_MS),
    ),
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
    lines = [
        "| # | column | type | class | source | fill rule | domain |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, c in enumerate(MINUTE_COLUMNS, start=1):
        lines.append(f"| {i} | `{c.name}` | {c.type} | {c.klass} | {c.source} | {c.fill} | {c.domain} |")
    return "\n".join(lines)


assert len(MINUTE_COLUMNS) == 58, len(MINUTE_COLUMNS)
