"""Vision URLs, CHECKSUM parsing, and VisionClient.fetch against a local host."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from pathlib import Path

import pytest

from bml_assets.domain.settings import SettingsError
from bml_assets.domain.streams import BOOK_TICKER_LAST_DAY, Stream
from bml_assets.sources.http import HttpClient, HttpError
from bml_assets.sources.vision import NotPublished, VisionClient, VisionError, daily_url, monthly_url, parse_checksum

from .conftest import FakeHost, Reply, make_zip

BASE = "https://data.binance.vision"
D = date(2024, 1, 2)


# --- URLs -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (Stream.KLINES, f"{BASE}/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"),
        (
            Stream.MARK_PRICE_KLINES,
            f"{BASE}/data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip",
        ),
        (
            Stream.INDEX_PRICE_KLINES,
            f"{BASE}/data/futures/um/daily/indexPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip",
        ),
        (
            Stream.PREMIUM_INDEX_KLINES,
            f"{BASE}/data/futures/um/daily/premiumIndexKlines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip",
        ),
        (Stream.AGG_TRADES, f"{BASE}/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip"),
        (Stream.BOOK_TICKER, f"{BASE}/data/futures/um/daily/bookTicker/BTCUSDT/BTCUSDT-bookTicker-2024-01-02.zip"),
        (Stream.METRICS, f"{BASE}/data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-01-02.zip"),
    ],
)
def test_daily_urls(stream: Stream, expected: str) -> None:
    assert daily_url(BASE, stream, "BTCUSDT", D) == expected
    assert daily_url(BASE + "/", stream, "BTCUSDT", D) == expected


def test_monthly_urls() -> None:
    assert (
        monthly_url(BASE, Stream.FUNDING_RATE, "BTCUSDT", 2026, 4)
        == f"{BASE}/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip"
    )
    assert (
        monthly_url(BASE, Stream.KLINES, "ETHUSDT", 2023, 11)
        == f"{BASE}/data/futures/um/monthly/klines/ETHUSDT/1m/ETHUSDT-1m-2023-11.zip"
    )
    assert (
        monthly_url(BASE, Stream.AGG_TRADES, "BTCUSDT", 2023, 1)
        == f"{BASE}/data/futures/um/monthly/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2023-01.zip"
    )


def test_stream_values_and_facts() -> None:
    assert [s.value for s in Stream] == [
        "klines",
        "markPriceKlines",
        "indexPriceKlines",
        "premiumIndexKlines",
        "aggTrades",
        "bookTicker",
        "metrics",
        "fundingRate",
    ]
    assert date(2024, 3, 30) == BOOK_TICKER_LAST_DAY


def test_periods_not_published_are_rejected() -> None:
    with pytest.raises(ValueError, match="monthly"):
        daily_url(BASE, Stream.FUNDING_RATE, "BTCUSDT", D)
    with pytest.raises(ValueError, match="daily"):
        monthly_url(BASE, Stream.METRICS, "BTCUSDT", 2024, 1)
    with pytest.raises(ValueError):
        monthly_url(BASE, Stream.FUNDING_RATE, "BTCUSDT", 2024, 13)


@pytest.mark.parametrize("symbol", ["../x", "btc usdt", "btcusdt", "B", "BTC/USDT", ""])
def test_bad_symbols_are_rejected(symbol: str) -> None:
    with pytest.raises(SettingsError):
        daily_url(BASE, Stream.KLINES, symbol, D)
    with pytest.raises(SettingsError):
        monthly_url(BASE, Stream.FUNDING_RATE, symbol, 2024, 1)


# --- CHECKSUM ----------------------------------------------------------------

ZIP_URL = f"{BASE}/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
HEX = "ab" * 32


@pytest.mark.parametrize(
    "text",
    [
        f"{HEX}  BTCUSDT-1m-2024-01-02.zip",
        f"{HEX}  BTCUSDT-1m-2024-01-02.zip\n",
        f"{HEX}  BTCUSDT-1m-2024-01-02.zip\r\n",
        f"{HEX.upper()}  BTCUSDT-1m-2024-01-02.zip\n",
    ],
)
def test_parse_checksum_accepts_with_and_without_final_newline(text: str) -> None:
    assert parse_checksum(text, url=ZIP_URL) == HEX
    assert parse_checksum(text.encode(), url=ZIP_URL) == HEX


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        f"{HEX[:-1]}  BTCUSDT-1m-2024-01-02.zip",  # 63 hex
        f"{HEX} BTCUSDT-1m-2024-01-02.zip",  # one space
        f"{HEX}  BTCUSDT-1m-2024-01-02.zip\n\n",  # two lines
        f"{HEX}  BTCUSDT-1m-2024-01-02.zip\n{HEX}  other.zip\n",
        f"{'zz' * 32}  BTCUSDT-1m-2024-01-02.zip",
        "<html><body>Access Denied</body></html>",
    ],
)
def test_parse_checksum_rejects_malformed_text(text: str) -> None:
    with pytest.raises(VisionError, match="malformed CHECKSUM") as info:
        parse_checksum(text, url=ZIP_URL)
    assert ZIP_URL in str(info.value)


def test_parse_checksum_rejects_another_files_name() -> None:
    with pytest.raises(VisionError, match=r"BTCUSDT-1m-2024-01-03\.zip"):
        parse_checksum(f"{HEX}  BTCUSDT-1m-2024-01-03.zip\n", url=ZIP_URL)


# --- fetch against a local host ------------------------------------------------

PATH = "/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-01.zip"
CSV = b"calc_time,funding_interval_hours,last_funding_rate\n1704067200000,8,0.0001\n"
GOOD = make_zip("BTCUSDT-fundingRate-2024-01.csv", CSV)
GOOD_SHA = hashlib.sha256(GOOD).hexdigest()


def checksum_reply(digest: str, name: str = "BTCUSDT-fundingRate-2024-01.zip") -> Reply:
    return Reply(200, f"{digest}  {name}\n".encode())


@pytest.fixture
def client(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> VisionClient:
    return VisionClient(fake_host.base_url, tmp_path / "cache", http)


def serve(host: FakeHost, *zips: Reply, digest: str = GOOD_SHA) -> None:
    host.set(PATH + ".CHECKSUM", checksum_reply(digest))
    host.set(PATH, *(zips or (Reply(200, GOOD),)))


def cache_files(client: VisionClient) -> list[str]:
    return sorted(p.name for p in client.cache_dir.rglob("*") if p.is_file())


def test_fetch_downloads_verifies_and_caches(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host)
    url = fake_host.url(PATH)
    f = client.fetch(url)
    assert (f.url, f.sha256, f.bytes, f.from_cache) == (url, GOOD_SHA, len(GOOD), False)
    url_key = hashlib.sha256(url.encode()).hexdigest()
    assert f.path == client.cache_dir / url_key[:2] / url_key / f"{GOOD_SHA}.zip"
    assert f.path.read_bytes() == GOOD
    sidecar = json.loads(f.path.with_suffix(".json").read_text())
    assert (sidecar["url"], sidecar["sha256"], sidecar["bytes"]) == (url, GOOD_SHA, len(GOOD))
    assert cache_files(client) == [f"{GOOD_SHA}.json", f"{GOOD_SHA}.zip"]  # no temp files left
    assert f.fetched_at.tzinfo is not None


def test_cache_hit_does_not_download_again(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host)
    first = client.fetch(fake_host.url(PATH))
    second = client.fetch(fake_host.url(PATH))
    assert second.from_cache is True
    assert (second.path, second.sha256, second.bytes, second.fetched_at) == (
        first.path,
        first.sha256,
        first.bytes,
        first.fetched_at,
    )
    assert fake_host.count(PATH) == 1
    assert fake_host.count(PATH + ".CHECKSUM") == 2  # the checksum is always asked afresh


def test_reupload_with_new_checksum_gets_a_new_entry(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host)
    old = client.fetch(fake_host.url(PATH))
    new_zip = make_zip("BTCUSDT-fundingRate-2024-01.csv", CSV + b"1704096000000,8,0.0002\n")
    new_sha = hashlib.sha256(new_zip).hexdigest()
    serve(fake_host, Reply(200, new_zip), digest=new_sha)
    new = client.fetch(fake_host.url(PATH))
    assert new.from_cache is False and new.sha256 == new_sha
    assert new.path.parent == old.path.parent
    assert old.path.exists() and new.path.read_bytes() == new_zip


def test_damaged_cache_entry_is_downloaded_again(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host)
    first = client.fetch(fake_host.url(PATH))
    first.path.write_bytes(b"bit rot")
    again = client.fetch(fake_host.url(PATH))
    assert again.from_cache is False and again.path.read_bytes() == GOOD
    assert fake_host.count(PATH) == 2


def test_checksum_mismatch_once_then_good(fake_host: FakeHost, client: VisionClient) -> None:
    bad = make_zip("BTCUSDT-fundingRate-2024-01.csv", b"calc_time,funding_interval_hours,last_funding_rate\n")
    serve(fake_host, Reply(200, bad), Reply(200, GOOD))
    f = client.fetch(fake_host.url(PATH))
    assert f.sha256 == GOOD_SHA and f.path.read_bytes() == GOOD
    assert fake_host.count(PATH) == 2
    assert cache_files(client) == [f"{GOOD_SHA}.json", f"{GOOD_SHA}.zip"]


def test_checksum_mismatch_twice_is_an_error(fake_host: FakeHost, client: VisionClient) -> None:
    bad = b"not the published bytes"
    serve(fake_host, Reply(200, bad))
    url = fake_host.url(PATH)
    with pytest.raises(VisionError) as info:
        client.fetch(url)
    message = str(info.value)
    assert f"checksum mismatch for {url}" in message
    assert GOOD_SHA in message and hashlib.sha256(bad).hexdigest() in message and "twice" in message
    assert fake_host.count(PATH) == 2
    assert cache_files(client) == []


def test_corrupted_zip_is_an_error(fake_host: FakeHost, client: VisionClient) -> None:
    junk = b"PK\x03\x04 this is not really a zip"
    serve(fake_host, Reply(200, junk), digest=hashlib.sha256(junk).hexdigest())
    url = fake_host.url(PATH)
    with pytest.raises(VisionError, match=f"corrupted zip {url}"):
        client.fetch(url)
    assert cache_files(client) == []


def test_zip_with_unexpected_member_is_an_error(fake_host: FakeHost, client: VisionClient) -> None:
    other = make_zip("something-else.csv", CSV)
    serve(fake_host, Reply(200, other), digest=hashlib.sha256(other).hexdigest())
    with pytest.raises(VisionError, match=r"expected one member 'BTCUSDT-fundingRate-2024-01\.csv'"):
        client.fetch(fake_host.url(PATH))
    assert cache_files(client) == []


def test_truncated_body_is_retried(fake_host: FakeHost, client: VisionClient, sleeps: list[float]) -> None:
    serve(fake_host, Reply(200, GOOD, truncate_to=len(GOOD) // 2), Reply(200, GOOD))
    f = client.fetch(fake_host.url(PATH))
    assert f.sha256 == GOOD_SHA
    assert fake_host.count(PATH) == 2
    assert len(sleeps) == 1


def test_500_burst_is_retried(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host, Reply(500), Reply(503), Reply(200, GOOD))
    fake_host.set(PATH + ".CHECKSUM", Reply(502), checksum_reply(GOOD_SHA))
    assert client.fetch(fake_host.url(PATH)).sha256 == GOOD_SHA
    assert fake_host.count(PATH) == 3
    assert fake_host.count(PATH + ".CHECKSUM") == 2


@pytest.mark.parametrize("status", [404, 403])
def test_missing_checksum_is_not_published(fake_host: FakeHost, client: VisionClient, status: int) -> None:
    fake_host.set(PATH + ".CHECKSUM", Reply(status, b"<Error/>"))
    url = fake_host.url(PATH)
    with pytest.raises(NotPublished) as info:
        client.fetch(url)
    assert (info.value.url, info.value.status) == (url, status)
    assert fake_host.count(PATH) == 0


def test_missing_zip_beside_its_checksum_is_not_published(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host, Reply(404))
    with pytest.raises(NotPublished) as info:
        client.fetch(fake_host.url(PATH))
    assert info.value.status == 404
    assert cache_files(client) == []


def test_bad_checksum_text_is_an_error(fake_host: FakeHost, client: VisionClient) -> None:
    fake_host.set(PATH + ".CHECKSUM", Reply(200, b"<html>maintenance</html>"))
    url = fake_host.url(PATH)
    with pytest.raises(VisionError, match="malformed CHECKSUM") as info:
        client.fetch(url)
    assert url in str(info.value)


def test_client_error_on_checksum_keeps_exchange_detail(fake_host: FakeHost, client: VisionClient) -> None:
    fake_host.set(PATH + ".CHECKSUM", Reply(400, b'{"code":-1121,"msg":"Invalid symbol."}'))
    with pytest.raises(VisionError, match="Invalid symbol") as info:
        client.fetch(fake_host.url(PATH))
    cause = info.value.__cause__
    assert isinstance(cause, HttpError) and (cause.code, cause.msg) == (-1121, "Invalid symbol.")


def test_fetch_daily_and_monthly_build_the_urls(fake_host: FakeHost, client: VisionClient) -> None:
    serve(fake_host)
    assert client.fetch_monthly(Stream.FUNDING_RATE, "BTCUSDT", 2024, 1).url == fake_host.url(PATH)
    daily_path = "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
    kline_zip = make_zip("BTCUSDT-1m-2024-01-02.csv", b"1704153600000,1,1,1,1,0,1704153659999,0,0,0,0,0\n")
    fake_host.set(
        daily_path + ".CHECKSUM", checksum_reply(hashlib.sha256(kline_zip).hexdigest(), "BTCUSDT-1m-2024-01-02.zip")
    )
    fake_host.set(daily_path, Reply(200, kline_zip))
    f = client.fetch_daily(Stream.KLINES, "BTCUSDT", D)
    assert f.url == fake_host.url(daily_path) and f.bytes == len(kline_zip)
