"""Vision's publication of the synthetic market: which files exist, named how.

What belongs here: ``VisionFile`` (a file as Vision publishes it: zip name, header
row or not, the zip entry's timestamp, and its columns built on demand) and
``vision_file`` (the file of a stream, symbol and period, or None where Vision
answers 404), with Vision's publication rules (SPEC §4): only symbols in the
market's universe, nothing before the listing day, daily files not published
before ``today``, bookTicker's end, monthly funding files once the month is over,
header rows by date, and (``MarketConfig.shuffle_and_duplicate``) rows a little
out of order with a few exact duplicates, as Vision writes them. Also the URL
layout of the synthetic files (``parse_vision_path``: a request path → stream,
symbol, period).

What stays out: the values (``market.py``), CSV/zip bytes (``render.py``), real
files (``real_files.py``), HTTP (``server.py``), and the project's own Vision URL
builder (``sources/vision.py``): the replay is a test double for it, so it does
not share its code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial

import numpy as np

from bml_assets.domain.streams import BOOK_TICKER_LAST_DAY, Stream
from bml_assets.replay.columns import CsvColumn
from bml_assets.replay.market import KLINE_STREAMS, SyntheticMarket, next_month

# Vision facts (SPEC §4) the files imitate.
KLINES_HEADER_FIRST_DAY = date(2022, 6, 1)
AGG_TRADES_HEADER_FIRST_DAY = date(2022, 8, 11)

CHECKSUM_SUFFIX = ".CHECKSUM"
# A symbol and a day as they appear in Vision paths and file names.
SYMBOL_REGEX = r"[A-Z0-9]{2,20}"
DAY_REGEX = r"\d{4}-\d{2}-\d{2}"
_KLINE_PATH = re.compile(
    rf"^/data/futures/um/daily/(klines|markPriceKlines|indexPriceKlines|premiumIndexKlines)/({SYMBOL_REGEX})/1m/\2-1m-({DAY_REGEX})\.zip$"
)
_DAILY_PATH = re.compile(
    rf"^/data/futures/um/daily/(aggTrades|bookTicker|metrics)/({SYMBOL_REGEX})/\2-\1-({DAY_REGEX})\.zip$"
)
_MONTHLY_PATH = re.compile(
    rf"^/data/futures/um/monthly/(fundingRate)/({SYMBOL_REGEX})/\2-fundingRate-(\d{{4}}-\d{{2}})\.zip$"
)


@dataclass(frozen=True)
class VisionFile:
    """A Vision file as Vision publishes it: its zip name and (built on demand,
    as a 7M-trade day takes seconds) its CSV columns."""

    zip_name: str
    header: bool
    modified: datetime  # the zip entry's timestamp: a fixed time after the period
    build: Callable[[], tuple[CsvColumn, ...]] = field(repr=False, compare=False)

    def columns(self) -> tuple[CsvColumn, ...]:
        return self.build()

    @property
    def csv_name(self) -> str:
        return self.zip_name[: -len(".zip")] + ".csv"


def vision_file(
    market: SyntheticMarket, stream: Stream | str, symbol: str, period: date, *, today: date | None = None
) -> VisionFile | None:
    """The Vision file of ``stream`` for ``symbol`` and ``period`` (a day; for the
    monthly fundingRate any day of the month), or None when Vision would answer
    404: a symbol outside the universe, not listed yet, not published yet, or a
    stream that had ended. ``today`` overrides ``market.today()`` (a server with
    a market clock passes the clock's date)."""
    stream = Stream(stream)
    if not market.is_known_symbol(symbol):
        return None
    today = today or market.today()
    if stream is Stream.FUNDING_RATE:
        return _funding_file(market, symbol, period.replace(day=1), today)
    if period < market.listing_date(symbol) or period >= today:
        return None
    if stream is Stream.BOOK_TICKER and period > BOOK_TICKER_LAST_DAY:
        return None
    if stream in KLINE_STREAMS:
        header = period >= KLINES_HEADER_FIRST_DAY
        name = f"{symbol}-1m-{period.isoformat()}.zip"
    else:
        header = stream is not Stream.AGG_TRADES or period >= AGG_TRADES_HEADER_FIRST_DAY
        name = f"{symbol}-{stream.value}-{period.isoformat()}.zip"
    modified = datetime(period.year, period.month, period.day) + timedelta(days=1, hours=7, minutes=26)
    return VisionFile(name, header, modified, partial(_file_columns, market, stream, symbol, period))


def _file_columns(market: SyntheticMarket, stream: Stream, symbol: str, period: date) -> tuple[CsvColumn, ...]:
    if stream in KLINE_STREAMS:
        columns = market.kline_columns(symbol, period, stream)
    else:
        columns = {
            Stream.AGG_TRADES: market.agg_trade_columns,
            Stream.BOOK_TICKER: market.book_ticker_columns,
            Stream.METRICS: market.metrics_columns,
            Stream.FUNDING_RATE: market.funding_columns,
        }[stream](symbol, period)
    if market.config.shuffle_and_duplicate:
        columns = _shuffle_and_duplicate(market, columns, symbol, period, stream)
    return columns


def _funding_file(market: SyntheticMarket, symbol: str, month: date, today: date | None = None) -> VisionFile | None:
    following = next_month(month)
    # Vision publishes a monthly file once the month is over.
    if following > (today or market.today()) or following <= market.listing_date(symbol):
        return None
    name = f"{symbol}-fundingRate-{month:%Y-%m}.zip"
    modified = datetime(following.year, following.month, 1, 7, 26)
    return VisionFile(name, True, modified, partial(_file_columns, market, Stream.FUNDING_RATE, symbol, month))


def _shuffle_and_duplicate(
    market: SyntheticMarket, columns: tuple[CsvColumn, ...], symbol: str, period: date, stream: Stream
) -> tuple[CsvColumn, ...]:
    n = len(columns[0].values)
    if n < 2:
        return columns
    rng = market.file_rng(symbol, period, stream)
    order = np.arange(n)
    # Swap ~1 % of neighbouring rows (at least one pair); no row in two swaps.
    swaps = np.flatnonzero(rng.random(n - 1) < 0.01)
    swaps = swaps[np.diff(swaps, prepend=-2) > 1]
    if swaps.size == 0:
        swaps = np.array([max(0, n // 2 - 1)])
    order[swaps], order[swaps + 1] = order[swaps + 1], order[swaps].copy()
    # Repeat a few rows right after themselves (at least one).
    dup_count = max(1, n // 2000)
    dup_at = np.sort(rng.choice(n, size=min(dup_count, n), replace=False))
    order = np.insert(order, dup_at + 1, order[dup_at])
    return tuple(c.take(order) for c in columns)


def parse_vision_path(path: str) -> tuple[Stream, str, date] | None:
    """(stream, symbol, period) of a synthetic Vision zip path, or None."""
    for pattern in (_KLINE_PATH, _DAILY_PATH, _MONTHLY_PATH):
        match = pattern.fullmatch(path)
        if match is None:
            continue
        stream, symbol, period = match.groups()
        try:
            day = date.fromisoformat(period if len(period) == 10 else period + "-01")
        except ValueError:
            return None
        return Stream(stream), symbol, day
    return None
