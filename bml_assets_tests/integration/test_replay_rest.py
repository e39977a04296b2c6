"""The replay server's REST side over real HTTP: REST and Vision agree on the same
synthetic market, the shared clock gates both, weight headers, 429/418, the REST
log and the fault kinds, observed through ``requests`` as a client sees them."""

from __future__ import annotations

import csv
import io
import json
import time
import zipfile
from collections.abc import Iterator
from datetime import date, timedelta
from typing import Any

import pytest
import requests

from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket, day_ms
from bml_assets.replay.rest.log import RestLogEntry
from bml_assets.replay.server import ReplayServer

UM = "/data/futures/um"
D = date(2024, 3, 5)
D_MS = day_ms(D)
NOW = D_MS + (10 * 60 + 30) * 60_000 + 20_000  # D 10:30:20
PAST = D - timedelta(days=1)
KLINE_KINDS = {
    "klines": "/fapi/v1/klines",
    "markPriceKlines": "/fapi/v1/markPriceKlines",
    "indexPriceKlines": "/fapi/v1/indexPriceKlines",
    "premiumIndexKlines": "/fapi/v1/premiumIndexKlines",
}


class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket(MarketConfig(seed=7, trades_per_day=100_000, listing_dates={"NEWUSDT": date(2024, 3, 3)}))


@pytest.fixture(scope="module")
def clock() -> MarketClock:
    return MarketClock.fixed(NOW)


@pytest.fixture(scope="module")
def server(market: SyntheticMarket, clock: MarketClock) -> Iterator[ReplayServer]:
    # A high weight limit: the tests below share one client IP and one real minute.
    with ReplayServer(market, clock=clock, rest_weight_limit=1_000_000) as srv:
        yield srv


@pytest.fixture
def http(server: ReplayServer, clock: MarketClock) -> Iterator[requests.Session]:
    server.faults.clear()
    clock.set(NOW)
    with requests.Session() as session:
        yield session
    server.faults.clear()
    clock.set(NOW)


def rest(http: requests.Session, server: ReplayServer, path: str, **params: Any) -> requests.Response:
    return http.get(server.base_url + path, params={k: str(v) for k, v in params.items()}, timeout=30)


def vision_rows(http: requests.Session, server: ReplayServer, path: str) -> list[list[str]]:
    r = http.get(server.base_url + path, timeout=30)
    assert r.status_code == 200, path
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        (name,) = zf.namelist()
        rows = list(csv.reader(io.StringIO(zf.read(name).decode())))
    return rows[1:] if rows and not rows[0][0].lstrip("-").isdigit() else rows


# --- REST = Vision ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KLINE_KINDS))
def test_rest_klines_equal_the_vision_zip(http: requests.Session, server: ReplayServer, kind: str) -> None:
    csv_rows = vision_rows(http, server, f"{UM}/daily/{kind}/BTCUSDT/1m/BTCUSDT-1m-{PAST}.zip")
    assert len(csv_rows) == 1440
    key = "pair" if kind == "indexPriceKlines" else "symbol"
    r = rest(http, server, KLINE_KINDS[kind], **{key: "BTCUSDT"}, interval="1m", startTime=day_ms(PAST), limit=1440)
    assert r.status_code == 200
    klines = r.json()
    assert len(klines) == 1440
    for got, want in zip(klines, csv_rows, strict=True):
        assert [str(v) for v in got] == want  # every field, as text
        assert isinstance(got[0], int) and isinstance(got[6], int) and isinstance(got[8], int)
        assert all(isinstance(got[i], str) for i in (1, 2, 3, 4, 5, 7, 9, 10, 11))


