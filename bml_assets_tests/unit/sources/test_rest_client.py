"""RestClient: rate-limit answers, errors, paging, and the Vision layouts of its tables."""

from __future__ import annotations

import json
import pickle
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest

from bml_assets.domain.schema import METRICS
from bml_assets.domain.streams import Stream
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpClient, HttpError, Traffic, traffic
from bml_assets.sources.rest import (
    REST_POOL,
    AggTradeGap,
    OutsideHistoryWindow,
    RestBanned,
    RestClient,
    RestError,
)
from bml_assets.sources.rest_budget import utc_iso
from bml_assets.sources.vision_csv import output_schema

from .conftest import T0, FakeClock, FakeHost, Reply

DAY0 = 1_699_920_000_000  # 2023-11-14 00:00 UTC
MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state.sqlite'}"


def make_client(base_url: str, state_url: str, http: HttpClient, clock: FakeClock, **kw: Any) -> RestClient:
    return RestClient(
        base_url,
        state_url=state_url,
        weight_budget=kw.pop("weight_budget", 1800),
        http=http,
        clock=clock,
        sleep=clock.sleep,
        **kw,
    )


# --- a stub that answers from the query ----------------------------------------------------------------

Handler = Callable[[dict[str, str]], tuple[int, Any]]


class RestStub:
    """Routes a path to a function of the query parameters; logs every (path, params)."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.log: list[tuple[str, dict[str, str]]] = []
        self._lock = threading.Lock()
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                with stub._lock:
                    stub.log.append((parts.path, params))
                route = stub.routes.get(parts.path)
                status, payload = route(params) if route else (404, {"code": -1, "msg": "no route"})
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def calls(self, path: str) -> list[dict[str, str]]:
        return [p for q, p in self.log if q == path]


@pytest.fixture
def stub() -> Iterator[RestStub]:
    s = RestStub()
    s._thread.start()
    try:
        yield s
    finally:
        s.server.shutdown()
        s.server.server_close()


def _error(code: int, msg: str) -> tuple[int, Any]:
    return 400, {"code": code, "msg": msg}


# --- 429 / 418 / errors (scripted replies) --------------------------------------------------------------

PREMIUM = b'{"symbol":"BTCUSDT","markPrice":"11793.63104562","lastFundingRate":"0.00038246","time":1597370495002}'
TOO_MANY = b'{"code":-1003,"msg":"Too many requests; current limit is 2400 requests per minute."}'


def test_429_retry_after_is_honoured_then_retried(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(429, TOO_MANY, {"Retry-After": "3"}), Reply(200, PREMIUM))
    client = make_client(fake_host.base_url, state_url, http, clock)
    assert client.premium_index("BTCUSDT")["markPrice"] == 11793.63104562
    assert clock.sleeps == [pytest.approx(3.0)]  # the limiter held the next request back 3 s
    assert fake_host.count(limits.PREMIUM_INDEX_PATH) == 2
    assert (client.weight_spent, client.requests_sent) == (2, 2)


def test_the_weight_spent_is_counted_in_the_process_traffic(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(429, TOO_MANY, {"Retry-After": "3"}), Reply(200, PREMIUM))
    client = make_client(fake_host.base_url, state_url, http, clock)
    before = traffic()
    client.premium_index("BTCUSDT")
    # Both attempts spent weight 1 (premiumIndex with symbol=); only the answer's body counts.
    assert traffic() - before == Traffic(bytes_received=len(PREMIUM), rest_weight=2)


def test_429_without_retry_after_waits_for_the_next_minute(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    clock.now = T0 + 15
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(429, TOO_MANY), Reply(200, PREMIUM))
    make_client(fake_host.base_url, state_url, http, clock).premium_index("BTCUSDT")
    assert clock.sleeps == [pytest.approx(45.0)]


def test_429_forever_gives_up(fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(429, TOO_MANY, {"Retry-After": "1"}))
    client = make_client(fake_host.base_url, state_url, http, clock, max_rate_limit_retries=2)
    with pytest.raises(HttpError) as info:
        client.premium_index("BTCUSDT")
    assert info.value.status == 429 and info.value.code == -1003
    assert fake_host.count(limits.PREMIUM_INDEX_PATH) == 3


def test_418_records_a_ban_that_stops_every_later_request(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    until = int(T0 * 1000) + 7_200_000
    body = json.dumps({"code": -1003, "msg": f"Way too much request weight used; IP banned until {until}."})
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(418, body.encode(), {"Retry-After": "7200"}))
    client = make_client(fake_host.base_url, state_url, http, clock)
    with pytest.raises(RestBanned) as info:
        client.premium_index("BTCUSDT")
    assert info.value.until_ms == until
    assert f"until {utc_iso(until)} UTC" in str(info.value) and "2023-11-15T00:14:00.000+00:00" in str(info.value)
    other = make_client(fake_host.base_url, state_url, http, clock)  # another client, same store
    with pytest.raises(RestBanned):
        other.open_interest("BTCUSDT")
    assert fake_host.count(limits.PREMIUM_INDEX_PATH) == 1
    assert fake_host.count(limits.OPEN_INTEREST_PATH) == 0


def test_418_with_only_retry_after(fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(418, b"", {"Retry-After": "120"}))
    with pytest.raises(RestBanned) as info:
        make_client(fake_host.base_url, state_url, http, clock).premium_index("BTCUSDT")
    assert info.value.until_ms == int(T0 * 1000) + 120_000


def test_429_that_announces_a_ban_is_a_ban(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    until = int(T0 * 1000) + 300_000
    body = json.dumps({"code": -1003, "msg": f"Way too many requests; IP(1.2.3.4) banned until {until}."})
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(429, body.encode()))
    with pytest.raises(RestBanned) as info:
        make_client(fake_host.base_url, state_url, http, clock).premium_index("BTCUSDT")
    assert info.value.until_ms == until


def test_5xx_is_retried_by_the_http_client_and_every_attempt_is_counted(
    fake_host: FakeHost, http: HttpClient, sleeps: list[float], state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.BOOK_TICKER_PATH, Reply(503), Reply(502), Reply(200, b'{"bidPrice":"4.0","time":1}'))
    client = make_client(fake_host.base_url, state_url, http, clock)
    assert client.book_ticker("BTCUSDT") == {"bidPrice": 4.0, "time": 1}
    assert len(sleeps) == 2  # HttpClient's backoff
    assert client.weight_spent == 3 * 2
    assert client.budget.used_in_window() == 6


def test_invalid_symbol_is_an_http_error_with_code_and_msg(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.OPEN_INTEREST_PATH, Reply(400, b'{"code":-1121,"msg":"Invalid symbol."}'))
    with pytest.raises(HttpError) as info:
        make_client(fake_host.base_url, state_url, http, clock).open_interest("BTCUSDX")
    err = info.value
    assert (err.status, err.code, err.msg) == (400, -1121, "Invalid symbol.")
    assert "symbol=BTCUSDX" in str(err) and "-1121" in str(err)
    assert fake_host.count(limits.OPEN_INTEREST_PATH) == 1


def test_451_says_the_location_is_refused(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(
        limits.SERVER_TIME_PATH, Reply(451, b'{"code":0,"msg":"Service unavailable from a restricted location"}')
    )
    with pytest.raises(HttpError, match="refuses requests from your location") as info:
        make_client(fake_host.base_url, state_url, http, clock).server_time_ms()
    assert info.value.status == 451


def test_malformed_json_names_the_url_and_the_first_bytes(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(200, b"<html><body>gateway says hi</body></html>"))
    with pytest.raises(RestError) as info:
        make_client(fake_host.base_url, state_url, http, clock).premium_index("BTCUSDT")
    text = str(info.value)
    assert fake_host.url(limits.PREMIUM_INDEX_PATH) + "?symbol=BTCUSDT" in text
    assert "<html><body>gateway" in text
    assert info.value.url is not None and "symbol=BTCUSDT" in info.value.url


def test_a_malformed_body_is_asked_for_again_with_the_http_backoff(
    fake_host: FakeHost, http: HttpClient, sleeps: list[float], state_url: str, clock: FakeClock
) -> None:
    fake_host.set(
        limits.PREMIUM_INDEX_PATH,
        Reply(200, b'[{"a":1'),  # cut short
        Reply(200, b"<html><body>gateway says hi</body></html>"),  # a proxy's page
        Reply(200, PREMIUM),
    )
    client = make_client(fake_host.base_url, state_url, http, clock)
    assert client.premium_index("BTCUSDT")["markPrice"] == 11793.63104562
    assert fake_host.count(limits.PREMIUM_INDEX_PATH) == 3
    assert len(sleeps) == 2 and 0.0 <= sleeps[0] <= 0.5 and 0.0 <= sleeps[1] <= 1.0  # full jitter, attempts 0 and 1
    assert (client.weight_spent, client.requests_sent) == (3, 3)  # every attempt is spent


def test_a_body_that_stays_malformed_gives_up_after_the_http_clients_retries(
    fake_host: FakeHost, http: HttpClient, sleeps: list[float], state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(200, b'[{"a":1'))
    with pytest.raises(RestError) as info:
        make_client(fake_host.base_url, state_url, http, clock).premium_index("BTCUSDT")
    url = fake_host.url(limits.PREMIUM_INDEX_PATH) + "?symbol=BTCUSDT"
    assert str(info.value) == (
        f"malformed JSON from {url} (HTTP 200, 7 bytes): first bytes b'[{{\"a\":1' (after 4 attempts)"
    )
    assert info.value.url == url
    assert fake_host.count(limits.PREMIUM_INDEX_PATH) == 4  # 1 + the http fixture's max_retries 3
    assert len(sleeps) == 3


def test_used_weight_header_resyncs_the_budget(
    fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(200, PREMIUM, {"X-MBX-USED-WEIGHT-1M": "50"}))
    client = make_client(fake_host.base_url, state_url, http, clock)
    client.premium_index("BTCUSDT")
    assert client.weight_spent == 1
    assert client.budget.used_in_window() == 50  # 1 of ours + 49 spent elsewhere on this IP


def test_snapshots_parse_numbers(
    real_fixtures: Path, fake_host: FakeHost, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    docs = real_fixtures / "rest" / "doc_examples_nautilus"
    for path, name in [
        (limits.PREMIUM_INDEX_PATH, "premium_index"),
        (limits.OPEN_INTEREST_PATH, "open_interest"),
        (limits.BOOK_TICKER_PATH, "book_ticker"),
        (limits.EXCHANGE_INFO_PATH, "exchange_info"),
    ]:
        fake_host.set(path, Reply(200, (docs / f"http_futures_market_{name}.json").read_bytes()))
    client = make_client(fake_host.base_url, state_url, http, clock)
    premium = client.premium_index("BTCUSDT")
    assert premium["markPrice"] == 11793.63104562 and premium["lastFundingRate"] == 0.00038246
    assert premium["nextFundingTime"] == 1597392000000 and premium["symbol"] == "BTCUSDT"
    oi = client.open_interest("BTCUSDT")
    assert oi == {"openInterest": 10659.509, "symbol": "BTCUSDT", "time": 1589437530011}
    book = client.book_ticker("BTCUSDT")
    assert (book["bidPrice"], book["bidQty"], book["askPrice"], book["askQty"]) == (4.0, 431.0, 4.000002, 9.0)
    assert isinstance(book["time"], int)
    info = client.exchange_info()
    assert "symbols" in info and "rateLimits" in info
    assert client.weight_spent == 1 + 1 + 2 + 1


def test_rest_pool_and_picklable_errors() -> None:
    assert REST_POOL == "binance_rest"
    for exc in (
        AggTradeGap("BTCUSDT", 5, 9, "http://h/fapi/v1/aggTrades?fromId=6"),
        OutsideHistoryWindow("BTCUSDT", DAY0, DAY0 + DAY),
        RestError("bad", url="http://h/x"),
    ):
        again = pickle.loads(pickle.dumps(exc))
        assert type(again) is type(exc) and str(again) == str(exc) and again.url == exc.url


# --- klines -----------------------------------------------------------------------------------------------


def _kline_route(stub: RestStub, path: str, first_ms: int, last_ms: int) -> None:
    """Bars from first_ms to last_ms (inclusive), as the exchange pages them."""

    def handle(p: dict[str, str]) -> tuple[int, Any]:
        limit = int(p.get("limit", 500))
        if limit > limits.KLINES_MAX_LIMIT:
            return _error(-1130, "Data sent for parameter 'limit' is not valid.")
        start = max(first_ms, -(-int(p["startTime"]) // MIN) * MIN)
        end = min(last_ms, int(p["endTime"]))
        rows = []
        for t in range(start, end + 1, MIN):
            m = t // MIN
            o = float(m % 1000)
            rows.append(
                [t, f"{o}", f"{o + 2}", f"{o - 1}", f"{o + 1}", "1.5", t + MIN - 1, "30.0", m % 7, "0.5", "10.0", "0"]
            )
            if len(rows) == limit:
                break
        return 200, rows

    stub.routes[path] = handle


def test_klines_page_with_limit_1500_and_weight_10(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    _kline_route(stub, limits.KLINES_PATH, DAY0 - DAY, DAY0 + 5 * DAY)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.klines(Stream.KLINES, "BTCUSDT", DAY0, DAY0 + 2 * DAY)  # 2880 minutes
    assert table.schema == output_schema(Stream.KLINES)
    assert table.num_rows == 2880
    assert table["open_time"].to_pylist() == list(range(DAY0, DAY0 + 2 * DAY, MIN))
    first = table.slice(0, 1).to_pylist()[0]
    m = DAY0 // MIN
    assert first == {
        "open_time": DAY0,
        "open": float(m % 1000),
        "high": float(m % 1000) + 2,
        "low": float(m % 1000) - 1,
        "close": float(m % 1000) + 1,
        "volume": 1.5,
        "close_time": DAY0 + MIN - 1,
        "quote_volume": 30.0,
        "count": m % 7,
        "taker_buy_volume": 0.5,
        "taker_buy_quote_volume": 10.0,
    }
    calls = stub.calls(limits.KLINES_PATH)
    assert [c["limit"] for c in calls] == ["1500", "1380"]
    assert all(c["symbol"] == "BTCUSDT" and c["interval"] == "1m" for c in calls)
    assert int(calls[1]["startTime"]) == DAY0 + 1500 * MIN and int(calls[1]["endTime"]) == DAY0 + 2 * DAY - 1
    assert client.weight_spent == 20 and client.budget.used_in_window() == 20


def test_short_kline_range_costs_weight_1_and_index_uses_pair(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    _kline_route(stub, limits.INDEX_PRICE_KLINES_PATH, DAY0 - DAY, DAY0 + DAY)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.klines(Stream.INDEX_PRICE_KLINES, "BTCUSDT", DAY0 + 30_000, DAY0 + HOUR)
    assert table.schema == output_schema(Stream.INDEX_PRICE_KLINES)
    assert table["open_time"].to_pylist() == list(range(DAY0 + MIN, DAY0 + HOUR, MIN))  # ≥ start, < end
    (call,) = stub.calls(limits.INDEX_PRICE_KLINES_PATH)
    assert call["pair"] == "BTCUSDT" and "symbol" not in call and call["limit"] == "60"
    assert client.weight_spent == 1


def test_klines_stop_at_the_last_bar_and_refuse_other_streams(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    _kline_route(stub, limits.MARK_PRICE_KLINES_PATH, DAY0, DAY0 + 100 * MIN)  # the hot band: up to now
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.klines(Stream.MARK_PRICE_KLINES, "BTCUSDT", DAY0, DAY0 + DAY)
    assert table.num_rows == 101
    with pytest.raises(ValueError, match="not a kline stream"):
        client.klines(Stream.AGG_TRADES, "BTCUSDT", DAY0, DAY0 + DAY)


# --- aggTrades -------------------------------------------------------------------------------------------

FIRST_ID = 5000


def _trades(n: int, base_ms: int, shared: range = range(0)) -> list[dict[str, Any]]:
    """n trades 3 ms apart, except that the positions in ``shared`` all share one millisecond."""
    out, t = [], base_ms
    for i in range(n):
        if i and not (i in shared and i - 1 in shared):
            t += 3
        out.append(
            {
                "a": FIRST_ID + i,
                "p": f"{100 + i % 10}.5",
                "q": "0.010",
                "f": 2 * i,
                "l": 2 * i + 1,
                "T": t,
                "m": i % 2 == 0,
            }
        )
    return out


def _agg_route(stub: RestStub, trades: list[dict[str, Any]]) -> None:
    def handle(p: dict[str, str]) -> tuple[int, Any]:
        limit = int(p.get("limit", 500))
        if limit > limits.AGG_TRADES_MAX_LIMIT:
            return _error(-1130, "Data sent for parameter 'limit' is not valid.")
        if "fromId" in p:
            rows = [t for t in trades if t["a"] >= int(p["fromId"])]
        else:
            start, end = int(p["startTime"]), int(p["endTime"])
            if end - start >= HOUR:
                return _error(-1127, "More than 1 hours between startTime and endTime.")
            rows = [t for t in trades if start <= t["T"] <= end]
        return 200, rows[:limit]

    stub.routes[limits.AGG_TRADES_PATH] = handle


def test_agg_trades_page_by_id_through_a_shared_millisecond(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    trades = _trades(2500, DAY0 + 5_000, shared=range(980, 1020))  # 40 trades in one ms across the 1000 boundary
    assert trades[999]["T"] == trades[1000]["T"]
    _agg_route(stub, trades)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + HOUR)
    assert table.schema == output_schema(Stream.AGG_TRADES)
    assert table["agg_trade_id"].to_pylist() == list(range(FIRST_ID, FIRST_ID + 2500))  # every id exactly once
    assert table.slice(1, 1).to_pylist()[0] == {
        "agg_trade_id": FIRST_ID + 1,
        "price": 101.5,
        "quantity": 0.01,
        "first_trade_id": 2,
        "last_trade_id": 3,
        "transact_time": DAY0 + 5_003,
        "is_buyer_maker": False,
    }
    calls = stub.calls(limits.AGG_TRADES_PATH)
    assert "startTime" in calls[0] and int(calls[0]["endTime"]) - int(calls[0]["startTime"]) < HOUR
    assert [c.get("fromId") for c in calls[1:]] == [str(FIRST_ID + 1000), str(FIRST_ID + 2000)]
    assert all(c["limit"] == "1000" for c in calls)
    assert client.weight_spent == 3 * 20


def test_agg_trades_end_inside_the_shared_millisecond_run(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    trades = _trades(2500, DAY0 + 5_000, shared=range(980, 1020))
    _agg_route(stub, trades)
    client = make_client(stub.base_url, state_url, http, clock)
    shared_ms = trades[1000]["T"]
    table = client.agg_trades("BTCUSDT", start_ms=shared_ms, end_ms=shared_ms + 1)
    assert table["agg_trade_id"].to_pylist() == list(range(FIRST_ID + 980, FIRST_ID + 1020))
    calls = stub.calls(limits.AGG_TRADES_PATH)
    assert len(calls) == 1  # the window page held them all and was short: nothing more to ask


def test_agg_trades_widen_hour_by_hour_until_the_first_trade(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    trades = _trades(10, DAY0 + 3 * HOUR + 5 * MIN)
    _agg_route(stub, trades)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + 5 * HOUR)
    assert table.num_rows == 10
    calls = stub.calls(limits.AGG_TRADES_PATH)
    windows = [(int(c["startTime"]), int(c["endTime"])) for c in calls if "startTime" in c]
    assert [s for s, _ in windows] == [DAY0, DAY0 + HOUR, DAY0 + 2 * HOUR, DAY0 + 3 * HOUR]
    assert all(e - s < HOUR for s, e in windows)
    assert [c.get("fromId") for c in calls if "fromId" in c] == [str(FIRST_ID + 10)]  # after the window: nothing
    assert client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + HOUR).num_rows == 0  # no trade at all


def test_agg_trades_from_a_known_id(stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock) -> None:
    trades = _trades(2500, DAY0 + 5_000)
    _agg_route(stub, trades)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + HOUR, from_id=FIRST_ID + 1200)
    assert table["agg_trade_id"].to_pylist() == list(range(FIRST_ID + 1200, FIRST_ID + 2500))
    assert all("startTime" not in c for c in stub.calls(limits.AGG_TRADES_PATH))


@pytest.mark.parametrize(("missing", "param"), [(FIRST_ID + 100, "startTime"), (FIRST_ID + 1000, "fromId")])
def test_a_gap_in_agg_trade_ids_is_an_error(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock, missing: int, param: str
) -> None:
    trades = [t for t in _trades(2500, DAY0 + 5_000) if t["a"] != missing]
    _agg_route(stub, trades)
    client = make_client(stub.base_url, state_url, http, clock)
    with pytest.raises(AggTradeGap) as info:
        client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + HOUR)
    err = info.value
    assert (err.symbol, err.after_id, err.next_id) == ("BTCUSDT", missing - 1, missing + 1)
    assert err.url is not None and f"{param}=" in err.url and err.url in str(err)


# --- funding -------------------------------------------------------------------------------------------


def _funding_route(stub: RestStub, times: list[int]) -> None:
    def handle(p: dict[str, str]) -> tuple[int, Any]:
        start, end, limit = int(p["startTime"]), int(p["endTime"]), int(p["limit"])
        rows = [{"symbol": "BTCUSDT", "fundingTime": t, "fundingRate": f"{t % 97 / 1e6:.8f}"} for t in times]
        return 200, [r for r in rows if start <= r["fundingTime"] <= end][:limit]

    stub.routes[limits.FUNDING_RATE_PATH] = handle


def test_funding_history_in_the_vision_layout_with_intervals(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    times = [DAY0 - 16 * HOUR, DAY0 - 8 * HOUR + 3, DAY0 + 2, DAY0 + 8 * HOUR, DAY0 + 16 * HOUR, DAY0 + 20 * HOUR]
    times += [DAY0 + 24 * HOUR]
    _funding_route(stub, times)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.funding_history("BTCUSDT", DAY0, DAY0 + DAY)
    assert table.schema == output_schema(Stream.FUNDING_RATE)
    assert table["calc_time"].to_pylist() == times[2:6]
    assert table["funding_interval_hours"].to_pylist() == [8, 8, 8, 4]
    assert table["last_funding_rate"].to_pylist() == [t % 97 / 1e6 for t in times[2:6]]
    assert client.funding_budget.used_in_window() == 1  # the 500 requests / 5 min limit is counted too


def test_funding_history_pages_and_defaults_to_8_hours(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    times = [DAY0 + i * 4 * HOUR for i in range(1500)]  # listed at DAY0: nothing before the first
    _funding_route(stub, times)
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.funding_history("BTCUSDT", DAY0, DAY0 + 1500 * 4 * HOUR)
    assert table["calc_time"].to_pylist() == times
    assert table["funding_interval_hours"].to_pylist() == [8] + [4] * 1499
    assert len(stub.calls(limits.FUNDING_RATE_PATH)) == 2


# --- metrics history ------------------------------------------------------------------------------------


def _hist_route(stub: RestStub, path: str, times: list[int], make: Callable[[int], dict[str, Any]]) -> None:
    def handle(p: dict[str, str]) -> tuple[int, Any]:
        if p.get("period") != "5m" or int(p["limit"]) > limits.HIST_MAX_LIMIT:
            return _error(-1130, "bad parameter")
        start, end = int(p["startTime"]), int(p["endTime"])
        rows = [make(t) for t in times if start <= t <= end]
        return 200, rows[-int(p["limit"]) :]  # the latest `limit` rows: a window must never hold more

    stub.routes[path] = handle


def test_metrics_history_joins_the_three_endpoints(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    server_now = DAY0 + 10 * DAY
    stub.routes[limits.SERVER_TIME_PATH] = lambda p: (200, {"serverTime": server_now})
    slots = list(range(DAY0, DAY0 + 4 * DAY, 5 * MIN))
    missing = DAY0 + DAY + 60 * MIN
    _hist_route(
        stub,
        limits.OPEN_INTEREST_HIST_PATH,
        slots,
        lambda t: {
            "symbol": "BTCUSDT",
            "sumOpenInterest": f"{t % 1000}.5",
            "sumOpenInterestValue": "7.25",
            "timestamp": t,
        },
    )
    _hist_route(
        stub,
        limits.TOP_LS_ACCOUNT_RATIO_PATH,
        [t for t in slots if t != missing],
        lambda t: {"symbol": "BTCUSDT", "longShortRatio": "1.8105", "longAccount": "0.6442", "timestamp": str(t)},
    )
    _hist_route(
        stub,
        limits.GLOBAL_LS_ACCOUNT_RATIO_PATH,
        slots,
        lambda t: {"symbol": "BTCUSDT", "longShortRatio": "0.5576", "longAccount": "0.3580", "timestamp": str(t)},
    )
    client = make_client(stub.base_url, state_url, http, clock)
    table = client.metrics_history("BTCUSDT", DAY0 + DAY, DAY0 + 4 * DAY)
    assert table.schema == METRICS.arrow_schema
    assert table.num_rows == 3 * 288
    times = table["observation_time"].cast(pa.int64()).to_pylist()
    assert times == list(range(DAY0 + DAY, DAY0 + 4 * DAY, 5 * MIN))
    row = table.slice(times.index(missing), 1).to_pylist()[0]
    assert row["top_trader_ls_ratio_acct"] is None and row["global_ls_ratio_acct"] == 0.5576
    assert row["oi_contracts"] == missing % 1000 + 0.5 and row["oi_value_usdt"] == 7.25
    assert table["top_trader_ls_ratio_acct"].null_count == 1
    for path in limits.HIST_PATHS:
        calls = stub.calls(path)
        assert len(calls) == 2  # 864 rows in windows of at most 500 periods
        assert all(int(c["endTime"]) - int(c["startTime"]) < 500 * 5 * MIN for c in calls)


def test_metrics_history_refuses_more_than_30_days_back(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    server_now = DAY0 + 40 * DAY
    stub.routes[limits.SERVER_TIME_PATH] = lambda p: (200, {"serverTime": server_now})
    client = make_client(stub.base_url, state_url, http, clock)
    with pytest.raises(OutsideHistoryWindow, match="latest 30 days") as info:
        client.metrics_history("BTCUSDT", DAY0 + 9 * DAY, DAY0 + 11 * DAY)
    assert info.value.earliest_ms == server_now - 30 * DAY
    assert utc_iso(server_now - 30 * DAY) in str(info.value)
    assert [p for p, _ in stub.log] == [limits.SERVER_TIME_PATH]


def test_agg_trades_refuse_to_loop_on_a_repeated_page(
    stub: RestStub, http: HttpClient, state_url: str, clock: FakeClock
) -> None:
    page = _trades(1000, DAY0 + 5_000)
    stub.routes[limits.AGG_TRADES_PATH] = lambda p: (200, page)  # ignores fromId
    client = make_client(stub.base_url, state_url, http, clock)
    with pytest.raises(RestError, match="holds no id from"):
        client.agg_trades("BTCUSDT", start_ms=DAY0, end_ms=DAY0 + HOUR)
