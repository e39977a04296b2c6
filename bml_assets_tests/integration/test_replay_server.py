"""The replay server over real HTTP: Vision paths, CHECKSUMs, publication, real
files and every fault kind, observed through ``requests`` as a client sees them."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path

import pytest
import requests

from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import FaultRule, ReplayServer

UM = "/data/futures/um"
TODAY = date(2026, 7, 1)
KLINES = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
AGG = f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip"


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    market = SyntheticMarket(MarketConfig(today=TODAY, listing_dates={"NEWUSDT": date(2024, 1, 5)}))
    with ReplayServer(market) as srv:
        yield srv


@pytest.fixture
def http(server: ReplayServer) -> Iterator[requests.Session]:
    server.faults.clear()
    with requests.Session() as session:
        yield session
    server.faults.clear()


def _get(http: requests.Session, server: ReplayServer, path: str) -> requests.Response:
    return http.get(server.base_url + path, timeout=30)


def _csv_of(zip_data: bytes) -> bytes:
    with zipfile.ZipFile(io.BytesIO(zip_data)) as zf:
        (name,) = zf.namelist()
        return zf.read(name)


def test_zip_checksum_and_head(server: ReplayServer, http: requests.Session) -> None:
    z = _get(http, server, KLINES)
    assert z.status_code == 200 and z.headers["Content-Type"] == "application/zip"
    assert int(z.headers["Content-Length"]) == len(z.content)
    with zipfile.ZipFile(io.BytesIO(z.content)) as zf:
        assert zf.namelist() == ["BTCUSDT-1m-2024-01-02.csv"]
    c = _get(http, server, KLINES + ".CHECKSUM")
    assert c.status_code == 200
    assert re.fullmatch(r"[0-9a-f]{64}  BTCUSDT-1m-2024-01-02\.zip\n", c.text)
    assert c.text.split()[0] == hashlib.sha256(z.content).hexdigest()
    head = http.head(server.base_url + KLINES, timeout=30)
    assert head.status_code == 200 and head.content == b"" and head.headers["Content-Length"] == str(len(z.content))
    assert ("HEAD", KLINES, 200) in server.request_log


def test_same_bytes_from_two_servers_in_any_order() -> None:
    paths = [KLINES, AGG, f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-02.zip"]
    bodies = []
    for order in (paths, paths[::-1]):
        with ReplayServer(SyntheticMarket(MarketConfig(today=TODAY))) as srv, requests.Session() as s:
            bodies.append({p: s.get(srv.base_url + p, timeout=30).content for p in order})
    assert bodies[0] == bodies[1]


@pytest.mark.parametrize(
    "path",
    [
        f"{UM}/daily/klines/NEWUSDT/1m/NEWUSDT-1m-2024-01-04.zip",  # before listing
        f"{UM}/daily/aggTrades/NEWUSDT/NEWUSDT-aggTrades-2024-01-04.zip",
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-07-01.zip",  # "today"
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-07-02.zip",
        f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-07.zip",  # month not over
        f"{UM}/daily/bookTicker/BTCUSDT/BTCUSDT-bookTicker-2024-03-31.zip",  # stream ended
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-07-01.zip.CHECKSUM",
        f"{UM}/daily/klines/BTCUSDT/",
        "/",
    ],
)
def test_not_published_is_404(server: ReplayServer, http: requests.Session, path: str) -> None:
    r = _get(http, server, path)
    assert r.status_code == 404 and b"NoSuchKey" in r.content


def test_published_neighbours_are_200(server: ReplayServer, http: requests.Session) -> None:
    for path in (
        f"{UM}/daily/klines/NEWUSDT/1m/NEWUSDT-1m-2024-01-05.zip",
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2026-06-30.zip",
        f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-06.zip",
        f"{UM}/daily/bookTicker/BTCUSDT/BTCUSDT-bookTicker-2024-03-30.zip",
        f"{UM}/daily/indexPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip",
    ):
        assert _get(http, server, path).status_code == 200, path


def test_header_rows_by_date(server: ReplayServer, http: requests.Session) -> None:
    def first_field(path: str) -> str:
        return _csv_of(_get(http, server, path).content).split(b",", 1)[0].decode()

    assert first_field(f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2022-05-31.zip") == "1653955200000"
    assert first_field(f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2022-06-01.zip") == "open_time"
    assert first_field(f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08-10.zip").isdigit()
    assert first_field(f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2022-08-11.zip") == "agg_trade_id"


def test_klines_are_the_aggregates_of_the_served_agg_trades(server: ReplayServer, http: requests.Session) -> None:
    """Recomputed here with csv + Decimal, independently of the market's numpy code."""
    trades = list(csv.DictReader(io.StringIO(_csv_of(_get(http, server, AGG).content).decode())))
    klines = list(csv.DictReader(io.StringIO(_csv_of(_get(http, server, KLINES).content).decode())))
    by_minute: dict[int, list[dict[str, str]]] = defaultdict(list)
    for t in sorted(trades, key=lambda t: (int(t["transact_time"]), int(t["agg_trade_id"]))):
        by_minute[int(t["transact_time"]) // 60_000 * 60_000].append(t)
    assert len(klines) == 1440
    previous_close = None
    for k in klines:
        minute = by_minute.get(int(k["open_time"]), [])
        if not minute:
            assert k["count"] == "0" and Decimal(k["volume"]) == 0 and Decimal(k["quote_volume"]) == 0
            if previous_close is not None:
                assert Decimal(k["open"]) == Decimal(k["close"]) == previous_close
            previous_close = Decimal(k["close"])
            continue
        prices = [Decimal(t["price"]) for t in minute]
        buys = [t for t in minute if t["is_buyer_maker"] == "false"]
        assert Decimal(k["open"]) == prices[0] and Decimal(k["close"]) == prices[-1]
        assert Decimal(k["high"]) == max(prices) and Decimal(k["low"]) == min(prices)
        assert Decimal(k["volume"]) == sum(Decimal(t["quantity"]) for t in minute)
        assert Decimal(k["quote_volume"]) == sum(Decimal(t["price"]) * Decimal(t["quantity"]) for t in minute)
        assert int(k["count"]) == sum(int(t["last_trade_id"]) - int(t["first_trade_id"]) + 1 for t in minute)
        assert Decimal(k["taker_buy_volume"]) == sum(Decimal(t["quantity"]) for t in buys)
        assert Decimal(k["taker_buy_quote_volume"]) == sum(Decimal(t["price"]) * Decimal(t["quantity"]) for t in buys)
        # The printed text parses back to the same double the exact decimal names.
        assert float(k["quote_volume"]) == float(Decimal(k["quote_volume"]))
        previous_close = prices[-1]
    assert sum(1 for k in klines if k["count"] == "0") > 10
    assert {t["is_buyer_maker"] for t in trades} == {"true", "false"}


# --- faults ---------------------------------------------------------------------------


def _sha_of_checksum(http: requests.Session, server: ReplayServer, path: str) -> str:
    return _get(http, server, path + ".CHECKSUM").text.split()[0]


def test_fault_missing_and_forbidden(server: ReplayServer, http: requests.Session) -> None:
    server.faults.add(FaultRule("missing", "BTCUSDT-1m-2024-01-02", times=1))
    server.faults.add(FaultRule("forbidden", "aggTrades"))
    assert _get(http, server, KLINES).status_code == 404
    assert _get(http, server, KLINES).status_code == 200
    assert _get(http, server, AGG).status_code == 403
    assert _get(http, server, AGG + ".CHECKSUM").status_code == 403


def test_fault_error_500_then_normal(server: ReplayServer, http: requests.Session) -> None:
    server.faults.add(FaultRule("error_500", KLINES, times=2))
    assert [_get(http, server, KLINES).status_code for _ in range(3)] == [500, 500, 200]


def test_fault_corrupt_zip_is_broken_upstream(server: ReplayServer, http: requests.Session) -> None:
    good = _get(http, server, KLINES).content
    server.faults.add(FaultRule("corrupt_zip", "BTCUSDT-1m-2024-01-02", times=1))
    bad = _get(http, server, KLINES).content
    assert len(bad) == len(good) and bad != good
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(bad)).read("BTCUSDT-1m-2024-01-02.csv")
    # The CHECKSUM describes the garbage: verification passes, the zip is still useless.
    assert _sha_of_checksum(http, server, KLINES) == hashlib.sha256(bad).hexdigest()
    assert _sha_of_checksum(http, server, KLINES) == hashlib.sha256(good).hexdigest()
    assert _get(http, server, KLINES).content == good