def test_running_minute_and_todays_vision(http: requests.Session, server: ReplayServer, clock: MarketClock) -> None:
    rows = rest(http, server, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=2).json()
    assert [r[0] for r in rows] == [D_MS + 629 * 60_000, D_MS + 630 * 60_000]
    assert rows[1][5] == "7.561" and rows[1][8] == 31  # 10:30 so far (20 s of 60)
    today_zip = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{D}.zip"
    assert http.get(server.base_url + today_zip, timeout=30).status_code == 404
    assert (
        http.get(server.base_url + f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-03.zip").status_code
        == 404
    )
    clock.set(D_MS + 86_400_000)  # the next day: D is published, and its 10:30 is complete
    full = next(r for r in vision_rows(http, server, today_zip) if r[0] == str(D_MS + 630 * 60_000))
    assert full[5] == "12.778" and full[8] == "102"
    later = rest(
        http, server, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=D_MS + 630 * 60_000, limit=1
    )
    assert [str(v) for v in later.json()[0]] == full


def test_server_time_is_the_clock(http: requests.Session, server: ReplayServer, clock: MarketClock) -> None:
    assert rest(http, server, "/fapi/v1/time").json() == {"serverTime": NOW}
    clock.advance(1234)
    assert rest(http, server, "/fapi/v1/time").json() == {"serverTime": NOW + 1234}
    assert rest(http, server, "/fapi/v1/ping").json() == {}


def test_funding_rate_equals_the_vision_month(http: requests.Session, server: ReplayServer) -> None:
    csv_rows = vision_rows(http, server, f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-02.zip")
    assert len(csv_rows) == 87
    r = rest(
        http,
        server,
        "/fapi/v1/fundingRate",
        symbol="BTCUSDT",
        startTime=day_ms(date(2024, 2, 1)),
        endTime=day_ms(date(2024, 3, 1)) - 1,
        limit=1000,
    )
    rows = r.json()
    assert [(str(x["fundingTime"]), "8", x["fundingRate"]) for x in rows] == [tuple(row) for row in csv_rows]
    assert all(set(x) == {"symbol", "fundingTime", "fundingRate", "markPrice"} for x in rows)


def test_hist_equal_vision_metrics(http: requests.Session, server: ReplayServer) -> None:
    csv_rows = vision_rows(http, server, f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-{PAST}.zip")
    assert len(csv_rows) == 288
    # 2024 files label each row with its snapshot instant (SPEC §4, old convention).
    start = day_ms(PAST) + 300_000
    common = {"symbol": "BTCUSDT", "period": "5m", "startTime": start, "limit": 288}
    oi = rest(http, server, "/futures/data/openInterestHist", **common).json()
    top = rest(http, server, "/futures/data/topLongShortAccountRatio", **common).json()
    glob = rest(http, server, "/futures/data/globalLongShortAccountRatio", **common).json()
    for i, row in enumerate(csv_rows):
        instant = start + i * 300_000
        assert oi[i]["timestamp"] == top[i]["timestamp"] == glob[i]["timestamp"] == instant
        assert row[1] == "BTCUSDT"
        assert (oi[i]["sumOpenInterest"], oi[i]["sumOpenInterestValue"]) == (row[2], row[3])
        assert top[i]["longShortRatio"] == row[4]
        assert glob[i]["longShortRatio"] == row[6]
    older = rest(
        http, server, "/futures/data/openInterestHist", symbol="BTCUSDT", period="5m", endTime=NOW - 31 * 86_400_000
    )
    assert older.status_code == 200 and older.json() == []


# --- errors and performance ---------------------------------------------------------------------


def test_exchange_errors(http: requests.Session, server: ReplayServer) -> None:
    # A valid name outside the market's universe is as unknown as a malformed one.
    r = rest(http, server, "/fapi/v1/klines", symbol="NOPE", interval="1m")
    assert (r.status_code, r.content) == (400, b'{"code":-1121,"msg":"Invalid symbol."}')
    r = rest(http, server, "/fapi/v1/klines", symbol="nope", interval="1m")
    assert (r.status_code, r.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})
    assert r.headers["Content-Type"] == "application/json"
    r = rest(http, server, "/fapi/v1/aggTrades")
    assert r.status_code == 400 and r.json()["code"] == -1102
    r = rest(http, server, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=D_MS, endTime=D_MS + 3_600_000)
    assert r.status_code == 400 and r.json()["code"] == -1127
    assert "X-MBX-USED-WEIGHT-1M" in r.headers


def test_klines_are_fast_once_the_day_is_generated(http: requests.Session, server: ReplayServer) -> None:
    params = {"symbol": "BTCUSDT", "interval": "1m", "limit": 1500}
    assert rest(http, server, "/fapi/v1/klines", **params).status_code == 200  # generates D and D-1
    took = []
    for _ in range(5):
        t0 = time.perf_counter()
        r = rest(http, server, "/fapi/v1/klines", **params)
        took.append(time.perf_counter() - t0)
        assert r.status_code == 200 and len(r.json()) == 1500
    assert min(took) < 0.1, took


# --- weight, 429, 418, the REST log ------------------------------------------------------------------


def test_weight_429_and_ban_over_http(market: SyntheticMarket) -> None:
    wall = FakeWall(2_000_000.0)  # 20 s into a 60-s window (1 999 980 = 33 333 × 60)
    clock = MarketClock.fixed(NOW, wall=wall)
    with (
        ReplayServer(market, clock=clock, rest_weight_limit=45, rest_ban_after=1, rest_ban_s=100) as srv,
        requests.Session() as http,
    ):
        used = []
        for path, params in [
            ("/fapi/v1/time", {}),
            ("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "1000"}),
            ("/fapi/v1/aggTrades", {"symbol": "BTCUSDT", "limit": "3"}),
            ("/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"}),
            ("/futures/data/openInterestHist", {"symbol": "BTCUSDT", "period": "5m"}),
            ("/fapi/v1/fundingRate", {"symbol": "BTCUSDT"}),
        ]:
            r = http.get(srv.base_url + path, params=params, timeout=30)
            assert r.status_code == 200, r.text
            used.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [1, 6, 26, 28, 29, 30]  # +1 +5 +20 +2 +1 +1
        r = http.get(srv.base_url + "/fapi/v1/aggTrades", params={"symbol": "BTCUSDT"}, timeout=30)
        assert (r.status_code, r.headers["Retry-After"], r.json()["code"]) == (429, "40", -1003)
        r = http.get(srv.base_url + "/fapi/v1/time", timeout=30)  # continuing after a 429
        assert (r.status_code, r.headers["Retry-After"]) == (418, "100")
        assert r.json()["msg"].startswith("Way too much request weight used; IP banned until 2000100000")
        wall.t += 99
        assert http.get(srv.base_url + "/fapi/v1/ping", timeout=30).status_code == 418
        wall.t += 1
        r = http.get(srv.base_url + "/fapi/v1/ping", timeout=30)
        assert (r.status_code, r.headers["X-MBX-USED-WEIGHT-1M"]) == (200, "1")
        log = srv.rest_log
        assert all(isinstance(e, RestLogEntry) for e in log)
        assert [(e.status, e.weight) for e in log] == [
            (200, 1),
            (200, 5),
            (200, 20),
            (200, 2),
            (200, 1),
            (200, 1),
            (429, 0),
            (418, 0),
            (418, 0),
            (200, 1),
        ]
        assert log[1].params == {"symbol": "BTCUSDT", "interval": "1m", "limit": "1000"}
        assert [e.wall_time_s for e in log][-3:] == [2_000_000.0, 2_000_099.0, 2_000_100.0]
        assert max_rolling_weight(log, 60.0) == 30
        # The Vision side is not rate limited.
        assert http.get(srv.base_url + f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-{PAST}.zip").status_code == 200


def max_rolling_weight(log: list[RestLogEntry], window_s: float) -> int:
    """The largest weight charged in any window of ``window_s`` wall seconds."""
    best = 0
    for i, first in enumerate(log):
        best = max(best, sum(e.weight for e in log[i:] if e.wall_time_s < first.wall_time_s + window_s))
    return best


def test_real_time_window_resets(market: SyntheticMarket) -> None:
    # No clock: real wall time, with a 1-second window so the test stays short.
    with ReplayServer(market, rest_weight_limit=3, rest_window_s=1.0) as srv, requests.Session() as http:
        deadline = time.time() + 5
        while time.time() % 1.0 > 0.5 and time.time() < deadline:  # start early in a window
            time.sleep(0.05)
        statuses = [http.get(srv.base_url + "/fapi/v1/time", timeout=30).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        time.sleep(1.0 - time.time() % 1.0 + 0.05)
        assert http.get(srv.base_url + "/fapi/v1/time", timeout=30).status_code == 200
        assert (
            abs(http.get(srv.base_url + "/fapi/v1/time", timeout=30).json()["serverTime"] - time.time() * 1000) < 5000
        )


# --- faults on REST ---------------------------------------------------------------------------------


def test_rest_faults(http: requests.Session, server: ReplayServer) -> None:
    klines = {"symbol": "BTCUSDT", "interval": "1m", "limit": 5}
    server.faults.add(FaultRule("malformed_json", "/fapi/v1/klines", times=1))
    r = rest(http, server, "/fapi/v1/klines", **klines)
    assert r.status_code == 200 and int(r.headers["Content-Length"]) == len(r.content)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.content)
    assert len(rest(http, server, "/fapi/v1/klines", **klines).json()) == 5

    server.faults.add(FaultRule("error_500", "/fapi/", times=2))
    assert [rest(http, server, "/fapi/v1/time").status_code for _ in range(3)] == [500, 500, 200]

    server.faults.add(FaultRule("rate_limit_429", "openInterest", times=1, retry_after_s=7))
    r = rest(http, server, "/fapi/v1/openInterest", symbol="BTCUSDT")
    assert (r.status_code, r.headers["Retry-After"], r.json()["code"]) == (429, "7", -1003)
    assert "X-MBX-USED-WEIGHT-1M" in r.headers

    server.faults.add(FaultRule("ban_418", "premiumIndex", times=1, retry_after_s=120))
    r = rest(http, server, "/fapi/v1/premiumIndex", symbol="BTCUSDT")
    assert (r.status_code, r.headers["Retry-After"]) == (418, "120")
    assert r.json()["code"] == -1003 and "banned until" in r.json()["msg"]
    assert rest(http, server, "/fapi/v1/premiumIndex", symbol="BTCUSDT").status_code == 200  # an injected ban only

    server.faults.add(FaultRule("bad_symbol", "bookTicker", times=1))
    r = rest(http, server, "/fapi/v1/ticker/bookTicker", symbol="BTCUSDT")
    assert (r.status_code, r.json()) == (400, {"code": -1121, "msg": "Invalid symbol."})

    server.faults.add(FaultRule("slow", "/fapi/v1/ping", times=1, delay_s=0.3))
    t0 = time.perf_counter()
    assert rest(http, server, "/fapi/v1/ping").status_code == 200
    assert time.perf_counter() - t0 >= 0.3


def test_rest_faults_over_the_control_endpoint(http: requests.Session, server: ReplayServer) -> None:
    rule = {"kind": "rate_limit_429", "path_contains": "/fapi/v1/time", "times": 1, "retry_after_s": 3}
    assert http.post(server.base_url + "/_replay/faults", json=rule, timeout=30).status_code == 200
    r = rest(http, server, "/fapi/v1/time")
    assert (r.status_code, r.headers["Retry-After"]) == (429, "3")
    # A malformed_json rule does not touch Vision files.
    server.faults.add(FaultRule("malformed_json", ""))
    assert http.get(server.base_url + f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{PAST}.zip").status_code == 200
