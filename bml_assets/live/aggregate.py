"""Minute aggregation of the live events of one symbol into ``live_1m`` rows (SPEC §9).

What belongs here: the per-minute accumulator of one symbol (``MinuteAcc``), fed event by
event; the stream families' coverage runs (``Coverage``); and ``close_minute``, which
turns an accumulator into the row of the live table with every column whose family did
not cover the minute NULL. What stays out: parsing (``frames.py``), the book and its
synced periods (``book.py``), deciding when a minute closes and which connection
delivered what (``core.py``), files.

Every event belongs to the minute of its exchange time E (never the local clock). The
formulas, per minute (nearest-rank p95 is the ⌈0.95·n⌉-th smallest):

- ``event_time``: the largest E over the minute's events; ``arrival_time`` the local
  receive time (ms) of the first event received with that E;
- ``latency_engine``: p95 of E − T over depthUpdate, bookTicker, aggTrade, trade and
  forceOrder (``o.T``); markPrice is left out (its T is the next funding time);
  ``latency_network``: p95 of arrival − E over every event (negative when the local clock
  is behind);
- ``update_id_start`` / ``update_id_end``: smallest U / largest u of the depth events;
- bookTicker columns (SPEC §5): micro price of the last event (largest u), means of the
  spread, of the imbalance (events with bid_qty + ask_qty = 0 left out), of the depths
  and of spread / mid; a covered minute without a bookTicker event carries the last
  event's own values into 38-42 and leaves 14 NULL;
- liquidations: SELL = longs liquidated; volumes Σ ap × z, counts, average fill
  Σ ap·z / Σ z, unfilled Σ (q − z) / Σ q (NULL when the denominator is 0);
- ``price_impact_100k``: taken by the core on the synced book right after the minute's
  last depth event (``MinuteAcc.impact``);
- ``predicted_funding``: r of the minute's last markPrice event (largest E).

Coverage (SPEC §9): a family covers a minute when one connection of it delivered a frame
with E before the minute's start and one with E at or after its end, nothing lost in
between (a dropped connection ends its run; a frame the spool could not keep or a bad
event marks its minute lost for the family). The family columns need their family: 1, 3,
4, 5 need every subscribed family (both in the collector; a recording of the public
streams alone has only that one); 6, 7, 43 also need the book synced from before the
minute to its end. A stream reported silent during the minute makes the columns it feeds
NULL (depth: 6, 7, 43; bookTicker: 14, 38-42; markPrice: 57) — except forceOrder, which is
quiet whenever nothing is liquidated. A column whose family did not cover the minute is
NULL, never a partial value.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.schema import LIVE_1M, LIVE_EVENT_COUNT_COLUMNS
from bml_assets.live.frames import (
    MARKET,
    PUBLIC,
    AggTrade,
    BookTicker,
    DepthUpdate,
    Event,
    Family,
    ForceOrder,
    MarkPrice,
    Trade,
)

# Event kind -> its count column in the live table (the registry's order of kinds).
KINDS: Final = ("depth", "book_ticker", "agg_trade", "trade", "mark_price", "force_order")
COUNT_COLUMN: Final = dict(zip(KINDS, LIVE_EVENT_COUNT_COLUMNS, strict=True))
KIND_FAMILY: Final[dict[str, Family]] = {
    "depth": PUBLIC,
    "book_ticker": PUBLIC,
    "trade": PUBLIC,
    "agg_trade": MARKET,
    "mark_price": MARKET,
    "force_order": MARKET,
}
# A stream reported silent in a minute blanks the columns it feeds (forceOrder is quiet by nature).
SILENCE_BLANKS: Final = frozenset({"depth", "book_ticker", "mark_price"})


def p95(values: list[int]) -> int | None:
    """Nearest-rank 95th percentile: the ⌈0.95·n⌉-th smallest value; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[(95 * len(ordered) + 99) // 100 - 1]


@dataclass(slots=True)
class Ticker:
    """One bookTicker's top of book and the §5 quantities derived from it."""

    E: int
    u: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float

    @property
    def spread(self) -> float:
        return self.ask - self.bid

    @property
    def imbalance(self) -> float | None:
        depth = self.bid_qty + self.ask_qty
        return (self.bid_qty - self.ask_qty) / depth if depth != 0 else None

    @property
    def micro_price(self) -> float | None:
        depth = self.bid_qty + self.ask_qty
        return (self.bid * self.ask_qty + self.ask * self.bid_qty) / depth if depth != 0 else None

    @property
    def spread_pct(self) -> float | None:
        mid = (self.bid + self.ask) / 2
        return self.spread / mid if mid > 0 else None


@dataclass(slots=True)
class MinuteAcc:
    """What one symbol's events of one minute add up to, so far."""

    minute: int
    max_E: int = -1
    arrival_ms: int | None = None
    engine: list[int] = field(default_factory=list)
    network: list[int] = field(default_factory=list)
    first_U: int | None = None
    last_u: int | None = None
    # bookTicker
    bt_n: int = 0
    spread_sum: float = 0.0
    imbalance_sum: float = 0.0
    imbalance_n: int = 0
    bid_qty_sum: float = 0.0
    ask_qty_sum: float = 0.0
    spread_pct_sum: float = 0.0
    spread_pct_n: int = 0
    last_ticker: Ticker | None = None
    # forceOrder
    liq_long_vol: float = 0.0
    liq_short_vol: float = 0.0
    liq_long_n: int = 0
    liq_short_n: int = 0
    liq_apz: float = 0.0
    liq_z: float = 0.0
    liq_q: float = 0.0
    liq_unfilled: float = 0.0
    # markPrice
    mark_E: int = -1
    funding_rate: float | None = None
    # the book right after the minute's last depth event (taken by the core)
    impact: float | None = None
    impact_taken: bool = False
    depth_seen: bool = False
    # bookkeeping
    counts: dict[str, int] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)
    clock_offset_ms: int | None = None
    resyncs: int = 0
    reconnects: int = 0
    late: int = 0
    duplicates: int = 0

    def add(self, event: Event, arrival_ms: int) -> None:
        """One event of this minute (by its E), received at ``arrival_ms`` (local clock)."""
        E = event.E
        if E > self.max_E:
            self.max_E = E
            self.arrival_ms = arrival_ms
        self.network.append(arrival_ms - E)
        kind = event.kind
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if isinstance(event, BookTicker):
            self.engine.append(E - event.T)
            self._ticker(event)
        elif isinstance(event, DepthUpdate):
            self.engine.append(E - event.T)
            if self.first_U is None or event.U < self.first_U:
                self.first_U = event.U
            if self.last_u is None or event.u > self.last_u:
                self.last_u = event.u
            self.depth_seen = True
        elif isinstance(event, AggTrade | Trade):
            self.engine.append(E - event.T)
        elif isinstance(event, MarkPrice):
            if E > self.mark_E:
                self.mark_E = E
                self.funding_rate = event.funding_rate
        elif isinstance(event, ForceOrder):
            self.engine.append(E - event.T)
            self._liquidation(event)

    def _ticker(self, event: BookTicker) -> None:
        t = Ticker(event.E, event.u, event.bid, event.bid_qty, event.ask, event.ask_qty)
        self.bt_n += 1
        self.spread_sum += t.spread
        self.bid_qty_sum += t.bid_qty
        self.ask_qty_sum += t.ask_qty
        imbalance, spread_pct = t.imbalance, t.spread_pct
        if imbalance is not None:
            self.imbalance_sum += imbalance
            self.imbalance_n += 1
        if spread_pct is not None:
            self.spread_pct_sum += spread_pct
            self.spread_pct_n += 1
        if self.last_ticker is None or t.u > self.last_ticker.u:
            self.last_ticker = t

    def _liquidation(self, event: ForceOrder) -> None:
        notional = event.avg_price * event.filled
        if event.side == "SELL":  # a long position liquidated
            self.liq_long_vol += notional
            self.liq_long_n += 1
        else:
            self.liq_short_vol += notional
            self.liq_short_n += 1
        self.liq_apz += notional
        self.liq_z += event.filled
        self.liq_q += event.qty
        self.liq_unfilled += event.qty - event.filled


