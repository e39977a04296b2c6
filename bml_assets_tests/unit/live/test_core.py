"""LiveCore on hand-made frames: coverage per family, a pu break of one symbol, a dropped
connection, silent streams, liquidations and funding, bad frames, repeats, late events,
the clock offset and the snapshots it asks for. Expected values are written out."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from bml_assets.live.core import LiveCore

M0 = 1_723_161_600_000  # 2024-08-09 00:00 UTC: minutes M0, M1, … below
M = [M0 + i * 60_000 for i in range(10)]
NS = 1_000_000  # local ns per ms


class Feed:
    """Builds frames of the two families for a LiveCore, with exchange times E in ms; each frame
    arrives ``delay`` ms after its E (local clock)."""

    def __init__(self, core: LiveCore, delay: int = 5) -> None:
        self.core = core
        self.delay = delay
        self.u: dict[str, int] = {}
        self.ids = 0

    def send(self, stream: str, data: dict[str, Any], connection: int = 0) -> Any:
        family = "market" if any(k in stream for k in ("aggTrade", "markPrice", "forceOrder")) else "public"
        raw = json.dumps({"stream": stream, "data": data})
        return self.core.on_frame(family, raw, (data["E"] + self.delay) * NS, connection)

    def depth(self, symbol: str, E: int, bids=(), asks=(), gap: bool = False, connection: int = 0) -> Any:
        pu = self.u.get(symbol, 100)
        U = pu + 1 + (5 if gap else 0)
        u = self.u[symbol] = U + 1
        data = {
            "e": "depthUpdate",
            "E": E,
            "T": E - 2,
            "s": symbol,
            "U": U,
            "u": u,
            "pu": pu + (5 if gap else 0),
            "b": [[str(p), str(q)] for p, q in bids],
            "a": [[str(p), str(q)] for p, q in asks],
        }
        return self.send(f"{symbol.lower()}@depth@100ms", data, connection)

    def ticker(self, symbol: str, E: int, b: float, B: float, a: float, A: float, connection: int = 0) -> Any:
        self.ids += 1
        data = {"e": "bookTicker", "u": self.u.get(symbol, 100) * 1000 + self.ids, "s": symbol}
        data.update({"b": str(b), "B": str(B), "a": str(a), "A": str(A), "T": E - 1, "E": E})
        return self.send(f"{symbol.lower()}@bookTicker", data, connection)

    def mark(self, symbol: str, E: int, r: float = 0.0001, connection: int = 0) -> Any:
        data = {"e": "markPriceUpdate", "E": E, "s": symbol, "p": "100", "P": "100", "i": "100", "r": str(r)}
        data["T"] = M0 + 8 * 3_600_000
        return self.send(f"{symbol.lower()}@markPrice@1s", data, connection)

    def liquidation(self, symbol: str, E: int, side: str, q: str, z: str, ap: str) -> Any:
        o = {"s": symbol, "S": side, "o": "LIMIT", "f": "IOC", "q": q, "p": ap, "ap": ap, "X": "FILLED"}
        o.update({"l": z, "z": z, "T": E - 3})
        return self.send(f"{symbol.lower()}@forceOrder", {"e": "forceOrder", "E": E, "o": o})

    def snapshot(self, symbol: str, bids, asks, E: int) -> Any:
        body = {"lastUpdateId": self.u[symbol], "E": E, "T": E, "bids": bids, "asks": asks}
        return self.core.on_snapshot(symbol, json.dumps(body), (E + 50) * NS)

    def beat(self, symbols: list[str], start: int, end: int, step: int = 1000, public: bool = True) -> None:
        """markPrice every ``step`` ms and (``public``) a depth event per symbol: both families alive."""
        for E in range(start, end, step):
            for s in symbols:
                self.mark(s, E)
                if public:
                    self.depth(s, E + 1)


def rows(core: LiveCore, symbol: str) -> dict[int, dict[str, Any]]:
    return {r["timestamp"]: r for r in core.rows[symbol]}


def started(symbols: list[str]) -> tuple[LiveCore, Feed]:
    """Both families alive from M0 − 5 s, each symbol's book synced by M0 − 3 s."""
    core = LiveCore(symbols)
    feed = Feed(core)
    feed.beat(symbols, M0 - 5000, M0 - 3000)
    for s in symbols:
        assert feed.snapshot(s, [["100.0", "10"]], [["101.0", "2000"]], M0 - 3500) == "synced"
    return core, feed


