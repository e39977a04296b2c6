"""live/book.py: the real recording through the parsers and the book (numbers checked independently
on the recording and written out), and the §9 procedure on hand-made events."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from bml_assets.live.book import DepthOutcome, OrderBook, SnapshotOutcome
from bml_assets.live.frames import DepthSnapshot, DepthUpdate, FrameParser, parse_snapshot

L = 5123107852948


def test_the_btcusdt_recording_syncs_chains_and_matches_every_book_ticker(real_fixtures: Path) -> None:
    with gzip.open(real_fixtures / "ws" / "btcusdt_20240808.gz", "rt") as f:
        lines = f.read().splitlines()
    parser, book = FrameParser(["BTCUSDT"]), OrderBook("BTCUSDT")
    line_of_u: dict[int, int] = {}
    outcomes: dict[DepthOutcome, int] = {}
    buffered_lines: list[int] = []
    snapshot_line = None
    tops: dict[int, tuple] = {}  # depth u -> (best bid, best ask) right after it was applied
    tickers: dict[int, tuple] = {}
    for number, line in enumerate(lines, start=1):
        text = line.split(" ", 1)[1]
        if text.startswith('{"lastUpdateId"'):
            snapshot_line = number
            snapshot = parse_snapshot(text, "BTCUSDT")
            assert snapshot.last_update_id == L
            assert book.on_snapshot(snapshot) is SnapshotOutcome.SYNCED
            # the buffered events from the bridging one on were applied: the book is after the last
            tops[book.last_u] = (book.best_bid(), book.best_ask())  # type: ignore[index]
            continue
        event = parser.parse(text).event
        if isinstance(event, DepthUpdate):
            line_of_u[event.u] = number
            outcome = book.on_depth(event)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            if outcome is DepthOutcome.BUFFERED:
                buffered_lines.append(number)
            if outcome is DepthOutcome.APPLIED:
                tops[event.u] = (book.best_bid(), book.best_ask())
        elif event.kind == "book_ticker":
            tickers[event.u] = ((event.bid, event.bid_qty), (event.ask, event.ask_qty))  # type: ignore[union-attr]

    assert snapshot_line == 55
    assert len(line_of_u) == 6551
    # Buffered before the snapshot: lines 1, 12, 20, 38 (u < L, dropped), 42 (U ≤ L ≤ u) and 50.
    assert buffered_lines == [1, 12, 20, 38, 42, 50]
    assert book.dropped == 4
    bridge = book.bridged_by
    assert bridge is not None and line_of_u[bridge.u] == 42  # index 41 from 0: the "line 41"
    assert bridge.U <= L <= bridge.u
    # 6551 − 4 dropped = 6547 applied (42 and 50 at the snapshot), never a pu break.
    assert outcomes == {DepthOutcome.BUFFERED: 6, DepthOutcome.APPLIED: 6545}
    assert book.breaks == 0 and book.refused == 0 and book.synced
    common = set(tops) & set(tickers)
    assert len(common) == 629
    assert [u for u in common if tops[u] != tickers[u]] == []


# --------------------------------------------------------------------------- hand-made events


def depth(U: int, u: int, pu: int, bids=(), asks=(), E: int = 1000) -> DepthUpdate:
    return DepthUpdate("BTCUSDT", E, E - 1, U, u, pu, list(bids), list(asks))


def snap(last: int, bids=((100.0, 1.0),), asks=((101.0, 1.0),), E: int = 1000) -> DepthSnapshot:
    return DepthSnapshot("BTCUSDT", last, E, E - 1, list(bids), list(asks))


def synced_book() -> OrderBook:
    book = OrderBook("BTCUSDT")
    book.on_depth(depth(5, 9, 4, bids=[(100.0, 2.0)]))
    assert book.on_snapshot(snap(8, bids=[(100.0, 1.0), (99.0, 3.0)], asks=[(101.0, 1.0), (102.0, 0.5)]))
    return book


def test_the_first_event_bridges_the_snapshot_and_quantities_are_absolute() -> None:
    book = synced_book()
    assert book.synced and book.last_u == 9
    assert book.bids == {100.0: 2.0, 99.0: 3.0}  # the event's 2.0 replaced the snapshot's 1.0
    assert book.on_depth(depth(10, 12, 9, bids=[(99.0, 0.0)], asks=[(100.5, 4.0)])) is DepthOutcome.APPLIED
    assert book.bids == {100.0: 2.0} and book.best_ask() == (100.5, 4.0)  # 0 removed 99.0


def test_a_pu_break_unsyncs_the_book_until_a_new_snapshot() -> None:
    book = synced_book()
    assert book.on_depth(depth(20, 22, 15)) is DepthOutcome.BROKE  # pu 15 ≠ 9: events 10..15 are missing
    assert not book.synced and book.needs_snapshot and book.breaks == 1
    assert "pu 15 ≠ previous u 9" in (book.last_break or "")
    assert book.impact_buy() is None
    assert book.on_depth(depth(23, 25, 22, asks=[(101.0, 7.0)])) is DepthOutcome.BUFFERED
    assert book.on_snapshot(snap(24, asks=[(101.0, 1.0)])) is SnapshotOutcome.SYNCED  # 22 < 24 dropped, 23..25 bridges
    assert book.synced and book.last_u == 25 and book.asks == {101.0: 7.0}
    assert book.periods == [[1000, 1000], [1000, None]]


def test_a_snapshot_older_than_the_buffered_events_is_refused() -> None:
    book = OrderBook("BTCUSDT")
    book.on_depth(depth(50, 60, 40))
    assert book.on_snapshot(snap(45)) is SnapshotOutcome.REFUSED  # first event with u ≥ 45 has U 50 > 45
    assert book.needs_snapshot and book.refused == 1
    assert "older than the buffered events (first U=50, u=60)" in (book.last_break or "")
    assert book.on_snapshot(snap(55)) is SnapshotOutcome.SYNCED  # the event was kept for the next one
    assert book.last_u == 60


def test_a_snapshot_newer_than_the_buffer_waits_for_the_bridging_event() -> None:
    book = OrderBook("BTCUSDT")
    book.on_depth(depth(1, 3, 0))
    assert book.on_snapshot(snap(10)) is SnapshotOutcome.WAITING
    assert not book.needs_snapshot  # it has one; the events decide
    assert book.on_depth(depth(4, 7, 3)) is DepthOutcome.DROPPED
    assert book.on_depth(depth(8, 12, 7)) is DepthOutcome.APPLIED
    assert book.synced and book.dropped == 2
    other = OrderBook("BTCUSDT")
    other.on_snapshot(snap(10))
    assert other.on_depth(depth(11, 12, 9)) is DepthOutcome.BROKE  # U 11 > 10: the bridge was missed
    assert other.needs_snapshot and other.refused == 1


def test_repeats_from_an_overlapping_connection_are_ignored() -> None:
    book = synced_book()
    assert book.on_depth(depth(5, 9, 4)) is DepthOutcome.DUPLICATE
    assert book.synced and book.breaks == 0


def test_a_refresh_snapshot_replaces_the_synced_book_without_unsyncing() -> None:
    book = synced_book()
    book.on_depth(depth(10, 12, 9, bids=[(100.0, 5.0)]))
    # behind the book: bridged from the recent events (U 10 ≤ 11 ≤ u 12)
    assert book.on_snapshot(snap(11, bids=[(100.0, 4.0)], asks=[(101.0, 2.0)])) is SnapshotOutcome.REFRESHED
    assert book.synced and book.bids == {100.0: 5.0} and book.asks == {101.0: 2.0}
    assert book.mismatches == 1  # the running book had 102.0 and 101.0 qty 1.0: the snapshot wins
    # ahead of the book: waits for the event that bridges it
    assert book.on_snapshot(snap(14, bids=[(100.0, 6.0)], asks=[(101.0, 2.0)])) is SnapshotOutcome.REFRESH_PENDING
    assert book.on_depth(depth(13, 15, 12, asks=[(103.0, 1.0)])) is DepthOutcome.APPLIED
    assert book.bids == {100.0: 6.0} and book.asks == {101.0: 2.0, 103.0: 1.0} and book.synced
    assert book.on_snapshot(snap(2)) is SnapshotOutcome.IGNORED  # too old to bridge: the book stays


def test_price_impact_walks_the_asks_by_hand() -> None:
    book = OrderBook("BTCUSDT")
    book.on_depth(depth(1, 2, 0))
    book.on_snapshot(snap(1, bids=[(99.0, 1.0)], asks=[(100.0, 500.0), (101.0, 1000.0), (200.0, 1.0)]))
    # 100 000 quote: 500 × 100 = 50 000 at 100, then 50 000 / 101 = 495.0495… at 101;
    # avg fill = 100 000 / 995.0495… = 100.4975…; mid = 99.5; impact = (100.49751 − 99.5) / 99.5
    assert book.impact_buy() == pytest.approx((100_000 / (500 + 50_000 / 101) - 99.5) / 99.5, rel=1e-12)
    assert book.impact_buy() == pytest.approx(0.0100252, abs=1e-7)
    thin = OrderBook("BTCUSDT")
    thin.on_depth(depth(1, 2, 0))
    thin.on_snapshot(snap(1, bids=[(99.0, 1.0)], asks=[(100.0, 999.0)]))
    assert thin.impact_buy() is None  # 99 900 of asks cannot fill 100 000


def test_reset_forgets_the_book() -> None:
    book = synced_book()
    book.reset()
    assert not book.synced and book.needs_snapshot and book.bids == {} and book.periods == [[1000, 1000]]
