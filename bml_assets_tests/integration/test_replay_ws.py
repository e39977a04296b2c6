"""The replay server's WebSocket side over real sockets, seen by a plain
``websockets`` client: combined-stream frames on both paths, a depth stream that
syncs with the REST snapshot by Binance's rules, bookTicker on that book, aggTrades
equal to REST and Vision, every fault switch, the recording replayed in real time,
pings, the lifetime cut and the handshake guards.

Market time stands still (a fixed clock) until a test moves it, so what is sent is
fixed; a test reads until a frame at or past a known instant arrives (frames go out
in time order), and the waits only guard against a hang."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import itertools
import json
import signal
import subprocess
import sys
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.frames import Opcode

from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket, day_ms
from bml_assets.replay.server import ReplayServer
from bml_assets.replay.ws.service import WsOptions
from bml_assets_tests.conftest import REAL_FIXTURES

DAY = date(2024, 3, 5)
T0 = day_ms(DAY) + 10 * 3_600_000  # 10:00 UTC
GUARD_S = 60.0
PUBLIC = "/public/stream?streams="
MARKET = "/market/stream?streams="
T = TypeVar("T")


def connect(url: str, **options: Any) -> Any:
    """A client that keeps reading whatever it is sent (``max_queue=None``), so it
    also reads the server's close frame behind frames a test left unread."""
    return ws_connect(url, **{"max_queue": None, **options})


