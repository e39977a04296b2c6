"""The column registry: every table the lake stores, declared once, as data.

What belongs here: the columns of the canonical minute view (SPEC §5), of the
per-stream tables the source assets store and of the live collector's table
(``live_1m``, SPEC §9: its minute-view columns are declared by reference), each
with its Arrow type, value domain and unit (and, for the minute view, its class,
source stream, slow-series and quiet-minute facts, fill rule); each table's
source stream and OHLC groups; the
domains of the raw source rows that are aggregated before they are stored
(aggTrades, bookTicker); and everything derived mechanically from those
declarations: the pyarrow schemas, schema hashes, the docs' column table, and the
lists the rest of the package works from (HARD streams and columns, slow series,
book and metrics fills, trade-flow columns, the streams a partition's provenance
names). The pandera schemas (``quality.py``) are derived from it too.

What stays out: validation code (``quality.py``), formulas (``features/``), and any
I/O. Nothing else in the package lists column names of a stored table, the domain
of a column, or which streams or columns belong to a group: it filters this
registry. The number of columns is ``len(MINUTE_COLUMNS)``, never a literal.

How to add a column to the minute view
--------------------------------------
Add one ``Column`` to ``MINUTE_COLUMNS`` where SPEC §5 puts it: name, Arrow type,
domain (one of those below, or a new ``Domain`` with a rule name of its own), unit,
class, source stream, fill rule, definition. It is nullable (only ``timestamp`` is
not). Then:

- taken as is from a stream table: a column of an aggTrades or bookTicker source
  (``COPIED_STREAMS``) copies the column of its name in that stream's table
  (``TRADE_FLOW``, ``BOOK_TICKER``; declare it there too, if new);
  ``zero_when_quiet`` makes a minute without trades 0 instead of NULL. A slow series
  names the column of its source table it is filled as-of from (``asof``). Nothing
  else changes: the day builder, the pandera schemas, the blocking rules, the docs
  table and the scan follow, and ``registry_errors`` (run on import) says what is
  inconsistent.
- a formula (e.g. of klines columns): the formula goes into
  ``features/minute_view.py``, which fails loudly for a BACKFILL/HARD column it
  does not compute;
- LIVE: NULL until the live collector fills it.

Tests that pin the column list (SPEC's count, the docs table) change with it. A
file written before the column was added has another ``schema_hash``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import pyarrow as pa

from bml_assets.domain.minutes import DAY_MS
from bml_assets.domain.streams import KLINE_STREAMS, Stream

TIMESTAMP = pa.timestamp("ms", tz="UTC")
I64 = pa.int64()
F64 = pa.float64()
BOOL = pa.bool_()


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
# Booleans (the live table's coverage flags): any non-NULL value is in the domain.
FLAG = Domain("flags_boolean", 0, 1, "a flag: true or false")
# Time columns (Arrow timestamps); the time rule of each table enforces them.
MINUTE = Domain("minute_starts", EPOCH_MS_LOW, EPOCH_MS_HIGH - 1, "a minute start (UTC)", minute_aligned=True)
INSTANT = Domain("instants", EPOCH_MS_LOW, EPOCH_MS_HIGH - 1, "an instant (UTC, ms)")


# --- columns ------------------------------------------------------------------


class Unit(StrEnum):
    """What a column's numbers measure. In a name, "btc" means the base asset and
    "usdt" the quote asset (SPEC §5), whatever the symbol's assets are."""

    INSTANT = "UTC time"  # an Arrow timestamp
    EPOCH_MS = "epoch ms"
    DURATION_MS = "ms"
    ID = "exchange id"
    PRICE = "quote per base"  # a price, or a difference of prices
    BASE = "base asset"  # a quantity
    QUOTE = "quote asset"  # a money amount (notional, quote volume)
    COUNT = "count"
    HOURS = "hours"
    RATIO = "ratio"  # of like amounts (long/short ratios)
    FRACTION = "fraction"  # a share, or a fraction of a price (rates, spread %, premium)
    LOG_RETURN = "log return"
    FLAG = "flag"


class ColumnClass(StrEnum):
    """How a minute-view column is sourced (SPEC §5 "Classes")."""

    HARD = "HARD"  # must be present for a minute to be committed
    BACKFILL = "BACKFILL"  # computable from Vision/REST history
    LIVE = "LIVE"  # only while the live collector (or hot poller) runs