def test_a_covered_minute_gets_every_family_column_and_quiet_ones_are_zero() -> None:
    core, feed = started(["BTCUSDT"])
    feed.beat(["BTCUSDT"], M0 - 3000, M[1] + 50)
    feed.ticker("BTCUSDT", M[1] + 100, 100.0, 1.0, 101.0, 3.0)
    feed.ticker("BTCUSDT", M[1] + 200, 100.0, 0.0, 100.5, 0.0)  # zero depth: no imbalance, no micro price
    feed.ticker("BTCUSDT", M[1] + 300, 100.0, 2.0, 100.2, 2.0)
    feed.liquidation("BTCUSDT", M[1] + 400, "SELL", q="2", z="1.5", ap="100")
    feed.liquidation("BTCUSDT", M[1] + 500, "BUY", q="1", z="1", ap="110")
    feed.mark("BTCUSDT", M[1] + 999, r=0.00025)
    feed.beat(["BTCUSDT"], M[1] + 1000, M[3] + 3000)
    core.flush()
    r = rows(core, "BTCUSDT")
    one = r[M[1]]
    assert one["public_covered"] and one["market_covered"] and one["book_synced"]
    # bookTicker: spreads 1.0, 0.5, 0.2; imbalances -0.5 and 0 (the zero-depth one left out)
    assert one["avg_spread_usdt"] == pytest.approx((1.0 + 0.5 + 0.2) / 3)
    assert one["bid_ask_imbalance"] == pytest.approx(-0.25)
    assert one["avg_bid_depth"] == pytest.approx(1.0) and one["avg_ask_depth"] == pytest.approx(5 / 3)
    assert one["spread_pct"] == pytest.approx((1.0 / 100.5 + 0.5 / 100.25 + 0.2 / 100.1) / 3)
    assert one["micro_price_close"] == pytest.approx(100.1)  # the last one: (100·2 + 100.2·2) / 4
    # liquidations: SELL liquidates longs; 100 × 1.5 = 150 and 110 × 1 = 110
    assert (one["liq_long_vol_usdt"], one["liq_short_vol_usdt"]) == (150.0, 110.0)
    assert (one["liq_long_count"], one["liq_short_count"]) == (1, 1)
    assert one["liq_avg_fill_price"] == pytest.approx(260 / 2.5)
    assert one["liq_unfilled_ratio"] == pytest.approx(0.5 / 3)
    assert one["predicted_funding"] == 0.0001  # the last markPrice of the minute (E M1 + 59 s), not M1 + 999 ms
    # E − T over 60 depth (2), 3 tickers (1), 2 orders (3), markPrice left out: 65 values, the
    # ⌈61.75⌉ = 62nd smallest is 2; every frame arrived 5 ms after its E
    assert (one["latency_engine"], one["latency_network"]) == (2, 5)
    assert one["price_impact_100k"] == pytest.approx((100_000 / (100_000 / 101) - 100.5) / 100.5)
    assert (one["force_order_events"], one["book_ticker_events"], one["mark_price_events"]) == (2, 3, 61)
    two = r[M[2]]
    # no bookTicker in minute 2: the last event's own values carried into 38-42, no micro price
    assert two["micro_price_close"] is None
    assert (two["avg_spread_usdt"], two["bid_ask_imbalance"], two["avg_bid_depth"]) == pytest.approx((0.2, 0.0, 2.0))
    # no liquidation in a covered minute: 0, not NULL; the ratios NULL
    assert (two["liq_long_vol_usdt"], two["liq_long_count"], two["liq_avg_fill_price"]) == (0.0, 0, None)


def test_latency_columns_are_nearest_rank_p95() -> None:
    core = LiveCore(["BTCUSDT"], families=("market",))
    feed = Feed(core)
    feed.beat(["BTCUSDT"], M0 - 2000, M0, public=False)
    # 20 orders in minute 0 with E − T = 1..20 and arrivals 1..20 ms after E: p95 = the 19th smallest
    for i in range(1, 21):
        order = {"s": "BTCUSDT", "S": "BUY", "o": "LIMIT", "f": "IOC", "q": "1", "p": "1", "ap": "1", "X": "FILLED"}
        order.update({"l": "1", "z": "1", "T": M0 + 1000 * i - i})
        raw = json.dumps({"stream": "btcusdt@forceOrder", "data": {"e": "forceOrder", "E": M0 + 1000 * i, "o": order}})
        core.on_frame("market", raw, (M0 + 1000 * i + i) * NS)
    feed.mark("BTCUSDT", M[1] + 1500)
    core.flush()
    row = rows(core, "BTCUSDT")[M0]
    assert row["latency_engine"] == 19
    assert row["latency_network"] == 19  # markPrice frames are not there: only the orders' 1..20
    assert row["event_time"] == M0 + 20_000 and row["arrival_time"] == M0 + 20_020


