"""The synthetic market's order book: its levels and update ids at any instant.

What belongs here: ``OrderBookModel``, the depth book of every symbol of a
``SyntheticMarket`` as the exchange's matching engine would publish it: the book
updates in a time range (``updates``: ids U/u/pu, times T/E, the levels each one
changed, the top after it) and the book at an instant (``snapshot``, what
``/fapi/v1/depth`` answers). The WebSocket depth and bookTicker streams
(``ws/synthetic.py``) and the REST snapshot (``rest/endpoints.py``) both read it,
so a client that syncs by Binance's rules finds every id where it should be.

What stays out: the trades the book sits around (``market.py``), JSON and stream
frames (``ws/``, ``rest/``), the clock, HTTP.

The model; every number is a pure function of (seed, symbol, slot), so any range
can be asked for in any order:

* Time is cut into 10 ms slots. A slot holds one book update (one batch of the
  matching engine) when its hash says so (20 %) or its number is a multiple of 32:
  about 20 updates a second, never more than 320 ms apart; none in downtime or
  before listing.
* Slot n's update spans the ids U..u with ``base + 64n < U < u < base + 64(n+1)``:
  growing and gappy (other books' changes take the ids between), as on the
  exchange. Its transaction time T is the slot's start + 0..5 ms, its event time
  E is T + 1..4 ms (within the slot: E grows with the ids).
* The top: the last aggTrade price at or before the slot's start (the day's open
  before its first trade) is the reference; the best bid is it or a tick below,
  the best ask it or a tick above (always above the bid), redrawn every 0.5 s.
* Levels: ``levels`` (1000) price levels on each side, from the best outwards one
  tick apart. The ten levels nearest the best are busy: the level d ticks from its
  side's best is redrawn every 4 + 4d slots (the top every 40 ms), so they reshuffle
  when the top moves; every other level is redrawn at a pace of its own price,
  every 10-100 s. A level is present with probability 0.75 (the best always) with
  a notional log-uniform in 2 000-200 000 quote units, on the lot grid. A level
  that leaves the window as the top moves is removed. An update changes about 15
  levels (real BTCUSDT ``depth@0ms`` events carry 10-50).
* An update's changes are the levels whose quantity differs from the book after
  the previous update (quantity 0: removed), prices ascending on both sides.
* The snapshot at instant t is the book after the last update with T ≤ t. Its
  ``lastUpdateId`` is the U of the next update: that id is the update's first
  internal change and touches no level (u > U always), so the book is exactly the
  state at U, and Binance's rule (drop u < L, first event U ≤ L ≤ u) always finds
  its first event in a stream subscribed before the request — that event is sent
  after t (its T > t). A snapshot equal to the last update's u would leave a client
  that subscribed after that update was sent with no event to start from.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

from bml_assets.domain.minutes import DAY_MS, MINUTE_MS, MINUTES_PER_DAY
from bml_assets.replay.market import SyntheticMarket, day_ms

SLOT_MS = 10
SLOTS_PER_BLOCK = 100  # one second: the unit of generation and caching
UPDATE_SHARE = 0.2
FORCED_EVERY = 32
ID_STRIDE = 64
BOOK_LEVELS = 1000
TOP_REDRAW_SLOTS = 50
LEVEL_PRESENT = 0.75
NEAR_LEVELS = 10
FAR_PERIOD_SLOTS = 1000  # far levels are redrawn every 1 000-10 000 slots
_MIN_NOTIONAL = 2_000.0
_NOTIONAL_SPAN = 100.0  # log-uniform from _MIN_NOTIONAL to 100 × that
_SEARCH_SLOTS = 512
_MAX_SEARCH_DAYS = 3660
_EPOCH = date(1970, 1, 1)


@dataclass(frozen=True)
class BookUpdate:
    """One update of a symbol's book: its ids and times, the levels it changed
    (``(price ticks, quantity lots)``, prices ascending, quantity 0 = removed) and
    the top of the book after it (what a bookTicker event with this ``u`` shows)."""

    slot: int
    first_id: int  # U
    last_id: int  # u
    prev_id: int  # pu: the previous update's u (0 before the first)
    transaction_ms: int  # T
    event_ms: int  # E
    bids: tuple[tuple[int, int], ...]
    asks: tuple[tuple[int, int], ...]
    best_bid: int
    best_bid_qty: int
    best_ask: int
    best_ask_qty: int
    top_changed: bool  # whether the top (either side's price or quantity) differs from before


@dataclass(frozen=True)
class BookSnapshot:
    """The book at an instant: ``last_update_id`` (L), the T of the last update in
    it, bids by price descending and asks ascending, as ``(ticks, lots)``."""

    last_update_id: int
    transaction_ms: int
    bids: tuple[tuple[int, int], ...]
    asks: tuple[tuple[int, int], ...]


class OrderBookModel:
    """The depth books of ``market``'s symbols (see the module docstring)."""

    def __init__(self, market: SyntheticMarket, levels: int = BOOK_LEVELS, cache_blocks: int = 512) -> None:
        if levels < 1:
            raise ValueError(f"levels must be at least 1, not {levels}")
        self.market = market
        self.levels = levels
        # Blocks are deterministic: a rare double computation in two threads is harmless.
        self._block = functools.lru_cache(maxsize=cache_blocks)(self._compute_block)
        self._day_mask = functools.lru_cache(maxsize=64)(self._compute_day_mask)

    # --- which slots hold an update ---------------------------------------------------

    def _compute_day_mask(self, symbol: str, epoch_day: int) -> np.ndarray:
        return self.market.live_minutes(symbol, _EPOCH + timedelta(days=epoch_day))

    def _live(self, symbol: str, slots: np.ndarray) -> np.ndarray:
        minutes = slots * SLOT_MS // MINUTE_MS
        days = minutes // MINUTES_PER_DAY
        live = np.zeros(len(slots), dtype=bool)
        for day in np.unique(days).tolist():
            here = days == day
            live[here] = self._day_mask(symbol, int(day))[minutes[here] - day * MINUTES_PER_DAY]
        return live

    def _active(self, symbol: str, slots: np.ndarray) -> np.ndarray:
        chosen = (slots % FORCED_EVERY == 0) | (self.market.noise(symbol, "book-slot", slots) < UPDATE_SHARE)
        return chosen & self._live(symbol, slots)

    def _first_slot(self, symbol: str) -> int:
        return day_ms(self.market.listing_date(symbol)) // SLOT_MS

    def _live_end_before(self, symbol: str, slot: int) -> int | None:
        """The slot just after the last live minute that starts before ``slot``."""
        minute = slot * SLOT_MS // MINUTE_MS
        day = minute // MINUTES_PER_DAY
        first_day = self._first_slot(symbol) * SLOT_MS // DAY_MS
        while day >= first_day:
            mask = self._day_mask(symbol, day)
            limit = min(MINUTES_PER_DAY, minute - day * MINUTES_PER_DAY + 1)
            live = np.flatnonzero(mask[: max(0, limit)])
            if live.size:
                end_minute = day * MINUTES_PER_DAY + int(live[-1]) + 1
                return min(slot, end_minute * MINUTE_MS // SLOT_MS)
            day -= 1
        return None

    def _live_start_from(self, symbol: str, slot: int) -> int:
        """The first slot of the first live minute that ends after ``slot``."""
        slot = max(slot, self._first_slot(symbol))
        minute = slot * SLOT_MS // MINUTE_MS
        day = minute // MINUTES_PER_DAY
        for _ in range(_MAX_SEARCH_DAYS):
            mask = self._day_mask(symbol, day)
            start = max(0, minute - day * MINUTES_PER_DAY)
            live = np.flatnonzero(mask[start:])
            if live.size:
                first_minute = day * MINUTES_PER_DAY + start + int(live[0])
                return max(slot, first_minute * MINUTE_MS // SLOT_MS)
            day += 1
        raise ValueError(f"{symbol}: no live minute within {_MAX_SEARCH_DAYS} days after slot {slot}")

    def previous_update_slot(self, symbol: str, slot: int) -> int | None:
        """The last slot before ``slot`` holding an update, None before the first."""
        floor = self._first_slot(symbol)
        hi = slot
        while hi > floor:
            lo = max(floor, hi - _SEARCH_SLOTS)
            slots = np.arange(lo, hi, dtype=np.int64)
            active = self._active(symbol, slots)
            if active.any():
                return int(slots[active][-1])
            if self._live(symbol, slots).any():
                hi = lo
            else:
                end = self._live_end_before(symbol, lo)
                if end is None:
                    return None
                hi = end
        return None

    def next_update_slot(self, symbol: str, slot: int) -> int:
        """The first slot after ``slot`` holding an update."""
        lo = slot + 1
        for _ in range(_MAX_SEARCH_DAYS * 24 * 60):
            lo = self._live_start_from(symbol, lo)
            slots = np.arange(lo, lo + _SEARCH_SLOTS, dtype=np.int64)
            active = self._active(symbol, slots)
            if active.any():
                return int(slots[active][0])
            lo += _SEARCH_SLOTS
        raise ValueError(f"{symbol}: no book update after slot {slot}")

    # --- ids, times and books of given slots -------------------------------------------------

    def _ids(self, symbol: str, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        base = (self.market.noise(symbol, "book-id-base", np.zeros(1, np.int64))[0] * 1e6).astype(np.int64) * 4096
        a = 1 + (self.market.noise(symbol, "book-U", slots) * 31).astype(np.int64)
        b = 1 + (self.market.noise(symbol, "book-u", slots) * 31).astype(np.int64)
        first = base + slots * ID_STRIDE + a
        return first, first + b

    def _times(self, symbol: str, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # T ≤ start + 5 and E ≤ T + 4 keep E inside the slot: a stream's E grow with its ids.
        transaction = slots * SLOT_MS + (self.market.noise(symbol, "book-T", slots) * 6).astype(np.int64)
        return transaction, transaction + 1 + (self.market.noise(symbol, "book-E", slots) * 4).astype(np.int64)

    def reference_ticks(self, symbol: str, instants: np.ndarray) -> np.ndarray:
        """The price (ticks) the book sits around at each instant (ms): the last
        aggTrade at or before it, the day's open before the day's first trade."""
        instants = np.asarray(instants, dtype=np.int64)
        ref = np.empty(len(instants), dtype=np.int64)
        days = instants // DAY_MS
        for epoch_day in np.unique(days).tolist():
            here = days == epoch_day
            trades = self.market.trade_arrays(symbol, _EPOCH + timedelta(days=int(epoch_day)))
            i = np.searchsorted(trades.transact_time, instants[here], side="right") - 1
            if len(trades.price):
                ref[here] = np.where(i >= 0, trades.price[np.maximum(i, 0)], trades.open_ticks)
            else:
                ref[here] = trades.open_ticks
        return ref

    def _books(self, symbol: str, slots: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(best bid, best ask, bid quantities, ask quantities) after each slot's
        update; quantities are (slots × levels), level d = d ticks from the best."""
        inst = self.market.instrument(symbol)
        ref = self.reference_ticks(symbol, slots * SLOT_MS)
        redraw = slots // TOP_REDRAW_SLOTS
        best_bid = np.maximum(1, ref - (self.market.noise(symbol, "book-bid-offset", redraw) < 0.5))
        best_ask = np.maximum(best_bid + 1, ref + (self.market.noise(symbol, "book-ask-offset", redraw) < 0.5))
        depth = np.arange(self.levels, dtype=np.int64)
        near = depth[None, :] < NEAR_LEVELS
        unit_value = 10.0 ** -(inst.price_decimals + inst.qty_decimals)  # one tick × one lot

        def side(name: str, prices: np.ndarray) -> np.ndarray:
            lo, hi = int(prices.min()), int(prices.max())
            span = np.arange(lo, hi + 1, dtype=np.int64)
            far_period = np.rint(FAR_PERIOD_SLOTS * 10 ** self.market.noise(symbol, f"book-period-{name}", span))
            period = np.where(near, 4 + 4 * depth[None, :], far_period.astype(np.int64)[prices - lo])
            phase_of = self.market.noise(symbol, f"book-phase-{name}", span)
            phase = (phase_of[prices - lo] * period).astype(np.int64)
            epoch = (slots[:, None] + phase) // period
            # One draw decides presence and size: below LEVEL_PRESENT the level is
            # there, and the draw rescaled to [0, 1) sets its notional.
            key = (prices % (1 << 23)) * (1 << 40) + epoch
            draw = self.market.noise(symbol, f"book-level-{name}", key.ravel()).reshape(key.shape)
            top = depth[None, :] == 0
            present = top | (draw < LEVEL_PRESENT)
            scaled = np.where(draw < LEVEL_PRESENT, draw / LEVEL_PRESENT, (draw - LEVEL_PRESENT) / (1 - LEVEL_PRESENT))
            notional = _MIN_NOTIONAL * _NOTIONAL_SPAN**scaled
            qty = np.maximum(1, np.rint(notional / (np.maximum(prices, 1) * unit_value))).astype(np.int64)
            return np.where(present & (prices > 0), qty, 0)

        bid_prices = best_bid[:, None] - depth[None, :]
        ask_prices = best_ask[:, None] + depth[None, :]
        return best_bid, best_ask, side("bid", bid_prices), side("ask", ask_prices)

    # --- updates ----------------------------------------------------------------------------

    def _compute_block(self, symbol: str, block: int) -> tuple[BookUpdate, ...]:
        slots = np.arange(block * SLOTS_PER_BLOCK, (block + 1) * SLOTS_PER_BLOCK, dtype=np.int64)
        active = slots[self._active(symbol, slots)]
        if not active.size:
            return ()
        previous = self.previous_update_slot(symbol, int(active[0]))
        with_previous = np.concatenate([[previous], active]) if previous is not None else active
        best_bid, best_ask, bid_qty, ask_qty = self._books(symbol, with_previous)
        first_ids, last_ids = self._ids(symbol, with_previous)
        transaction, event = self._times(symbol, with_previous)
        depth = np.arange(self.levels, dtype=np.int64)
        out: list[BookUpdate] = []
        start = 1 if previous is not None else 0
        for i in range(start, len(with_previous)):
            top = (int(best_bid[i]), int(bid_qty[i, 0]), int(best_ask[i]), int(ask_qty[i, 0]))
            if i == 0:  # the first update ever: everything is new
                bids = _changes(None, None, int(best_bid[i]) - depth, bid_qty[i])
                asks = _changes(None, None, int(best_ask[i]) + depth, ask_qty[i])
                prev_id, top_changed = 0, True
            else:
                bids = _changes(int(best_bid[i - 1]) - depth, bid_qty[i - 1], int(best_bid[i]) - depth, bid_qty[i])
                asks = _changes(int(best_ask[i - 1]) + depth, ask_qty[i - 1], int(best_ask[i]) + depth, ask_qty[i])
                prev_id = int(last_ids[i - 1])
                before = (int(best_bid[i - 1]), int(bid_qty[i - 1, 0]), int(best_ask[i - 1]), int(ask_qty[i - 1, 0]))
                top_changed = top != before
            out.append(
                BookUpdate(
                    slot=int(with_previous[i]),
                    first_id=int(first_ids[i]),
                    last_id=int(last_ids[i]),
                    prev_id=prev_id,
                    transaction_ms=int(transaction[i]),
                    event_ms=int(event[i]),
                    bids=bids,
                    asks=asks,
                    best_bid=top[0],
                    best_bid_qty=top[1],
                    best_ask=top[2],
                    best_ask_qty=top[3],
                    top_changed=top_changed,
                )
            )
        return tuple(out)

    def updates(self, symbol: str, start_ms: int, end_ms: int) -> list[BookUpdate]:
        """The updates of slots starting in ``[start_ms, end_ms)``, in order."""
        first, last = start_ms // SLOT_MS, -(-end_ms // SLOT_MS)  # slots [first, last)
        out: list[BookUpdate] = []
        for block in range(first // SLOTS_PER_BLOCK, -(-last // SLOTS_PER_BLOCK)):
            out.extend(u for u in self._block(symbol, block) if first <= u.slot < last)
        return out

    def snapshot(self, symbol: str, at_ms: int, limit: int) -> BookSnapshot | None:
        """The book after the last update with T ≤ ``at_ms`` (``limit`` present levels
        a side at most), or None before the symbol's first update."""
        slot = at_ms // SLOT_MS
        here = np.array([slot], dtype=np.int64)
        last: int | None = None
        if self._active(symbol, here)[0] and int(self._times(symbol, here)[0][0]) <= at_ms:
            last = slot
        else:
            last = self.previous_update_slot(symbol, slot)
        if last is None:
            return None
        following = self.next_update_slot(symbol, last)
        which = np.array([last], dtype=np.int64)
        best_bid, best_ask, bid_qty, ask_qty = self._books(symbol, which)
        depth = np.arange(self.levels, dtype=np.int64)
        bids = [(int(best_bid[0]) - d, q) for d, q in zip(depth.tolist(), bid_qty[0].tolist(), strict=True) if q > 0]
        asks = [(int(best_ask[0]) + d, q) for d, q in zip(depth.tolist(), ask_qty[0].tolist(), strict=True) if q > 0]
        first_id = int(self._ids(symbol, np.array([following], dtype=np.int64))[0][0])
        return BookSnapshot(
            last_update_id=first_id,
            transaction_ms=int(self._times(symbol, which)[0][0]),
            bids=tuple(bids[:limit]),
            asks=tuple(asks[:limit]),
        )


def _changes(
    old_prices: np.ndarray | None, old_qty: np.ndarray | None, new_prices: np.ndarray, new_qty: np.ndarray
) -> tuple[tuple[int, int], ...]:
    """The levels whose quantity differs between two books of one side (each given
    as prices and quantities, 0 = absent), as (price, new quantity), price ascending."""
    prices = new_prices if old_prices is None else np.concatenate([old_prices, new_prices])
    lo, hi = int(prices.min()), int(prices.max())
    before = np.zeros(hi - lo + 1, dtype=np.int64)
    after = np.zeros(hi - lo + 1, dtype=np.int64)
    if old_prices is not None and old_qty is not None:
        before[old_prices - lo] = old_qty
    after[new_prices - lo] = new_qty
    changed = np.flatnonzero(before != after)
    return tuple(zip((changed + lo).tolist(), after[changed].tolist(), strict=True))
