"""The synthetic market's stream frames (bml_assets.replay.ws.synthetic), without
sockets: field names as Binance sends them, depth events that chain and agree with
each other and with the REST snapshot, bookTicker on the book's top, aggTrades equal
to the market's, markPrice equal to REST premiumIndex at its E, liquidations."""

from __future__ import annotations

import itertools
import json
from datetime import date
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from bml_assets.replay.market import MarketConfig, SyntheticMarket, day_ms
from bml_assets.replay.order_book import OrderBookModel
from bml_assets.replay.rest.endpoints import RestApi
from bml_assets.replay.ws.streams import Frame, Kind, parse_stream
from bml_assets.replay.ws.synthetic import SyntheticStreams

DAY = date(2024, 3, 5)
T0 = day_ms(DAY) + 10 * 3_600_000  # 10:00 UTC
DOWNTIME_DAY = date(2024, 3, 6)
MARKET = SyntheticMarket(
    MarketConfig(
        seed=7,
        trades_per_day=50_000,
        listing_dates={"NEWUSDT": DAY},
        downtime={("BTCUSDT", DOWNTIME_DAY): ((600, 2),)},
    )
)
BOOK = OrderBookModel(MARKET)
REST = RestApi(MARKET, order_book=BOOK)
STREAMS = SyntheticStreams(MARKET, BOOK, REST)


def frames(name: str, after: int, until: int) -> list[Frame]:
    stream = parse_stream(name)
    assert stream is not None
    return STREAMS.frames(stream, after, until)


def data(frame: Frame) -> dict[str, Any]:
    envelope = json.loads(frame.text)
    assert list(envelope) == ["stream", "data"] and envelope["stream"] == frame.stream
    return envelope["data"]


class Book:
    def __init__(self, bids: list[list[str]], asks: list[list[str]]) -> None:
        self.sides = {"b": {p: q for p, q in bids}, "a": {p: q for p, q in asks}}

    def apply(self, event: dict[str, Any]) -> None:
        for side in ("b", "a"):
            for price, qty in event[side]:
                if Decimal(qty) == 0:
                    self.sides[side].pop(price, None)
                else:
                    self.sides[side][price] = qty

    def top(self) -> tuple[str, str, str, str]:
        bid = max(self.sides["b"], key=Decimal)
        ask = min(self.sides["a"], key=Decimal)
        return bid, self.sides["b"][bid], ask, self.sides["a"][ask]


def rest(path: str, now: int, **params: Any) -> Any:
    response = REST.handle(path, {k: str(v) for k, v in params.items()}, now_ms=now)
    assert response.status == 200, response.body
    return json.loads(response.body)


# --- field names --------------------------------------------------------------------------------

FIELDS = {
    "btcusdt@depth@100ms": ["e", "E", "T", "s", "U", "u", "pu", "b", "a"],
    "btcusdt@depth@0ms": ["e", "E", "T", "s", "U", "u", "pu", "b", "a"],
    "btcusdt@depth": ["e", "E", "T", "s", "U", "u", "pu", "b", "a"],
    "btcusdt@bookTicker": ["e", "u", "s", "b", "B", "a", "A", "T", "E"],
    "btcusdt@aggTrade": ["e", "E", "a", "s", "p", "q", "f", "l", "T", "m"],
    "btcusdt@markPrice@1s": ["e", "E", "s", "p", "i", "P", "r", "T"],
    "btcusdt@markPrice": ["e", "E", "s", "p", "i", "P", "r", "T"],
    "btcusdt@forceOrder": ["e", "E", "o"],
}
EVENT_TYPES = {"depth": "depthUpdate", "bookTicker": "bookTicker", "aggTrade": "aggTrade"}


@pytest.mark.parametrize("name", sorted(FIELDS))
def test_field_names_and_types_per_stream(name: str) -> None:
    got = frames(name, T0, T0 + 60_000)
    assert got, name
    for frame in got:
        event = data(frame)
        assert list(event) == FIELDS[name]
        assert isinstance(event["E"], int) and T0 < event["E"] <= T0 + 60_000 and frame.event_ms == event["E"]
        assert frame.at_ms == event["E"]  # sent at its event time
    kind = name.split("@")[1]
    first = data(got[0])
    assert first["e"] == {"markPrice": "markPriceUpdate", "forceOrder": "forceOrder"}.get(kind, EVENT_TYPES.get(kind))
    if kind == "forceOrder":
        assert list(first["o"]) == ["s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"]
        assert (first["o"]["s"], first["o"]["o"], first["o"]["f"], first["o"]["X"]) == (
            "BTCUSDT",
            "LIMIT",
            "IOC",
            "FILLED",
        )
    elif kind != "depth":
        assert first["s"] == "BTCUSDT"
    assert [f.order for f in got] == sorted(f.order for f in got)