@dataclass(frozen=True)
class Column:
    """One stored column: name, Arrow type, value domain and unit.

    A minute-view column also says how it is sourced, and the lists the code needs
    are filters on that (see the derived lists at the end of this module):

    - ``klass``: HARD / BACKFILL / LIVE;
    - ``source``: the exchange stream it is computed from (None: the live
      collector); the streams of the HARD columns are the HARD streams;
    - ``asof``: set for a slow series, the column of the ``source`` table (the
      observation itself) that an as-of fill carries into minutes without one;
    - ``zero_when_quiet``: 0, not NULL, in a minute its source covers without an
      event (no trade, no liquidation);
    - ``fill`` and ``description``: the fill rule and definition, for the docs.

    Every column but the time column is nullable.
    """

    name: str
    type: pa.DataType
    domain: Domain
    unit: Unit
    klass: ColumnClass | None = None
    source: Stream | None = None
    fill: str = ""
    description: str = ""
    asof: str = ""
    zero_when_quiet: bool = False

    @property
    def field(self) -> pa.Field:
        # The minute's timestamp is the only non-nullable column.
        return pa.field(self.name, self.type, nullable=self.name != "timestamp")

    @property
    def slow(self) -> bool:
        """Filled as-of from the latest observation, within the ffill bound: SPEC §5's slow
        series but 48-50, which are formulas of the filled ones."""
        return bool(self.asof)


H, B, L = ColumnClass.HARD, ColumnClass.BACKFILL, ColumnClass.LIVE
KL, MARK, INDEX, PREMIUM = (
    Stream.KLINES,
    Stream.MARK_PRICE_KLINES,
    Stream.INDEX_PRICE_KLINES,
    Stream.PREMIUM_INDEX_KLINES,
)
AGG, BOOK, OI, FUND = Stream.AGG_TRADES, Stream.BOOK_TICKER, Stream.METRICS, Stream.FUNDING_RATE
_NONE = "NULL when not observed"
_ZERO_TRADES = "0 when the minute has no trades"
_LIQ = "0 when covered and none"
_BOOK = "mean over the minute's bookTicker snapshots; else as-of last snapshot, ffill ≤ BML_MAX_FFILL_MINUTES"
_SLOW = "as-of latest observation before minute end, ffill ≤ BML_MAX_FFILL_MINUTES, then NULL"
_U = Unit

