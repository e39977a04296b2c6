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
from http.client import HTTPConnection
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from bml_assets import cli
from bml_assets.replay import server as replay_server
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

UM = "/data/futures/um"
TODAY = date(2026, 7, 1)
KLINES = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
# The fault switches take only JSON bodies (requests sets this itself for json=...).
JSON_TYPE = {"Content-Type": "application/json"}
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
    assert http.post(url, data=b"{not json", headers=JSON_TYPE, timeout=30).status_code == 400
    assert http.delete(url, headers=JSON_TYPE, timeout=30).json() == [] and len(server.faults) == 0
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


# --- a safe local tool -----------------------------------------------------------------

SECRET = b"root:x:0:0:root:/root:/bin/bash\n"
NO_SUCH_KEY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
    b"<Message>The specified key does not exist.</Message><Key>%s</Key></Error>"
)
INVALID_SYMBOL = b'{"code":-1121,"msg":"Invalid symbol."}'


def _raw(server: ReplayServer, method: str, path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    """One request with the path sent as is (``requests`` would percent-encode it)."""
    conn = HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_real_dir_never_serves_what_lies_outside_it(tmp_path: Path) -> None:
    root, outside = tmp_path / "real", tmp_path / "outside"
    (outside / "BTCUSDT").mkdir(parents=True)
    (outside / "secret").write_bytes(SECRET)
    (outside / "BTCUSDT" / "BTCUSDT-aggTrades-2024-01-02.csv").write_bytes(SECRET)
    (root / "k").mkdir(parents=True)
    (root / "k" / "BTCUSDT-1m-2024-01-01.csv").symlink_to(outside / "secret")  # a file link out
    laid_out = root / "data" / "futures" / "um" / "daily" / "aggTrades"
    laid_out.mkdir(parents=True)
    (laid_out / "BTCUSDT").symlink_to(outside / "BTCUSDT", target_is_directory=True)  # a folder link out
    good = root / "k" / "BTCUSDT-1m-2024-01-03.csv"
    good.write_text("open_time,open\n")
    with ReplayServer(real_dir=root) as srv, requests.Session() as s:
        assert list(srv.real_files) == [f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-03.zip"]
        for path in (
            f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip",
            f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip.CHECKSUM",
            f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip",
        ):
            r = s.get(srv.base_url + path, timeout=30)
            assert (r.status_code, r.content) == (404, NO_SUCH_KEY % path.lstrip("/").encode())
        good_path = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-03.zip"
        assert _csv_of(s.get(srv.base_url + good_path, timeout=30).content) == b"open_time,open\n"
        # A file swapped for a link out after indexing (and after being served) is refused too.
        srv.clear_cache()
        good.unlink()
        good.symlink_to(outside / "secret")
        for path in (good_path, good_path + ".CHECKSUM"):
            r = s.get(srv.base_url + path, timeout=30)
            assert (r.status_code, r.content) == (404, NO_SUCH_KEY % path.lstrip("/").encode())
        assert all(status == 404 for _, p, status in srv.request_log if "2024-01-03" not in p)


def test_error_bodies_escape_the_request_path(server: ReplayServer) -> None:
    status, headers, body = _raw(server, "GET", "/data/futures/um/<script>\"&'</script>.zip")
    assert (status, headers["content-type"], headers["x-content-type-options"]) == (404, "application/xml", "nosniff")
    assert body == NO_SUCH_KEY % b"data/futures/um/&lt;script&gt;&quot;&amp;&#x27;&lt;/script&gt;.zip"
    status, headers, body = _raw(server, "GET", "/fapi/v1/<script>")
    assert (status, headers["content-type"]) == (404, "application/json")
    assert body == b'{"code":-5000,"msg":"Path /fapi/v1/\\u003cscript\\u003e, Method GET is invalid"}'
    # The fault switch's own errors quote what was sent, as JSON with the markup escaped.
    r = requests.post(server.base_url + "/_replay/faults", json={"kind": "<b>", "path_contains": ""}, timeout=30)
    assert (r.status_code, r.content) == (
        400,
        b'{"error":"bad fault rules: \'\\u003cb\\u003e\' is not a valid FaultKind"}',
    )


def test_fault_switches_refuse_what_a_web_page_can_send(server: ReplayServer, http: requests.Session) -> None:
    url = server.base_url + "/_replay/faults"
    rule = b'{"kind": "missing", "path_contains": ""}'
    # The body types a cross-site form or no-cors fetch can send without a preflight.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"Content-Type": content_type} if content_type else {}
        r = http.post(url, data=rule, headers=headers, timeout=30)
        expected = b'{"error":"POST /_replay/faults needs Content-Type: application/json"}'
        assert (r.status_code, r.content) == (415, expected), content_type
    assert len(server.faults) == 0
    server.faults.add(FaultRule("missing", "x"))
    r = http.delete(url, timeout=30)
    assert (r.status_code, r.content) == (
        415,
        b'{"error":"DELETE /_replay/faults needs Content-Type: application/json"}',
    )
    assert len(server.faults) == 1
    # The preflight a browser sends before a JSON POST is refused, with no CORS grant.
    r = http.options(
        url,
        headers={
            "Origin": "http://evil.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
        timeout=30,
    )
    assert (r.status_code, r.headers["Allow"]) == (405, "GET, HEAD, POST, DELETE")
    r_get = http.get(url, headers={"Origin": "http://evil.example"}, timeout=30)
    for response in (r, r_get):
        assert [h for h in response.headers if h.lower().startswith("access-control-")] == []
    # A page whose DNS name was rebound to 127.0.0.1 is same-origin: its Host header gives it away.
    for method in ("POST", "DELETE", "GET"):
        status, _, body = _raw(
            server, method, "/_replay/faults", Host="evil.example", **{"Content-Type": "application/json"}
        )
        assert (status, body) == (421, b"this replay server answers loopback host names only\n"), method
    assert _raw(server, "GET", KLINES, Host="rebound.example:8765")[0] == 421
    assert len(server.faults) == 1
    assert _raw(server, "GET", "/_replay/health", Host=f"localhost:{server.port}")[2] == b"ok\n"
    assert _raw(server, "GET", "/_replay/health", Host=f"[::1]:{server.port}")[2] == b"ok\n"


def test_a_symbol_outside_the_universe_is_unknown(server: ReplayServer, http: requests.Session) -> None:
    for path in (
        f"{UM}/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-01-02.zip",
        f"{UM}/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-01-02.zip.CHECKSUM",
        f"{UM}/daily/aggTrades/SOLUSDT/SOLUSDT-aggTrades-2024-01-02.zip",
        f"{UM}/monthly/fundingRate/SOLUSDT/SOLUSDT-fundingRate-2024-01.zip.CHECKSUM",
    ):
        r = _get(http, server, path)
        assert (r.status_code, r.content) == (404, NO_SUCH_KEY % path.lstrip("/").encode()), path
    for path, params in (
        ("/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": "1m"}),
        ("/fapi/v1/indexPriceKlines", {"pair": "SOLUSDT", "interval": "1m"}),
        ("/fapi/v1/aggTrades", {"symbol": "SOLUSDT"}),
        ("/fapi/v1/premiumIndex", {"symbol": "SOLUSDT"}),
        ("/fapi/v1/fundingRate", {"symbol": "SOLUSDT"}),
        ("/futures/data/openInterestHist", {"symbol": "SOLUSDT", "period": "5m"}),
    ):
        r = http.get(server.base_url + path, params=params, timeout=30)
        assert (r.status_code, r.content) == (400, INVALID_SYMBOL), path
    listed = http.get(server.base_url + "/fapi/v1/exchangeInfo", timeout=30).json()["symbols"]
    assert [s["symbol"] for s in listed] == ["BTCUSDT", "ETHUSDT", "NEWUSDT"]


def test_real_files_serve_symbols_outside_the_universe(tmp_path: Path) -> None:
    (tmp_path / "SOLUSDT-1m-2024-01-02.csv").write_text("open_time,open\n")
    market = SyntheticMarket(MarketConfig(today=TODAY, symbols=("BTCUSDT",)))
    with ReplayServer(market, real_dir=tmp_path) as srv, requests.Session() as s:
        real = s.get(srv.base_url + f"{UM}/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-01-02.zip", timeout=30)
        assert (real.status_code, _csv_of(real.content)) == (200, b"open_time,open\n")
        # Nothing synthetic behind it, and REST knows only the market's universe.
        assert s.get(srv.base_url + f"{UM}/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-01-03.zip").status_code == 404
        r = s.get(srv.base_url + "/fapi/v1/premiumIndex", params={"symbol": "SOLUSDT"}, timeout=30)
        assert (r.status_code, r.content) == (400, INVALID_SYMBOL)


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
        assert proc.wait(timeout=60) == 0  # a clean exit; the bound only stops a hang (CI is loaded)
        assert "replay server stopped" in proc.stdout.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


BML = [sys.executable, "-m", "bml_assets.cli"]


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::"])
def test_replay_server_command_refuses_a_public_host_in_one_line(host: str) -> None:
    done = subprocess.run(
        [*BML, "replay-server", "--host", host, "--port", "0"], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == (
        f"Error: --host {host} is not a loopback address: the replay server is a local test tool; "
        "add --allow-public to expose it anyway"
    )
    assert "Traceback" not in done.stderr


def test_replay_server_command_passes_allow_public_and_symbols(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[tuple[object, ...], dict[str, object]]] = []
    monkeypatch.setattr(replay_server, "serve", lambda *args, **kw: calls.append((args, kw)))
    args = ["replay-server", "--host", "0.0.0.0", "--allow-public", "--port", "0", "--symbols", "SOLUSDT,BTCUSDT"]
    result = CliRunner().invoke(cli.main, args)
    assert result.exit_code == 0, result.output
    ((positional, options),) = calls
    assert positional == ("0.0.0.0", 0)
    assert (options["allow_public"], options["symbols"]) == (True, ("SOLUSDT", "BTCUSDT"))
    bad = CliRunner().invoke(cli.main, ["replay-server", "--symbols", "sol"])
    assert bad.exit_code == 2 and "invalid symbol in --symbols 'sol'" in bad.output


def test_replay_server_command_serves_the_symbols_it_is_given() -> None:
    proc = subprocess.Popen(
        [*BML, "replay-server", "--port", "0", "--symbols", "SOLUSDT"], stdout=subprocess.PIPE, text=True
    )
    try:
        banner = [proc.stdout.readline() for _ in range(4)]  # type: ignore[union-attr]
        assert banner[3] == "synthetic market symbols: SOLUSDT\n"
        base_url = banner[1].strip().split("=", 1)[1]
        sol = f"{UM}/daily/klines/SOLUSDT/1m/SOLUSDT-1m-2024-01-02.zip"
        assert requests.get(base_url + sol, timeout=30).status_code == 200
        assert requests.get(base_url + KLINES, timeout=30).status_code == 404  # BTCUSDT is not in it
        r = requests.get(base_url + "/fapi/v1/premiumIndex", params={"symbol": "BTCUSDT"}, timeout=30)
        assert (r.status_code, r.content) == (400, INVALID_SYMBOL)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a clean exit; the bound only stops a hang (CI is loaded)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