def test_windows_are_half_open_and_add_up() -> None:
    whole = frames("btcusdt@depth@0ms", T0, T0 + 4_000)
    parts = [f for k in range(4) for f in frames("btcusdt@depth@0ms", T0 + 1_000 * k, T0 + 1_000 * (k + 1))]
    assert parts == whole
    assert frames("btcusdt@depth@0ms", T0, T0) == []


# --- depth and bookTicker -----------------------------------------------------------------------------


@pytest.mark.parametrize("speed", ["@100ms", "@0ms", "", "@500ms"])
def test_depth_syncs_with_the_rest_snapshot_and_rebuilds_it(speed: str) -> None:
    asked = T0 + 700
    snapshot = rest("/fapi/v1/depth", asked, symbol="BTCUSDT", limit=1000)
    assert snapshot["E"] == asked
    events = [data(f) for f in frames(f"btcusdt@depth{speed}", T0, T0 + 10_000)]
    L = snapshot["lastUpdateId"]
    events = [e for e in events if e["u"] >= L]  # Binance: drop u < L
    assert events[0]["U"] <= L <= events[0]["u"]
    book = Book(snapshot["bids"], snapshot["asks"])
    for before, event in itertools.pairwise(events):
        assert event["pu"] == before["u"]
    for event in events:
        book.apply(event)
    # The book after the last event equals a snapshot taken right after it.
    later = rest("/fapi/v1/depth", events[-1]["T"], symbol="BTCUSDT", limit=1000)
    assert later["lastUpdateId"] > events[-1]["u"]
    assert book.sides["b"] == dict(map(tuple, later["bids"])) and book.sides["a"] == dict(map(tuple, later["asks"]))


def test_window_events_are_the_real_time_events_merged() -> None:
    fast = [data(f) for f in frames("btcusdt@depth@0ms", T0, T0 + 5_000)]
    slow = [data(f) for f in frames("btcusdt@depth@100ms", T0, T0 + 5_000)]
    ends = {e["u"]: i for i, e in enumerate(fast)}
    starts = {e["U"]: i for i, e in enumerate(fast)}
    for event in slow:
        window = event["E"] - event["E"] % 100
        assert 0 <= event["E"] - window <= 4
        first, last = starts[event["U"]], ends[event["u"]]  # KeyError: not made of real-time events
        assert event["pu"] == fast[first]["pu"]
        merged: dict[str, dict[str, str]] = {"b": {}, "a": {}}
        for e in fast[first : last + 1]:
            assert window - 100 <= e["T"] < window
            for side in ("b", "a"):
                merged[side].update(dict(map(tuple, e[side])))
        for side in ("b", "a"):
            assert event[side] == sorted(map(list, merged[side].items()), key=lambda lv: Decimal(lv[0]))


def test_book_ticker_is_the_top_of_the_book_at_the_same_u() -> None:
    snapshot = rest("/fapi/v1/depth", T0, symbol="ETHUSDT", limit=1000)
    depth = [data(f) for f in frames("ethusdt@depth@0ms", T0, T0 + 20_000)]
    tickers = {t["u"]: t for t in map(data, frames("ethusdt@bookTicker", T0, T0 + 20_000))}
    book = Book(snapshot["bids"], snapshot["asks"])
    matched = 0
    top_before = book.top()
    for event in depth:
        if event["u"] < snapshot["lastUpdateId"]:
            continue
        book.apply(event)
        ticker = tickers.get(event["u"])
        if ticker is not None:
            assert (ticker["b"], ticker["B"], ticker["a"], ticker["A"]) == book.top()
            assert (ticker["T"], ticker["E"]) == (event["T"], event["E"])
            matched += 1
        else:
            assert book.top() == top_before  # no ticker: the top did not change
        top_before = book.top()
    assert matched >= 100 and matched == len([u for u in tickers if u >= snapshot["lastUpdateId"]])


# --- aggTrade, markPrice, forceOrder ---------------------------------------------------------------------


def test_agg_trades_are_the_rest_and_market_trades() -> None:
    minute = T0 + 5 * 60_000
    pushed = [data(f) for f in frames("btcusdt@aggTrade", minute - 60_000, minute + 70_000)]
    in_minute = [e for e in pushed if minute <= e["T"] < minute + 60_000]
    answer = rest("/fapi/v1/aggTrades", minute + 120_000, symbol="BTCUSDT", startTime=minute, endTime=minute + 59_999)
    assert 10 <= len(answer) == len(in_minute)
    assert [{k: e[k] for k in ("a", "p", "q", "f", "l", "T", "m")} for e in in_minute] == answer
    for e in in_minute:
        assert 1 <= e["E"] - e["T"] <= 8
    assert [e["E"] for e in pushed] == sorted(e["E"] for e in pushed)


