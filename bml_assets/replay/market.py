"""A deterministic synthetic USD-M market: the exchange's truth for any symbol and day.

What belongs here: ``MarketConfig`` and ``SyntheticMarket``: the market's data for
any symbol and day (aggTrades, the klines computed from them, mark/index/premium
klines, 5-minute metrics, bookTicker snapshots, funding settlements) as typed
pyarrow tables and as exact-unit columns, the exchange's symbol universe
(exchangeInfo; no files and no REST answers for other symbols), listing dates,
downtime, the instruments' tick and lot grids, and the exchange's "today" when the
config fixes it. Every value is a pure function of (seed, symbol, day or instant):
the same request gives the same numbers in any order. Vision files
(``vision_archive.py``) and REST answers (``rest/endpoints.py``) both read the very
same exact-unit columns through the public accessors at the end of
``SyntheticMarket``, so REST and Vision agree.

What stays out: which Vision files exist and what they are called (publication
rules, header rows, row disorder: ``vision_archive.py``), CSV/zip bytes
(``render.py``), the column type and its text (``columns.py``), the order book
built around its trades (``order_book.py``, drawing from ``noise``), REST answers
(``rest/``), streams (``ws/``), the market clock (``clock.py``), URL paths and
HTTP (``server.py``).
Nothing here reads the clock except ``today`` when the config leaves it unset, and
nothing touches the network.

Prices and quantities are held as exact integer units (ticks, lots); the typed
tables expose them as float64 (the double nearest the printed decimal), so a
table and the CSV text parsed back agree exactly.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa

from bml_assets.domain.minutes import DAY_MS, HOUR_MS, MINUTE_MS, MINUTES_PER_DAY
from bml_assets.domain.settings import SYMBOL_PATTERN
from bml_assets.domain.streams import METRICS_NEW_LABELS_FIRST_DAY, Stream
from bml_assets.replay.columns import CsvColumn, table_of

KLINE_STREAMS: tuple[Stream, ...] = (
    Stream.KLINES,
    Stream.MARK_PRICE_KLINES,
    Stream.INDEX_PRICE_KLINES,
    Stream.PREMIUM_INDEX_KLINES,
)
DAILY_STREAMS: tuple[Stream, ...] = (*KLINE_STREAMS, Stream.AGG_TRADES, Stream.BOOK_TICKER, Stream.METRICS)

DEFAULT_LISTING_DATE = date(2019, 9, 8)
# The universe when ``MarketConfig.symbols`` is unset: what the demo and the tests
# trade (plus any symbol given a listing date).
DEFAULT_SYMBOLS: tuple[str, ...] = ("BTCUSDT", "ETHUSDT")

KLINE_COLUMNS: tuple[str, ...] = (
    "open_time",
    "open",
    "high",
    "low",
    "close",
    "volume",
    "close_time",
    "quote_volume",
    "count",
    "taker_buy_volume",
    "taker_buy_quote_volume",
    "ignore",
)
AGG_TRADE_COLUMNS: tuple[str, ...] = (
    "agg_trade_id",
    "price",
    "quantity",
    "first_trade_id",
    "last_trade_id",
    "transact_time",
    "is_buyer_maker",
)
BOOK_TICKER_COLUMNS: tuple[str, ...] = (
    "update_id",
    "best_bid_price",
    "best_bid_qty",
    "best_ask_price",
    "best_ask_qty",
    "transaction_time",
    "event_time",
)
METRICS_COLUMNS: tuple[str, ...] = (
    "create_time",
    "symbol",
    "sum_open_interest",
    "sum_open_interest_value",
    "count_toptrader_long_short_ratio",
    "sum_toptrader_long_short_ratio",
    "count_long_short_ratio",
    "sum_taker_long_short_vol_ratio",
)
FUNDING_COLUMNS: tuple[str, ...] = ("calc_time", "funding_interval_hours", "last_funding_rate")

FUNDING_INTERVAL_HOURS = 8
_EPOCH = date(1970, 1, 1)

# Reference prices of well-known base assets; other symbols get a hash-based one.
_KNOWN_BASE_PRICES: dict[str, float] = {
    "BTC": 60_000.0,
    "ETH": 3_000.0,
    "BNB": 550.0,
    "SOL": 150.0,
    "XRP": 0.6,
    "DOGE": 0.15,
}
_QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "USD")

# aggTrade sizes: notional is log-normal around this median, so both the whale
# (≥ 100 000) and the retail (≤ 1 000) bucket get a few percent of the trades.
_NOTIONAL_MEDIAN = 1_500.0
_NOTIONAL_SIGMA = 2.0
_NOTIONAL_MAX = 5_000_000.0
_DAILY_VOLATILITY = 0.03
# Share of aggTrades covering 1, 2, 3, 4, 5 individual trades (percent). A fixed
# multiset per day keeps the day's trade-id count known without generating the
# previous days, so trade ids run on across days.
_TRADES_PER_AGG_PERCENT = (50, 25, 12, 8, 5)
_EMPTY_MINUTE_SHARE = 0.03
_SAME_MS_SHARE = 0.25
_BOUNDARY_NOTIONALS = (100_000, 1_000)  # powers of ten

# Stream codes in the per-day random seeds; changing one changes that stream's data.
_SEED_CODES: dict[str, int] = {
    "trades": 1,
    "mark": 2,
    "index": 3,
    "premium": 4,
    "book": 5,
    "shuffle": 6,
}

_MASK64 = (1 << 64) - 1


def _stable_key(text: str) -> int:
    # Python's hash() is salted per process; a digest is stable everywhere.
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _splitmix(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _uniform(keys: tuple[int, ...], values: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) numbers that depend only on ``keys`` and each element of
    ``values`` (e.g. an instant): order- and batch-independent, unlike a RNG stream."""
    h = np.asarray(values, dtype=np.int64).astype(np.uint64)
    for k in keys:
        h = _splitmix(h ^ np.uint64(k & _MASK64))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def day_ms(day: date) -> int:
    """Milliseconds since the epoch at 00:00 UTC of ``day``."""
    return (day - _EPOCH).days * DAY_MS