# --------------------------------------------------------------------------- coverage


@dataclass(slots=True)
class Run:
    """One connection's unbroken stretch of frames: the smallest and largest E it delivered."""

    min_E: int
    max_E: int
    open: bool = True


class Coverage:
    """Runs of frames per (family, connection); a minute is covered by a family when one of
    its runs reached from before the minute's start to its end."""

    def __init__(self) -> None:
        self.runs: dict[Family, list[Run]] = {PUBLIC: [], MARKET: []}
        self._open: dict[tuple[Family, Any], Run] = {}

    def saw(self, family: Family, connection: Any, E: int) -> None:
        run = self._open.get((family, connection))
        if run is None:
            run = Run(E, E)
            self._open[(family, connection)] = run
            self.runs[family].append(run)
        elif E > run.max_E:
            run.max_E = E
        elif E < run.min_E:
            run.min_E = E

    def dropped(self, family: Family, connection: Any) -> bool:
        """End the connection's run; whether it had one."""
        run = self._open.pop((family, connection), None)
        if run is not None:
            run.open = False
        return run is not None

    def drop_all(self) -> None:
        for family, connection in list(self._open):
            self.dropped(family, connection)

    def progress(self, family: Family) -> int | None:
        """The largest E of the family's open runs (None when none is open)."""
        values = [r.max_E for (f, _), r in self._open.items() if f == family]
        return max(values) if values else None

    def open_progress(self) -> dict[str, tuple[Any, int]]:
        """Per family, the connection with the furthest open run and its largest E."""
        out: dict[str, tuple[Any, int]] = {}
        for (family, connection), run in self._open.items():
            if family not in out or run.max_E > out[family][1]:
                out[family] = (connection, run.max_E)
        return out

    def covering(self, family: Family, minute: int) -> Run | None:
        """The run of ``family`` that covers ``minute``, if one does."""
        end = minute + MINUTE_MS
        return next((r for r in self.runs[family] if r.min_E < minute and r.max_E >= end), None)

    def prune(self, before: int) -> None:
        """Forget closed runs that ended before ``before`` (no open minute can need them)."""
        for family, runs in self.runs.items():
            self.runs[family] = [r for r in runs if r.open or r.max_E >= before]