MINUTE_COLUMNS: tuple[Column, ...] = (
    Column(
        "event_time",
        I64,
        EPOCH_MS,
        _U.EPOCH_MS,
        L,
        None,
        _NONE,
        "largest exchange event time E among live events of the minute",
    ),
    Column(
        "transact_time",
        I64,
        EPOCH_MS,
        _U.EPOCH_MS,
        B,
        AGG,
        "NULL when the minute has no trades",
        "largest transact_time of the minute's trades",
    ),
    Column(
        "arrival_time",
        I64,
        EPOCH_MS,
        _U.EPOCH_MS,
        L,
        None,
        _NONE,
        "local receive time (ms) of the event that set event_time",
    ),
    Column(
        "latency_engine",
        I64,
        DURATION_MS,
        _U.DURATION_MS,
        L,
        None,
        _NONE,
        "p95 of E − T over the minute's live events (ms)",
    ),
    Column("latency_network", I64, DURATION_MS, _U.DURATION_MS, L, None, _NONE, "p95 of arrival − E (ms)"),
    Column("update_id_start", I64, ID, _U.ID, L, None, _NONE, "smallest U of the minute's depth updates"),
    Column("update_id_end", I64, ID, _U.ID, L, None, _NONE, "largest u of the minute's depth updates"),
    Column("timestamp", TIMESTAMP, MINUTE, _U.INSTANT, H, KL, "never NULL", "minute start (UTC)"),
    Column("open", F64, PRICE, _U.PRICE, H, KL, "never NULL", "klines open"),
    Column("high", F64, PRICE, _U.PRICE, H, KL, "never NULL", "klines high"),
    Column("low", F64, PRICE, _U.PRICE, H, KL, "never NULL", "klines low"),
    Column("close", F64, PRICE, _U.PRICE, H, KL, "never NULL", "klines close"),
    Column(
        "vwap_1m",
        F64,
        PRICE,
        _U.PRICE,
        B,
        KL,
        "close when volume is 0",
        "quote_volume / volume (= Σ notional / Σ quantity of the trades)",
    ),
    Column(
        "micro_price_close",
        F64,
        PRICE,
        _U.PRICE,
        B,
        BOOK,
        "NULL when no snapshot in the minute",
        "(bid·ask_qty + ask·bid_qty) / (bid_qty + ask_qty) of the minute's last snapshot",
    ),
    Column("volume_btc", F64, QUANTITY, _U.BASE, H, KL, "never NULL (0 allowed)", "klines volume (base asset)"),
    Column("volume_usdt", F64, QUANTITY, _U.QUOTE, H, KL, "never NULL (0 allowed)", "klines quote_volume"),
    Column("trade_count", I64, COUNT, _U.COUNT, H, KL, "never NULL", "klines count (individual trades)"),
    Column("avg_trade_size_btc", F64, QUANTITY, _U.BASE, B, KL, "0 when trade_count is 0", "volume_btc / trade_count"),
    Column(
        "max_trade_size_btc",
        F64,
        QUANTITY,
        _U.BASE,
        B,
        AGG,
        _ZERO_TRADES,
        "largest aggTrade quantity",
        zero_when_quiet=True,
    ),
    Column(
        "taker_buy_vol_btc", F64, QUANTITY, _U.BASE, B, KL, "never NULL when klines exist", "klines taker_buy_volume"
    ),
    Column(
        "taker_buy_vol_usdt",
        F64,
        QUANTITY,
        _U.QUOTE,
        B,
        KL,
        "never NULL when klines exist",
        "klines taker_buy_quote_volume",
    ),
    Column(
        "net_taker_vol_btc",
        F64,
        QUANTITY_DIFFERENCE,
        _U.BASE,
        B,
        KL,
        "never NULL when klines exist",
        "taker-buy quantity − taker-sell quantity",
    ),
    Column(
        "count_buy_trades",
        I64,
        COUNT,
        _U.COUNT,
        B,
        AGG,
        _ZERO_TRADES,
        "Σ (last_trade_id − first_trade_id + 1) over taker-buy aggTrades",
        zero_when_quiet=True,
    ),
    Column(
        "count_sell_trades",
        I64,
        COUNT,
        _U.COUNT,
        B,
        AGG,
        _ZERO_TRADES,
        "the same over taker-sell aggTrades",
        zero_when_quiet=True,
    ),
    Column(
        "taker_buy_ratio",
        F64,
        RATIO,
        _U.FRACTION,
        B,
        KL,
        "NULL when volume is 0",
        "taker_buy_vol_btc / volume_btc",
    ),
    Column(
        "vol_buy_whale_btc",
        F64,
        QUANTITY,
        _U.BASE,
        B,
        AGG,
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≥ 100 000",
        zero_when_quiet=True,
    ),
    Column(
        "vol_sell_whale_btc",
        F64,
        QUANTITY,
        _U.BASE,
        B,
        AGG,
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≥ 100 000",
        zero_when_quiet=True,
    ),
    Column(
        "vol_buy_retail_btc",
        F64,
        QUANTITY,
        _U.BASE,
        B,
        AGG,
        _ZERO_TRADES,
        "Σ quantity of taker-buy aggTrades with notional ≤ 1 000",
        zero_when_quiet=True,
    ),
    Column(
        "vol_sell_retail_btc",
        F64,
        QUANTITY,
        _U.BASE,
        B,
        AGG,
        _ZERO_TRADES,
        "Σ quantity of taker-sell aggTrades with notional ≤ 1 000",
        zero_when_quiet=True,
    ),
    Column(
        "whale_trade_count",
        I64,
        COUNT,
        _U.COUNT,
        B,
        AGG,
        _ZERO_TRADES,
        "number of aggTrades with notional ≥ 100 000, both sides",
        zero_when_quiet=True,
    ),
    Column(
        "realized_vol_1m",
        F64,
        RATIO,
        _U.LOG_RETURN,
        B,
        AGG,
        "0 with fewer than 2 trades",
        "sqrt(Σ ln(p_i/p_{i−1})²) over trades ordered by (transact_time, agg_trade_id)",
        zero_when_quiet=True,
    ),
    Column(
        "liq_long_vol_usdt",
        F64,
        QUANTITY,
        _U.QUOTE,
        L,
        None,
        _LIQ,
        "Σ ap × z of SELL-side forced orders",
        zero_when_quiet=True,
    ),
    Column(
        "liq_short_vol_usdt",
        F64,
        QUANTITY,
        _U.QUOTE,
        L,
        None,
        _LIQ,
        "Σ ap × z of BUY-side forced orders",
        zero_when_quiet=True,
    ),
    Column(
        "liq_long_count",
        I64,
        COUNT,
        _U.COUNT,
        L,
        None,
        _LIQ,
        "number of SELL-side forced orders",
        zero_when_quiet=True,
    ),
    Column(
        "liq_short_count",
        I64,
        COUNT,
        _U.COUNT,
        L,
        None,
        _LIQ,
        "number of BUY-side forced orders",
        zero_when_quiet=True,
    ),
    Column(
        "liq_avg_fill_price", F64, PRICE, _U.PRICE, L, None, "NULL when none", "Σ ap·z / Σ z over all forced orders"
    ),
    Column("liq_unfilled_ratio", F64, FRACTION, _U.FRACTION, L, None, "NULL when none", "Σ (q − z) / Σ q"),
    Column(
        "avg_spread_usdt",
        F64,
        PRICE_DIFFERENCE,
        _U.PRICE,
        B,
        BOOK,
        _BOOK,
        "mean of (ask − bid)",
        asof="last_spread_usdt",
    ),
    Column(
        "bid_ask_imbalance",
        F64,
        SIGNED_FRACTION,
        _U.FRACTION,
        B,
        BOOK,
        _BOOK,
        "mean of (bid_qty − ask_qty) / (bid_qty + ask_qty), zero denominators left out",
        asof="last_bid_ask_imbalance",
    ),
    Column("avg_bid_depth", F64, QUANTITY, _U.BASE, B, BOOK, _BOOK, "mean bid_qty", asof="last_bid_qty"),
    Column("avg_ask_depth", F64, QUANTITY, _U.BASE, B, BOOK, _BOOK, "mean ask_qty", asof="last_ask_qty"),
    Column(
        "spread_pct",
        F64,
        RATE,
        _U.FRACTION,
        B,
        BOOK,
        _BOOK,
        "mean of (ask − bid) / mid, a fraction",
        asof="last_spread_pct",
    ),
    Column(
        "price_impact_100k",
        F64,
        RATE,
        _U.FRACTION,
        L,
        None,
        _NONE,
        "(avg fill of a 100 000 quote market buy − mid) / mid",
    ),
    Column("oi_contracts", F64, QUANTITY, _U.BASE, B, OI, _SLOW, "open interest in base units", asof="oi_contracts"),
    Column("oi_value_usdt", F64, QUANTITY, _U.QUOTE, B, OI, _SLOW, "open interest value", asof="oi_value_usdt"),
    Column(
        "top_trader_ls_ratio_acct",
        F64,
        RATIO,
        _U.RATIO,
        B,
        OI,
        _SLOW,
        "top-trader long/short account ratio",
        asof="top_trader_ls_ratio_acct",
    ),
    Column(
        "global_ls_ratio_acct",
        F64,
        RATIO,
        _U.RATIO,
        B,
        OI,
        _SLOW,
        "all-account long/short ratio",
        asof="global_ls_ratio_acct",
    ),
    Column(
        "ls_ratio_divergence",
        F64,
        RATIO_DIFFERENCE,
        _U.RATIO,
        B,
        OI,
        _SLOW,
        "top_trader_ls_ratio_acct − global_ls_ratio_acct",
    ),
    Column(
        "top_trader_long_pct",
        F64,
        FRACTION,
        _U.FRACTION,
        B,
        OI,
        _SLOW,
        "r / (1 + r), r = top_trader_ls_ratio_acct",
    ),
    Column("top_trader_short_pct", F64, FRACTION, _U.FRACTION, B, OI, _SLOW, "1 / (1 + r)"),
    Column("mark_price_open", F64, PRICE, _U.PRICE, H, MARK, "never NULL", "mark price klines open"),
    Column("mark_price_close", F64, PRICE, _U.PRICE, H, MARK, "never NULL", "mark price klines close"),
    Column("index_price_open", F64, PRICE, _U.PRICE, H, INDEX, "never NULL", "index price klines open"),
    Column("index_price_close", F64, PRICE, _U.PRICE, H, INDEX, "never NULL", "index price klines close"),
    Column(
        "premium_index",
        F64,
        RATE,
        _U.FRACTION,
        B,
        PREMIUM,
        "NULL when that source is missing",
        "premium index klines close",
    ),
    Column(
        "funding_rate",
        F64,
        RATE,
        _U.FRACTION,
        B,
        FUND,
        "step function; NULL before the first known settlement",
        "rate of the latest settlement with instant < minute start + 60 s",
    ),
    Column(
        "predicted_funding",
        F64,
        RATE,
        _U.FRACTION,
        L,
        None,
        _NONE + "; the hot poller fills it too",
        "last markPrice r of the minute, or premiumIndex lastFundingRate",
    ),
    Column(
        "next_funding_time",
        I64,
        EPOCH_MS,
        _U.EPOCH_MS,
        B,
        FUND,
        "last settlement + interval when history ends",
        "first settlement instant (ms) strictly after the minute start",
    ),
)
del H, B, L, KL, MARK, INDEX, PREMIUM, AGG, BOOK, OI, FUND, _U


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

    ``stream``: the exchange stream its rows come from (None for the minute view and
    the polled snapshots). ``within_day``: every time of the table is inside the
    partition's day. False for the tables that also carry the observations just
    before (or after) the day, which seed its first minutes (metrics, bookTicker) or
    bound its funding steps.
    """

    name: str
    description: str
    columns: tuple[Column, ...]
    time_column: str = "timestamp"
    ohlc: tuple[OhlcGroup, ...] = ()
    within_day: bool = True
    stream: Stream | None = None

    @property
    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.name != self.time_column) for c in self.columns])

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def value_columns(self) -> tuple[Column, ...]:
        """Every column but the time column."""
        return tuple(c for c in self.columns if c.name != self.time_column)

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _cols(domain: Domain, unit: Unit, *names: str, type_: pa.DataType = F64) -> tuple[Column, ...]:
    return tuple(Column(n, type_, domain, unit) for n in names)


def _time(name: str, domain: Domain) -> tuple[Column, ...]:
    return (Column(name, TIMESTAMP, domain, Unit.INSTANT),)


_PRICE_BAR = _cols(PRICE, Unit.PRICE, "open", "high", "low", "close")

MINUTE_VIEW = Dataset(
    name="minute",
    description=f"the canonical {len(MINUTE_COLUMNS)}-column 1-minute view (SPEC §5)",
    columns=MINUTE_COLUMNS,
    ohlc=(OHLC,),
)

KLINES = Dataset(
    name="klines_1m",
    description="trade klines of the day, one row per minute Vision has",
    columns=_time("timestamp", MINUTE)
    + _PRICE_BAR
    + _cols(QUANTITY, Unit.BASE, "volume")
    + _cols(QUANTITY, Unit.QUOTE, "quote_volume")
    + _cols(COUNT, Unit.COUNT, "count", type_=I64)
    + _cols(QUANTITY, Unit.BASE, "taker_buy_volume")
    + _cols(QUANTITY, Unit.QUOTE, "taker_buy_quote_volume"),
    ohlc=(OHLC,),
    stream=Stream.KLINES,
)

MARK_PRICE_KLINES = Dataset(
    "mark_price_klines_1m",
    "mark price klines of the day",
    _time("timestamp", MINUTE) + _PRICE_BAR,
    ohlc=(OHLC,),
    stream=Stream.MARK_PRICE_KLINES,
)
INDEX_PRICE_KLINES = Dataset(
    "index_price_klines_1m",
    "index price klines of the day",
    _time("timestamp", MINUTE) + _PRICE_BAR,
    ohlc=(OHLC,),
    stream=Stream.INDEX_PRICE_KLINES,
)
# The premium index is a signed fraction of the index price, not a price.
PREMIUM_INDEX_KLINES = Dataset(
    "premium_index_klines_1m",
    "premium index klines of the day",
    _time("timestamp", MINUTE) + _cols(RATE, Unit.FRACTION, "open", "high", "low", "close"),
    ohlc=(OHLC,),
    stream=Stream.PREMIUM_INDEX_KLINES,
)

TRADE_FLOW = Dataset(
    name="trade_flow_1m",
    description="per-minute aggregates of the day's aggTrades; one row per minute with at least one trade",
    columns=_time("timestamp", MINUTE)
    + _cols(EPOCH_MS, Unit.EPOCH_MS, "transact_time", type_=I64)
    + _cols(COUNT, Unit.COUNT, "agg_trade_count", type_=I64)
    + _cols(ID, Unit.ID, "first_agg_trade_id", "last_agg_trade_id", type_=I64)
    + _cols(QUANTITY, Unit.BASE, "quantity_sum")
    + _cols(QUANTITY, Unit.QUOTE, "notional_sum")
    + _cols(QUANTITY, Unit.BASE, "max_trade_size_btc", "taker_buy_qty", "taker_sell_qty")
    + _cols(COUNT, Unit.COUNT, "count_buy_trades", "count_sell_trades", type_=I64)
    + _cols(QUANTITY, Unit.BASE, "vol_buy_whale_btc", "vol_sell_whale_btc", "vol_buy_retail_btc", "vol_sell_retail_btc")
    + _cols(COUNT, Unit.COUNT, "whale_trade_count", type_=I64)
    + _cols(RATIO, Unit.LOG_RETURN, "realized_vol_1m"),
    stream=Stream.AGG_TRADES,
)

BOOK_TICKER = Dataset(
    name="book_ticker_1m",
    description="per-minute top-of-book features from bookTicker; one row per minute with at least one snapshot",
    columns=_time("timestamp", MINUTE)
    + _cols(COUNT, Unit.COUNT, "snapshot_count", type_=I64)
    + _cols(PRICE, Unit.PRICE, "micro_price_close")
    + _cols(PRICE_DIFFERENCE, Unit.PRICE, "avg_spread_usdt")
    + _cols(SIGNED_FRACTION, Unit.FRACTION, "bid_ask_imbalance")
    + _cols(QUANTITY, Unit.BASE, "avg_bid_depth", "avg_ask_depth")
    + _cols(RATE, Unit.FRACTION, "spread_pct")
    + _cols(EPOCH_MS, Unit.EPOCH_MS, "last_transaction_time", type_=I64)
    # The minute's last snapshot, for the as-of fill of minutes without one.
    + _cols(PRICE_DIFFERENCE, Unit.PRICE, "last_spread_usdt")
    + _cols(SIGNED_FRACTION, Unit.FRACTION, "last_bid_ask_imbalance")
    + _cols(QUANTITY, Unit.BASE, "last_bid_qty", "last_ask_qty")
    + _cols(RATE, Unit.FRACTION, "last_spread_pct"),
    # The previous day's last minute seeds the day's first minutes.
    within_day=False,
    stream=Stream.BOOK_TICKER,
)

METRICS = Dataset(
    name="metrics_5m",
    description="5-minute open interest and long/short snapshots, stamped with the time each was taken",
    columns=_time("observation_time", INSTANT)
    + _cols(QUANTITY, Unit.BASE, "oi_contracts")
    + _cols(QUANTITY, Unit.QUOTE, "oi_value_usdt")
    + _cols(RATIO, Unit.RATIO, "top_trader_ls_ratio_acct", "global_ls_ratio_acct"),
    time_column="observation_time",
    # The previous day's snapshots seed the day's first minutes.
    within_day=False,
    stream=Stream.METRICS,
)

FUNDING = Dataset(
    name="funding_settlements",
    description="funding settlements covering the day, including the last one before it",
    columns=_time("settlement_time", MINUTE)
    + _cols(RATE, Unit.FRACTION, "funding_rate")
    # 1, 4 or 8 on the exchange; REST derives it from the gap to the previous settlement.
    + _cols(COUNT, Unit.HOURS, "funding_interval_hours", type_=I64),
    time_column="settlement_time",
    # The last settlement before the day and the first after it bound its steps.
    within_day=False,
    stream=Stream.FUNDING_RATE,
)

HOT_SNAPSHOTS = Dataset(
    name="hot_snapshots",
    description="snapshots polled from REST (premiumIndex, openInterest, bookTicker) while the day was live",
    columns=_time("observation_time", INSTANT)
    + _cols(PRICE, Unit.PRICE, "mark_price", "index_price")
    + _cols(RATE, Unit.FRACTION, "predicted_funding")
    + _cols(EPOCH_MS, Unit.EPOCH_MS, "next_funding_time", type_=I64)
    + _cols(QUANTITY, Unit.BASE, "open_interest")
    + _cols(PRICE, Unit.PRICE, "bid_price")
    + _cols(QUANTITY, Unit.BASE, "bid_qty")
    + _cols(PRICE, Unit.PRICE, "ask_price")
    + _cols(QUANTITY, Unit.BASE, "ask_qty")
    + _cols(ID, Unit.ID, "book_update_id", type_=I64),
    time_column="observation_time",
)


# The columns of the minute view the live collector computes (SPEC §9's table), in the
# minute view's order: LIVE 1, 3-7, 32-37, 43, 57, and the book columns 14, 38-42 that
# it fills after 2024-03-30. The live table declares them by reference, so their names,
# types and domains are the minute view's.
LIVE_VIEW_COLUMNS: tuple[str, ...] = tuple(
    c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.LIVE or c.source is Stream.BOOK_TICKER
)
# The live collector's own bookkeeping per minute (SPEC §9): which stream families
# covered the minute, whether the local order book was synced across it, the clock,
# and what happened on the connections.
LIVE_FLAG_COLUMNS: tuple[str, ...] = ("public_covered", "market_covered", "book_synced")
LIVE_EVENT_COUNT_COLUMNS: tuple[str, ...] = (
    "depth_events",
    "book_ticker_events",
    "agg_trade_events",
    "trade_events",
    "mark_price_events",
    "force_order_events",
)
"""Events of the minute per stream (by their exchange time E), duplicates left out."""


def _live(name: str, type_: pa.DataType, domain: Domain, unit: Unit, description: str) -> Column:
    return Column(name, type_, domain, unit, description=description)


_LIVE_BOOKKEEPING: tuple[Column, ...] = (
    _live(
        "public_covered",
        BOOL,
        FLAG,
        Unit.FLAG,
        "a connection of the public family (depth, bookTicker) delivered a frame with E before the minute "
        "and one with E after it, nothing lost in between",
    ),
    _live("market_covered", BOOL, FLAG, Unit.FLAG, "the same for the market family (aggTrade, markPrice, forceOrder)"),
    _live(
        "book_synced",
        BOOL,
        FLAG,
        Unit.FLAG,
        "the local order book was synced from before the minute to its end (update ids and price impact need it)",
    ),
    _live(
        "clock_offset_ms",
        I64,
        DURATION_MS,
        Unit.DURATION_MS,
        "exchange clock minus local clock as last measured against /fapi/v1/time in the minute; NULL when not "
        "measured (local + offset = exchange time)",
    ),
    _live(
        "resyncs", I64, COUNT, Unit.COUNT, "order book resyncs started in the minute (a pu break, a refused snapshot)"
    ),
    _live("reconnects", I64, COUNT, Unit.COUNT, "connection drops of either family in the minute"),
    _live("silent_streams", I64, COUNT, Unit.COUNT, "streams of the symbol reported silent during the minute"),
    _live(
        "late_events",
        I64,
        COUNT,
        Unit.COUNT,
        "events received while this was the oldest open minute whose own minute had already closed (left out)",
    ),
    _live("duplicate_events", I64, COUNT, Unit.COUNT, "events received twice (an overlapping connection) and dropped"),
    *(
        _live(name, I64, COUNT, Unit.COUNT, f"{stream} events of the minute (by E)")
        for name, stream in zip(
            LIVE_EVENT_COUNT_COLUMNS,
            ("depthUpdate", "bookTicker", "aggTrade", "trade", "markPriceUpdate", "forceOrder"),
            strict=True,
        )
    ),
)

LIVE_1M = Dataset(
    name="live_1m",
    description=(
        "per-minute values of the live collector (SPEC §9): the LIVE and book columns of the minute view, "
        "coverage per stream family, clock offset, resyncs, reconnects, silent streams and event counts; "
        "one row per minute the collector saw"
    ),
    columns=_time("timestamp", MINUTE)
    + tuple(next(c for c in MINUTE_COLUMNS if c.name == n) for n in LIVE_VIEW_COLUMNS)
    + _LIVE_BOOKKEEPING,
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
        LIVE_1M,
    )
}


# --- derived: every other list of columns or streams is one of these ---------------

MINUTE_SCHEMA: pa.Schema = MINUTE_VIEW.arrow_schema
STREAM_DATASETS: dict[Stream, Dataset] = {d.stream: d for d in DATASETS.values() if d.stream is not None}
"""The table each exchange stream is stored in."""
KLINE_DATASETS: tuple[Dataset, ...] = tuple(d for d in DATASETS.values() if d.stream in KLINE_STREAMS)


def _names(keep: Callable[[Column], bool]) -> tuple[str, ...]:
    return tuple(c.name for c in MINUTE_COLUMNS if keep(c))


HARD_COLUMNS: tuple[str, ...] = _names(lambda c: c.klass is ColumnClass.HARD)
BACKFILL_COLUMNS: tuple[str, ...] = _names(lambda c: c.klass is ColumnClass.BACKFILL)
LIVE_COLUMNS: tuple[str, ...] = _names(lambda c: c.klass is ColumnClass.LIVE)
HARD_STREAMS: tuple[Stream, ...] = tuple(
    dict.fromkeys(c.source for c in MINUTE_COLUMNS if c.klass is ColumnClass.HARD and c.source is not None)
)
"""The streams of the HARD columns: a minute is a row only where all of them have it."""
HARD_DATASETS: tuple[Dataset, ...] = tuple(STREAM_DATASETS[s] for s in HARD_STREAMS)
PROVENANCE_STREAMS: tuple[Stream, ...] = tuple(s for s in Stream if any(c.source is s for c in MINUTE_COLUMNS))
"""The streams every minute-view partition names a source for (SPEC §6 "source provenance")."""
SLOW_COLUMNS: tuple[str, ...] = _names(lambda c: c.slow)
"""The columns filled as-of from their observations (SPEC §5 slow series), book first, then metrics."""
BOOK_COLUMNS: dict[str, str] = {c.name: c.asof for c in MINUTE_COLUMNS if c.slow and c.source is Stream.BOOK_TICKER}
"""Minute-view book column -> the ``BOOK_TICKER`` column of the minute's last snapshot that fills it as-of."""
METRICS_COLUMNS: dict[str, str] = {c.name: c.asof for c in MINUTE_COLUMNS if c.slow and c.source is Stream.METRICS}
"""Minute-view metrics column -> the ``METRICS`` observation column that fills it as-of."""
STREAM_COLUMNS: dict[Stream, tuple[str, ...]] = {s: _names(lambda c, s=s: c.source is s) for s in PROVENANCE_STREAMS}
"""Per stream, the minute-view columns computed from it."""
COPIED_STREAMS: frozenset[Stream] = frozenset({Stream.AGG_TRADES, Stream.BOOK_TICKER})
"""Streams whose minute-view columns are copied from the stream table's column of the same name."""
TRADE_FLOW_COLUMNS: tuple[str, ...] = STREAM_COLUMNS[Stream.AGG_TRADES]
"""Minute-view columns copied from the ``TRADE_FLOW`` column of the same name."""


