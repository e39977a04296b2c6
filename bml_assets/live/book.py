"""The local order book of one symbol, kept from the depth stream exactly as SPEC §9 (Binance's
USD-M procedure) prescribes.

What belongs here: buffering depth events until a REST snapshot (``lastUpdateId`` L)
arrives; dropping events with u < L; the first applied event having U ≤ L ≤ u; every
later event's ``pu`` equal to the previous applied ``u``, else the book is unsynced and
needs a new snapshot (this symbol only); absolute quantities, 0 removing a level; a
snapshot refreshed while the book is synced; and what is read from the book: best bid
and ask, and the price impact of a market buy walking the asks. What stays out: sockets,
the REST call (the process fetches a snapshot when ``needs_snapshot`` says so), minutes.

A snapshot older than the buffered events is refused (``SnapshotOutcome.REFUSED``) and
another one must be fetched. Binance's rule decides it: after dropping u < L, the first
remaining event must have U ≤ L; if it has U > L, the updates between L and U were never
buffered (the snapshot is older than the buffer) and no event can start the book. A
snapshot newer than every buffered event waits (``WAITING``) for the event that bridges L.

Refresh: a snapshot taken while the book is synced (the collector asks for one every
``REFRESH_EVERY_S`` so that a rebuild from the spool finds one near any point) replaces
the book once bridged: from the recently applied events when L ≤ the last applied u, or
from the next event with U ≤ L ≤ u when L is ahead. The book stays synced throughout;
a refresh whose best levels differ from the running book's is counted (``mismatches``):
the snapshot wins.

Speed: one dict per side (price -> quantity), updated in place, no copies per event;
the sides are sorted only when asked (best levels by ``max``/``min``, the walk by
``heapq.nsmallest``, once per minute per symbol).
"""

from __future__ import annotations

import heapq
from collections import deque
from enum import StrEnum
from typing import Final

from bml_assets.live.frames import DepthSnapshot, DepthUpdate, Level

BUFFER_LIMIT: Final = 50_000
"""Depth events kept while waiting for a snapshot; older ones are dropped (a snapshot is newer)."""
RECENT_LIMIT: Final = 5_000
"""Applied events kept to bridge a refresh snapshot that is behind the book (seconds of
BTCUSDT's busiest bursts)."""
IMPACT_QUOTE: Final = 100_000.0
"""Quote units a market buy spends for ``price_impact_100k`` (SPEC §5 column 43)."""
_WALK_LEVELS: Final = 64


class DepthOutcome(StrEnum):
    APPLIED = "applied"  # the book is synced and the event was applied
    BUFFERED = "buffered"  # no usable snapshot yet: kept for when it comes
    DROPPED = "dropped"  # u < L of the snapshot being applied: already in it
    DUPLICATE = "duplicate"  # u ≤ the last applied u: seen already (an overlapping connection)
    BROKE = "broke"  # pu did not chain: unsynced, a new snapshot is needed


class SnapshotOutcome(StrEnum):
    SYNCED = "synced"  # the book starts from it (buffered events applied)
    WAITING = "waiting"  # every buffered event is older: the next events decide
    REFUSED = "refused"  # older than the buffered events: fetch another one
    REFRESHED = "refreshed"  # the synced book was replaced by it
    REFRESH_PENDING = "refresh_pending"  # ahead of the synced book: replaces it when bridged
    IGNORED = "ignored"  # a refresh that cannot be bridged (too old): the running book stays


