"""The USD-M REST endpoints over the synthetic market, without sockets.

What belongs here: ``RestApi`` (a GET path and its query parameters → status,
headers and a JSON body, at the market clock's ``now``): exchangeInfo, time, ping,
the four kline families, aggTrades, depth, premiumIndex, openInterest, bookTicker,
fundingRate and the three ``/futures/data`` histories, their parameter checks
and Binance error codes, the per-day caches of the market's arrays, and the JSON
text of exact units.

What stays out: the market's truth (``market.py``; every number served here is
taken from the same exact-unit arrays the Vision files are rendered from, so a
closed minute on REST and on Vision agree to the digit), its order book
(``order_book.py``, which the WebSocket depth streams read too), the clock (``clock.py``),
request weights and rate limits (``limits.py``), admitting and logging a request
(``service.py``, ``log.py``), HTTP plumbing and fault switches (``server.py``).

Choices where the exchange is vague or the replay simplifies (SPEC §4 lists the
facts relied on):

* ``openInterest`` is the latest 5-minute metrics snapshot at or before ``now``
  (so it equals the last ``openInterestHist`` row and the Vision metrics value);
  its ``time`` is ``now``.
* ``/futures/data/*`` only serve snapshots taken in ``[now − 30 days, now]``; a
  window older than that is an empty list (200), not an error.
* ``premiumIndex``: ``markPrice``/``indexPrice`` are the close so far of the
  current minute's mark/index klines (the last live minute's close during
  downtime); ``estimatedSettlePrice`` = the index price; ``lastFundingRate`` is
  the predicted rate: it moves from the last settled rate towards the next one
  over the interval, plus a per-minute wobble, so it differs from both.
* The minute containing ``now`` is served incomplete: trade klines are
  aggregated from the trades with ``transact_time ≤ now``; mark/index/premium
  klines move from the open to the final close, high and low in proportion to
  the elapsed part of the minute (they reach the Vision values at the close).
* ``fundingRate.markPrice`` is the market's smooth reference price at the
  settlement instant (not the mark kline, which would need a whole day of trades
  per settlement); ``fundingTime`` is exactly Vision's ``calc_time``.
* ``aggTrades``: ``fromId`` may not be combined with ``startTime``/``endTime``
  (-1128); ``startTime`` alone means ``[startTime, startTime + 1 h)``,
  ``endTime`` alone ``(endTime − 1 h, endTime]``; both must satisfy
  ``endTime − startTime < 1 h`` (else -1127).
* ``depth``: the synthetic book at ``now`` (``order_book.py`` says how its
  ``lastUpdateId`` sits in the stream's ids), or, for a symbol a recording is
  replayed for, what the recording's replay answers (``depth_override``, set by
  the server). ``limit`` is one of 5, 10, 20, 50, 100, 500, 1000 (default 500),
  anything else -1130; ``E`` is ``now``, ``T`` the last update's transaction time.
* ``symbol`` is mandatory on every per-symbol endpoint (the exchange's
  all-symbols forms of premiumIndex, bookTicker and fundingRate are not served).
  A symbol is unknown (-1121, HTTP 400 ``{"code":-1121,"msg":"Invalid symbol."}``)
  when it is not in the market's universe (``SyntheticMarket.universe()``) or
  not listed yet at ``now``; exchangeInfo lists only symbols listed by ``now``.
* Error messages that quote the request (an unknown path) are JSON with ``<``,
  ``>`` and ``&`` written as ``\u003c``-style escapes, so no client that sniffs
  a body as HTML finds markup in it.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from http import HTTPStatus
from typing import Any

import numpy as np

from bml_assets.domain.minutes import DAY_MS, HOUR_MS, MINUTE_MS
from bml_assets.domain.streams import Stream
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.columns import CsvColumn, fmt_units, format_column
from bml_assets.replay.market import (
    FUNDING_INTERVAL_HOURS,
    SyntheticMarket,
    day_ms,
    next_month,
)
from bml_assets.replay.order_book import OrderBookModel
from bml_assets.replay.rest.limits import DEFAULT_WEIGHT_LIMIT
from bml_assets.replay.rest.paths import FUNDING_RATE_PATH, KLINE_PATHS
from bml_assets.replay.rest.responses import BinanceError, RestResponse, invalid_symbol

FIVE_MIN_MS = 5 * MINUTE_MS
HIST_DAYS = 30
FUNDING_INTERVAL_MS = FUNDING_INTERVAL_HOURS * HOUR_MS
# A perpetual's deliveryDate in exchangeInfo (2100-12-25).
_PERPETUAL_DELIVERY_MS = 4133404800000
_INTEREST_RATE = "0.00010000"
DEPTH_PATH = "/fapi/v1/depth"
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)

# (symbol, now ms, limit) → the depth answer of a symbol served from elsewhere (a
# replayed recording), or None to answer from the synthetic book.
DepthOverride = Callable[[str, int, int], dict[str, Any] | None]

_HIST_PATHS: dict[str, str | None] = {
    "/futures/data/openInterestHist": None,
    "/futures/data/topLongShortAccountRatio": "count_toptrader_long_short_ratio",
    "/futures/data/globalLongShortAccountRatio": "count_long_short_ratio",
}


def _mandatory(name: str) -> BinanceError:
    return BinanceError(
        HTTPStatus.BAD_REQUEST, -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
    )


def _bad_param() -> BinanceError:
    return BinanceError(HTTPStatus.BAD_REQUEST, -1130, "Invalid data sent for a parameter.")


# --- parameters ---------------------------------------------------------------------------

_INT_RE = re.compile(r"-?\d{1,20}")


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    if not _INT_RE.fullmatch(raw):
        raise BinanceError(
            HTTPStatus.BAD_REQUEST,
            -1100,
            f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
        )
    return int(raw)


def _limit(params: Mapping[str, str], default: int, maximum: int) -> int:
    limit = _int_param(params, "limit")
    if limit is None:
        return default
    if not 1 <= limit <= maximum:
        raise _bad_param()
    return limit


def _time_range(params: Mapping[str, str]) -> tuple[int | None, int | None]:
    start, end = _int_param(params, "startTime"), _int_param(params, "endTime")
    if start is not None and end is not None and start > end:
        raise BinanceError(HTTPStatus.BAD_REQUEST, -1023, "Start time is greater than end time.")
    return start, end


# --- dates and JSON -------------------------------------------------------------------


def _day_of(ms: int) -> date:
    return date(1970, 1, 1) + timedelta(days=ms // DAY_MS)


def _month_of(ms: int) -> date:
    return _day_of(ms).replace(day=1)


def _previous_month(month: date) -> date:
    return (month - timedelta(days=1)).replace(day=1)


def _json(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --- caches ----------------------------------------------------------------------------------


class _Lru:
    """A small thread-safe LRU map; values are computed outside the lock (they are
    deterministic, so a rare double computation is harmless)."""

    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._lock = threading.Lock()
        self._items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any, compute: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass(frozen=True)
class _KlineDay:
    """One symbol-day of one kline kind: open times, the rows as JSON text (the
    Vision values) and the exact-unit columns (for the incomplete minute)."""

    open_time: np.ndarray
    rows: list[str]
    columns: tuple[CsvColumn, ...]

    def units(self, name: str, i: int) -> int:
        column = next(c for c in self.columns if c.name == name)
        return int(column.values[i])

    def decimals(self, name: str) -> int:
        column = next(c for c in self.columns if c.name == name)
        return column.decimals or 0


def _kline_rows_json(columns: tuple[CsvColumn, ...]) -> list[str]:
    text = [format_column(c).to_pylist() for c in columns]
    ot, o, h, lo, c, v, ct, qv, n, tbv, tbqv = text[:11]
    return [
        f'[{a},"{b}","{d}","{e}","{f}","{g}",{i},"{j}",{k},"{m}","{p}","0"]'
        for a, b, d, e, f, g, i, j, k, m, p in zip(ot, o, h, lo, c, v, ct, qv, n, tbv, tbqv, strict=True)
    ]


# --- the API ------------------------------------------------------------------------------------


class RestApi:
    """Binance USD-M REST answers for ``market`` at ``clock``'s now (real time when
    no clock). Pure request → response logic: no rate limits, no faults."""

    def __init__(
        self,
        market: SyntheticMarket,
        clock: MarketClock | None = None,
        *,
        weight_limit: int = DEFAULT_WEIGHT_LIMIT,
        trade_cache_days: int = 8,
        order_book: OrderBookModel | None = None,
        depth_override: DepthOverride | None = None,
    ) -> None:
        self.market = market
        self.clock = clock
        self.weight_limit = weight_limit
        self.order_book = order_book if order_book is not None else OrderBookModel(market)
        self.depth_override = depth_override
        self._trades = _Lru(trade_cache_days)
        self._kline_days = _Lru(64)
        self._book_days = _Lru(8)
        self._metrics_days = _Lru(64)
        self._funding_months = _Lru(64)
        self._routes: dict[str, Callable[[Mapping[str, str], int], Any]] = {
            "/fapi/v1/ping": lambda p, now: {},
            "/fapi/v1/time": lambda p, now: {"serverTime": now},
            "/fapi/v1/exchangeInfo": self._exchange_info,
            "/fapi/v1/aggTrades": self._agg_trades,
            DEPTH_PATH: self._depth,
            "/fapi/v1/premiumIndex": self._premium_index,
            "/fapi/v1/openInterest": self._open_interest,
            "/fapi/v1/ticker/bookTicker": self._book_ticker,
            FUNDING_RATE_PATH: self._funding_rate,
        }

    def now_ms(self) -> int:
        return self.clock.now_ms() if self.clock is not None else time.time_ns() // 1_000_000

    def handle(self, path: str, params: Mapping[str, str], now_ms: int | None = None) -> RestResponse:
        """Answer one GET; exchange errors become their 4xx JSON bodies."""
        now = self.now_ms() if now_ms is None else now_ms
        try:
            if path in KLINE_PATHS:
                payload: Any = self._klines(KLINE_PATHS[path], params, now)
            elif path in _HIST_PATHS:
                payload = self._hist(path, params, now)
            elif path in self._routes:
                payload = self._routes[path](params, now)
            else:
                raise BinanceError(HTTPStatus.NOT_FOUND, -5000, f"Path {path}, Method GET is invalid")
        except BinanceError as exc:
            return exc.response()
        body = payload if isinstance(payload, bytes) else _json(payload)
        return RestResponse(HTTPStatus.OK, body)

    # --- symbols ------------------------------------------------------------------------------

    def _listing_ms(self, symbol: str) -> int:
        return day_ms(self.market.listing_date(symbol))

    def _symbol(self, params: Mapping[str, str], now: int, name: str = "symbol") -> str:
        symbol = params.get(name)
        if not symbol:
            raise _mandatory(name)
        if not self.market.is_known_symbol(symbol) or self._listing_ms(symbol) > now:
            raise invalid_symbol()
        return symbol

    # --- cached day arrays ----------------------------------------------------------------------

    def _trade_day(self, symbol: str, day: date) -> Any:
        return self._trades.get((symbol, day), lambda: self.market.trade_arrays(symbol, day))

    def _kline_day(self, symbol: str, kind: Stream, day: date) -> _KlineDay:
        def build() -> _KlineDay:
            columns = self.market.kline_columns(symbol, day, kind)
            return _KlineDay(columns[0].values, _kline_rows_json(columns), columns)

        return self._kline_days.get((symbol, kind, day), build)

    def _book_day(self, symbol: str, day: date) -> dict[str, CsvColumn]:
        return self._book_days.get(
            (symbol, day), lambda: {c.name: c for c in self.market.book_ticker_columns(symbol, day)}
        )

    def _metrics_day(self, symbol: str, day: date) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        return self._metrics_days.get((symbol, day), lambda: self.market.metrics_day(symbol, day))

    def _funding_month(self, symbol: str, month: date) -> tuple[np.ndarray, np.ndarray]:
        def build() -> tuple[np.ndarray, np.ndarray]:
            columns = {c.name: c for c in self.market.funding_columns(symbol, month)}
            return columns["calc_time"].values, columns["last_funding_rate"].values

        return self._funding_months.get((symbol, month), build)

    # --- exchangeInfo ---------------------------------------------------------------------------

    def _exchange_info(self, params: Mapping[str, str], now: int) -> Any:
        symbols = []
        for symbol in self.market.universe():
            onboard = self._listing_ms(symbol)
            if onboard > now:
                continue
            inst = self.market.instrument(symbol)
            base, quote = _split_symbol(symbol)
            symbols.append(
                {
                    "symbol": symbol,
                    "pair": symbol,
                    "contractType": "PERPETUAL",
                    "deliveryDate": _PERPETUAL_DELIVERY_MS,
                    "onboardDate": onboard,
                    "status": "TRADING",
                    "baseAsset": base,
                    "quoteAsset": quote,
                    "marginAsset": quote,
                    "pricePrecision": inst.price_decimals,
                    "quantityPrecision": inst.qty_decimals,
                    "filters": [
                        {"filterType": "PRICE_FILTER", "tickSize": fmt_units(1, inst.price_decimals)},
                        {"filterType": "LOT_SIZE", "stepSize": fmt_units(1, inst.qty_decimals)},
                    ],
                }
            )
        return {
            "timezone": "UTC",
            "serverTime": now,
            "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": self.weight_limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [],
            "symbols": symbols,
        }

    # --- klines ---------------------------------------------------------------------------------

    def _klines(self, kind: Stream, params: Mapping[str, str], now: int) -> bytes:
        symbol = self._symbol(params, now, "pair" if kind is Stream.INDEX_PRICE_KLINES else "symbol")
        interval = params.get("interval")
        if not interval:
            raise _mandatory("interval")
        if interval != "1m":
            raise BinanceError(HTTPStatus.BAD_REQUEST, -1120, "Invalid interval.")
        limit = _limit(params, 500, 1500)
        start, end = _time_range(params)
        rows = self.kline_rows(symbol, kind, start, end, limit, now)
        return ("[" + ",".join(rows) + "]").encode()

    def kline_rows(
        self, symbol: str, kind: Stream, start: int | None, end: int | None, limit: int, now: int
    ) -> list[str]:
        """Kline rows (JSON text) with ``start ≤ openTime ≤ min(end, now)``: the
        first ``limit`` from ``start`` when given, else the last ``limit``."""
        listing = self.market.listing_date(symbol)
        hi = now if end is None else min(end, now)
        lo = max(start if start is not None else -(2**62), day_ms(listing))
        if hi < lo:
            return []
        if start is not None:
            rows: list[str] = []
            day, last_day = _day_of(lo), _day_of(hi)
            while day <= last_day and len(rows) < limit:
                rows.extend(self._kline_day_rows(symbol, kind, day, lo, hi, now, limit - len(rows), True))
                day += timedelta(days=1)
            return rows
        chunks: list[list[str]] = []
        need, day = limit, _day_of(hi)
        while need > 0 and day >= listing:
            part = self._kline_day_rows(symbol, kind, day, lo, hi, now, need, False)
            chunks.append(part)
            need -= len(part)
            day -= timedelta(days=1)
        return [row for chunk in reversed(chunks) for row in chunk]

    def _kline_day_rows(
        self, symbol: str, kind: Stream, day: date, lo: int, hi: int, now: int, n: int, from_start: bool
    ) -> list[str]:
        entry = self._kline_day(symbol, kind, day)
        i0 = int(np.searchsorted(entry.open_time, lo, "left"))
        i1 = int(np.searchsorted(entry.open_time, hi, "right"))
        if from_start:
            i1 = min(i1, i0 + n)
        else:
            i0 = max(i0, i1 - n)
        if i1 <= i0:
            return []
        rows = entry.rows[i0:i1]
        last_open = int(entry.open_time[i1 - 1])
        if last_open + MINUTE_MS - 1 > now:  # the minute still running: incomplete
            rows[-1] = self._partial_row(symbol, kind, day, entry, i1 - 1, now)
        return rows

    def _partial_row(self, symbol: str, kind: Stream, day: date, entry: _KlineDay, i: int, now: int) -> str:
        open_time = int(entry.open_time[i])
        pd = entry.decimals("open")
        if kind is Stream.KLINES:
            o, h, lo, c, volumes = self._partial_trade_kline(symbol, day, entry, i, now)
            qd = entry.decimals("volume")
            v, qv, n, tbv, tbqv = volumes
            vol_text = (fmt_units(v, qd), fmt_units(qv, pd + qd), n, fmt_units(tbv, qd), fmt_units(tbqv, pd + qd))
        else:
            o, h, lo, c = self._partial_derived(entry, i, now)
            vol_text = ("0", "0", 0, "0", "0")
        v_s, qv_s, n, tbv_s, tbqv_s = vol_text
        return (
            f'[{open_time},"{fmt_units(o, pd)}","{fmt_units(h, pd)}","{fmt_units(lo, pd)}","{fmt_units(c, pd)}",'
            f'"{v_s}",{open_time + MINUTE_MS - 1},"{qv_s}",{n},"{tbv_s}","{tbqv_s}","0"]'
        )

    def _partial_trade_kline(
        self, symbol: str, day: date, entry: _KlineDay, i: int, now: int
    ) -> tuple[int, int, int, int, tuple[int, int, int, int, int]]:
        t = self._trade_day(symbol, day)
        open_time = int(entry.open_time[i])
        a = int(np.searchsorted(t.transact_time, open_time, "left"))
        b = int(np.searchsorted(t.transact_time, now, "right"))
        if b <= a:
            prev = entry.units("close", i - 1) if i > 0 else int(t.open_ticks)
            return prev, prev, prev, prev, (0, 0, 0, 0, 0)
        price, qty = t.price[a:b], t.quantity[a:b]
        quote = price * qty
        taker_buy = ~t.is_buyer_maker[a:b]
        count = int((t.last_trade_id[a:b] - t.first_trade_id[a:b] + 1).sum())
        volumes = (int(qty.sum()), int(quote.sum()), count, int(qty[taker_buy].sum()), int(quote[taker_buy].sum()))
        return int(price[0]), int(price.max()), int(price.min()), int(price[-1]), volumes

    @staticmethod
    def _partial_derived(entry: _KlineDay, i: int, now: int) -> tuple[int, int, int, int]:
        """The derived minute so far: the close moves from the open to the final
        close, high and low widen to theirs, in proportion to the elapsed time."""
        frac = min(1.0, (now - int(entry.open_time[i]) + 1) / MINUTE_MS)
        o, h, lo, c = (entry.units(name, i) for name in ("open", "high", "low", "close"))
        close = o + round((c - o) * frac)
        high = max(o, close) + round((h - max(o, c)) * frac)
        low = min(o, close) - round((min(o, c) - lo) * frac)
        return o, high, low, close

    def price_now(self, symbol: str, kind: Stream, now: int) -> tuple[int, int]:
        """(units, decimals) of the ``kind`` kline close so far at ``now``: the running
        minute's partial close, else the last live minute's close before it."""
        listing = self.market.listing_date(symbol)
        day = _day_of(now)
        for _ in range(3):
            if day < listing:
                break
            entry = self._kline_day(symbol, kind, day)
            i = int(np.searchsorted(entry.open_time, now, "right")) - 1
            if i >= 0:
                if int(entry.open_time[i]) + MINUTE_MS - 1 > now:
                    return self._partial_derived(entry, i, now)[3], entry.decimals("close")
                return entry.units("close", i), entry.decimals("close")
            day -= timedelta(days=1)
        inst = self.market.instrument(symbol)
        decimals = inst.price_decimals + 1
        price = float(self.market.reference_price(symbol, np.array([now]))[0])
        return round(price * 10**decimals), decimals

    # --- aggTrades --------------------------------------------------------------------------------

    def _agg_trades(self, params: Mapping[str, str], now: int) -> bytes:
        symbol = self._symbol(params, now)
        limit = _limit(params, 500, 1000)
        from_id = _int_param(params, "fromId")
        start, end = _time_range(params)
        if from_id is not None:
            if start is not None or end is not None:
                raise BinanceError(HTTPStatus.BAD_REQUEST, -1128, "Combination of optional parameters invalid.")
            picked = self._trades_from_id(symbol, from_id, limit, now)
        elif start is not None or end is not None:
            if start is not None and end is not None and end - start >= HOUR_MS:
                raise BinanceError(HTTPStatus.BAD_REQUEST, -1127, "More than 1 hours between startTime and endTime.")
            if start is None:
                start = end - HOUR_MS + 1  # type: ignore[operator]
            if end is None:
                end = start + HOUR_MS - 1
            picked = self._trades_in_window(symbol, start, min(end, now), limit)
        else:
            picked = self._latest_trades(symbol, limit, now)
        inst = self.market.instrument(symbol)
        return _agg_trades_json(picked, inst.price_decimals, inst.qty_decimals)

    def _trades_from_id(self, symbol: str, from_id: int, limit: int, now: int) -> list[tuple[Any, int, int]]:
        listing = self.market.listing_date(symbol)
        per_day = self.market.config.trades_per_day
        day = listing + timedelta(days=max(0, from_id - 1) // per_day)
        last_day = _day_of(now)
        picked: list[tuple[Any, int, int]] = []
        need = limit
        while need > 0 and day <= last_day:
            t = self._trade_day(symbol, day)
            i = int(np.searchsorted(t.agg_trade_id, from_id, "left"))
            visible = int(np.searchsorted(t.transact_time, now, "right"))
            j = min(visible, i + need)
            if j > i:
                picked.append((t, i, j))
                need -= j - i
            if visible < len(t.transact_time):
                break  # the rest of the market lies after now
            day += timedelta(days=1)
        return picked

    def _trades_in_window(self, symbol: str, start: int, end: int, limit: int) -> list[tuple[Any, int, int]]:
        listing = self.market.listing_date(symbol)
        picked: list[tuple[Any, int, int]] = []
        need = limit
        day = max(_day_of(start), listing)
        while need > 0 and end >= start and day <= _day_of(end):
            t = self._trade_day(symbol, day)
            i = int(np.searchsorted(t.transact_time, start, "left"))
            j = min(int(np.searchsorted(t.transact_time, end, "right")), i + need)
            if j > i:
                picked.append((t, i, j))
                need -= j - i
            day += timedelta(days=1)
        return picked

    def _latest_trades(self, symbol: str, limit: int, now: int) -> list[tuple[Any, int, int]]:
        listing = self.market.listing_date(symbol)
        picked: list[tuple[Any, int, int]] = []
        need, day = limit, _day_of(now)
        while need > 0 and day >= listing:
            t = self._trade_day(symbol, day)
            j = int(np.searchsorted(t.transact_time, now, "right"))
            i = max(0, j - need)
            if j > i:
                picked.append((t, i, j))
                need -= j - i
            day -= timedelta(days=1)
        return picked[::-1]

    # --- premiumIndex, openInterest, bookTicker ----------------------------------------------------

    def _premium_index(self, params: Mapping[str, str], now: int) -> Any:
        symbol = self._symbol(params, now)
        mark, mark_d = self.price_now(symbol, Stream.MARK_PRICE_KLINES, now)
        index, index_d = self.price_now(symbol, Stream.INDEX_PRICE_KLINES, now)
        return {
            "symbol": symbol,
            "markPrice": fmt_units(mark, mark_d),
            "indexPrice": fmt_units(index, index_d),
            "estimatedSettlePrice": fmt_units(index, index_d),
            "lastFundingRate": fmt_units(self.predicted_funding_units(symbol, now), 8),
            "interestRate": _INTEREST_RATE,
            "nextFundingTime": next_funding_time(now),
            "time": now,
        }

    def _settlements_around(self, symbol: str, now: int) -> tuple[tuple[int, int] | None, tuple[int, int]]:
        """((calc_time, rate units) of the last settlement ≤ now or None, the next one)."""
        month = _month_of(now)
        calc, rate = self._funding_month(symbol, month)
        k = int(np.searchsorted(calc, now, "right"))
        previous = (int(calc[k - 1]), int(rate[k - 1])) if k > 0 else None
        if previous is None and month > self.market.listing_date(symbol).replace(day=1):
            pc, pr = self._funding_month(symbol, _previous_month(month))
            previous = (int(pc[-1]), int(pr[-1])) if len(pc) else None
        if k < len(calc):
            upcoming = (int(calc[k]), int(rate[k]))
        else:
            nc, nr = self._funding_month(symbol, next_month(month))
            upcoming = (int(nc[0]), int(nr[0]))
        return previous, upcoming

    def predicted_funding_units(self, symbol: str, now: int) -> int:
        """The predicted funding rate (units of 1e-8) at ``now``: from the last settled
        rate towards the next one over the interval, plus a per-minute wobble of up
        to ±0.0015 %; a pure function of (seed, symbol, now)."""
        previous, upcoming = self._settlements_around(symbol, now)
        start_rate = previous[1] if previous else upcoming[1]
        frac = (now % FUNDING_INTERVAL_MS) / FUNDING_INTERVAL_MS
        key = f"predicted-funding:{self.market.config.seed}:{symbol}:{now // MINUTE_MS}".encode()
        wobble = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64 - 0.5
        rate = start_rate + (upcoming[1] - start_rate) * frac + 3000 * wobble
        return round(rate)

    def _open_interest(self, params: Mapping[str, str], now: int) -> Any:
        symbol = self._symbol(params, now)
        inst = self.market.instrument(symbol)
        instant = max(now - now % FIVE_MIN_MS, self._listing_ms(symbol) + FIVE_MIN_MS)
        values = self._snapshot(symbol, instant)
        return {
            "symbol": symbol,
            "openInterest": fmt_units(values["sum_open_interest"], inst.qty_decimals),
            "time": now,
        }

    def _snapshot(self, symbol: str, instant: int) -> dict[str, int]:
        """The metrics snapshot taken at ``instant`` (a multiple of 5 min), from the
        arrays of the Vision file that holds it."""
        day = _day_of(instant - FIVE_MIN_MS)
        instants, values = self._metrics_day(symbol, day)
        k = int(np.searchsorted(instants, instant))
        return {name: int(v[k]) for name, v in values.items()}

    def _book_ticker(self, params: Mapping[str, str], now: int) -> Any:
        symbol = self._symbol(params, now)
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        listing = self.market.listing_date(symbol)
        day = _day_of(now)
        for _ in range(3):
            if day < listing:
                break
            book = self._book_day(symbol, day)
            j = int(np.searchsorted(book["transaction_time"].values, now, "right")) - 1
            if j >= 0:
                return {
                    "symbol": symbol,
                    "bidPrice": fmt_units(book["best_bid_price"].values[j], pd),
                    "bidQty": fmt_units(book["best_bid_qty"].values[j], qd),
                    "askPrice": fmt_units(book["best_ask_price"].values[j], pd),
                    "askQty": fmt_units(book["best_ask_qty"].values[j], qd),
                    "time": int(book["transaction_time"].values[j]),
                    "lastUpdateId": int(book["update_id"].values[j]),
                }
            day -= timedelta(days=1)
        # No snapshot yet (the first moments after listing): a one-tick book at the open.
        ticks = int(self._trade_day(symbol, _day_of(now)).open_ticks)
        return {
            "symbol": symbol,
            "bidPrice": fmt_units(max(1, ticks - 1), pd),
            "bidQty": fmt_units(1, qd),
            "askPrice": fmt_units(ticks, pd),
            "askQty": fmt_units(1, qd),
            "time": now,
            "lastUpdateId": 0,
        }

    # --- depth ---------------------------------------------------------------------------------------

    def _depth(self, params: Mapping[str, str], now: int) -> Any:
        if not params.get("symbol"):
            raise _mandatory("symbol")
        limit = _int_param(params, "limit")
        if limit is None:
            limit = 500
        elif limit not in DEPTH_LIMITS:
            raise _bad_param()
        if self.depth_override is not None:
            recorded = self.depth_override(params["symbol"], now, limit)
            if recorded is not None:
                return recorded
        symbol = self._symbol(params, now)
        snapshot = self.order_book.snapshot(symbol, now, limit)
        if snapshot is None:
            return {"lastUpdateId": 0, "E": now, "T": now, "bids": [], "asks": []}
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        return {
            "lastUpdateId": snapshot.last_update_id,
            "E": now,
            "T": snapshot.transaction_ms,
            "bids": [[fmt_units(p, pd), fmt_units(q, qd)] for p, q in snapshot.bids],
            "asks": [[fmt_units(p, pd), fmt_units(q, qd)] for p, q in snapshot.asks],
        }

    # --- fundingRate ---------------------------------------------------------------------------------

    def _funding_rate(self, params: Mapping[str, str], now: int) -> Any:
        symbol = self._symbol(params, now)
        limit = _limit(params, 100, 1000)
        start, end = _time_range(params)
        hi = now if end is None else min(end, now)
        listing_month = self.market.listing_date(symbol).replace(day=1)
        lo = start if start is not None else -(2**62)
        picked: list[tuple[int, int]] = []
        if hi >= lo and hi >= self._listing_ms(symbol):
            if start is not None:
                month = max(_month_of(max(lo, 0)), listing_month)
                while month <= _month_of(hi) and len(picked) < limit:
                    calc, rate = self._funding_month(symbol, month)
                    i, j = np.searchsorted(calc, lo, "left"), np.searchsorted(calc, hi, "right")
                    picked.extend(zip(calc[i:j].tolist(), rate[i:j].tolist(), strict=True))
                    month = next_month(month)
                picked = picked[:limit]
            else:
                chunks: list[list[tuple[int, int]]] = []
                month, need = _month_of(hi), limit
                while need > 0 and month >= listing_month:
                    calc, rate = self._funding_month(symbol, month)
                    j = int(np.searchsorted(calc, hi, "right"))
                    i = max(0, j - need)
                    chunks.append(list(zip(calc[i:j].tolist(), rate[i:j].tolist(), strict=True)))
                    need -= j - i
                    month = _previous_month(month)
                picked = [row for chunk in reversed(chunks) for row in chunk]
        if not picked:
            return []
        inst = self.market.instrument(symbol)
        decimals = inst.price_decimals + 1
        marks = self.market.reference_price(symbol, np.array([c for c, _ in picked], dtype=np.int64))
        return [
            {
                "symbol": symbol,
                "fundingTime": calc,
                "fundingRate": fmt_units(rate, 8),
                "markPrice": fmt_units(round(float(mark) * 10**decimals), decimals),
            }
            for (calc, rate), mark in zip(picked, marks, strict=True)
        ]

    # --- /futures/data histories ---------------------------------------------------------------------

    def _hist(self, path: str, params: Mapping[str, str], now: int) -> Any:
        symbol = self._symbol(params, now)
        period = params.get("period")
        if not period:
            raise _mandatory("period")
        if period != "5m":
            raise BinanceError(HTTPStatus.BAD_REQUEST, -1120, "Invalid interval.")
        limit = _limit(params, 30, 500)
        start, end = _time_range(params)
        hi = now if end is None else min(end, now)
        lo = max(now - HIST_DAYS * DAY_MS, self._listing_ms(symbol) + FIVE_MIN_MS)
        if start is not None:
            lo = max(lo, start)
        first = -(-lo // FIVE_MIN_MS) * FIVE_MIN_MS
        last = hi - hi % FIVE_MIN_MS
        if last < first:
            return []
        count = (last - first) // FIVE_MIN_MS + 1
        if start is not None:
            instants = first + np.arange(min(count, limit), dtype=np.int64) * FIVE_MIN_MS
        else:
            instants = last - np.arange(min(count, limit), dtype=np.int64)[::-1] * FIVE_MIN_MS
        inst = self.market.instrument(symbol)
        ratio_column = _HIST_PATHS[path]
        rows = []
        for instant in instants.tolist():
            values = self._snapshot(symbol, instant)
            if ratio_column is None:
                rows.append(
                    {
                        "symbol": symbol,
                        "sumOpenInterest": fmt_units(values["sum_open_interest"], inst.qty_decimals),
                        "sumOpenInterestValue": fmt_units(values["sum_open_interest_value"], 6),
                        "timestamp": instant,
                    }
                )
            else:
                ratio = values[ratio_column]  # units of 1e-6
                long_units = round(ratio * 10_000 / (ratio + 1_000_000))
                rows.append(
                    {
                        "symbol": symbol,
                        "longShortRatio": fmt_units(ratio, 6),
                        "longAccount": fmt_units(long_units, 4),
                        "shortAccount": fmt_units(10_000 - long_units, 4),
                        "timestamp": instant,
                    }
                )
        return rows


def next_funding_time(now: int) -> int:
    """The first 00/08/16 UTC settlement instant strictly after ``now``."""
    return (now // FUNDING_INTERVAL_MS + 1) * FUNDING_INTERVAL_MS


def _split_symbol(symbol: str) -> tuple[str, str]:
    for quote in ("USDT", "USDC", "BUSD", "USD"):
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return symbol[: -len(quote)], quote
    return symbol, "USDT"


def _agg_trades_json(picked: list[tuple[Any, int, int]], price_decimals: int, qty_decimals: int) -> bytes:
    rows = []
    for t, i, j in picked:
        for a, p, q, f, last, ts, m in zip(
            t.agg_trade_id[i:j].tolist(),
            t.price[i:j].tolist(),
            t.quantity[i:j].tolist(),
            t.first_trade_id[i:j].tolist(),
            t.last_trade_id[i:j].tolist(),
            t.transact_time[i:j].tolist(),
            t.is_buyer_maker[i:j].tolist(),
            strict=True,
        ):
            rows.append(
                f'{{"a":{a},"p":"{fmt_units(p, price_decimals)}","q":"{fmt_units(q, qty_decimals)}",'
                f'"f":{f},"l":{last},"T":{ts},"m":{"true" if m else "false"}}}'
            )
    return ("[" + ",".join(rows) + "]").encode()