# --------------------------------------------------------------------------- the row


@dataclass(frozen=True)
class MinuteContext:
    """What the core knows about a minute when it closes it."""

    public: bool  # the public family covered it
    market: bool  # the market family covered it
    subscribed: frozenset[str]  # the families the collector subscribed to
    book: bool  # the book was synced across it
    silent: frozenset[str]  # event kinds reported silent during it
    silent_streams: int
    carried: Ticker | None  # the last bookTicker before the minute, within the public run


def close_minute(acc: MinuteAcc, ctx: MinuteContext) -> dict[str, Any]:
    """The ``live_1m`` row of one minute: every column of the registry, by name."""
    row: dict[str, Any] = dict.fromkeys(LIVE_1M.column_names)
    row[LIVE_1M.time_column] = acc.minute
    public = ctx.public and PUBLIC not in acc.lost
    market = ctx.market and MARKET not in acc.lost
    covered = {PUBLIC: public, MARKET: market}
    every = bool(ctx.subscribed) and all(covered[f] for f in ctx.subscribed)
    if every and acc.max_E >= 0:
        row["event_time"] = acc.max_E
        row["arrival_time"] = acc.arrival_ms
        row["latency_engine"] = p95(acc.engine)
        row["latency_network"] = p95(acc.network)
    book = public and ctx.book and "depth" not in ctx.silent
    if book and acc.depth_seen:
        row["update_id_start"] = acc.first_U
        row["update_id_end"] = acc.last_u
    if book:
        row["price_impact_100k"] = acc.impact
    if public and "book_ticker" not in ctx.silent:
        _book_ticker_columns(row, acc, ctx.carried)
    if market:
        row["liq_long_vol_usdt"] = acc.liq_long_vol
        row["liq_short_vol_usdt"] = acc.liq_short_vol
        row["liq_long_count"] = acc.liq_long_n
        row["liq_short_count"] = acc.liq_short_n
        row["liq_avg_fill_price"] = acc.liq_apz / acc.liq_z if acc.liq_z > 0 else None
        row["liq_unfilled_ratio"] = acc.liq_unfilled / acc.liq_q if acc.liq_q > 0 else None
        if "mark_price" not in ctx.silent:
            row["predicted_funding"] = acc.funding_rate
    row["public_covered"] = public
    row["market_covered"] = market
    row["book_synced"] = book
    row["clock_offset_ms"] = acc.clock_offset_ms
    row["resyncs"] = acc.resyncs
    row["reconnects"] = acc.reconnects
    row["silent_streams"] = ctx.silent_streams
    row["late_events"] = acc.late
    row["duplicate_events"] = acc.duplicates
    for kind, column in COUNT_COLUMN.items():
        row[column] = acc.counts.get(kind, 0)
    return row


def _book_ticker_columns(row: dict[str, Any], acc: MinuteAcc, carried: Ticker | None) -> None:
    if acc.bt_n:
        last = acc.last_ticker
        assert last is not None
        row["micro_price_close"] = last.micro_price
        row["avg_spread_usdt"] = acc.spread_sum / acc.bt_n
        row["bid_ask_imbalance"] = acc.imbalance_sum / acc.imbalance_n if acc.imbalance_n else None
        row["avg_bid_depth"] = acc.bid_qty_sum / acc.bt_n
        row["avg_ask_depth"] = acc.ask_qty_sum / acc.bt_n
        row["spread_pct"] = acc.spread_pct_sum / acc.spread_pct_n if acc.spread_pct_n else None
    elif carried is not None:
        # The book as it stood (SPEC §5): the last event's own values; no micro price.
        row["avg_spread_usdt"] = carried.spread
        row["bid_ask_imbalance"] = carried.imbalance
        row["avg_bid_depth"] = carried.bid_qty
        row["avg_ask_depth"] = carried.ask_qty
        row["spread_pct"] = carried.spread_pct