def test_fault_checksum_mismatch_is_broken_in_transit(server: ReplayServer, http: requests.Session) -> None:
    good = _get(http, server, KLINES).content
    server.faults.add(FaultRule("checksum_mismatch", KLINES, times=1))
    true_sha = _sha_of_checksum(http, server, KLINES)
    flipped = _get(http, server, KLINES).content
    assert len(flipped) == len(good) and flipped != good
    assert hashlib.sha256(flipped).hexdigest() != true_sha == hashlib.sha256(good).hexdigest()
    assert _get(http, server, KLINES).content == good


def test_fault_truncated_body(server: ReplayServer, http: requests.Session) -> None:
    server.faults.add(FaultRule("truncated", KLINES, times=1))
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        _get(http, server, KLINES)
    # Streaming shows the lie: fewer bytes than Content-Length.
    server.faults.add(FaultRule("truncated", KLINES, times=1))
    with http.get(server.base_url + KLINES, stream=True, timeout=30) as r:
        promised = int(r.headers["Content-Length"])
        got = b""
        with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
            for chunk in r.iter_content(8192):
                got += chunk
        assert 0 < len(got) < promised
    assert _get(http, server, KLINES).status_code == 200


def test_fault_slow(server: ReplayServer, http: requests.Session) -> None:
    _get(http, server, KLINES)  # rendered and cached
    server.faults.add(FaultRule("slow", KLINES, times=1, delay_s=0.4))
    started = time.perf_counter()
    assert _get(http, server, KLINES).status_code == 200
    assert time.perf_counter() - started >= 0.4
    with pytest.raises(requests.exceptions.Timeout):
        server.faults.add(FaultRule("slow", KLINES, times=1, delay_s=1.0))
        http.get(server.base_url + KLINES, timeout=0.3)


