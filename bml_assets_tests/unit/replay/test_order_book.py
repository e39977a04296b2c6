"""The synthetic order book (bml_assets.replay.order_book): update ids that chain,
snapshots a client syncs with by Binance's rules, and books that the updates
reproduce. The book is rebuilt here from the updates with a plain dict, the way a
client does it, never with the model's own code."""

from __future__ import annotations

import itertools
from datetime import date

import numpy as np
import pytest

from bml_assets.replay.market import MarketConfig, SyntheticMarket, day_ms
from bml_assets.replay.order_book import BookSnapshot, BookUpdate, OrderBookModel

DAY = date(2024, 3, 5)
T0 = day_ms(DAY) + 10 * 3_600_000  # 10:00 UTC
DOWNTIME_DAY = date(2024, 3, 6)
MARKET = SyntheticMarket(
    MarketConfig(seed=7, listing_dates={"NEWUSDT": DAY}, downtime={("BTCUSDT", DOWNTIME_DAY): ((600, 2),)})
)
BOOK = OrderBookModel(MARKET)


class LocalBook:
    """A client's book: absolute quantities, 0 removes the level."""

    def __init__(self, snapshot: BookSnapshot) -> None:
        self.bids = dict(snapshot.bids)
        self.asks = dict(snapshot.asks)

    def apply(self, update: BookUpdate) -> None:
        for side, levels in ((self.bids, update.bids), (self.asks, update.asks)):
            for price, qty in levels:
                if qty == 0:
                    side.pop(price, None)
                else:
                    side[price] = qty


def test_updates_chain_and_keep_to_their_slots() -> None:
    updates = BOOK.updates("BTCUSDT", T0, T0 + 5_000)
    assert 50 <= len(updates) <= 200  # about 20 a second
    for before, after in itertools.pairwise(updates):
        assert after.prev_id == before.last_id
        assert after.first_id > before.last_id
        assert 0 < after.slot - before.slot <= 32  # never more than 320 ms apart
    for u in updates:
        assert 1 <= u.last_id - u.first_id <= 31
        assert u.slot * 10 <= u.transaction_ms <= u.slot * 10 + 5
        assert 1 <= u.event_ms - u.transaction_ms <= 4
        assert T0 <= u.slot * 10 < T0 + 5_000
        assert all(a[0] < b[0] for a, b in zip(u.bids, u.bids[1:], strict=False))  # prices ascending
        assert all(a[0] < b[0] for a, b in zip(u.asks, u.asks[1:], strict=False))
    events = [u.event_ms for u in updates]
    assert events == sorted(events) and len(set(events)) == len(events)


def test_same_numbers_whatever_the_order_of_asking() -> None:
    forwards = BOOK.updates("ETHUSDT", T0, T0 + 3_000)
    other = OrderBookModel(SyntheticMarket(MarketConfig(seed=7)))
    backwards = [
        u for second in (2, 1, 0) for u in other.updates("ETHUSDT", T0 + second * 1000, T0 + (second + 1) * 1000)
    ]
    assert sorted(backwards, key=lambda u: u.slot) == forwards
    assert OrderBookModel(SyntheticMarket(MarketConfig(seed=8))).updates("ETHUSDT", T0, T0 + 3_000) != forwards


def test_golden_first_update_of_a_btc_morning() -> None:
    first = BOOK.updates("BTCUSDT", T0, T0 + 1_000)[0]
    assert (first.first_id, first.last_id, first.prev_id) == (10942050717724, 10942050717743, 10942050717028)
    assert (first.transaction_ms, first.event_ms) == (T0 + 1, T0 + 2)
    assert (first.best_bid, first.best_bid_qty, first.best_ask, first.best_ask_qty) == (773923, 125, 773924, 126)


