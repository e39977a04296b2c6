"""The exchange's streams and their publication facts: what every layer names a source by.

What belongs here: ``Stream`` (the Vision dataset names, which the REST client and
the provenance use as well), which streams are published daily or monthly, the
kline family, and the dates on which publication changed. What stays out: URLs,
HTTP and parsing (``sources/``), and what a missing stream means for a partition
(the day builders).
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum


class Stream(StrEnum):
    """Vision dataset names, spelled as in the URL path."""

    KLINES = "klines"
    MARK_PRICE_KLINES = "markPriceKlines"
    INDEX_PRICE_KLINES = "indexPriceKlines"
    PREMIUM_INDEX_KLINES = "premiumIndexKlines"
    AGG_TRADES = "aggTrades"
    BOOK_TICKER = "bookTicker"
    METRICS = "metrics"
    FUNDING_RATE = "fundingRate"


KLINE_STREAMS: frozenset[Stream] = frozenset(
    {Stream.KLINES, Stream.MARK_PRICE_KLINES, Stream.INDEX_PRICE_KLINES, Stream.PREMIUM_INDEX_KLINES}
)
# fundingRate is only published as monthly files; metrics only as daily files.
DAILY_STREAMS: frozenset[Stream] = frozenset(Stream) - {Stream.FUNDING_RATE}
MONTHLY_STREAMS: frozenset[Stream] = frozenset(Stream) - {Stream.METRICS}
# bookTicker was not published after this day; later book columns come from live/hot sources.
BOOK_TICKER_LAST_DAY = date(2024, 3, 30)
# metrics files from this day on label a snapshot 5 minutes before it was taken
# (SPEC §4); the reader keeps labels as written, the features normalise them.
METRICS_NEW_LABELS_FIRST_DAY = date(2026, 6, 25)
