"""The synthetic market's streams: the frames any stream pushes in any time range.

What belongs here: ``SyntheticStreams``, for a stream (``streams.StreamName``) of a
symbol in the market's universe and a range of market time, the frames the
exchange would push, each sent at its event time ``E``:

* ``depth`` (``@0ms``: one event per book update; ``@100ms``/``@250ms``/``@500ms``:
  one per window of that length holding updates, U the window's first update's
  U, u its last update's u, pu the u before the window, every level any of its
  updates touched at its final quantity; ``E`` = the window's end + 0-4 ms) from
  ``order_book.py``, so ``/fapi/v1/depth`` at any instant syncs with them;
* ``bookTicker``: one event per book update that changed the top, with that
  update's u, T and E, showing the book's top after it;
* ``aggTrade``: the market's aggTrades themselves (the rows REST
  ``/fapi/v1/aggTrades`` and the Vision files serve), ``E`` = T + 1-8 ms and never
  before the previous trade's, so they go out in id order;
* ``markPrice`` (``@1s`` every second, plain every 3 s; ``E`` = the second + 0-3 ms):
  ``p``/``i`` the mark/index kline close so far at ``E`` and ``r``/``T`` the
  predicted funding rate and next funding time, exactly what REST
  ``/fapi/v1/premiumIndex`` answers at ``E`` (``P``, the estimated settle price,
  is the index, as there);
* ``forceOrder``: synthetic liquidations, at most one per symbol per second (as
  the exchange pushes them): in 5 % of the seconds a liquidation with T in that
  second, pushed at the next second (``E`` = T's second + 1 s + 0-4 ms), side and
  size drawn per second (notional log-uniform in 500-500 000), average price
  within 0.05 % of the last trade on the losing side, order price 1 % beyond it.

Nothing happens in downtime minutes or before listing (the exchange produced
nothing; the push of what happened just before may land in its first second); ``trade`` and ``kline`` streams are not synthesised (silent). Every
number is a pure function of (seed, symbol, instant), so the frames of a range
are the same whoever asks and in whatever order; they are cached by second.

What stays out: the book model (``order_book.py``), the REST answers it agrees
with (``rest/endpoints.py``), stream names (``streams.py``), sockets and faults
(``service.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable
from datetime import date, timedelta

import numpy as np

from bml_assets.domain.minutes import DAY_MS, MINUTE_MS
from bml_assets.domain.streams import Stream
from bml_assets.replay.columns import fmt_units
from bml_assets.replay.market import SyntheticMarket
from bml_assets.replay.order_book import SLOT_MS, BookUpdate, OrderBookModel
from bml_assets.replay.rest.endpoints import RestApi, next_funding_time
from bml_assets.replay.ws.streams import RANK, Frame, Kind, StreamName

SECOND_MS = 1000
SERVED_KINDS = frozenset({Kind.DEPTH, Kind.BOOK_TICKER, Kind.AGG_TRADE, Kind.MARK_PRICE, Kind.FORCE_ORDER})
LIQUIDATION_SHARE = 0.05
_AGG_TRADE_DELAY_MS = 8  # E − T of an aggTrade: 1 … this
_PUSH_JITTER_MS = 5
_EPOCH = date(1970, 1, 1)


def _envelope(stream: str, data: str) -> str:
    # Stream names reaching here matched streams._NAME: no quoting needed.
    return f'{{"stream":"{stream}","data":{data}}}'


class SyntheticStreams:
    """The frames of the synthetic market's streams (see the module docstring)."""

    def __init__(
        self, market: SyntheticMarket, order_book: OrderBookModel, rest: RestApi, cache_seconds: int = 4096
    ) -> None:
        self.market = market
        self.order_book = order_book
        self.rest = rest
        self._second = functools.lru_cache(maxsize=cache_seconds)(self._compute_second)
        self._day_events = functools.lru_cache(maxsize=8)(self._agg_trade_events)

    def serves(self, stream: StreamName) -> bool:
        """Whether this market has ``stream``: a kind it synthesises, a symbol of its universe."""
        return stream.kind in SERVED_KINDS and self.market.is_known_symbol(stream.symbol)

    def frames(self, stream: StreamName, after_ms: int, until_ms: int) -> list[Frame]:
        """The frames of ``stream`` sent in ``(after_ms, until_ms]``, in order."""
        out: list[Frame] = []
        if until_ms <= after_ms:
            return out
        for second in range((after_ms + 1) // SECOND_MS, until_ms // SECOND_MS + 1):
            out.extend(f for f in self._second(stream, second) if after_ms < f.at_ms <= until_ms)
        return out

    # --- one second of one stream ------------------------------------------------------------

    def _compute_second(self, stream: StreamName, second: int) -> tuple[Frame, ...]:
        start, end = second * SECOND_MS, (second + 1) * SECOND_MS
        if stream.kind is Kind.DEPTH:
            frames = list(self._depth(stream, start, end))
        elif stream.kind is Kind.BOOK_TICKER:
            frames = list(self._book_ticker(stream, start, end))
        elif stream.kind is Kind.AGG_TRADE:
            frames = list(self._agg_trades(stream, start, end))
        elif stream.kind is Kind.MARK_PRICE:
            frames = list(self._mark_price(stream, second))
        elif stream.kind is Kind.FORCE_ORDER:
            frames = list(self._force_order(stream, second))
        else:
            frames = []
        frames.sort(key=lambda f: f.order)
        return tuple(frames)

    def _live_at(self, symbol: str, instant_ms: int) -> bool:
        day = _EPOCH + timedelta(days=instant_ms // DAY_MS)
        return bool(self.market.live_minutes(symbol, day)[(instant_ms % DAY_MS) // MINUTE_MS])

    def _levels(self, levels: Iterable[tuple[int, int]], symbol: str) -> str:
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        return "[" + ",".join(f'["{fmt_units(p, pd)}","{fmt_units(q, qd)}"]' for p, q in levels) + "]"

    def _depth_frame(
        self,
        stream: StreamName,
        event_ms: int,
        first: BookUpdate,
        last: BookUpdate,
        bids: Iterable[tuple[int, int]],
        asks: Iterable[tuple[int, int]],
    ) -> Frame:
        symbol = stream.symbol
        data = (
            f'{{"e":"depthUpdate","E":{event_ms},"T":{last.transaction_ms},"s":"{symbol}",'
            f'"U":{first.first_id},"u":{last.last_id},"pu":{first.prev_id},'
            f'"b":{self._levels(bids, symbol)},"a":{self._levels(asks, symbol)}}}'
        )
        return Frame(
            at_ms=event_ms,
            rank=RANK[Kind.DEPTH],
            seq=first.first_id,
            stream=stream.name,
            kind=Kind.DEPTH,
            event_ms=event_ms,
            text=_envelope(stream.name, data),
            first_id=first.first_id,
            last_id=last.last_id,
        )

    def _depth(self, stream: StreamName, start: int, end: int) -> Iterable[Frame]:
        symbol, window = stream.symbol, stream.interval_ms
        if window == 0:
            # E ≤ the slot's start + 13 ms: start a little early, keep by E.
            for update in self.order_book.updates(symbol, start - 2 * SLOT_MS, end):
                if start <= update.event_ms < end:
                    yield self._depth_frame(stream, update.event_ms, update, update, update.bids, update.asks)
            return
        first_window = (start - _PUSH_JITTER_MS) // window - 1
        last_window = end // window
        groups: dict[int, list[BookUpdate]] = {}
        for update in self.order_book.updates(symbol, first_window * window, (last_window + 1) * window):
            groups.setdefault(update.slot * SLOT_MS // window, []).append(update)
        if not groups:
            return
        numbers = np.array(sorted(groups), dtype=np.int64)
        pushes = (numbers + 1) * window + (
            self.market.noise(symbol, f"depth-push-{window}", numbers) * _PUSH_JITTER_MS
        ).astype(np.int64)
        for number, event_ms in zip(numbers.tolist(), pushes.tolist(), strict=True):
            if not start <= event_ms < end:
                continue
            updates = groups[number]
            bids: dict[int, int] = {}
            asks: dict[int, int] = {}
            for update in updates:  # the last write of a level wins
                bids.update(update.bids)
                asks.update(update.asks)
            yield self._depth_frame(
                stream, event_ms, updates[0], updates[-1], sorted(bids.items()), sorted(asks.items())
            )

    def _book_ticker(self, stream: StreamName, start: int, end: int) -> Iterable[Frame]:
        symbol = stream.symbol
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        for u in self.order_book.updates(symbol, start - 2 * SLOT_MS, end):
            if not (u.top_changed and start <= u.event_ms < end):
                continue
            data = (
                f'{{"e":"bookTicker","u":{u.last_id},"s":"{symbol}",'
                f'"b":"{fmt_units(u.best_bid, pd)}","B":"{fmt_units(u.best_bid_qty, qd)}",'
                f'"a":"{fmt_units(u.best_ask, pd)}","A":"{fmt_units(u.best_ask_qty, qd)}",'
                f'"T":{u.transaction_ms},"E":{u.event_ms}}}'
            )
            yield Frame(
                u.event_ms,
                RANK[Kind.BOOK_TICKER],
                u.last_id,
                stream.name,
                Kind.BOOK_TICKER,
                u.event_ms,
                _envelope(stream.name, data),
                last_id=u.last_id,
            )

    def _agg_trade_events(self, symbol: str, epoch_day: int) -> np.ndarray:
        """E of each of the day's aggTrades: T + 1-8 ms, never before the previous
        trade's (a stream's E grow with its ids), within the day."""
        t = self.market.trade_arrays(symbol, _EPOCH + timedelta(days=epoch_day))
        delay = 1 + (self.market.noise(symbol, "aggtrade-E", t.agg_trade_id) * _AGG_TRADE_DELAY_MS).astype(np.int64)
        events = np.maximum.accumulate(t.transact_time + delay) if len(delay) else delay
        return np.minimum(events, (epoch_day + 1) * DAY_MS - 1)

    def _agg_trades(self, stream: StreamName, start: int, end: int) -> Iterable[Frame]:
        symbol = stream.symbol
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        lo = start - _AGG_TRADE_DELAY_MS
        for epoch_day in range(lo // DAY_MS, (end - 1) // DAY_MS + 1):
            t = self.market.trade_arrays(symbol, _EPOCH + timedelta(days=epoch_day))
            i, j = np.searchsorted(t.transact_time, [lo, end])
            if j <= i:
                continue
            ids = t.agg_trade_id[i:j]
            events = self._day_events(symbol, epoch_day)[i:j]
            for k in np.flatnonzero((events >= start) & (events < end)).tolist():
                a, event_ms = int(ids[k]), int(events[k])
                data = (
                    f'{{"e":"aggTrade","E":{event_ms},"a":{a},"s":"{symbol}",'
                    f'"p":"{fmt_units(t.price[i + k], pd)}","q":"{fmt_units(t.quantity[i + k], qd)}",'
                    f'"f":{int(t.first_trade_id[i + k])},"l":{int(t.last_trade_id[i + k])},'
                    f'"T":{int(t.transact_time[i + k])},"m":{"true" if t.is_buyer_maker[i + k] else "false"}}}'
                )
                yield Frame(
                    event_ms,
                    RANK[Kind.AGG_TRADE],
                    a,
                    stream.name,
                    Kind.AGG_TRADE,
                    event_ms,
                    _envelope(stream.name, data),
                )

    def _jitter(self, symbol: str, purpose: str, value: int, span: int) -> int:
        return int(self.market.noise(symbol, purpose, np.array([value], dtype=np.int64))[0] * span)

    def _mark_price(self, stream: StreamName, second: int) -> Iterable[Frame]:
        symbol = stream.symbol
        if (second * SECOND_MS) % stream.interval_ms:
            return
        event_ms = second * SECOND_MS + self._jitter(symbol, "markprice-E", second, 4)
        if not self._live_at(symbol, event_ms):
            return
        mark, mark_d = self.rest.price_now(symbol, Stream.MARK_PRICE_KLINES, event_ms)
        index, index_d = self.rest.price_now(symbol, Stream.INDEX_PRICE_KLINES, event_ms)
        rate = self.rest.predicted_funding_units(symbol, event_ms)
        data = (
            f'{{"e":"markPriceUpdate","E":{event_ms},"s":"{symbol}","p":"{fmt_units(mark, mark_d)}",'
            f'"i":"{fmt_units(index, index_d)}","P":"{fmt_units(index, index_d)}","r":"{fmt_units(rate, 8)}",'
            f'"T":{next_funding_time(event_ms)}}}'
        )
        yield Frame(
            event_ms, RANK[Kind.MARK_PRICE], 0, stream.name, Kind.MARK_PRICE, event_ms, _envelope(stream.name, data)
        )

    def _force_order(self, stream: StreamName, second: int) -> Iterable[Frame]:
        symbol = stream.symbol
        traded = second - 1  # the second the liquidation happened in; pushed in the next one
        if self._jitter(symbol, "liq", traded, 1_000_000) >= LIQUIDATION_SHARE * 1_000_000:
            return
        transaction_ms = traded * SECOND_MS + self._jitter(symbol, "liq-T", traded, SECOND_MS)
        if not self._live_at(symbol, transaction_ms):
            return
        event_ms = second * SECOND_MS + self._jitter(symbol, "liq-E", traded, _PUSH_JITTER_MS)
        inst = self.market.instrument(symbol)
        pd, qd = inst.price_decimals, inst.qty_decimals
        ref = int(self.order_book.reference_ticks(symbol, np.array([transaction_ms]))[0])
        sell = self._jitter(symbol, "liq-side", traded, 2) == 0  # SELL: a long position liquidated
        draws = self.market.noise(symbol, "liq-size", np.array([traded, traded + (1 << 40)], dtype=np.int64))
        notional = 500.0 * 1000.0 ** float(draws[0])
        qty = max(1, round(notional / (ref * 10.0 ** -(pd + qd))))
        slip = round(ref * 0.0005 * float(draws[1]))
        average = max(1, ref - slip) if sell else ref + slip
        order_price = math.floor(ref * 0.99) if sell else math.ceil(ref * 1.01)
        q = fmt_units(qty, qd)
        order = (
            f'{{"s":"{symbol}","S":"{"SELL" if sell else "BUY"}","o":"LIMIT","f":"IOC","q":"{q}",'
            f'"p":"{fmt_units(max(1, order_price), pd)}","ap":"{fmt_units(average, pd)}","X":"FILLED",'
            f'"l":"{q}","z":"{q}","T":{transaction_ms}}}'
        )
        data = f'{{"e":"forceOrder","E":{event_ms},"o":{order}}}'
        yield Frame(
            event_ms, RANK[Kind.FORCE_ORDER], 0, stream.name, Kind.FORCE_ORDER, event_ms, _envelope(stream.name, data)
        )