class OrderBook:
    """One symbol's book. ``synced`` says whether its levels can be trusted; ``last_u`` is
    the last applied update id. See the module docstring for the procedure."""

    def __init__(self, symbol: str, *, buffer_limit: int = BUFFER_LIMIT, recent_limit: int = RECENT_LIMIT) -> None:
        self.symbol = symbol
        self.bids: dict[float, float] = {}
        self.asks: dict[float, float] = {}
        self.synced = False
        self.last_u: int | None = None
        self._buffer: deque[DepthUpdate] = deque(maxlen=buffer_limit)
        self._recent: deque[DepthUpdate] = deque(maxlen=recent_limit)
        self._waiting: DepthSnapshot | None = None  # a snapshot newer than the buffer
        self._refresh: DepthSnapshot | None = None  # a refresh ahead of the synced book
        self.snapshot_E: int | None = None  # exchange time of the snapshot the book runs on
        # Synced periods in exchange time: [E of the first event applied after a snapshot,
        # E of the last one applied before a break (None while synced)].
        self.periods: list[list[int | None]] = []
        self.last_applied_E: int | None = None
        self.bridged_by: DepthUpdate | None = None  # the event that started the book (U ≤ L ≤ u)
        # Counters, for the collector's log and the tests.
        self.breaks = 0
        self.refused = 0
        self.dropped = 0
        self.mismatches = 0
        self.last_break: str | None = None

    # ------------------------------------------------------------------ state

    @property
    def needs_snapshot(self) -> bool:
        """Unsynced and not waiting on a snapshot already received."""
        return not self.synced and self._waiting is None

    def reset(self) -> None:
        """Forget everything (a new process, or a replay crossing one)."""
        self._unsync("reset")
        self.bids.clear()
        self.asks.clear()
        self.synced = False
        self.last_u = None
        self._buffer.clear()
        self._recent.clear()
        self._waiting = self._refresh = None

    def _unsync(self, reason: str) -> None:
        if self.synced and self.periods and self.periods[-1][1] is None:
            self.periods[-1][1] = self.last_applied_E
        self.synced = False
        self.last_break = reason
        self._recent.clear()
        self._refresh = None

    # ------------------------------------------------------------------ events

    def on_depth(self, event: DepthUpdate) -> DepthOutcome:
        """Take one depth event (in arrival order)."""
        if self.synced:
            last = self.last_u
            assert last is not None
            if event.u <= last:
                return DepthOutcome.DUPLICATE
            if event.pu != last:
                self.breaks += 1
                self._unsync(f"pu {event.pu} ≠ previous u {last} (U={event.U}, u={event.u}, E={event.E})")
                self._buffer.clear()
                self._buffer.append(event)
                return DepthOutcome.BROKE
            self._apply(event)
            if self._refresh is not None:
                self._bridge_refresh(event)
            return DepthOutcome.APPLIED
        if self._buffer and event.u <= self._buffer[-1].u:
            return DepthOutcome.DUPLICATE
        waiting = self._waiting
        if waiting is None:
            self._buffer.append(event)
            return DepthOutcome.BUFFERED
        if event.u < waiting.last_update_id:
            self.dropped += 1
            return DepthOutcome.DROPPED
        self._waiting = None
        if event.U > waiting.last_update_id:
            self.refused += 1
            self._unsync(
                f"snapshot lastUpdateId {waiting.last_update_id} is older than the first event after it "
                f"(U={event.U}, u={event.u}, E={event.E})"
            )
            self._buffer.clear()
            self._buffer.append(event)
            return DepthOutcome.BROKE
        self._start(waiting, [event])
        return DepthOutcome.APPLIED

    def on_snapshot(self, snapshot: DepthSnapshot) -> SnapshotOutcome:
        """Take a REST snapshot (see the module docstring)."""
        L = snapshot.last_update_id
        if self.synced:
            return self._take_refresh(snapshot)
        buffered = list(self._buffer)
        self._buffer.clear()
        keep = [e for e in buffered if e.u >= L]
        self.dropped += len(buffered) - len(keep)
        if not keep:
            self._waiting = snapshot
            return SnapshotOutcome.WAITING
        if keep[0].U > L:
            self.refused += 1
            self.last_break = (
                f"snapshot lastUpdateId {L} is older than the buffered events (first U={keep[0].U}, u={keep[0].u})"
            )
            self._buffer.extend(keep)
            return SnapshotOutcome.REFUSED
        self._start(snapshot, keep)
        return SnapshotOutcome.SYNCED

    # ------------------------------------------------------------------ internals

    def _start(self, snapshot: DepthSnapshot, events: list[DepthUpdate]) -> None:
        """Book = snapshot, then ``events`` (the first bridges L; the rest must chain)."""
        self._load(snapshot)
        self.synced = True
        self.last_u = None
        self._recent.clear()
        self.periods.append([events[0].E, None])
        self.bridged_by = events[0]
        first = True
        for i, event in enumerate(events):
            if not first and event.pu != self.last_u:
                self.breaks += 1
                self._unsync(f"pu {event.pu} ≠ previous u {self.last_u} (U={event.U}, u={event.u}, E={event.E})")
                self._buffer.extend(events[i:])
                return
            self._apply(event)
            first = False

    def _load(self, snapshot: DepthSnapshot) -> None:
        self.bids = {p: q for p, q in snapshot.bids if q > 0}
        self.asks = {p: q for p, q in snapshot.asks if q > 0}
        self.snapshot_E = snapshot.E

    def _apply(self, event: DepthUpdate) -> None:
        _apply_levels(self.bids, self.asks, event)
        self.last_u = event.u
        self.last_applied_E = event.E
        self._recent.append(event)

    def _take_refresh(self, snapshot: DepthSnapshot) -> SnapshotOutcome:
        L = snapshot.last_update_id
        assert self.last_u is not None
        if L > self.last_u:
            self._refresh = snapshot
            return SnapshotOutcome.REFRESH_PENDING
        recent = list(self._recent)
        start = next((i for i, e in enumerate(recent) if e.U <= L <= e.u), None)
        if start is None:
            return SnapshotOutcome.IGNORED
        self._replace(snapshot, recent[start:])
        return SnapshotOutcome.REFRESHED

    def _bridge_refresh(self, event: DepthUpdate) -> None:
        refresh = self._refresh
        assert refresh is not None
        L = refresh.last_update_id
        if event.u < L:
            return
        self._refresh = None
        if event.U <= L:
            self._replace(refresh, [event])

    def _replace(self, snapshot: DepthSnapshot, events: list[DepthUpdate]) -> None:
        """Rebuild from a refresh snapshot and the events after it; adopt it if they chain."""
        top_before = (self.best_bid(), self.best_ask())
        running = (self.bids, self.asks, self.last_u, self.snapshot_E)
        self.bids, self.asks = {}, {}
        self._load(snapshot)
        previous: int | None = None
        for event in events:
            if previous is not None and event.pu != previous:
                self.bids, self.asks, self.last_u, self.snapshot_E = running  # keep the running book
                return
            _apply_levels(self.bids, self.asks, event)
            previous = event.u
        if (self.best_bid(), self.best_ask()) != top_before:
            self.mismatches += 1

    # ------------------------------------------------------------------ reading

    def synced_across(self, minute: int, end: int) -> bool:
        """Whether the book was synced from before ``minute`` to ``end`` (exchange ms): its
        first event after a snapshot came before the minute, and it had not broken before
        an event at or after ``end`` was applied (a book still synced counts: no break seen)."""
        return any(
            start is not None and start < minute and (stop is None or stop >= end) for start, stop in self.periods
        )

    def prune_periods(self, before: int) -> None:
        """Forget synced periods that ended before ``before``."""
        self.periods = [p for p in self.periods if p[1] is None or p[1] >= before]

    def best_bid(self) -> Level | None:
        if not self.bids:
            return None
        p = max(self.bids)
        return p, self.bids[p]

    def best_ask(self) -> Level | None:
        if not self.asks:
            return None
        p = min(self.asks)
        return p, self.asks[p]

    def impact_buy(self, quote: float = IMPACT_QUOTE) -> float | None:
        """(average fill − mid) / mid of a market buy spending ``quote`` on the asks from the
        best; None when the book is unsynced, a side is empty, or the asks cannot fill it."""
        if not self.synced or not self.bids or not self.asks:
            return None
        levels = heapq.nsmallest(_WALK_LEVELS, self.asks.items())
        fill = _walk(levels, quote)
        if fill is None and len(self.asks) > _WALK_LEVELS:
            fill = _walk(sorted(self.asks.items()), quote)
        if fill is None:
            return None
        mid = (max(self.bids) + levels[0][0]) / 2
        return (fill - mid) / mid


def _walk(asks: list[Level], quote: float) -> float | None:
    """Average fill price of spending ``quote`` on ``asks`` (ascending), or None if they run out."""
    spent = base = 0.0
    for price, qty in asks:
        notional = price * qty
        if spent + notional >= quote:
            base += (quote - spent) / price
            return quote / base
        spent += notional
        base += qty
    return None


def _apply_levels(bids: dict[float, float], asks: dict[float, float], event: DepthUpdate) -> None:
    """The event's levels into the book, in place: quantities are absolute, 0 removes the level.
    (Two plain loops: a loop over the sides costs ~12 % more on this hot path.)"""
    for p, q in event.bids:
        if q == 0.0:
            bids.pop(p, None)
        else:
            bids[p] = q
    for p, q in event.asks:
        if q == 0.0:
            asks.pop(p, None)
        else:
            asks[p] = q
