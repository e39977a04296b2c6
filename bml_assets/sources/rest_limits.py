"""Facts about the Binance USD-M REST API that the client relies on (SPEC §4, REST).

What belongs here: endpoint paths, the request weight of each call as the
exchange counts it, the largest ``limit`` each endpoint accepts, and the time
rules (aggTrades windows, the 30 days of 5-minute history, the fundingRate
request limit). Plain constants and one pure function, ``weight_of``.

What stays out: HTTP, paging, parsing (``rest.py``) and the shared limiter
(``rest_budget.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from bml_assets.domain.minutes import DAY_MS, HOUR_MS, MINUTE_MS
from bml_assets.domain.streams import Stream

# --- paths --------------------------------------------------------------------

SERVER_TIME_PATH: Final = "/fapi/v1/time"
EXCHANGE_INFO_PATH: Final = "/fapi/v1/exchangeInfo"
KLINES_PATH: Final = "/fapi/v1/klines"
MARK_PRICE_KLINES_PATH: Final = "/fapi/v1/markPriceKlines"
INDEX_PRICE_KLINES_PATH: Final = "/fapi/v1/indexPriceKlines"  # takes pair=, not symbol=
PREMIUM_INDEX_KLINES_PATH: Final = "/fapi/v1/premiumIndexKlines"
AGG_TRADES_PATH: Final = "/fapi/v1/aggTrades"
PREMIUM_INDEX_PATH: Final = "/fapi/v1/premiumIndex"
OPEN_INTEREST_PATH: Final = "/fapi/v1/openInterest"
FUNDING_RATE_PATH: Final = "/fapi/v1/fundingRate"
BOOK_TICKER_PATH: Final = "/fapi/v1/ticker/bookTicker"
DEPTH_PATH: Final = "/fapi/v1/depth"  # the order book snapshot the live collector syncs its book from
OPEN_INTEREST_HIST_PATH: Final = "/futures/data/openInterestHist"
TOP_LS_ACCOUNT_RATIO_PATH: Final = "/futures/data/topLongShortAccountRatio"
GLOBAL_LS_ACCOUNT_RATIO_PATH: Final = "/futures/data/globalLongShortAccountRatio"

KLINE_PATHS: Final[Mapping[Stream, str]] = {
    Stream.KLINES: KLINES_PATH,
    Stream.MARK_PRICE_KLINES: MARK_PRICE_KLINES_PATH,
    Stream.INDEX_PRICE_KLINES: INDEX_PRICE_KLINES_PATH,
    Stream.PREMIUM_INDEX_KLINES: PREMIUM_INDEX_KLINES_PATH,
}
# The query parameter naming the instrument: indexPriceKlines is per pair.
KLINE_SYMBOL_PARAM: Final[Mapping[Stream, str]] = {
    Stream.KLINES: "symbol",
    Stream.MARK_PRICE_KLINES: "symbol",
    Stream.INDEX_PRICE_KLINES: "pair",
    Stream.PREMIUM_INDEX_KLINES: "symbol",
}
HIST_PATHS: Final[tuple[str, ...]] = (OPEN_INTEREST_HIST_PATH, TOP_LS_ACCOUNT_RATIO_PATH, GLOBAL_LS_ACCOUNT_RATIO_PATH)

# --- the weight limit -----------------------------------------------------------

# The exchange's error code for a symbol it does not know (HTTP 400, "Invalid symbol."):
# never listed, or delisted long ago.
INVALID_SYMBOL_CODE: Final = -1121
USED_WEIGHT_HEADER: Final = "X-MBX-USED-WEIGHT-1M"  # weight used by this IP in the current minute
EXCHANGE_WEIGHT_LIMIT_PER_MINUTE: Final = 2400  # REQUEST_WEIGHT in exchangeInfo.rateLimits

# Kline weight by the requested limit: (limit below which, weight); above the last bound: 10.
KLINE_WEIGHT_STEPS: Final[tuple[tuple[int, int], ...]] = ((100, 1), (500, 2), (1001, 5))
KLINE_WEIGHT_MAX: Final = 10
KLINE_DEFAULT_LIMIT: Final = 500  # what the exchange assumes when no limit is sent

AGG_TRADES_WEIGHT: Final = 20
# Depth weight by the requested limit (the exchange accepts only these limits; default 500).
DEPTH_WEIGHTS: Final[Mapping[int, int]] = {5: 2, 10: 2, 20: 2, 50: 2, 100: 5, 500: 10, 1000: 20}
DEPTH_DEFAULT_LIMIT: Final = 500
PREMIUM_INDEX_WEIGHT: Final = 1  # with symbol=
OPEN_INTEREST_WEIGHT: Final = 1
BOOK_TICKER_WEIGHT: Final = 2  # with symbol=
EXCHANGE_INFO_WEIGHT: Final = 1
SERVER_TIME_WEIGHT: Final = 1
# The exchange documents no weight for these; counted as 1 so they stay inside the budget.
FUNDING_RATE_WEIGHT: Final = 1
HIST_WEIGHT: Final = 1

# fundingRate has a limit of its own besides the weight (shared with fundingInfo).
FUNDING_RATE_REQUESTS_PER_WINDOW: Final = 500
FUNDING_RATE_WINDOW_S: Final = 300.0

ENDPOINT_WEIGHTS: Final[Mapping[str, int]] = {
    SERVER_TIME_PATH: SERVER_TIME_WEIGHT,
    EXCHANGE_INFO_PATH: EXCHANGE_INFO_WEIGHT,
    AGG_TRADES_PATH: AGG_TRADES_WEIGHT,
    PREMIUM_INDEX_PATH: PREMIUM_INDEX_WEIGHT,
    OPEN_INTEREST_PATH: OPEN_INTEREST_WEIGHT,
    FUNDING_RATE_PATH: FUNDING_RATE_WEIGHT,
    BOOK_TICKER_PATH: BOOK_TICKER_WEIGHT,
    **dict.fromkeys(HIST_PATHS, HIST_WEIGHT),
}

# --- limits and windows ------------------------------------------------------------

KLINES_MAX_LIMIT: Final = 1500
AGG_TRADES_MAX_LIMIT: Final = 1000
FUNDING_RATE_MAX_LIMIT: Final = 1000
HIST_MAX_LIMIT: Final = 500

# aggTrades: endTime - startTime must be under one hour.
AGG_TRADES_MAX_WINDOW_MS: Final = HOUR_MS - 1
# The 5-minute history endpoints serve the latest 30 days only.
HIST_PERIOD: Final = "5m"
HIST_PERIOD_MS: Final = 5 * MINUTE_MS
HIST_MAX_AGE_MS: Final = 30 * DAY_MS
DEFAULT_FUNDING_INTERVAL_HOURS: Final = 8


def kline_weight(limit: int | None) -> int:
    """Weight of one klines-family request: 1/2/5/10 for limit <100 / <500 / ≤1000 / >1000."""
    limit = KLINE_DEFAULT_LIMIT if limit is None else int(limit)
    for below, weight in KLINE_WEIGHT_STEPS:
        if limit < below:
            return weight
    return KLINE_WEIGHT_MAX


def depth_weight(limit: int | None) -> int:
    """Weight of one ``/fapi/v1/depth`` request: 2 up to limit 50, then 5 / 10 / 20 for 100 / 500 / 1000.
    Other limits raise ``ValueError``: the exchange refuses them."""
    limit = DEPTH_DEFAULT_LIMIT if limit is None else int(limit)
    try:
        return DEPTH_WEIGHTS[limit]
    except KeyError:
        raise ValueError(f"depth limit {limit} is not one of {sorted(DEPTH_WEIGHTS)}") from None


def weight_of(path: str, params: Mapping[str, Any] | None = None) -> int:
    """The request weight the exchange charges for ``GET path?params``.

    Unknown paths raise ``KeyError``: a call whose cost is unknown must not be
    sent past the limiter.
    """
    if path in KLINE_PATHS.values():
        limit = (params or {}).get("limit")
        return kline_weight(None if limit is None else int(limit))
    if path == DEPTH_PATH:
        limit = (params or {}).get("limit")
        return depth_weight(None if limit is None else int(limit))
    try:
        return ENDPOINT_WEIGHTS[path]
    except KeyError:
        raise KeyError(f"no request weight known for {path!r}; add it to rest_limits.ENDPOINT_WEIGHTS") from None