@dataclass(frozen=True)
class Instrument:
    """How a symbol is quoted: a reference price and the tick/lot grids."""

    symbol: str
    base_price: float
    price_decimals: int  # tick = 10**-price_decimals
    qty_decimals: int  # lot = 10**-qty_decimals

    @classmethod
    def of(cls, symbol: str) -> Instrument:
        base_asset = symbol
        for quote in _QUOTE_ASSETS:
            if symbol.endswith(quote) and len(symbol) > len(quote):
                base_asset = symbol[: -len(quote)]
                break
        price = _KNOWN_BASE_PRICES.get(base_asset)
        if price is None:
            u = _stable_key("base-price:" + symbol) / 2**64
            price = float(f"{10 ** (-2 + 5 * u):.4g}")  # 0.01 … 1000, log-uniform
        magnitude = math.floor(math.log10(price))
        # Five to six significant digits on the tick grid: 60 000 → 0.1, 3 000 → 0.01.
        price_decimals = min(8, max(1, 5 - magnitude))
        qty_decimals = 3 if price >= 100 else 2 if price >= 10 else 1 if price >= 1 else 0
        return cls(symbol, price, price_decimals, qty_decimals)


def _utc_today() -> date:
    return datetime.now(UTC).date()


@dataclass(frozen=True)
class MarketConfig:
    """What the synthetic market looks like; every field is part of its identity."""

    seed: int = 7
    trades_per_day: int = 6000
    listing_dates: Mapping[str, date] = field(default_factory=dict)
    # (symbol, day) → ((first minute of day, number of minutes), ...): no klines of
    # any kind, no trades, no book snapshots in those minutes.
    downtime: Mapping[tuple[str, date], tuple[tuple[int, int], ...]] = field(default_factory=dict)
    book_snapshots_per_minute: int = 3
    # Daily files dated ≥ today and months not ended by today are not published;
    # None means the real UTC today, read at each request.
    today: date | None = None
    # Metrics files dated from this day on use the new label convention (SPEC §4);
    # movable so a test can compare both conventions on the same day.
    metrics_new_labels_from: date = METRICS_NEW_LABELS_FIRST_DAY
    # Write files with some rows out of order and a few exact duplicates, as Vision does.
    shuffle_and_duplicate: bool = False
    # The exchange's symbol universe: what exchangeInfo lists, what Vision publishes
    # files for (404 for any other symbol) and what REST answers (-1121 Invalid
    # symbol for any other). None: DEFAULT_SYMBOLS plus the ``listing_dates`` keys.
    symbols: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.trades_per_day < 10:
            raise ValueError(f"trades_per_day={self.trades_per_day} must be at least 10")
        if self.book_snapshots_per_minute < 0:
            raise ValueError("book_snapshots_per_minute must not be negative")
        for symbol in self.listing_dates:
            _check_symbol(symbol)
        if self.symbols is not None:
            if isinstance(self.symbols, str):
                raise ValueError("symbols must be a sequence of symbols, not one string")
            object.__setattr__(self, "symbols", tuple(_check_symbol(s) for s in self.symbols))
            # A listing date for a symbol outside the universe would never be seen.
            unlisted = sorted(set(self.listing_dates) - set(self.symbols))
            if unlisted:
                raise ValueError(f"listing_dates names symbols missing from symbols: {', '.join(unlisted)}")


def _check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected 2-20 characters of A-Z and 0-9")
    return symbol


@dataclass(frozen=True)
class _Trades:
    """One symbol-day of aggTrades in exact units, sorted by (transact_time, id)."""

    agg_trade_id: np.ndarray
    price: np.ndarray  # ticks
    quantity: np.ndarray  # lots
    first_trade_id: np.ndarray
    last_trade_id: np.ndarray
    transact_time: np.ndarray
    is_buyer_maker: np.ndarray
    open_ticks: int  # the previous day's last trade price: the "previous close" at 00:00