def test_faults_over_http(server: ReplayServer, http: requests.Session) -> None:
    url = server.base_url + "/_replay/faults"
    rules = [
        {"kind": "missing", "path_contains": "metrics", "times": 1},
        {"kind": "slow", "path_contains": "x", "delay_s": 0.1},
    ]
    assert http.post(url, json=rules, timeout=30).status_code == 200
    listed = http.get(url, timeout=30).json()
    assert [(r["kind"], r["path_contains"], r["times"], r["remaining"]) for r in listed] == [
        ("missing", "metrics", 1, 1),
        ("slow", "x", None, None),
    ]
    metrics = f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-02.zip"
    assert _get(http, server, metrics).status_code == 404
    assert _get(http, server, metrics).status_code == 200
    assert http.post(url, json=[{"kind": "nope", "path_contains": ""}], timeout=30).status_code == 400
    assert http.post(url, data=b"{not json", timeout=30).status_code == 400
    assert http.delete(url, timeout=30).json() == [] and len(server.faults) == 0
    assert http.get(server.base_url + "/_replay/health", timeout=30).text == "ok\n"


def test_concurrent_requests_render_once_and_agree(server: ReplayServer) -> None:
    path = f"{UM}/daily/aggTrades/ETHUSDT/ETHUSDT-aggTrades-2024-02-02.zip"
    results: list[bytes] = []

    def fetch() -> None:
        results.append(requests.get(server.base_url + path, timeout=60).content)

    threads = [threading.Thread(target=fetch) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 6 and len(set(results)) == 1


# --- real files -------------------------------------------------------------------------


def test_real_fixtures_are_served_at_vision_paths(real_fixtures: Path) -> None:
    csv_path = real_fixtures / "klines_1m" / "BTCUSDT-1m-2023-04-15.csv"
    funding = real_fixtures / "fundingRate" / "BTCUSDT-fundingRate-2026-04.zip"
    with ReplayServer(real_dir=real_fixtures) as srv, requests.Session() as s:
        kl = s.get(srv.base_url + f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip", timeout=30)
        assert kl.status_code == 200
        with zipfile.ZipFile(io.BytesIO(kl.content)) as zf:
            assert zf.namelist() == ["BTCUSDT-1m-2023-04-15.csv"]
            assert zf.read("BTCUSDT-1m-2023-04-15.csv") == csv_path.read_bytes()
        checksum = s.get(srv.base_url + f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip.CHECKSUM", timeout=30)
        assert checksum.text == f"{hashlib.sha256(kl.content).hexdigest()}  BTCUSDT-1m-2023-04-15.zip\n"

        fr = s.get(srv.base_url + f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip", timeout=30)
        assert fr.content == funding.read_bytes()
        fr_sum = s.get(
            srv.base_url + f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip.CHECKSUM", timeout=30
        )
        assert (
            fr_sum.content == (real_fixtures / "fundingRate" / "BTCUSDT-fundingRate-2026-04.zip.CHECKSUM").read_bytes()
        )
        assert fr_sum.text.split()[0] == hashlib.sha256(fr.content).hexdigest()

        # Spot and COIN-M stand-ins are not USD-M files; nothing synthetic behind them.
        spot = s.get(srv.base_url + f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2020-01-01.zip", timeout=30)
        assert spot.status_code == 404
        assert s.get(srv.base_url + KLINES, timeout=30).status_code == 404


def test_real_files_take_precedence_over_the_market(real_fixtures: Path) -> None:
    market = SyntheticMarket(MarketConfig(today=TODAY))
    with ReplayServer(market, real_dir=real_fixtures) as srv, requests.Session() as s:
        kl = s.get(srv.base_url + f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip", timeout=30)
        assert _csv_of(kl.content).startswith(b"open_time,open,high,low,close,volume,close_time,quote_volume,")
        assert _csv_of(kl.content).splitlines()[1].startswith(b"1681516800000,30453.00,30455.00,30446.40,30452.40,")
        # Paths without a real file still come from the market.
        assert s.get(srv.base_url + KLINES, timeout=30).status_code == 200


# --- the blocking entry point ---------------------------------------------------------


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_the_export_line_and_stops_cleanly(stop_signal: signal.Signals) -> None:
    code = "from bml_assets.replay.server import serve; serve('127.0.0.1', 0, seed=7, trades_per_day=100)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        banner = [proc.stdout.readline() for _ in range(2)]  # type: ignore[union-attr]
        assert banner[0].startswith("bml replay server (Binance Vision) at http://127.0.0.1:")
        assert banner[1].startswith("export BML_VISION_BASE_URL=http://127.0.0.1:")
        base_url = banner[1].strip().split("=", 1)[1]
        assert requests.get(base_url + KLINES, timeout=30).status_code == 200
        proc.send_signal(stop_signal)
        assert proc.wait(timeout=10) == 0
        assert "replay server stopped" in proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