def test_snapshot_syncs_by_binance_rules_and_the_updates_rebuild_every_later_snapshot() -> None:
    snapshot = BOOK.snapshot("BTCUSDT", T0 + 1_234, 1000)
    assert snapshot is not None
    book = LocalBook(snapshot)
    updates = BOOK.updates("BTCUSDT", T0, T0 + 6_000)
    kept = [u for u in updates if u.last_id >= snapshot.last_update_id]
    dropped = [u for u in updates if u.last_id < snapshot.last_update_id]
    # The first kept update straddles L; every dropped one happened by the instant asked.
    assert kept[0].first_id == snapshot.last_update_id <= kept[0].last_id
    assert kept[0].transaction_ms > T0 + 1_234 >= dropped[-1].transaction_ms
    assert snapshot.transaction_ms == dropped[-1].transaction_ms
    checked = 0
    for before, update in itertools.pairwise(kept):
        book.apply(before)
        assert max(book.bids) == before.best_bid and book.bids[before.best_bid] == before.best_bid_qty
        assert min(book.asks) == before.best_ask and book.asks[before.best_ask] == before.best_ask_qty
        if before.slot % 7 == 0:  # now and then, compare the whole book with a fresh snapshot
            later = BOOK.snapshot("BTCUSDT", update.transaction_ms - 1, 1000)
            assert later is not None and later.last_update_id == update.first_id
            assert (book.bids, book.asks) == (dict(later.bids), dict(later.asks))
            checked += 1
    assert checked >= 5


def test_snapshot_levels_and_limit() -> None:
    snapshot = BOOK.snapshot("ETHUSDT", T0, 1000)
    small = BOOK.snapshot("ETHUSDT", T0, 5)
    assert snapshot is not None and small is not None
    assert 600 <= len(snapshot.bids) <= 900 and 600 <= len(snapshot.asks) <= 900  # 1000 levels, 75 % present
    assert small.bids == snapshot.bids[:5] and small.asks == snapshot.asks[:5]
    assert [p for p, _ in snapshot.bids] == sorted((p for p, _ in snapshot.bids), reverse=True)
    assert [p for p, _ in snapshot.asks] == sorted(p for p, _ in snapshot.asks)
    assert snapshot.bids[0][0] < snapshot.asks[0][0]
    assert all(q > 0 for _, q in snapshot.bids + snapshot.asks)


def test_the_book_sits_around_the_last_trade() -> None:
    trades = MARKET.trade_arrays("BTCUSDT", DAY)
    for u in BOOK.updates("BTCUSDT", T0, T0 + 60_000):
        i = int(np.searchsorted(trades.transact_time, u.slot * 10, side="right")) - 1
        last_trade = int(trades.price[i]) if i >= 0 else trades.open_ticks
        assert u.best_bid <= last_trade <= u.best_ask
        assert u.best_bid < u.best_ask


def test_no_updates_in_downtime_and_the_chain_goes_over_it() -> None:
    down = day_ms(DOWNTIME_DAY) + 600 * 60_000  # 10:00-10:02 is downtime
    assert BOOK.updates("BTCUSDT", down, down + 120_000) == []
    before = BOOK.updates("BTCUSDT", down - 1_000, down)[-1]
    after = BOOK.updates("BTCUSDT", down + 120_000, down + 121_000)[0]
    assert after.prev_id == before.last_id
    snapshot = BOOK.snapshot("BTCUSDT", down + 60_000, 10)
    assert snapshot is not None and snapshot.last_update_id == after.first_id
    assert snapshot.transaction_ms == before.transaction_ms


def test_nothing_before_listing() -> None:
    listing = day_ms(DAY)
    assert BOOK.updates("NEWUSDT", listing - 5_000, listing) == []
    assert BOOK.snapshot("NEWUSDT", listing - 1, 10) is None
    first = BOOK.updates("NEWUSDT", listing, listing + 1_000)[0]
    assert first.prev_id == 0 and first.slot * 10 >= listing
    assert len(first.bids) > 500  # the whole book is new


def test_bad_level_count() -> None:
    with pytest.raises(ValueError, match="levels"):
        OrderBookModel(MARKET, levels=0)