@dataclass(frozen=True)
class _Klines:
    """One symbol-day of 1m trade klines in exact units, one row per live minute."""

    minute: np.ndarray  # minute of day
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    volume: np.ndarray  # lots
    quote_volume: np.ndarray  # ticks × lots
    count: np.ndarray
    taker_buy_volume: np.ndarray
    taker_buy_quote_volume: np.ndarray


class SyntheticMarket:
    """The synthetic market: data for any valid symbol and day."""

    # Generated days kept in memory: the klines, book and aggTrades of one day share them.
    _TRADE_CACHE_DAYS = 2

    def __init__(self, config: MarketConfig | None = None) -> None:
        self.config = config or MarketConfig()
        self._trade_cache: OrderedDict[tuple[str, date], _Trades] = OrderedDict()
        # One generation at a time: a second request for the same 7M-trade day
        # waits for the first instead of generating it again.
        self._generate_lock = threading.Lock()

    # --- identity and the universe ----------------------------------------

    def today(self) -> date:
        return self.config.today or _utc_today()

    def universe(self) -> tuple[str, ...]:
        """The symbols the exchange has (exchangeInfo): ``config.symbols``, else
        ``DEFAULT_SYMBOLS`` plus the ``listing_dates`` keys, sorted."""
        if self.config.symbols is not None:
            return self.config.symbols
        return tuple(sorted({*self.config.listing_dates, *DEFAULT_SYMBOLS}))

    def is_known_symbol(self, symbol: str) -> bool:
        """Whether ``symbol`` is in the universe: Vision publishes files and REST
        answers only for these (the data accessors below serve any valid name)."""
        return isinstance(symbol, str) and symbol in self.universe()

    def listing_date(self, symbol: str) -> date:
        return self.config.listing_dates.get(_check_symbol(symbol), DEFAULT_LISTING_DATE)

    def instrument(self, symbol: str) -> Instrument:
        return Instrument.of(_check_symbol(symbol))

    def is_trading(self, symbol: str, day: date) -> bool:
        return day >= self.listing_date(symbol)

    # --- randomness ----------------------------------------------------------

    def _rng(self, symbol: str, day: date, stream: str, extra: int = 0) -> np.random.Generator:
        seq = np.random.SeedSequence(
            [self.config.seed & _MASK64, _stable_key(symbol), day.toordinal(), _SEED_CODES[stream], extra]
        )
        return np.random.default_rng(seq)

    def _keys(self, symbol: str, purpose: str) -> tuple[int, ...]:
        return (self.config.seed, _stable_key(symbol), _stable_key(purpose))

    def noise(self, symbol: str, purpose: str, values: np.ndarray) -> np.ndarray:
        """Uniform [0, 1) numbers, one per integer of ``values`` (an instant, a slot,
        a price…), depending only on (seed, symbol, purpose, value): what the models
        built on the market (the order book, liquidations) draw from, so they are
        deterministic per seed and independent of the order they are asked in."""
        return _uniform(self._keys(_check_symbol(symbol), purpose), values)

    def file_rng(self, symbol: str, period: date, stream: Stream) -> np.random.Generator:
        """The generator a Vision file's row disorder draws from (``vision_archive.py``):
        a pure function of (seed, symbol, period, stream)."""
        return self._rng(symbol, period, "shuffle", extra=_stable_key(stream.value))

    # --- prices through time ---------------------------------------------------

    def _log_anchor(self, symbol: str, days: np.ndarray) -> np.ndarray:
        """ln(price) at 00:00 UTC of each epoch day: a smooth cycle plus ±1 % daily
        noise; each day's trades run from its anchor to the next day's."""
        inst = self.instrument(symbol)
        phases = _uniform(self._keys(symbol, "anchor-phase"), np.arange(3)) * 2 * np.pi
        k = days.astype(np.float64)
        wave = (
            0.25 * np.sin(2 * np.pi * k / 365.25 + phases[0])
            + 0.08 * np.sin(2 * np.pi * k / 29.5 + phases[1])
            + 0.03 * np.sin(2 * np.pi * k / 6.1 + phases[2])
        )
        noise = 0.02 * (_uniform(self._keys(symbol, "anchor-noise"), days) - 0.5)
        return math.log(inst.base_price) + wave + noise

    def _anchor_ticks(self, symbol: str, day: date) -> int:
        inst = self.instrument(symbol)
        epoch_day = np.array([(day - _EPOCH).days])
        return max(1, round(math.exp(float(self._log_anchor(symbol, epoch_day)[0])) * 10**inst.price_decimals))

    def reference_price(self, symbol: str, instants_ms: np.ndarray) -> np.ndarray:
        """A smooth price at any instant (log-linear between day anchors); metrics
        use it so their values depend on the instant alone."""
        t = np.asarray(instants_ms, dtype=np.int64)
        d = t // DAY_MS
        frac = (t - d * DAY_MS) / DAY_MS
        a0, a1 = self._log_anchor(symbol, d), self._log_anchor(symbol, d + 1)
        return np.exp(a0 + frac * (a1 - a0))

    # --- aggTrades ---------------------------------------------------------------

    def live_minutes(self, symbol: str, day: date) -> np.ndarray:
        """Mask of the 1440 minutes of ``day`` in which the exchange produces data for
        ``symbol``: listed by then and not in downtime."""
        if not self.is_trading(_check_symbol(symbol), day):
            return np.zeros(MINUTES_PER_DAY, dtype=bool)
        return self._live_minutes(symbol, day)

    def _live_minutes(self, symbol: str, day: date) -> np.ndarray:
        """Mask of the minutes of ``day`` that are not exchange downtime."""
        live = np.ones(MINUTES_PER_DAY, dtype=bool)
        for first, count in self.config.downtime.get((symbol, day), ()):
            live[max(0, first) : max(0, min(MINUTES_PER_DAY, first + count))] = False
        return live

    def _trades(self, symbol: str, day: date) -> _Trades:
        key = (symbol, day)
        with self._generate_lock:
            cached = self._trade_cache.get(key)
            if cached is not None:
                self._trade_cache.move_to_end(key)
                return cached
            trades = self._generate_trades(symbol, day)
            self._trade_cache[key] = trades
            while len(self._trade_cache) > self._TRADE_CACHE_DAYS:
                self._trade_cache.popitem(last=False)
            return trades

    def _generate_trades(self, symbol: str, day: date) -> _Trades:
        inst = self.instrument(symbol)
        n = self.config.trades_per_day
        day_index = (day - self.listing_date(symbol)).days
        open_ticks = self._anchor_ticks(symbol, day)
        if day_index < 0:
            empty = np.zeros(0, dtype=np.int64)
            return _Trades(empty, empty, empty, empty, empty, empty, np.zeros(0, dtype=bool), open_ticks)
        rng = self._rng(symbol, day, "trades")
        live = self._live_minutes(symbol, day)
        per_agg = np.array(_TRADES_PER_AGG_PERCENT, dtype=np.int64)
        group_sizes = n * per_agg // 100
        group_sizes[0] += n - group_sizes.sum()
        trades_per_day = int((group_sizes * np.arange(1, 6)).sum())
        if not live.any():
            empty = np.zeros(0, dtype=np.int64)
            return _Trades(empty, empty, empty, empty, empty, empty, np.zeros(0, dtype=bool), open_ticks)

        # When: a busier and a quieter half of the day, some minutes forced empty.
        minute_of_day = np.arange(MINUTES_PER_DAY)
        profile = 1.0 + 0.25 * np.sin(2 * np.pi * (minute_of_day - 480) / MINUTES_PER_DAY)
        weights = rng.gamma(8.0, 1.0, MINUTES_PER_DAY) * profile
        # Aim at ~3 % empty minutes: a thin day already leaves some minutes empty by
        # chance (gamma-Poisson zero probability), so force only the rest.
        natural_empty = (1 + n / MINUTES_PER_DAY / 8.0) ** -8.0
        forced_share = max(0.005, _EMPTY_MINUTE_SHARE - natural_empty)
        weights[~live | (rng.random(MINUTES_PER_DAY) < forced_share)] = 0.0
        if weights.sum() == 0:
            weights = live.astype(np.float64)
        per_minute = rng.multinomial(n, weights / weights.sum())
        offset = np.repeat(minute_of_day.astype(np.int64) * MINUTE_MS, per_minute)
        offset += rng.integers(0, MINUTE_MS, n)
        offset.sort()
        # Bursts: an aggTrade often shares the millisecond of the one before it.
        same_ms = rng.random(n) < _SAME_MS_SHARE
        same_ms[0] = False
        same_ms[1:] &= offset[1:] // MINUTE_MS == offset[:-1] // MINUTE_MS
        keep_from = np.maximum.accumulate(np.where(same_ms, 0, np.arange(n)))
        transact_time = day_ms(day) + offset[keep_from]

        # Price: a random walk in log space, bridged from this day's anchor to the
        # next day's, so day d's last trade is exactly where day d+1 opens.
        close_ticks = self._anchor_ticks(symbol, day + timedelta(days=1))
        steps = rng.normal(0.0, _DAILY_VOLATILITY / math.sqrt(n), n)
        steps[0] = 0.0
        walk = np.cumsum(steps)
        target = math.log(close_ticks / open_ticks)
        walk -= np.linspace(0.0, 1.0, n) * (walk[-1] - target)
        price = np.maximum(1, np.rint(open_ticks * np.exp(walk))).astype(np.int64)
        price[0], price[-1] = open_ticks, close_ticks

        # Size: log-normal notional, rounded to the lot grid (at least one lot).
        notional = np.minimum(np.exp(rng.normal(math.log(_NOTIONAL_MEDIAN), _NOTIONAL_SIGMA, n)), _NOTIONAL_MAX)
        unit_value = 10.0 ** -(inst.price_decimals + inst.qty_decimals)  # value of one tick × one lot
        quantity = np.maximum(1, np.rint(notional / (price * unit_value))).astype(np.int64)
        self._place_boundary_trades(rng, inst, price, quantity)

        # Side: mostly the direction of the move (takers push the price), some noise.
        move = np.diff(price, prepend=price[0])
        is_buyer_maker = np.where(move != 0, move < 0, rng.random(n) < 0.5)
        is_buyer_maker ^= rng.random(n) < 0.15

        # Individual trades per aggTrade: a shuffled fixed multiset (see above).
        covered = rng.permutation(np.repeat(np.arange(1, 6, dtype=np.int64), group_sizes))
        first_trade_id = day_index * trades_per_day + 1 + np.cumsum(covered) - covered
        agg_trade_id = day_index * n + 1 + np.arange(n, dtype=np.int64)
        return _Trades(
            agg_trade_id=agg_trade_id,
            price=price,
            quantity=quantity,
            first_trade_id=first_trade_id,
            last_trade_id=first_trade_id + covered - 1,
            transact_time=transact_time,
            is_buyer_maker=is_buyer_maker,
            open_ticks=open_ticks,
        )

    @staticmethod
    def _place_boundary_trades(
        rng: np.random.Generator, inst: Instrument, price: np.ndarray, quantity: np.ndarray
    ) -> None:
        """Give a few trades a notional of exactly 100 000 / 1 000 where the day's
        prices pass a tick price that divides it exactly (price × quantity must be
        exact on both grids, so only prices of the form 2^a·5^b ticks qualify)."""
        n = len(price)
        if n < 3:
            return
        low, high = int(price.min()), int(price.max())
        for notional in _BOUNDARY_NOTIONALS:
            exponent = len(str(notional)) - 1 + inst.price_decimals + inst.qty_decimals
            target = 10**exponent  # notional in (tick × lot) units
            for a in range(exponent + 1):
                for b in range(exponent + 1):
                    ticks = 2**a * 5**b
                    if not low <= ticks <= high:
                        continue
                    near = np.flatnonzero(np.abs(price[1:-1] - ticks) <= max(1, ticks // 5000)) + 1
                    if near.size == 0:
                        continue
                    chosen = rng.choice(near, size=min(2, near.size), replace=False)
                    price[chosen] = ticks
                    quantity[chosen] = target // ticks

    def agg_trades(self, symbol: str, day: date) -> pa.Table:
        """The day's aggTrades, sorted by (transact_time, agg_trade_id); empty before listing."""
        return table_of(self._agg_trade_columns(symbol, day))

    def _agg_trade_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        inst = self.instrument(symbol)
        t = self._trades(symbol, day)
        return (
            CsvColumn("agg_trade_id", t.agg_trade_id),
            CsvColumn("price", t.price, inst.price_decimals),
            CsvColumn("quantity", t.quantity, inst.qty_decimals),
            CsvColumn("first_trade_id", t.first_trade_id),
            CsvColumn("last_trade_id", t.last_trade_id),
            CsvColumn("transact_time", t.transact_time),
            CsvColumn("is_buyer_maker", t.is_buyer_maker),
        )

    # --- klines ------------------------------------------------------------------

    def _trade_klines(self, symbol: str, day: date) -> _Klines:
        t = self._trades(symbol, day)
        live_minutes = (
            np.flatnonzero(self._live_minutes(symbol, day)) if self.is_trading(symbol, day) else np.zeros(0, int)
        )
        m = len(live_minutes)
        minute = (t.transact_time - day_ms(day)) // MINUTE_MS
        traded, starts = np.unique(minute, return_index=True)
        ends = np.append(starts[1:], len(minute)) - 1
        quote = t.price * t.quantity
        taker_buy = ~t.is_buyer_maker

        def per_minute(values: np.ndarray) -> np.ndarray:
            out = np.zeros(m, dtype=np.int64)
            if len(starts):
                out[np.searchsorted(live_minutes, traded)] = np.add.reduceat(values, starts)
            return out

        # Integer sums are exact; make sure they cannot wrap (sane configs stay
        # around 1e16 against 9.2e18).
        if len(starts) and np.add.reduceat(quote.astype(np.float64), starts).max() >= 2**62:
            raise OverflowError(f"{symbol} {day}: quote volume does not fit in int64 units")

        # Minutes without trades repeat the previous close; the day opens at the
        # previous day's last trade price.
        position = np.searchsorted(live_minutes, traded)
        previous_close = np.full(m, t.open_ticks, dtype=np.int64)
        opens, highs, lows, closes = (previous_close.copy() for _ in range(4))
        if len(starts):
            last_traded = np.full(m, -1)
            last_traded[position] = np.arange(len(traded))
            last_traded = np.maximum.accumulate(last_traded)
            closes = np.where(last_traded >= 0, t.price[ends[np.maximum(last_traded, 0)]], t.open_ticks)
            opens, highs, lows = closes.copy(), closes.copy(), closes.copy()
            opens[position] = t.price[starts]
            highs[position] = np.maximum.reduceat(t.price, starts)
            lows[position] = np.minimum.reduceat(t.price, starts)
        return _Klines(
            minute=live_minutes,
            open=opens,
            high=highs,
            low=lows,
            close=closes,
            volume=per_minute(t.quantity),
            quote_volume=per_minute(quote),
            count=per_minute(t.last_trade_id - t.first_trade_id + 1),
            taker_buy_volume=per_minute(t.quantity * taker_buy),
            taker_buy_quote_volume=per_minute(quote * taker_buy),
        )

    def klines(self, symbol: str, day: date, kind: Stream | str = Stream.KLINES) -> pa.Table:
        """1m klines of ``kind`` (klines, markPriceKlines, indexPriceKlines,
        premiumIndexKlines), one row per minute outside downtime; empty before listing."""
        return table_of(self._kline_columns(symbol, day, Stream(kind)))

    def _kline_columns(self, symbol: str, day: date, kind: Stream) -> tuple[CsvColumn, ...]:
        if kind not in KLINE_STREAMS:
            raise ValueError(f"{kind} is not a kline stream")
        inst = self.instrument(symbol)
        k = self._trade_klines(symbol, day)
        open_time = day_ms(day) + k.minute.astype(np.int64) * MINUTE_MS
        zero = np.zeros(len(open_time), dtype=np.int64)
        if kind is Stream.KLINES:
            pd, qd = inst.price_decimals, inst.qty_decimals
            ohlc = (k.open, k.high, k.low, k.close)
            volumes = (
                CsvColumn("volume", k.volume, qd),
                CsvColumn("quote_volume", k.quote_volume, pd + qd),
                CsvColumn("count", k.count),
                CsvColumn("taker_buy_volume", k.taker_buy_volume, qd),
                CsvColumn("taker_buy_quote_volume", k.taker_buy_quote_volume, pd + qd),
            )
        else:
            ohlc, pd = self._derived_ohlc(symbol, day, kind, k)
            volumes = (
                CsvColumn("volume", zero, 0),
                CsvColumn("quote_volume", zero, 0),
                CsvColumn("count", zero),
                CsvColumn("taker_buy_volume", zero, 0),
                CsvColumn("taker_buy_quote_volume", zero, 0),
            )
        o, h, lo, c = (CsvColumn(name, v, pd) for name, v in zip(("open", "high", "low", "close"), ohlc, strict=True))
        return (
            CsvColumn("open_time", open_time),
            o,
            h,
            lo,
            c,
            volumes[0],
            CsvColumn("close_time", open_time + MINUTE_MS - 1),
            *volumes[1:],
            CsvColumn("ignore", zero),
        )

    def _derived_ohlc(
        self, symbol: str, day: date, kind: Stream, k: _Klines
    ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], int]:
        """Mark, index or premium OHLC in units of their own decimals.

        Closes: index = trade close × (1 + d), |d| ≤ 0.15 %; mark = index × (1 + p),
        |p| ≤ 0.1 %; so both stay within 0.3 % of the trade close. Premium ≈
        (mark − index) / index. Each open is the previous minute's close."""
        inst = self.instrument(symbol)
        m = len(k.minute)
        trade_close = k.close / 10.0**inst.price_decimals
        rng_index = self._rng(symbol, day, "index")
        rng_mark = self._rng(symbol, day, "mark")
        drift = np.clip(
            0.0008 * np.sin(2 * np.pi * k.minute / 377.0 + rng_index.uniform(0, 2 * np.pi))
            + rng_index.normal(0.0, 0.0003, m),
            -0.0015,
            0.0015,
        )
        premium = np.clip(rng_mark.normal(0.0001, 0.0003, m), -0.001, 0.001)
        index_close = trade_close * (1 + drift)
        if kind is Stream.PREMIUM_INDEX_KLINES:
            decimals = 8
            rng = self._rng(symbol, day, "premium")
            value = np.clip(premium + rng.normal(0.0, 0.00002, m), -0.001, 0.001)
            spread_units = rng.integers(0, 3000, (2, m))
        else:
            decimals = inst.price_decimals + 1
            value = index_close if kind is Stream.INDEX_PRICE_KLINES else index_close * (1 + premium)
            rng = rng_index if kind is Stream.INDEX_PRICE_KLINES else rng_mark
            spread_units = np.rint(np.abs(rng.normal(0.0, 0.0001, (2, m))) * value * 10**decimals).astype(np.int64)
        close = np.rint(value * 10**decimals).astype(np.int64)
        opens = np.empty_like(close)
        if m:
            opens[1:] = close[:-1]
            # After downtime (or at 00:00) there is no previous bar: start at this close.
            opens[0] = close[0]
            gap = np.flatnonzero(np.diff(k.minute) != 1) + 1
            opens[gap] = close[gap]
        high = np.maximum(opens, close) + spread_units[0]
        low = np.minimum(opens, close) - spread_units[1]
        return (opens, high, low, close), decimals

    # --- bookTicker --------------------------------------------------------------

    def book_ticker(self, symbol: str, day: date) -> pa.Table:
        """The day's top-of-book snapshots around the trade price (generated for any
        day; Vision only publishes them up to 2024-03-30)."""
        return table_of(self._book_ticker_columns(symbol, day))

    def _book_ticker_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        inst = self.instrument(symbol)
        t = self._trades(symbol, day)
        rng = self._rng(symbol, day, "book")
        live = self._live_minutes(symbol, day) if self.is_trading(symbol, day) else np.zeros(MINUTES_PER_DAY, bool)
        per_minute = rng.poisson(self.config.book_snapshots_per_minute, MINUTES_PER_DAY) * live
        n = int(per_minute.sum())
        transaction_time = day_ms(day) + np.repeat(np.arange(MINUTES_PER_DAY, dtype=np.int64) * MINUTE_MS, per_minute)
        transaction_time += rng.integers(0, MINUTE_MS, n)
        transaction_time.sort()
        # The book sits around the last trade price at or before the snapshot.
        last_trade = np.searchsorted(t.transact_time, transaction_time, side="right") - 1
        ref = np.where(last_trade >= 0, t.price[np.maximum(last_trade, 0)] if len(t.price) else 0, t.open_ticks)
        bid = np.maximum(1, ref - rng.integers(0, 2, n))
        ask = np.maximum(bid + 1, ref + rng.integers(0, 2, n))
        lot_value = 10.0**-inst.qty_decimals * ref / 10.0**inst.price_decimals
        bid_qty = np.maximum(1, np.rint(np.exp(rng.normal(math.log(40_000), 1.2, n)) / lot_value)).astype(np.int64)
        ask_qty = np.maximum(1, np.rint(np.exp(rng.normal(math.log(40_000), 1.2, n)) / lot_value)).astype(np.int64)
        # Now and then one side of the book is momentarily empty.
        empty_side = rng.random(n)
        bid_qty[empty_side < 0.004] = 0
        ask_qty[(empty_side >= 0.004) & (empty_side < 0.008)] = 0
        first_update = 1_000_000_000 + (day - _EPOCH).days * 10_000_000_000
        update_id = first_update + np.cumsum(rng.integers(1, 64, n))
        event_time = transaction_time + rng.integers(0, 4, n)
        pd, qd = inst.price_decimals, inst.qty_decimals
        return (
            CsvColumn("update_id", update_id.astype(np.int64)),
            CsvColumn("best_bid_price", bid.astype(np.int64), pd),
            CsvColumn("best_bid_qty", bid_qty, qd),
            CsvColumn("best_ask_price", ask.astype(np.int64), pd),
            CsvColumn("best_ask_qty", ask_qty, qd),
            CsvColumn("transaction_time", transaction_time),
            CsvColumn("event_time", event_time),
        )

    # --- metrics -------------------------------------------------------------------

    def metrics_snapshots(self, symbol: str, instants_ms: np.ndarray) -> dict[str, np.ndarray]:
        """The 5-minute metrics snapshot taken at each instant (ms), as exact units
        keyed by CSV column name; a pure function of (seed, symbol, instant)."""
        inst = self.instrument(symbol)
        t = np.asarray(instants_ms, dtype=np.int64)
        keys = self._keys(symbol, "metrics")
        phase = _uniform(keys, np.arange(8)) * 2 * np.pi
        noise = [_uniform((*keys, j), t) - 0.5 for j in range(6)]
        days = t / DAY_MS
        oi_usd = 10 ** (7 + 2.5 * (_stable_key("oi:" + symbol) / 2**64))
        if inst.base_price >= 10_000:
            oi_usd = 8e9
        contracts = (oi_usd / inst.base_price) * (
            1 + 0.15 * np.sin(2 * np.pi * days / 9.0 + phase[0]) + 0.05 * np.sin(2 * np.pi * days / 0.7 + phase[1])
        )
        contracts *= 1 + 0.003 * noise[0]
        oi = np.rint(contracts * 10**inst.qty_decimals).astype(np.int64)
        value = np.rint(oi / 10**inst.qty_decimals * self.reference_price(symbol, t) * 10**6).astype(np.int64)

        def ratio(j: int, center: float, swing: float, period_days: float) -> np.ndarray:
            x = center * np.exp(swing * np.sin(2 * np.pi * days / period_days + phase[2 + j]) + 0.04 * noise[1 + j])
            return np.rint(x * 10**6).astype(np.int64)

        return {
            "sum_open_interest": oi,
            "sum_open_interest_value": value,
            "count_toptrader_long_short_ratio": ratio(0, 1.3, 0.25, 5.0),
            "sum_toptrader_long_short_ratio": ratio(1, 1.1, 0.2, 3.3),
            "count_long_short_ratio": ratio(2, 1.6, 0.35, 6.7),
            "sum_taker_long_short_vol_ratio": ratio(3, 1.0, 0.3, 0.13),
        }

    def metrics(self, symbol: str, day: date) -> pa.Table:
        """The metrics file's rows for ``day`` with the file's label convention, plus
        a ``snapshot_time`` column (ms) saying when each row's snapshot was taken."""
        columns = self._metrics_columns(symbol, day)
        table = table_of(columns)
        return table.append_column("snapshot_time", pa.array(self._metrics_instants(day), pa.int64()))

    @staticmethod
    def _metrics_instants(day: date) -> np.ndarray:
        # A day's file always holds the snapshots of (D 00:05 … D+1 00:00); only the
        # labels differ between the conventions.
        return day_ms(day) + np.arange(1, 289, dtype=np.int64) * 5 * MINUTE_MS

    def _metrics_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        inst = self.instrument(symbol)
        instants = self._metrics_instants(day) if self.is_trading(symbol, day) else np.zeros(0, np.int64)
        # Old files label a row with its snapshot instant; new ones 5 minutes earlier.
        labels = instants - (5 * MINUTE_MS if day >= self.config.metrics_new_labels_from else 0)
        label_text = np.datetime_as_string(labels.astype("datetime64[ms]"), unit="s")
        label_text = np.char.replace(label_text.astype(str), "T", " ").astype(object)
        values = self.metrics_snapshots(symbol, instants)
        decimals = {
            "sum_open_interest": inst.qty_decimals,
            "sum_open_interest_value": 6,
        }
        return (
            CsvColumn("create_time", label_text),
            CsvColumn("symbol", np.array([symbol] * len(instants), dtype=object)),
            *(CsvColumn(name, values[name], decimals.get(name, 6)) for name in METRICS_COLUMNS[2:]),
        )

    # --- funding -------------------------------------------------------------------

    def funding(self, symbol: str, year: int, month: int) -> pa.Table:
        """Funding settlements of the month from the listing day on (8-hourly)."""
        return table_of(self._funding_columns(symbol, date(year, month, 1)))

    def _funding_columns(self, symbol: str, month: date) -> tuple[CsvColumn, ...]:
        start = max(month, self.listing_date(symbol))
        end = next_month(month)
        step = FUNDING_INTERVAL_HOURS * HOUR_MS
        instants = np.arange(day_ms(start), day_ms(end), step, dtype=np.int64)
        keys = self._keys(symbol, "funding")
        # calc_time lands 0–10 ms after the settlement instant, as on Vision.
        jitter = np.floor(_uniform((*keys, 0), instants) * 11).astype(np.int64)
        days = instants / DAY_MS
        phase = _uniform(keys, np.arange(2)) * 2 * np.pi
        rate = (
            0.0001
            + 0.00018 * np.sin(2 * np.pi * days / 11.0 + phase[0])
            + 0.0002 * (_uniform((*keys, 1), instants) - 0.5)
        )
        rate += 0.0001 * np.sin(2 * np.pi * days / 47.0 + phase[1])
        rate_units = np.rint(np.clip(rate, -0.0005, 0.0005) * 1e8).astype(np.int64)
        return (
            CsvColumn("calc_time", instants + jitter),
            CsvColumn("funding_interval_hours", np.full(len(instants), FUNDING_INTERVAL_HOURS, dtype=np.int64)),
            CsvColumn("last_funding_rate", rate_units, 8),
        )

    # --- exact columns for the Vision files and the REST API ------------------------
    # The same arrays the Vision files are rendered from (``vision_archive.py``) and
    # REST answers from (``rest/endpoints.py``), so the two agree to the last digit.
    # Shared with the caches: callers must not modify them.

    def trade_arrays(self, symbol: str, day: date) -> _Trades:
        """The day's aggTrades in exact units, sorted by (transact_time, id)."""
        return self._trades(_check_symbol(symbol), day)

    def agg_trade_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        """The aggTrades file's columns for the day, unshuffled."""
        return self._agg_trade_columns(_check_symbol(symbol), day)

    def kline_columns(self, symbol: str, day: date, kind: Stream | str = Stream.KLINES) -> tuple[CsvColumn, ...]:
        """The 12 kline columns of ``kind`` for the day, unshuffled (the Vision file's values)."""
        return self._kline_columns(_check_symbol(symbol), day, Stream(kind))

    def book_ticker_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        """The day's bookTicker columns, sorted by transaction_time."""
        return self._book_ticker_columns(_check_symbol(symbol), day)

    def metrics_day(self, symbol: str, day: date) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(snapshot instants in ms, values in exact units by column) of the day's
        metrics file: the snapshots of D 00:05 … D+1 00:00, none before listing."""
        _check_symbol(symbol)
        instants = self._metrics_instants(day) if self.is_trading(symbol, day) else np.zeros(0, np.int64)
        return instants, self.metrics_snapshots(symbol, instants)

    def metrics_columns(self, symbol: str, day: date) -> tuple[CsvColumn, ...]:
        """The metrics file's columns for the day, with the file's label convention."""
        return self._metrics_columns(_check_symbol(symbol), day)

    def funding_columns(self, symbol: str, month: date) -> tuple[CsvColumn, ...]:
        """The fundingRate file's columns for the month of ``month`` (calc_time,
        funding_interval_hours, last_funding_rate), from the listing day on."""
        return self._funding_columns(_check_symbol(symbol), month.replace(day=1))


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)
