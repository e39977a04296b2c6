"""The live collector's exchange clock (``live/clock.py``) against the replay server's
``/fapi/v1/time`` with a known skew, and its depth snapshots (``live/snapshots.py``): weight
charged to the shared budget, a 418 honoured, the answer kept as text, fetched off the loop.

A successful snapshot comes from the replay server's ``/fapi/v1/depth`` (its synthetic book,
the one its depth streams follow), as do the 418, the ban and the unknown symbol (its fault
switches). A small stub serves what the replay server never answers: a pretty-printed book,
a 200 that is not a book, and an answer held back until the test releases it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest

from bml_assets.live.clock import ExchangeClock
from bml_assets.live.snapshots import DepthSnapshot, SnapshotError, SnapshotRequests, fetch_depth_snapshot
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultKind, FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets.sources.rest import RestClient

SKEW_MS = 5_000  # the exchange's clock runs this far ahead of ours


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket(MarketConfig(seed=3, trades_per_day=200))


def _client(base_url: str, tmp_path: Path) -> RestClient:
    return RestClient(base_url, state_url=f"sqlite:///{tmp_path / 'state.sqlite'}", weight_budget=1800)


def _credentials(base_url: str) -> str:
    return base_url.replace("http://", "http://user:secret@")


# --- the clock --------------------------------------------------------------------------------


@pytest.mark.parametrize("skew_ms", [SKEW_MS, -3_000])
def test_the_offset_is_the_known_skew_within_half_the_round_trip(
    market: SyntheticMarket, tmp_path: Path, skew_ms: int
) -> None:
    exchange = MarketClock.live(time.time_ns() // 1_000_000 + skew_ms)
    with ReplayServer(market=market, clock=exchange) as server:
        rest = _client(server.base_url, tmp_path)
        clock = ExchangeClock(rest)
        assert clock.now_exchange_ms() is None  # never the raw local clock
        reading = clock.measure()
        assert reading.ok and reading.error == ""
        assert reading.round_trip_ms is not None and reading.round_trip_ms >= 0
        # The midpoint estimate is off by at most half the round trip (+1 ms: the server
        # floors its clock to whole ms, and the skew was set to the ms).
        assert abs(reading.offset_ms - skew_ms) <= reading.round_trip_ms / 2 + 2
        before = exchange.now_ms()
        corrected = clock.now_exchange_ms()
        after = exchange.now_ms()
        slack = reading.round_trip_ms / 2 + 3
        assert before - slack <= corrected <= after + slack
        assert rest.budget.used_in_window() == 1  # weight 1, in the shared budget
        assert [(e.path, e.status, e.weight) for e in server.rest_log] == [("/fapi/v1/time", 200, 1)]
        rest.close()


def test_a_failed_measurement_keeps_the_last_offset_and_says_why(market: SyntheticMarket, tmp_path: Path) -> None:
    exchange = MarketClock.live(time.time_ns() // 1_000_000 + SKEW_MS)
    with ReplayServer(market=market, clock=exchange) as server:
        rest = _client(_credentials(server.base_url), tmp_path)
        clock = ExchangeClock(rest)
        good = clock.measure()
        server.faults.add(FaultRule(FaultKind.BAN_418, "/fapi/v1/time", times=1, retry_after_s=120))
        failed = clock.measure()
        assert not failed.ok and failed.round_trip_ms is None and failed.server_ms is None
        assert failed.offset_ms == good.offset_ms == clock.offset_ms  # kept
        assert "418" in failed.error and f"{server.base_url.split('//')[1]}/fapi/v1/time" in failed.error
        assert "secret" not in failed.error and "***@" in failed.error
        # The ban is honoured: the next measurement sends nothing and fails the same way.
        requests_before = len(server.rest_log)
        again = clock.measure()
        assert not again.ok and "banned" in again.error and len(server.rest_log) == requests_before
        corrected = clock.now_exchange_ms()
        assert abs(corrected - exchange.now_ms()) <= good.round_trip_ms / 2 + 3
        rest.close()


def test_keep_measuring_reports_a_reading_at_once_and_then_every_period(
    market: SyntheticMarket, tmp_path: Path
) -> None:
    with ReplayServer(market=market, clock=MarketClock.live(time.time_ns() // 1_000_000)) as server:
        rest = _client(server.base_url, tmp_path)
        clock = ExchangeClock(rest)
        readings = []
        started_ns = time.time_ns()

        async def scenario() -> None:
            task = asyncio.create_task(clock.keep_measuring(readings.append, every_s=0.2))
            async with asyncio.timeout(30):
                while len(readings) < 3:
                    await asyncio.sleep(0.02)
            task.cancel()

        asyncio.run(scenario())
        assert all(r.ok for r in readings)
        # Reading k is not asked before k periods have passed (the loop may wake a hair early).
        for k, reading in enumerate(readings[:3]):
            assert reading.local_ns - started_ns >= (k * 0.2 - 0.01) * 1e9
        rest.close()


# --- the snapshots ----------------------------------------------------------------------------

BOOK = {
    "lastUpdateId": 5123107852948,
    "E": 1723161256501,
    "T": 1723161256493,
    "bids": [["61800.20", "2.909"], ["61800.10", "0.696"]],
    "asks": [["61800.30", "2.510"], ["61800.40", "0.100"]],
}


class DepthStub:
    """``/fapi/v1/depth`` answered by ``answer(params) -> (status, body)``; logs every query."""

    def __init__(self, answer: Callable[[dict[str, str]], tuple[int, str]]) -> None:
        self.answer = answer
        self.queries: list[dict[str, str]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                stub.queries.append(params)
                status, body = stub.answer(params) if parts.path == "/fapi/v1/depth" else (404, "{}")
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-MBX-USED-WEIGHT-1M", "20")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _stub(answers: list[tuple[int, str]], gate: threading.Event | None = None) -> DepthStub:
    """Serves ``answers`` in order, the last one repeating; each waits for ``gate`` if given."""

    def answer(_params: dict[str, str]) -> tuple[int, str]:
        if gate is not None:
            gate.wait(30)
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return DepthStub(answer)


def test_a_snapshot_is_the_answer_text_with_its_arrival_time(market: SyntheticMarket, tmp_path: Path) -> None:
    # A fixed market clock: the book at one instant, the same for every request.
    at = dt.datetime(2024, 3, 1, 12, 0, 0, 250_000, tzinfo=dt.UTC)
    with ReplayServer(market=market, clock=MarketClock.fixed(at)) as server:
        rest = _client(_credentials(server.base_url), tmp_path)
        before = time.time_ns()
        snapshot = fetch_depth_snapshot(rest, "BTCUSDT")
        after = time.time_ns()
        assert [(e.path, e.params, e.status, e.weight) for e in server.rest_log] == [
            ("/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": "1000"}, 200, 20)
        ]
        # The same request from another client: the text is kept as answered, byte for byte.
        with urllib.request.urlopen(f"{server.base_url}/fapi/v1/depth?symbol=BTCUSDT&limit=1000") as answer:
            body = answer.read().decode()
        assert snapshot.text == body and "\n" not in body
        book = json.loads(body)
        assert book["E"] == 1_709_294_400_250  # the market clock's instant
        assert snapshot.last_update_id == book["lastUpdateId"] > 0
        assert len(book["bids"]) > 0 and len(book["asks"]) > 0
        assert float(book["bids"][0][0]) < float(book["asks"][0][0])
        assert before <= snapshot.sent_ns <= snapshot.local_ns <= after
        assert snapshot.weight == 20 and rest.budget.used_in_window() == 20
        assert snapshot.url == (
            f"{server.base_url.replace('http://', 'http://***@')}/fapi/v1/depth?symbol=BTCUSDT&limit=1000"
        )
        rest.close()


def test_a_pretty_printed_answer_is_kept_on_one_line(tmp_path: Path) -> None:
    pretty = json.dumps(BOOK, indent=2)  # a mirror that pretty-prints: still one spool line
    stub = _stub([(200, pretty)])
    try:
        rest = _client(stub.base_url, tmp_path)
        snapshot = fetch_depth_snapshot(rest, "BTCUSDT")
        assert stub.queries == [{"symbol": "BTCUSDT", "limit": "1000"}]
        assert snapshot.last_update_id == 5123107852948
        assert "\n" not in snapshot.text and json.loads(snapshot.text) == BOOK
        rest.close()
    finally:
        stub.close()


def test_an_answer_that_is_not_a_book_names_the_url(tmp_path: Path) -> None:
    stub = _stub([(200, '{"code":0,"msg":"maintenance"}')])
    try:
        rest = _client(_credentials(stub.base_url), tmp_path)
        with pytest.raises(SnapshotError, match=r"/fapi/v1/depth\?symbol=ETHUSDT&limit=1000 is not a book") as err:
            fetch_depth_snapshot(rest, "ETHUSDT")
        assert "secret" not in str(err.value) and err.value.symbol == "ETHUSDT"
        rest.close()
    finally:
        stub.close()


def test_a_418_is_honoured_and_the_ban_stops_every_later_snapshot(market: SyntheticMarket, tmp_path: Path) -> None:
    with ReplayServer(market=market) as server:
        rest = _client(_credentials(server.base_url), tmp_path)
        server.faults.add(FaultRule(FaultKind.BAN_418, "/fapi/v1/depth", times=1, retry_after_s=120))
        asked_at_ms = time.time_ns() // 1_000_000
        with pytest.raises(SnapshotError) as err:
            fetch_depth_snapshot(rest, "BTCUSDT")
        error = err.value
        assert error.banned_until_ms is not None
        assert asked_at_ms + 119_000 <= error.banned_until_ms <= time.time_ns() // 1_000_000 + 121_000
        assert "418" in str(error) and "/fapi/v1/depth?symbol=BTCUSDT&limit=1000" in str(error)
        assert "secret" not in str(error) and "***@" in error.url
        assert rest.budget.used_in_window() == 20  # the request was charged before it went out
        assert rest.budget.banned_until_ms() == error.banned_until_ms
        sent = len(server.rest_log)
        with pytest.raises(SnapshotError, match="banned") as again:
            fetch_depth_snapshot(rest, "ETHUSDT")
        assert len(server.rest_log) == sent  # nothing sent while banned
        assert again.value.banned_until_ms == error.banned_until_ms
        rest.close()


def test_requests_run_off_the_loop_are_retried_and_answered_on_the_loop(tmp_path: Path) -> None:
    gate = threading.Event()
    answers = [(200, '{"not": "a book"}'), (200, json.dumps(BOOK, separators=(",", ":")))]
    stub = _stub(answers, gate)
    rest = _client(stub.base_url, tmp_path)
    got: list[DepthSnapshot] = []
    errors: list[SnapshotError] = []
    loop_thread: list[int] = []

    async def scenario() -> None:
        requests = SnapshotRequests(
            [rest],
            on_snapshot=lambda s: (got.append(s), loop_thread.append(threading.get_ident())),
            on_error=errors.append,
        )
        assert requests.request("BTCUSDT") is True
        assert requests.request("BTCUSDT") is False  # one on its way already
        assert requests.pending == {"BTCUSDT"}
        # The stub holds the answer until this coroutine, on the loop, opens the gate: had the
        # request run on the loop, this line would never run.
        await asyncio.sleep(0.05)
        gate.set()
        async with asyncio.timeout(30):
            while not got:
                await asyncio.sleep(0.01)
        assert requests.pending == frozenset()
        assert requests.request("BTCUSDT") is True  # asked again once answered
        await requests.aclose()

    try:
        asyncio.run(scenario())
    finally:
        stub.close()
        rest.close()
    assert len(errors) == 1 and "is not a book" in str(errors[0])
    assert errors[0].retry_in_s is not None and 0.5 <= errors[0].retry_in_s <= 1.0
    assert [s.last_update_id for s in got] == [5123107852948]
    assert loop_thread == [threading.main_thread().ident]


def test_an_unknown_symbol_is_reported_and_not_asked_again(market: SyntheticMarket, tmp_path: Path) -> None:
    with ReplayServer(market=market) as server:
        rest = _client(server.base_url, tmp_path)
        server.faults.add(FaultRule(FaultKind.BAD_SYMBOL, "/fapi/v1/depth"))
        errors: list[SnapshotError] = []

        async def scenario() -> None:
            requests = SnapshotRequests([rest], on_snapshot=lambda s: None, on_error=errors.append)
            requests.request("NOPEUSDT")
            async with asyncio.timeout(30):
                while requests.pending:
                    await asyncio.sleep(0.01)

        asyncio.run(scenario())
        assert len(errors) == 1 and errors[0].retry_in_s is None and errors[0].status == 400
        assert "-1121" in str(errors[0]) and "symbol=NOPEUSDT" in str(errors[0])
        assert [e.path for e in server.rest_log] == ["/fapi/v1/depth"]
        rest.close()
