"""The USD-M REST URL layout the replay answers.

What belongs here: the path prefixes routed to REST (``is_rest_path``) and the
endpoint paths more than one REST module names (the kline family, fundingRate).

What stays out: what an endpoint answers (``endpoints.py``) and what it weighs
(``limits.py``).
"""

from __future__ import annotations

from bml_assets.domain.streams import Stream

REST_PREFIXES: tuple[str, ...] = ("/fapi/", "/futures/data/")

KLINE_PATHS: dict[str, Stream] = {
    "/fapi/v1/klines": Stream.KLINES,
    "/fapi/v1/markPriceKlines": Stream.MARK_PRICE_KLINES,
    "/fapi/v1/indexPriceKlines": Stream.INDEX_PRICE_KLINES,
    "/fapi/v1/premiumIndexKlines": Stream.PREMIUM_INDEX_KLINES,
}
FUNDING_RATE_PATH = "/fapi/v1/fundingRate"


def is_rest_path(path: str) -> bool:
    return path.startswith(REST_PREFIXES)