def run(coro: Awaitable[T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, GUARD_S)

    return asyncio.run(guarded())


async def read_until(ws: ClientConnection, done: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """Frames (parsed) up to and including the first one ``done`` accepts."""
    frames = []
    while True:
        frame = json.loads(await ws.recv())
        frames.append(frame)
        if done(frame):
            return frames


def past(instant: int, stream_part: str = "") -> Callable[[dict[str, Any]], bool]:
    return lambda f: stream_part in f.get("stream", "") and f.get("data", {}).get("E", 0) >= instant


class Book:
    """A client's local book, as Binance prescribes (absolute quantities, 0 removes)."""

    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.last_update_id = snapshot["lastUpdateId"]
        self.sides = {"b": dict(map(tuple, snapshot["bids"])), "a": dict(map(tuple, snapshot["asks"]))}

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


def sync(snapshot: dict[str, Any], events: list[dict[str, Any]]) -> tuple[Book, list[dict[str, Any]], int]:
    """Binance's rules: drop u < L, the first applied has U ≤ L ≤ u, then pu chains.
    Returns the book, the applied events and the number of pu breaks."""
    book = Book(snapshot)
    applied: list[dict[str, Any]] = []
    breaks = 0
    for event in events:
        if event["u"] < book.last_update_id:
            continue
        if not applied:
            assert event["U"] <= book.last_update_id <= event["u"], (event["U"], book.last_update_id, event["u"])
        elif event["pu"] != applied[-1]["u"]:
            breaks += 1
        book.apply(event)
        applied.append(event)
    return book, applied, breaks


@pytest.fixture(scope="module")
def clock() -> MarketClock:
    return MarketClock.fixed(T0)


@pytest.fixture(scope="module")
def server(clock: MarketClock) -> Iterator[ReplayServer]:
    market = SyntheticMarket(MarketConfig(seed=7, trades_per_day=50_000, today=DAY + timedelta(days=10)))
    with ReplayServer(market, clock=clock, rest_weight_limit=1_000_000) as srv:
        yield srv


@pytest.fixture
def ws_server(server: ReplayServer, clock: MarketClock) -> Iterator[ReplayServer]:
    clock.set(T0)
    server.faults.clear()
    server.clear_ws_log()
    yield server
    server.faults.clear()
    clock.set(T0)


def rest(server: ReplayServer, path: str, **params: Any) -> Any:
    response = requests.get(server.base_url + path, params={k: str(v) for k, v in params.items()}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def post_fault(server: ReplayServer, **rule: Any) -> requests.Response:
    return requests.post(server.base_url + "/_replay/faults", json=rule, timeout=30)


# --- frames ----------------------------------------------------------------------------------------------


def test_frames_on_both_paths_with_binance_field_names(ws_server: ReplayServer, clock: MarketClock) -> None:
    public = "btcusdt@depth@100ms/btcusdt@depth@0ms/btcusdt@bookTicker/btcusdt@aggTrade/solusdt@depth@100ms"
    market = "btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder/btcusdt@bookTicker/btcusdt@dept"

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        async with (
            connect(ws_server.ws_base_url + PUBLIC + public) as pub,
            connect(ws_server.ws_base_url + MARKET + market) as mkt,
        ):
            clock.advance(60_000)
            return await read_until(pub, past(T0 + 59_000, "@depth@100ms")), await read_until(
                mkt, past(T0 + 59_000, "@markPrice")
            )

    public_frames, market_frames = run(scenario())
    # Wrong path (aggTrade on /public, bookTicker on /market), unknown symbol, bad name: silent.
    assert {f["stream"] for f in public_frames} == {"btcusdt@depth@100ms", "btcusdt@depth@0ms", "btcusdt@bookTicker"}
    assert {f["stream"] for f in market_frames} == {"btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder"}
    fields = {
        "depthUpdate": ["e", "E", "T", "s", "U", "u", "pu", "b", "a"],
        "bookTicker": ["e", "u", "s", "b", "B", "a", "A", "T", "E"],
        "aggTrade": ["e", "E", "a", "s", "p", "q", "f", "l", "T", "m"],
        "markPriceUpdate": ["e", "E", "s", "p", "i", "P", "r", "T"],
        "forceOrder": ["e", "E", "o"],
    }
    for frames in (public_frames, market_frames):
        assert all(list(f) == ["stream", "data"] for f in frames)
        assert all(list(f["data"]) == fields[f["data"]["e"]] for f in frames)
        times = [f["data"]["E"] for f in frames]
        assert times == sorted(times) and T0 < times[0]
    assert sum(f["stream"] == "btcusdt@markPrice@1s" for f in market_frames) == 60
    assert sum(f["stream"] == "btcusdt@aggTrade" for f in market_frames) >= 10
    assert ws_server.ws_log[0].event == "open" and ws_server.ws_log[0].path == PUBLIC + public


def test_depth_syncs_with_the_rest_snapshot_and_book_ticker_is_its_top(
    ws_server: ReplayServer, clock: MarketClock
) -> None:
    seconds = 30
    streams = "ethusdt@depth@100ms/ethusdt@bookTicker/btcusdt@depth@0ms"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        async with connect(ws_server.ws_base_url + PUBLIC + streams) as ws:
            eth = rest(ws_server, "/fapi/v1/depth", symbol="ETHUSDT", limit=1000)
            btc = rest(ws_server, "/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
            clock.advance(seconds * 1000)
            end = rest(ws_server, "/fapi/v1/depth", symbol="ETHUSDT", limit=1000)
            clock.advance(1000)  # the event straddling the end snapshot goes out
            frames = await read_until(
                ws, lambda f: f["stream"] == "ethusdt@depth@100ms" and f["data"]["u"] >= end["lastUpdateId"]
            )
            return eth, btc, frames, end

    eth, btc, frames, end = run(scenario())
    depth = [f["data"] for f in frames if f["stream"] == "ethusdt@depth@100ms"]
    tickers = {f["data"]["u"]: f["data"] for f in frames if f["stream"] == "ethusdt@bookTicker"}
    book, applied, breaks = sync(eth, depth)
    assert breaks == 0 and len(applied) >= seconds * 5
    assert applied[-1]["E"] >= T0 + seconds * 1000
    # bookTicker at the u of a depth event that set the top equals the book's top after it.
    book = Book(eth)
    matched = 0
    for event in applied:
        book.apply(event)
        ticker = tickers.get(event["u"])
        if ticker is not None:
            assert (ticker["b"], ticker["B"], ticker["a"], ticker["A"]) == book.top()
            matched += 1
    assert matched >= 50
    # Up to the end snapshot's L, the events rebuild it exactly.
    final, _, _ = sync(eth, [e for e in depth if e["u"] < end["lastUpdateId"]])
    assert final.sides["b"] == dict(map(tuple, end["bids"])) and final.sides["a"] == dict(map(tuple, end["asks"]))
    # The real-time stream of another symbol on the same connection syncs too.
    _, applied_btc, breaks_btc = sync(btc, [f["data"] for f in frames if f["stream"] == "btcusdt@depth@0ms"])
    assert breaks_btc == 0 and len(applied_btc) >= seconds * 10


def test_agg_trades_equal_rest_and_vision_for_the_same_minute(ws_server: ReplayServer, clock: MarketClock) -> None:
    minute = T0 + 60_000

    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_server.ws_base_url + MARKET + "btcusdt@aggTrade/btcusdt@markPrice@1s") as ws:
            clock.advance(125_000)
            return await read_until(ws, past(minute + 62_000, "@markPrice"))

    pushed = [f["data"] for f in run(scenario()) if f["stream"] == "btcusdt@aggTrade"]
    in_minute = [
        {k: e[k] for k in ("a", "p", "q", "f", "l", "T", "m")} for e in pushed if minute <= e["T"] < minute + 60_000
    ]
    answer = rest(ws_server, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=minute, endTime=minute + 59_999)
    assert len(in_minute) >= 10 and in_minute == answer
    clock.set(T0 + 2 * 86_400_000)  # Vision publishes the day once it is over
    zip_path = f"/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{DAY.isoformat()}.zip"
    body = requests.get(ws_server.base_url + zip_path, timeout=60)
    assert body.status_code == 200
    with zipfile.ZipFile(io.BytesIO(body.content)) as zf:
        rows = list(csv.DictReader(io.TextIOWrapper(zf.open(zf.namelist()[0]))))
    vision = [
        [int(r["agg_trade_id"]), r["price"], r["quantity"], int(r["transact_time"]), r["is_buyer_maker"] == "true"]
        for r in rows
        if minute <= int(r["transact_time"]) < minute + 60_000
    ]
    assert vision == [[e["a"], e["p"], e["q"], e["T"], e["m"]] for e in in_minute]


# --- fault switches -----------------------------------------------------------------------------------------


def test_a_dropped_depth_event_is_a_pu_gap_on_that_symbol_only(ws_server: ReplayServer, clock: MarketClock) -> None:
    r = post_fault(ws_server, kind="ws_drop_depth", path_contains="btcusdt@depth", times=1, at_ms=T0 + 5_000)
    assert r.status_code == 200 and r.json()[0]["remaining"] == 1
    streams = "btcusdt@depth@100ms/ethusdt@depth@100ms"

    async def scenario() -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        async with connect(ws_server.ws_base_url + PUBLIC + streams) as ws:
            btc = rest(ws_server, "/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
            eth = rest(ws_server, "/fapi/v1/depth", symbol="ETHUSDT", limit=1000)
            clock.advance(10_000)
            return btc, eth, await read_until(ws, past(T0 + 9_000, "btcusdt"))

    btc, eth, frames = run(scenario())
    btc_events = [f["data"] for f in frames if f["stream"] == "btcusdt@depth@100ms"]
    _, applied, breaks = sync(btc, btc_events)
    assert breaks == 1
    (gap,) = [(a, b) for a, b in itertools.pairwise(applied) if b["pu"] != a["u"]]
    assert gap[0]["E"] < T0 + 5_000 <= gap[1]["E"]
    # The one event missing is the one the server says it dropped: between the two.
    (dropped,) = [e for e in ws_server.ws_log if e.event == "dropped_depth"]
    stream, first, last = dropped.detail.split()
    assert (stream, last) == ("btcusdt@depth@100ms", f"u={gap[1]['pu']}")
    assert gap[0]["u"] < int(first.removeprefix("U=")) <= gap[1]["pu"]
    assert sync(eth, [f["data"] for f in frames if f["stream"] == "ethusdt@depth@100ms"])[2] == 0
    assert ws_server.faults.describe()[0]["remaining"] == 0


def test_closed_once_then_a_new_connection_is_served(ws_server: ReplayServer, clock: MarketClock) -> None:
    url = ws_server.ws_base_url + PUBLIC + "btcusdt@bookTicker"

    async def scenario() -> tuple[int | None, list[dict[str, Any]]]:
        async with connect(url) as first:
            assert post_fault(ws_server, kind="ws_close", path_contains="/public/", times=1).status_code == 200
            with pytest.raises(ConnectionClosed):
                while True:
                    await first.recv()
            code = first.close_code
        async with connect(url) as second:  # opened after the rule: untouched
            clock.advance(2_000)
            return code, await read_until(second, past(T0 + 1_000))

    code, frames = run(scenario())
    assert code == 1001 and frames
    assert [e.event for e in ws_server.ws_log if e.event.startswith("fault")] == ["fault_close"]


@pytest.mark.parametrize(("kind", "code"), [("ws_close", 1001), ("ws_reset", 1006)])
def test_connections_closed_at_an_instant(ws_server: ReplayServer, clock: MarketClock, kind: str, code: int) -> None:
    post_fault(ws_server, kind=kind, path_contains="btcusdt@depth@100ms", at_ms=T0 + 3_000)

    async def scenario() -> tuple[list[dict[str, Any]], int | None, list[dict[str, Any]]]:
        async with (
            connect(ws_server.ws_base_url + PUBLIC + "btcusdt@depth@100ms") as ws,
            connect(ws_server.ws_base_url + PUBLIC + "ethusdt@depth@100ms") as other,
        ):
            clock.advance(5_000)
            received = []
            with pytest.raises(ConnectionClosed):
                while True:
                    received.append(json.loads(await ws.recv()))
            return received, ws.close_code, await read_until(other, past(T0 + 4_000))

    received, close_code, other = run(scenario())
    assert close_code == code
    assert T0 + 2_500 <= max(f["data"]["E"] for f in received) < T0 + 3_000  # everything before the instant
    assert other  # another path, untouched


def test_a_silent_stream_while_the_connection_stays_open(ws_server: ReplayServer, clock: MarketClock) -> None:
    post_fault(ws_server, kind="ws_silence", path_contains="btcusdt@bookTicker", at_ms=T0 + 2_000, until_ms=T0 + 6_000)

    async def scenario() -> list[dict[str, Any]]:
        async with connect(ws_server.ws_base_url + PUBLIC + "btcusdt@bookTicker/btcusdt@depth@100ms") as ws:
            clock.advance(8_000)
            return await read_until(ws, past(T0 + 7_000, "bookTicker"))

    frames = run(scenario())
    tickers = [f["data"]["E"] for f in frames if f["stream"] == "btcusdt@bookTicker"]
    depth = [f["data"]["E"] for f in frames if f["stream"] == "btcusdt@depth@100ms"]
    assert not [t for t in tickers if T0 + 2_000 <= t < T0 + 6_000]
    assert [t for t in tickers if t < T0 + 2_000] and [t for t in tickers if t >= T0 + 6_000]
    assert len([t for t in depth if T0 + 2_000 <= t < T0 + 6_000]) >= 20  # the other stream went on
    assert [e.detail for e in ws_server.ws_log if e.event == "silenced"] == ["btcusdt@bookTicker"]


def test_pings_go_unanswered_under_ws_no_pong(ws_server: ReplayServer) -> None:
    async def scenario() -> tuple[bool, float]:
        async with connect(ws_server.ws_base_url + MARKET + "btcusdt@markPrice@1s", ping_interval=None) as ws:
            post_fault(ws_server, kind="ws_no_pong", path_contains="/market/")
            waiter = await ws.ping(b"unanswered")
            done, _ = await asyncio.wait([waiter], timeout=1.0)
            requests.delete(ws_server.base_url + "/_replay/faults", json=[], timeout=30)
            latency = await asyncio.wait_for(await ws.ping(b"answered"), 30)
            return bool(done), latency

    answered_under_fault, latency = run(scenario())
    assert not answered_under_fault and latency >= 0
    assert "pong_withheld" in [e.event for e in ws_server.ws_log]


def test_a_slow_consumer_is_dropped(ws_server: ReplayServer, clock: MarketClock) -> None:
    post_fault(ws_server, kind="ws_slow_consumer", path_contains="/public/", limit_bytes=65_536)

    async def scenario() -> bool:
        # max_queue=1: the client stops reading after one frame, as a stuck consumer does.
        async with connect(ws_server.ws_base_url + PUBLIC + "btcusdt@depth@0ms/ethusdt@depth@0ms", max_queue=1) as ws:
            clock.advance(600_000)
            while not [e for e in ws_server.ws_log if e.event == "slow_consumer"]:
                await asyncio.sleep(0.05)
            try:
                while True:
                    await ws.recv()
            except ConnectionClosedError:
                return True

    assert run(scenario())
    (entry,) = [e for e in ws_server.ws_log if e.event == "slow_consumer"]
    assert int(entry.detail) > 65_536


def test_bad_ws_rules_are_refused_over_http(ws_server: ReplayServer) -> None:
    r = post_fault(ws_server, kind="ws_silence", path_contains="x", times=1)
    assert r.status_code == 400 and "ws_silence lasts while the rule lives" in r.json()["error"]
    r = post_fault(ws_server, kind="ws_drop_depth", path_contains="x", limit_bytes=5)
    assert r.status_code == 400 and "limit_bytes applies to ws_slow_consumer only" in r.json()["error"]
    assert ws_server.faults.describe() == []


# --- pings, lifetime, client messages, guards --------------------------------------------------------------


def test_the_server_pings_drops_a_client_that_never_answers_and_answers_pings() -> None:
    options = WsOptions(ping_interval_s=0.2, ping_timeout_s=0.4)
    with ReplayServer(SyntheticMarket(), clock=MarketClock.fixed(T0), ws=options) as srv:

        async def scenario() -> tuple[int | None, float]:
            async with connect(srv.ws_base_url + PUBLIC + "btcusdt@bookTicker", ping_interval=None) as mute:
                # This client never answers the server's pings: its pongs are dropped.
                send_frame = mute.protocol.send_frame
                mute.protocol.send_frame = lambda f: None if f.opcode is Opcode.PONG else send_frame(f)  # type: ignore[method-assign]
                with pytest.raises(ConnectionClosed):
                    while True:
                        await mute.recv()
                code = mute.close_code
            async with connect(srv.ws_base_url + PUBLIC + "btcusdt@bookTicker", ping_interval=None) as polite:
                await asyncio.sleep(1.0)  # several server pings, all answered
                latency = await asyncio.wait_for(await polite.ping(), 30)
            return code, latency

        code, latency = run(scenario())
    assert code == 1011 and latency >= 0  # 1011: keepalive ping timeout


def test_a_connection_lives_its_lifetime_of_market_time() -> None:
    clock = MarketClock.fixed(T0)
    with ReplayServer(SyntheticMarket(), clock=clock, ws=WsOptions(max_lifetime_ms=5_000)) as srv:

        async def scenario() -> tuple[list[dict[str, Any]], int | None, str | None]:
            async with connect(srv.ws_base_url + MARKET + "btcusdt@markPrice@1s") as ws:
                clock.advance(7_000)
                frames = []
                with pytest.raises(ConnectionClosed):
                    while True:
                        frames.append(json.loads(await ws.recv()))
                return frames, ws.close_code, ws.close_reason

        frames, code, reason = run(scenario())
    assert (code, reason) == (1001, "connection lifetime reached")
    assert [f["data"]["E"] // 1000 for f in frames] == [T0 // 1000 + k for k in range(5)]  # E < T0 + 5 s


def test_subscribe_list_and_unsubscribe_messages(ws_server: ReplayServer, clock: MarketClock) -> None:
    async def scenario() -> list[Any]:
        async with connect(ws_server.ws_base_url + MARKET + "btcusdt@markPrice@1s") as ws:
            replies = []
            for message in (
                {"method": "SUBSCRIBE", "params": ["ethusdt@markPrice@1s"], "id": 1},
                {"method": "LIST_SUBSCRIPTIONS", "id": 2},
                {"method": "UNSUBSCRIBE", "params": ["btcusdt@markPrice@1s"], "id": 3},
                {"method": "NAP", "id": 4},
            ):
                await ws.send(json.dumps(message))
                replies.append(json.loads(await ws.recv()))
            await ws.send("{not json")
            replies.append(json.loads(await ws.recv()))
            clock.advance(3_000)
            frames = await read_until(ws, past(T0 + 2_000))
            replies.append(sorted({f["stream"] for f in frames}))
            return replies

    assert run(scenario()) == [
        {"result": None, "id": 1},
        {"result": ["btcusdt@markPrice@1s", "ethusdt@markPrice@1s"], "id": 2},
        {"result": None, "id": 3},
        {"error": {"code": 2, "msg": "Invalid request: unknown method 'NAP'"}, "id": 4},
        {
            "error": {
                "code": 3,
                "msg": "Invalid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
            }
        },
        ["ethusdt@markPrice@1s"],
    ]


def test_the_handshake_refuses_unknown_paths_browsers_and_foreign_hosts(ws_server: ReplayServer) -> None:
    async def status(path: str, **headers: str) -> int:
        try:
            async with connect(ws_server.ws_base_url + path, additional_headers=headers or None):
                return 101
        except InvalidStatus as exc:
            return exc.response.status_code

    async def scenario() -> list[int]:
        return [
            await status("/ws/btcusdt@depth"),
            await status("/stream?streams=btcusdt@depth"),
            await status(PUBLIC + "btcusdt@depth"),
        ]

    assert run(scenario()) == [404, 404, 101]
    assert run(status(PUBLIC + "btcusdt@depth", Origin="https://evil.example")) == 403  # a web page
    rebound = requests.get(
        f"http://127.0.0.1:{ws_server.ws_port}{PUBLIC}btcusdt@depth", headers={"Host": "evil.example"}, timeout=30
    )
    assert rebound.status_code == 421  # a DNS-rebinding page


def test_no_ws_side_when_asked() -> None:
    with ReplayServer(SyntheticMarket(), ws=None) as srv:
        with pytest.raises(RuntimeError, match="WebSocket side is not started"):
            _ = srv.ws_base_url
        assert srv.ws_log == []


# --- a recording replayed -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def recording_path() -> Path:
    path = REAL_FIXTURES / "ws" / "btcusdt_20240808.gz"
    if not path.is_file():
        pytest.skip(f"the real recording is not at {path} (../shared is absent)")
    return path


def test_the_recording_is_replayed_in_order_time_shifted_with_its_depth_snapshots(recording_path: Path) -> None:
    origin = T0
    clock = MarketClock.fixed(origin)
    with gzip.open(recording_path, "rt") as handle:
        raw = [(int(stamp), json.loads(text)) for stamp, text in (next(handle).split(" ", 1) for _ in range(400))]
    local_0, first_e = raw[0][0], raw[0][1]["data"]["E"]
    options = WsOptions(recording=recording_path, recording_origin=origin)
    with ReplayServer(SyntheticMarket(), clock=clock, ws=options) as srv:
        streams = "btcusdt@depth@0ms/btcusdt@bookTicker/btcusdt@trade/btcusdt@depth@100ms/ethusdt@bookTicker"

        async def scenario() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
            async with connect(srv.ws_base_url + PUBLIC + streams) as ws:
                snapshot = rest(srv, "/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
                clock.advance(2_000)
                frames = await read_until(
                    ws, lambda f: f["stream"].startswith("btcusdt") and f["data"]["E"] >= origin + 1_500
                )
                later = rest(srv, "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
                return snapshot, frames, later

        snapshot, frames, later = run(scenario())
    recorded = [f for f in frames if f["stream"].startswith("btcusdt")]
    expected = [line for stamp, line in raw if "stream" in line and (stamp - local_0) // 1_000_000 <= 2_000][
        : len(recorded)
    ]
    assert len(recorded) >= 100
    for got, line in zip(recorded, expected, strict=True):
        assert got["stream"] == line["stream"]
        assert got["data"]["E"] - origin == line["data"]["E"] - first_e
        assert {k: v for k, v in got["data"].items() if k not in ("E", "T")} == {
            k: v for k, v in line["data"].items() if k not in ("E", "T")
        }
    assert recorded[0]["data"]["E"] == origin and recorded[0]["data"]["U"] == 5123107832006
    assert not [f for f in frames if f["stream"] == "btcusdt@depth@100ms"]  # not in the recording: silent
    assert [f for f in frames if f["stream"] == "ethusdt@bookTicker"]  # other symbols: the synthetic market
    assert snapshot["lastUpdateId"] == 5123107852948
    _, applied, breaks = sync(snapshot, [f["data"] for f in recorded if f["stream"] == "btcusdt@depth@0ms"])
    assert breaks == 0 and applied[0]["U"] == 5123107850310  # line 42 first, as the recorder synced
    assert later["lastUpdateId"] > applied[-1]["u"] and later["E"] == origin + 2_000


# --- the command ---------------------------------------------------------------------------------------------


BML = [sys.executable, "-m", "bml_assets.cli"]


def test_replay_server_command_prints_the_ws_export_line() -> None:
    proc = subprocess.Popen(
        [*BML, "replay-server", "--port", "0", "--trades-per-day", "100"], stdout=subprocess.PIPE, text=True
    )
    try:
        banner = [proc.stdout.readline() for _ in range(5)]  # type: ignore[union-attr]
        assert banner[4].startswith("export BML_WS_BASE_URL=ws://127.0.0.1:")
        ws_url = banner[4].strip().split("=", 1)[1]

        async def one_frame() -> dict[str, Any]:
            async with connect(ws_url + MARKET + "btcusdt@markPrice@1s") as ws:
                return json.loads(await ws.recv())

        assert run(one_frame())["data"]["e"] == "markPriceUpdate"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a clean exit; the bound only stops a hang (CI is loaded)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_replay_server_command_refuses_a_bad_recording_in_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "spool.txt"
    bad.write_text("not a recording\n")
    done = subprocess.run(
        [*BML, "replay-server", "--port", "0", "--ws-recording", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.splitlines()[-1] == (
        f"Error: Invalid value for --ws-recording: {bad}:1: expected '<local_ns> <json>', got 'not a recording'"
    )
