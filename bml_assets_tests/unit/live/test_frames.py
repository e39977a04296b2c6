"""live/frames.py on the real recordings and on bad frames: every event typed, every bad frame a
clear error naming the stream and the ids, never a crash."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest

from bml_assets.live.frames import (
    AggTrade,
    BadEvent,
    BookTicker,
    DepthUpdate,
    FrameParser,
    MarkPrice,
    NotJson,
    UnknownStream,
    UnsubscribedSymbol,
    parse_force_order,
    parse_mark_price,
    parse_snapshot,
    stream_family,
    stream_names,
)

CRYPTOFEED_SYMBOLS = ("SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT")


@pytest.fixture
def btcusdt_lines(real_fixtures: Path) -> list[str]:
    with gzip.open(real_fixtures / "ws" / "btcusdt_20240808.gz", "rt") as f:
        return f.read().splitlines()


def test_the_btcusdt_recording_parses_whole(btcusdt_lines: list[str]) -> None:
    parser = FrameParser(["BTCUSDT"])
    kinds: Counter[str] = Counter()
    snapshots = []
    for number, line in enumerate(btcusdt_lines, start=1):
        _, text = line.split(" ", 1)
        if text.startswith('{"lastUpdateId"'):
            snapshots.append((number, parse_snapshot(text, "BTCUSDT")))
            continue
        parsed = parser.parse(text)
        assert parsed.symbol == "BTCUSDT" and parsed.family == "public"
        kinds[parsed.event.kind] += 1
    assert len(btcusdt_lines) == 93954
    assert kinds == {"depth": 6551, "book_ticker": 66089, "trade": 21313}
    [(number, snapshot)] = snapshots
    assert number == 55
    assert (snapshot.last_update_id, snapshot.E, snapshot.T) == (5123107852948, 1723161256501, 1723161256493)
    assert snapshot.bids[:2] == [(61800.2, 2.909), (61800.1, 0.696)]
    assert len(snapshot.bids) == len(snapshot.asks) == 1000


def test_the_first_frames_of_the_recording_are_typed_exactly(btcusdt_lines: list[str]) -> None:
    parser = FrameParser(["BTCUSDT"])
    depth = parser.parse(btcusdt_lines[0].split(" ", 1)[1]).event
    assert isinstance(depth, DepthUpdate)
    assert (depth.E, depth.T, depth.U, depth.u, depth.pu) == (
        1723161256299,
        1723161256298,
        5123107832006,
        5123107837557,
        5123107831937,
    )
    assert depth.bids[:3] == [(58710.2, 0.014), (61496.5, 0.01), (61510.9, 0.0)]
    ticker = parser.parse(btcusdt_lines[1].split(" ", 1)[1]).event
    assert ticker == BookTicker("BTCUSDT", 1723161256313, 1723161256313, 5123107839020, 61800.2, 2.507, 61800.3, 2.51)
    trade = parser.parse(btcusdt_lines[2].split(" ", 1)[1]).event
    assert (trade.kind, trade.trade_id, trade.price, trade.qty, trade.buyer_maker) == (  # type: ignore[union-attr]
        "trade",
        5266583935,
        61800.3,
        0.006,
        False,
    )


def test_the_cryptofeed_recording_parses_through_the_same_parsers(real_fixtures: Path) -> None:
    parser = FrameParser(CRYPTOFEED_SYMBOLS)
    kinds: Counter[tuple[str, str]] = Counter()
    refused: Counter[str] = Counter()
    first_agg: AggTrade | None = None
    with open(real_fixtures / "ws" / "BINANCE_FUTURES.ws.1.0", encoding="utf-8") as f:
        url = f.readline()
        for line in f:
            _, _, text = line.rstrip("\n").partition(": ")
            try:
                parsed = parser.parse(text)
            except UnknownStream as err:
                assert err.stream is not None and err.stream.endswith("@kline_1m")
                assert "unknown stream type 'kline_1m'" in str(err) and err.symbol in CRYPTOFEED_SYMBOLS
                refused[err.stream.partition("@")[0]] += 1
                continue
            kinds[(parsed.event.kind, parsed.family)] += 1
            if first_agg is None and isinstance(parsed.event, AggTrade):
                first_agg = parsed.event
    assert url.startswith("wss://fstream.binance.com/stream?streams=sushiusdt@aggTrade/")
    assert kinds == {("agg_trade", "market"): 91, ("depth", "public"): 764, ("book_ticker", "public"): 613}
    assert sum(refused.values()) == 67 and set(refused) == {s.lower() for s in CRYPTOFEED_SYMBOLS}
    assert first_agg == AggTrade(
        "CTKUSDT", 1626992741575, 1626992741421, 16599292, 1.011, 10.0, 23961322, 23961322, False
    )


def test_mark_price_and_force_order_samples() -> None:
    mark = parse_mark_price(
        json.loads(
            '{"e":"markPriceUpdate","E":1617308820003,"s":"BTCUSDT","p":"58940.14924532",'
            '"P":"58905.14663658","i":"58857.26693664","r":"0.00058455","T":1617321600000}'
        )
    )
    assert mark == MarkPrice("BTCUSDT", 1617308820003, 58940.14924532, 58857.26693664, 0.00058455, 1617321600000)
    order = parse_force_order(
        json.loads(
            '{"e":"forceOrder","E":1791565603055,"o":{"s":"BTCUSDT","S":"SELL","o":"LIMIT","f":"IOC",'
            '"q":"0.190","p":"82338.30","ap":"82651.90","X":"FILLED","l":"0.155","z":"0.190",'
            '"T":1791565602120,"ps":"BTCUSDT","st":1}}'
        )
    )
    assert (order.side, order.price, order.avg_price, order.qty, order.filled, order.T) == (
        "SELL",
        82338.3,
        82651.9,
        0.19,
        0.19,
        1791565602120,
    )


def test_stream_names_and_families_as_spec_9_subscribes() -> None:
    assert stream_names(["BTCUSDT"], "public") == ["btcusdt@depth@100ms", "btcusdt@bookTicker"]
    assert stream_names(["BTCUSDT", "ETHUSDT"], "market") == [
        "btcusdt@aggTrade",
        "btcusdt@markPrice@1s",
        "btcusdt@forceOrder",
        "ethusdt@aggTrade",
        "ethusdt@markPrice@1s",
        "ethusdt@forceOrder",
    ]
    assert stream_family("btcusdt@depth@0ms") == "public" and stream_family("btcusdt@forceOrder") == "market"
    with pytest.raises(UnknownStream, match="kline_1m"):
        stream_family("btcusdt@kline_1m")


BAD_FRAMES = [
    (b"\x00\xffnot json", NotJson, "a frame: the frame is not JSON"),
    ("[1, 2, 3]", NotJson, "JSON but not an object: list"),
    ('{"data": {"e": "bookTicker", "E": 5}}', UnknownStream, "the frame names no stream (stream=None)"),
    ('{"stream":"btcusdt@kline_1m","data":{"e":"kline","E":1}}', UnknownStream, "'btcusdt@kline_1m' (E=1)"),
    ('{"stream":"dogeusdt@bookTicker","data":{"e":"bookTicker","u":7,"E":9}}', UnsubscribedSymbol, "DOGEUSDT"),
    ('{"stream":"btcusdt@bookTicker","data":[1]}', BadEvent, "data is list"),
    ('{"stream":"btcusdt@bookTicker","data":{"e":"trade","E":3,"t":4}}', BadEvent, "event type 'trade'"),
    (
        '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":10,"T":9,"s":"BTCUSDT","U":1,"u":2,"b":[],"a":[]}}',
        BadEvent,
        "stream 'btcusdt@depth@100ms' (E=10, U=1, u=2, T=9): a bad depthUpdate event: field 'pu' is missing",
    ),
    (
        '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5,"s":"BTCUSDT","b":"x","B":"1","a":"2",'
        '"A":"1","T":1,"E":2}}',
        BadEvent,
        "could not convert string to float: 'x'",
    ),
    (
        '{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","E":1,"a":2,"s":"BTCUSDT","p":"1","q":"1","f":1,'
        '"l":1,"T":1,"m":"no"}}',
        BadEvent,
        "m is 'no', not a boolean",
    ),
    (
        '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":5,"s":"ETHUSDT","b":"1","B":"1","a":"2",'
        '"A":"1","T":1,"E":2}}',
        BadEvent,
        "the event is for 'ETHUSDT', the stream for BTCUSDT",
    ),
    (
        '{"stream":"btcusdt@forceOrder","data":{"e":"forceOrder","E":4,"o":{"s":"BTCUSDT","S":"HOLD","q":"1",'
        '"p":"1","ap":"1","z":"1","T":3}}}',
        BadEvent,
        "side S is 'HOLD'",
    ),
]


@pytest.mark.parametrize(("raw", "error", "text"), BAD_FRAMES)
def test_a_bad_frame_is_a_typed_error_naming_stream_and_ids(raw: str | bytes, error: type, text: str) -> None:
    parser = FrameParser(["BTCUSDT", "ETHUSDT"])
    with pytest.raises(error) as info:
        parser.parse(raw)
    assert text in str(info.value)


def test_the_symbol_of_a_bad_event_is_known_for_the_spool() -> None:
    parser = FrameParser(["BTCUSDT"])
    with pytest.raises(BadEvent) as info:
        parser.parse('{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","E":1}}')
    assert info.value.symbol == "BTCUSDT" and info.value.stream == "btcusdt@bookTicker"
    with pytest.raises(UnsubscribedSymbol) as other:
        parser.parse('{"stream":"ethusdt@bookTicker","data":{"e":"bookTicker","E":1}}')
    assert other.value.symbol is None


def test_a_bad_snapshot_names_the_symbol_and_its_ids() -> None:
    with pytest.raises(
        BadEvent,
        match=r"stream 'BTCUSDT /fapi/v1/depth' \(lastUpdateId=3, E=5, T=4\): a bad depth snapshot: field 'bids' is missing",
    ):
        parse_snapshot('{"lastUpdateId": 3, "E": 5, "T": 4, "asks": []}', "BTCUSDT")
    with pytest.raises(NotJson, match="the BTCUSDT depth snapshot is not JSON"):
        parse_snapshot("<html>418</html>", "BTCUSDT")