def test_a_pu_break_makes_only_that_symbol_unsynced_and_its_book_columns_null() -> None:
    core, feed = started(["BTCUSDT", "ETHUSDT"])
    feed.beat(["BTCUSDT", "ETHUSDT"], M0 - 3000, M[1] + 30_000)
    assert feed.depth("BTCUSDT", M[1] + 30_500, gap=True) is not None  # pu does not chain: events missed
    assert core.book("BTCUSDT").needs_snapshot and core.snapshots_needed(M[1] * NS) == ["BTCUSDT"]
    feed.beat(["BTCUSDT", "ETHUSDT"], M[1] + 31_000, M[2] + 20_000)
    feed.snapshot("BTCUSDT", [["100.0", "10"]], [["101.0", "10"]], M[2] + 10_000)  # resynced in minute 2
    feed.beat(["BTCUSDT", "ETHUSDT"], M[2] + 20_000, M[4] + 3000)
    core.flush()
    btc, eth = rows(core, "BTCUSDT"), rows(core, "ETHUSDT")
    for minute in (M[1], M[2], M[3]):  # BTCUSDT broke in minute 1 and was synced again during 2
        assert eth[minute]["book_synced"] and eth[minute]["price_impact_100k"] is not None
    assert [btc[m]["book_synced"] for m in (M[0], M[1], M[2], M[3])] == [True, False, False, True]
    for minute in (M[1], M[2]):
        b = btc[minute]
        assert (b["update_id_start"], b["update_id_end"], b["price_impact_100k"]) == (None, None, None)
        assert b["public_covered"] and b["event_time"] is not None  # the connection itself lost nothing
    assert btc[M[1]]["resyncs"] == 1 and eth[M[1]]["resyncs"] == 0
    assert btc[M[3]]["update_id_start"] is not None
    # resynced on 10 @ 101 (1 010 quote of asks): 100 000 cannot be filled, NULL though synced
    assert btc[M[3]]["price_impact_100k"] is None
    assert eth[M[3]]["price_impact_100k"] == pytest.approx((101 - 100.5) / 100.5)


def test_a_dropped_connection_uncovers_only_the_minutes_it_spanned() -> None:
    core, feed = started(["BTCUSDT"])
    feed.beat(["BTCUSDT"], M0 - 3000, M[1] + 20_000)
    core.on_connection("market", "dropped", (M[1] + 20_500) * NS, reason="ping timeout")
    core.on_connection("market", "connected", (M[1] + 22_000) * NS, connection=1)
    for E in range(M[1] + 23_000, M[4] + 3000, 1000):  # the new connection
        feed.mark("BTCUSDT", E, connection=1)
        feed.depth("BTCUSDT", E + 1)
    core.flush()
    r = rows(core, "BTCUSDT")
    # the new connection's first frame (M1 + 23 s) is before minute 2: only minute 1 is uncovered
    assert [r[m]["market_covered"] for m in M[:4]] == [True, False, True, True]
    assert [r[m]["public_covered"] for m in M[:4]] == [True, True, True, True]
    one = r[M[1]]
    assert one["predicted_funding"] is None and one["liq_long_count"] is None
    assert one["event_time"] is None and one["latency_network"] is None  # needs both families
    assert one["update_id_start"] is not None  # the book's own columns need the public family only
    assert one["reconnects"] == 1 and r[M[0]]["reconnects"] == 0
    assert r[M[2]]["predicted_funding"] == 0.0001 and r[M[2]]["liq_long_count"] == 0


def test_a_silent_stream_is_counted_and_blanks_what_it_feeds() -> None:
    core, feed = started(["BTCUSDT"])
    feed.beat(["BTCUSDT"], M0 - 3000, M[0] + 10_000)
    feed.ticker("BTCUSDT", M[0] + 5000, 100.0, 1.0, 101.0, 1.0)
    core.on_silence("btcusdt@bookTicker", True, (M[1] + 1000) * NS)
    core.on_silence("btcusdt@bookTicker", False, (M[2] + 1000) * NS)
    feed.beat(["BTCUSDT"], M[0] + 10_000, M[4] + 3000)
    core.flush()
    r = rows(core, "BTCUSDT")
    assert [r[m]["silent_streams"] for m in M[:4]] == [0, 1, 1, 0]
    assert r[M[1]]["avg_spread_usdt"] is None and r[M[2]]["avg_spread_usdt"] is None
    assert r[M[3]]["avg_spread_usdt"] == 1.0  # carried again: the stream spoke and nothing changed
    assert r[M[1]]["public_covered"]  # the connection covered it


