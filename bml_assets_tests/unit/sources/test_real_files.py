"""The readers and the verifier on real Binance files (../shared/fixtures/real; skipped without it)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.compute as pc

from bml_assets.domain.streams import Stream
from bml_assets.sources.http import HttpClient
from bml_assets.sources.vision import VisionClient, parse_checksum
from bml_assets.sources.vision_csv import read_vision_csv

from .conftest import FakeHost, Reply

FUNDING = "fundingRate/BTCUSDT-fundingRate-2026-04.zip"
AGG = "aggTrades_cm_fallback/BTCUSD_PERP-aggTrades-2026-05-08.zip"


def test_real_klines_csv_with_header(real_fixtures: Path) -> None:
    table = read_vision_csv(real_fixtures / "klines_1m/BTCUSDT-1m-2023-04-15.csv", Stream.KLINES)
    assert table.num_rows == 1440
    assert table["open_time"][0].as_py() == 1681516800000
    assert table["open_time"][1439].as_py() == 1681516800000 + 1439 * 60_000
    assert pc.all(pc.equal(pc.subtract(table["close_time"], table["open_time"]), 59_999)).as_py()


def test_real_funding_zip_verifies_against_its_checksum(real_fixtures: Path) -> None:
    path = real_fixtures / FUNDING
    published = (real_fixtures / (FUNDING + ".CHECKSUM")).read_text()
    url = "https://data.binance.vision/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip"
    assert parse_checksum(published, url=url) == hashlib.sha256(path.read_bytes()).hexdigest()
    table = read_vision_csv(path, Stream.FUNDING_RATE)
    assert table.num_rows == 90
    assert set(table["funding_interval_hours"].to_pylist()) == {8}
    assert table["calc_time"][0].as_py() == 1775001600000


def test_real_funding_zip_through_the_client(
    real_fixtures: Path, fake_host: FakeHost, http: HttpClient, tmp_path: Path
) -> None:
    zip_path = "/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip"
    fake_host.set(zip_path, Reply(200, (real_fixtures / FUNDING).read_bytes()))
    fake_host.set(zip_path + ".CHECKSUM", Reply(200, (real_fixtures / (FUNDING + ".CHECKSUM")).read_bytes()))
    client = VisionClient(fake_host.base_url, tmp_path / "cache", http)
    f = client.fetch_monthly(Stream.FUNDING_RATE, "BTCUSDT", 2026, 4)
    assert f.bytes == 960
    assert read_vision_csv(f.path, Stream.FUNDING_RATE, source=f.url).num_rows == 90


def test_real_spot_checksum_without_final_newline(real_fixtures: Path) -> None:
    text = (real_fixtures / "spot_fallback/BTCUSDT-1m-2020-01-01.zip.CHECKSUM").read_bytes()
    assert not text.endswith(b"\n")
    url = "https://data.binance.vision/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2020-01-01.zip"
    digest = hashlib.sha256((real_fixtures / "spot_fallback/BTCUSDT-1m-2020-01-01.zip").read_bytes()).hexdigest()
    assert parse_checksum(text, url=url) == digest


def test_real_agg_trades_zip(real_fixtures: Path) -> None:
    table = read_vision_csv(real_fixtures / AGG, Stream.AGG_TRADES)
    assert table.num_rows == 105280
    assert table["agg_trade_id"][0].as_py() == 480537903
    assert table["transact_time"][0].as_py() == 1778198400020
    # ids are contiguous in a real day
    assert table["agg_trade_id"][105279].as_py() - 480537903 == 105279
    assert table["is_buyer_maker"].null_count == 0


def test_real_headerless_spot_klines_zip(real_fixtures: Path) -> None:
    table = read_vision_csv(real_fixtures / "spot_fallback/BTCUSDT-1m-2020-01-01.zip", Stream.KLINES)
    assert table.num_rows == 1440
    assert table["open_time"][0].as_py() == 1577836800000
    assert table["open"][0].as_py() == 7195.24