def schema_hash(schema: pa.Schema) -> str:
    """A short stable hash of names, types and order; a file written by an older
    layout has a different one."""
    text = "\n".join(f"{f.name}:{f.type}" for f in schema)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def column_table_markdown() -> str:
    """The docs' column table, generated from the registry."""
    lines = [
        "| # | column | type | class | source | unit | fill rule | domain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for i, c in enumerate(MINUTE_COLUMNS, start=1):
        source = c.source or "live"
        slow = f" (as-of {STREAM_DATASETS[c.source].name}.{c.asof})" if c.slow and c.source else ""
        lines.append(f"| {i} | `{c.name}` | {c.type} | {c.klass} | {source} | {c.unit} | {c.fill}{slow} | {c.domain} |")
    return "\n".join(lines)


def dataset_table_markdown(dataset: Dataset) -> str:
    """The docs' column table of a stored table other than the minute view (e.g. ``live_1m``)."""
    lines = ["| # | column | type | unit | domain | definition |", "| --- | --- | --- | --- | --- | --- |"]
    for i, c in enumerate(dataset.columns, start=1):
        lines.append(f"| {i} | `{c.name}` | {c.type} | {c.unit} | {c.domain} | {c.description} |")
    return "\n".join(lines)


def registry_errors(
    datasets: Sequence[Dataset] = tuple(DATASETS.values()), minute_columns: Sequence[Column] = MINUTE_COLUMNS
) -> list[str]:
    """What is inconsistent in the declarations (checked on import): a name declared twice
    in a table, a minute-view column without a class, a non-LIVE one without a source
    stream, a slow series whose observation column is not declared, a copied column
    its stream table lacks, a time column that is not HARD."""
    errors = [
        f"{d.name}: column {name!r} is declared twice"
        for d in datasets
        for name in sorted({n for n in d.column_names if d.column_names.count(n) > 1})
    ]
    tables = {d.stream: d for d in datasets if d.stream is not None}
    for c in minute_columns:
        if c.klass is None:
            errors.append(f"minute view: {c.name} has no class")
        elif c.source is None and c.klass is not ColumnClass.LIVE:
            errors.append(f"minute view: {c.name} is {c.klass} but names no source stream")
        table = tables.get(c.source) if c.source is not None else None
        if c.slow and (table is None or c.asof not in table.column_names):
            errors.append(f"minute view: {c.name} is filled as-of from {c.source}.{c.asof}, which is not declared")
        if c.source in COPIED_STREAMS and (table is None or c.name not in table.column_names):
            errors.append(f"minute view: {c.name} is copied from the {c.source} table, which has no such column")
        if c.name == MINUTE_VIEW.time_column and c.klass is not ColumnClass.HARD:
            errors.append(f"minute view: the time column {c.name} must be HARD")
    return errors


if _errors := registry_errors():
    raise ValueError("column registry: " + "; ".join(_errors))