def test_bad_frames_repeats_and_late_events_never_stop_the_core(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="bml.live")
    core, feed = started(["BTCUSDT"])
    feed.beat(["BTCUSDT"], M0 - 3000, M[1] + 10_000)
    core.on_frame("public", b"garbage \xff", M[1] * NS)
    core.on_frame("public", '{"stream":"dogeusdt@bookTicker","data":{"e":"bookTicker","E":1,"u":2}}', M[1] * NS)
    no_symbol = {"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate", "E": M[1] + 10_500}}
    core.on_frame("market", json.dumps(no_symbol), 0)
    first = feed.ticker("BTCUSDT", M[1] + 11_000, 100.0, 1.0, 101.0, 1.0)
    repeat = json.dumps({"stream": "btcusdt@bookTicker", "data": {**_as_dict(first), "e": "bookTicker"}})
    assert core.on_frame("public", repeat, (M[1] + 11_010) * NS) is None
    feed.beat(["BTCUSDT"], M[1] + 12_000, M[3] + 3000)
    # an aggTrade of minute 1 arriving after minute 1 closed: late
    late = {"e": "aggTrade", "E": M[1] + 59_000, "a": 9, "s": "BTCUSDT", "p": "100", "q": "1", "f": 1, "l": 1}
    late.update({"T": M[1] + 58_990, "m": True})
    core.on_frame("market", json.dumps({"stream": "btcusdt@aggTrade", "data": late}), (M[2] + 30_000) * NS)
    feed.beat(["BTCUSDT"], M[3] + 3000, M[4] + 3000)
    core.flush()
    r = rows(core, "BTCUSDT")
    assert dict(core.stats.bad_frames) == {"NotJson": 1, "UnsubscribedSymbol": 1, "BadEvent": 1}
    # the bad markPrice event lost minute 1 for the market family; the rest stands
    assert r[M[1]]["market_covered"] is False and r[M[1]]["predicted_funding"] is None
    assert r[M[1]]["public_covered"] is True and r[M[1]]["duplicate_events"] == 1
    assert r[M[1]]["agg_trade_events"] == 0 and r[M[3]]["late_events"] == 1
    assert r[M[2]]["market_covered"] is True
    assert "refused: a frame: the frame is not JSON" in caplog.text
    assert "symbol DOGEUSDT is not subscribed" in caplog.text
    assert "a bad markPriceUpdate event: field 's' is missing" in caplog.text


def _as_dict(event: Any) -> dict[str, Any]:
    return {
        "u": event.u,
        "s": event.symbol,
        "b": str(event.bid),
        "B": str(event.bid_qty),
        "a": str(event.ask),
        "A": str(event.ask_qty),
        "T": event.T,
        "E": event.E,
    }


def test_ticks_close_quiet_minutes_record_the_clock_offset_and_ask_for_snapshots() -> None:
    core = LiveCore(["BTCUSDT"], grace_ms=2000)
    feed = Feed(core)
    feed.beat(["BTCUSDT"], M0 + 1000, M0 + 5000)
    assert core.snapshots_needed(M0 * NS) == ["BTCUSDT"]
    assert core.snapshots_needed(M0 * NS + 5 * 10**9) == []  # asked 5 s ago: not yet again
    assert core.snapshots_needed(M0 * NS + 11 * 10**9) == ["BTCUSDT"]  # no answer (a 418): again
    core.on_tick(M0 + 30_000, clock_offset_ms=-1260)
    core.on_tick(M[1] + 1_999)
    assert core.rows["BTCUSDT"] == []  # within the grace
    core.on_tick(M[1] + 2_000)
    [row] = core.rows["BTCUSDT"]
    assert row["timestamp"] == M0 and row["clock_offset_ms"] == -1260
    assert row["public_covered"] is False  # nothing after the minute's end
    core.on_tick(M[3] + 2_000)  # quiet minutes still get their row
    assert [r["timestamp"] for r in core.rows["BTCUSDT"]] == [M0, M[1], M[2]]


def test_a_synced_book_asks_for_a_refresh_snapshot() -> None:
    core, _ = started(["BTCUSDT"])
    assert core.snapshots_needed((M0 + 60_000) * NS) == []
    assert core.snapshots_needed((M0 - 3500 + 30 * 60_000) * NS) == ["BTCUSDT"]
