"""A symbol the exchange does not have, through the real definitions: the replay
server answers Vision 404 and REST -1121 for it, and the day ends as "not listed"
with the exchange's answer in the reason, never as a committed file of invented data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .conftest import DAY, MARKET_TODAY, make_lake


@pytest.fixture(scope="module")
def btc_only() -> Iterator[ReplayServer]:
    # ETHUSDT is in the lake's symbols (conftest.SYMBOLS) but not on this exchange.
    market = SyntheticMarket(MarketConfig(seed=11, trades_per_day=4000, today=MARKET_TODAY, symbols=("BTCUSDT",)))
    with ReplayServer(market=market) as server:
        yield server


def test_a_symbol_missing_from_exchange_info_is_never_built(tmp_path: Path, btc_only: ReplayServer) -> None:
    with DagsterInstance.ephemeral() as instance:
        lake = make_lake(tmp_path / "lake", btc_only.base_url, instance)
        result = lake.materialize("ETHUSDT", DAY)
        record = lake.ledger.get_partition("minute", "ETHUSDT", DAY)
    assert not lake.minute_path("ETHUSDT", DAY).exists()
    # Vision said 404 to every file it was asked for; REST said -1121 to every request.
    asked = [(path, status) for _, path, status in btc_only.request_log]
    assert asked and all(status == (400 if path.startswith("/fapi/") else 404) for path, status in asked), asked
    assert all("ETHUSDT" in path for path, _ in asked if not path.startswith("/fapi/")), asked
    assert result.success
    assert record is not None and record.status == "not_listed", record
    assert record.message is not None and "ETHUSDT is not listed on 2024-03-01" in record.message, record.message
    klines = lake.ledger.get_partition("klines_1m", "ETHUSDT", DAY)
    assert klines is not None and klines.status == "not_listed"
    assert klines.message is not None and "/fapi/v1/klines?symbol=ETHUSDT" in klines.message, klines.message
    assert "exchange code -1121: Invalid symbol." in klines.message, klines.message
