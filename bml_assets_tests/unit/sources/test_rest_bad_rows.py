"""REST answers with bad values: refused before anything is committed, naming the request
whose answer held the row, and the minute."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from bml_assets.days import rest_days
from bml_assets.days.clock import ExchangeNow
from bml_assets.defs.io_manager import _validator
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.schema import KLINES
from bml_assets.domain.streams import Stream
from bml_assets.quality import BadSourceRows, BlockingCheckFailed
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpClient
from bml_assets.sources.rest import RestClient, request_urls_of

from .conftest import FakeClock, FakeHost, Reply

SD = SymbolDay("BTCUSDT", dt.date(2024, 3, 1))
DAY0 = 1_709_251_200_000  # 2024-03-01 00:00 UTC
MIN = 60_000
# A closed day: the exchange's clock is a day later.
NOW = ExchangeNow(DAY0 + 2 * 86_400_000, lag_minutes=1)


@pytest.fixture
def rest(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> RestClient:
    clock = FakeClock()
    return RestClient(
        fake_host.base_url,
        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}",
        weight_budget=1800,
        http=http,
        clock=clock,
        sleep=clock.sleep,
    )


def kline(minute: int, high: str = "101.0") -> list:
    t = DAY0 + minute * MIN
    return [t, "100.0", high, "99.0", "100.5", "2.0", t + MIN - 1, "201.0", 3, "1.0", "100.5", "0"]


def requested(fake_host: FakeHost, i: int) -> str:
    """The i-th URL the host was asked for, as it saw it."""
    return fake_host.base_url + fake_host.requests[i]


def test_each_row_remembers_the_request_whose_answer_held_it(fake_host: FakeHost, rest: RestClient) -> None:
    first = [kline(m) for m in range(1500)]
    second = [kline(m) for m in range(1500, 1600)]
    fake_host.set(limits.KLINES_PATH, Reply(200, json.dumps(first).encode()), Reply(200, json.dumps(second).encode()))
    table = rest.klines(Stream.KLINES, "BTCUSDT", DAY0, DAY0 + 1600 * MIN)
    assert table.num_rows == 1600
    assert request_urls_of(table, 0) == request_urls_of(table, 1499) == [requested(fake_host, 0)]
    assert request_urls_of(table, 1500) == request_urls_of(table, 1599) == [requested(fake_host, 1)]
    assert "startTime=1709251200000" in requested(fake_host, 0)


def test_a_bad_rest_kline_is_refused_naming_the_request_and_minute(fake_host: FakeHost, rest: RestClient) -> None:
    rows = [kline(0), kline(1, high="0"), kline(2, high="inf")]
    fake_host.set(limits.KLINES_PATH, Reply(200, json.dumps(rows).encode()))
    data = rest_days.kline_day(rest, Stream.KLINES, KLINES, SD, NOW, None)
    assert data.table is not None and data.table.num_rows == 3
    with pytest.raises(BlockingCheckFailed) as info:
        _validator(KLINES, SD, data)(data.table)
    url = requested(fake_host, 0)
    assert str(info.value).startswith(
        "klines_1m BTCUSDT 2024-03-01: not committed — blocking rule 'prices_positive_finite' failed (2 failures): "
        f"high = 0.0 at minute 2024-03-01T00:01:00+00:00 (answer of GET {url}); "
        f"high = inf at minute 2024-03-01T00:02:00+00:00 (answer of GET {url})"
    ), str(info.value)


def test_a_bad_rest_trade_is_refused_before_aggregation(fake_host: FakeHost, rest: RestClient) -> None:
    trades = [
        {"a": 500, "p": "100.5", "q": "0.010", "f": 1000, "l": 1000, "T": DAY0 + 1_000, "m": True},
        {"a": 501, "p": "100.6", "q": "-0.5", "f": 1001, "l": 1002, "T": DAY0 + 61_000, "m": False},
    ]
    fake_host.set(limits.AGG_TRADES_PATH, Reply(200, json.dumps(trades).encode()))
    with pytest.raises(BadSourceRows) as info:
        rest_days.trade_flow_day(rest, SD, NOW, None)
    assert str(info.value) == (
        "trade_flow_1m BTCUSDT 2024-03-01: not committed — blocking rule 'quantities_non_negative_finite' failed: "
        f"quantity = -0.5 at minute 2024-03-01T00:01:00+00:00 (answer of GET {requested(fake_host, 0)})"
    )