def test_mark_price_is_rest_premium_index_at_its_event_time() -> None:
    pushed = [data(f) for f in frames("btcusdt@markPrice@1s", T0, T0 + 30_000)]
    assert [e["E"] // 1000 for e in pushed] == [T0 // 1000 + k for k in range(30)]
    for e in pushed:
        assert 0 <= e["E"] % 1000 <= 3
        premium = rest("/fapi/v1/premiumIndex", e["E"], symbol="BTCUSDT")
        assert (e["p"], e["i"], e["P"], e["r"], e["T"]) == (
            premium["markPrice"],
            premium["indexPrice"],
            premium["estimatedSettlePrice"],
            premium["lastFundingRate"],
            premium["nextFundingTime"],
        )
    assert e["T"] == day_ms(DAY) + 16 * 3_600_000  # the 16:00 settlement
    every_3s = [data(f)["E"] // 1000 for f in frames("btcusdt@markPrice", T0, T0 + 30_000)]
    assert every_3s == [T0 // 1000 + k for k in range(0, 30, 3)]


def test_liquidations_at_most_one_a_second_deterministic_per_seed() -> None:
    pushed = [data(f) for f in frames("btcusdt@forceOrder", T0, T0 + 600_000)]
    assert 10 <= len(pushed) <= 60  # 5 % of 600 seconds
    seconds = [e["o"]["T"] // 1000 for e in pushed]
    assert len(set(seconds)) == len(seconds)
    trades = MARKET.trade_arrays("BTCUSDT", DAY)
    for e in pushed:
        order = e["o"]
        assert 0 < e["E"] - order["T"] <= 1004 and e["E"] // 1000 == order["T"] // 1000 + 1
        assert order["q"] == order["l"] == order["z"]
        i = int(np.searchsorted(trades.transact_time, order["T"], side="right")) - 1
        last = Decimal(int(trades.price[i])) / 10
        average, price = Decimal(order["ap"]), Decimal(order["p"])
        if order["S"] == "SELL":  # a long liquidated: sold at or below the market
            assert last * Decimal("0.9994") <= average <= last and price < average
        else:
            assert last <= average <= last * Decimal("1.0006") and price > average
    assert {e["o"]["S"] for e in pushed} == {"SELL", "BUY"}
    other = SyntheticMarket(MarketConfig(seed=8, trades_per_day=50_000))
    other_book = OrderBookModel(other)
    other_frames = SyntheticStreams(other, other_book, RestApi(other, order_book=other_book)).frames(
        parse_stream("btcusdt@forceOrder"),
        T0,
        T0 + 600_000,  # type: ignore[arg-type]
    )
    assert [f.text for f in other_frames] != [f.text for f in frames("btcusdt@forceOrder", T0, T0 + 600_000)]


# --- what is not served ---------------------------------------------------------------------------------


def test_nothing_happens_in_downtime_or_before_listing() -> None:
    down = day_ms(DOWNTIME_DAY) + 600 * 60_000  # 10:00-10:02
    for name in (
        "btcusdt@depth@100ms",
        "btcusdt@bookTicker",
        "btcusdt@aggTrade",
        "btcusdt@markPrice@1s",
        "btcusdt@forceOrder",
    ):
        assert frames(name.replace("btcusdt", "newusdt"), day_ms(DAY) - 120_000, day_ms(DAY)) == [], name
        # At most the push of what happened just before the downtime.
        for frame in frames(name, down, down + 120_000):
            event = data(frame)
            happened = event["o"]["T"] if "o" in event else event["T"]
            assert happened < down and frame.event_ms <= down + 1_004, (name, event)
    assert frames("btcusdt@markPrice@1s", down - 2_000, down)  # the minute before was live
    assert frames("btcusdt@depth@0ms", down, down + 120_000) == []


def test_what_the_market_serves() -> None:
    def serves(name: str) -> bool:
        stream = parse_stream(name)
        assert stream is not None
        return STREAMS.serves(stream)

    assert serves("btcusdt@depth@100ms") and serves("ethusdt@forceOrder")
    assert not serves("solusdt@depth@100ms")  # outside the universe
    assert not serves("btcusdt@trade") and not serves("btcusdt@kline_1m")  # not synthesised
    assert {Kind(k) for k in ("depth", "bookTicker", "aggTrade", "markPrice", "forceOrder")} <= set(Kind)
