"""The dry run's estimate (orchestration/estimate.py): the zips a day needs, the REST weight
of a day built from REST, and the rate kept by the last backfill."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bml_assets.domain.streams import Stream
from bml_assets.lake.ledger import Ledger
from bml_assets.orchestration.estimate import measured_rate, record_rate, rest_day_weight, vision_urls
from bml_assets.sources.vision import VisionClient

BASE = "https://data.binance.vision"


def test_a_rest_day_costs_the_kline_family_histories_funding_and_aggtrades_pages() -> None:
    # 4 kline streams × 1 page of 1500 (weight 10) + 3 histories × 1 page (1) + fundingRate (1).
    assert rest_day_weight(None) == 44
    assert rest_day_weight(0) == 44 + 20  # one aggTrades request even for a day without trades
    assert rest_day_weight(2500) == 44 + 3 * 20  # 3 pages of 1000 at weight 20
    assert rest_day_weight(3_000_000) == 44 + 3000 * 20


def test_the_zips_of_a_day_are_those_the_day_builders_read(tmp_path: Path) -> None:
    vision = VisionClient(BASE, tmp_path / "cache")
    first = vision_urls(vision, "BTCUSDT", dt.date(2024, 3, 1))
    assert [s for s, _ in first].count(Stream.METRICS) == 2  # the day's and the day before's
    assert (Stream.METRICS, f"{BASE}/data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-02-29.zip") in first
    funding = [url for s, url in first if s == Stream.FUNDING_RATE]
    assert funding == [
        f"{BASE}/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-02.zip",
        f"{BASE}/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-03.zip",
    ]
    assert len(first) == 7 + 1 + 2
    # After 2024-03-30 Vision publishes no bookTicker; mid-month, one funding month.
    later = vision_urls(vision, "BTCUSDT", dt.date(2024, 4, 2))
    assert Stream.BOOK_TICKER not in {s for s, _ in later} and len(later) == 6 + 1 + 1


def test_the_rate_is_the_last_backfills(tmp_path: Path) -> None:
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ledger.init()
        assert measured_rate(ledger) == (None, 0)
        record_rate(ledger, 30, 90.0, 2)
        assert measured_rate(ledger) == (20.0, 30)
        record_rate(ledger, 10, 120.0, 1)  # the last one counts
        assert measured_rate(ledger) == (5.0, 10)
        ledger.set_meta(Ledger.BACKFILL_RATE_KEY, "not json")
        assert measured_rate(ledger) == (None, 0)
