"""The hot band's plan, without Dagster runs: which runs the sensor asks for, and the REST
weight one minute of polling costs (the numbers written out from the exchange's weight table)."""

from __future__ import annotations

import datetime as dt

from bml_assets.defs.sensors import HotRun, hot_runs
from bml_assets.orchestration.hot import hot_weight_per_minute

TODAY = dt.date(2024, 6, 3)
YESTERDAY = dt.date(2024, 6, 2)
SYMBOLS = ("AUSDT", "BUSDT", "CUSDT", "DUSDT")


def test_every_due_symbol_of_a_day_is_in_one_run() -> None:
    due = dict.fromkeys(SYMBOLS, TODAY)
    assert hot_runs(due, SYMBOLS) == [HotRun(TODAY, "AUSDT", "DUSDT", SYMBOLS)]


def test_fifty_symbols_are_one_run() -> None:
    symbols = tuple(f"S{i:02d}USDT" for i in range(50))
    (run,) = hot_runs(dict.fromkeys(symbols, TODAY), symbols)
    assert (run.first, run.last, len(run.symbols)) == ("S00USDT", "S49USDT", 50)
    assert run.range_tags == {
        "dagster/asset_partition_range_start": "2024-06-03|S00USDT",
        "dagster/asset_partition_range_end": "2024-06-03|S49USDT",
    }


def test_a_lagging_symbol_gets_a_run_of_its_own_day_and_the_range_spans_the_gap() -> None:
    due = {"AUSDT": TODAY, "BUSDT": YESTERDAY, "DUSDT": TODAY}
    assert hot_runs(due, SYMBOLS) == [
        HotRun(YESTERDAY, "BUSDT", "BUSDT", ("BUSDT",)),
        # the range is the product of the dimensions' ranges: BUSDT and CUSDT are in it too
        HotRun(TODAY, "AUSDT", "DUSDT", SYMBOLS),
    ]


def test_nothing_due_is_no_run() -> None:
    assert hot_runs({}, SYMBOLS) == []


def test_rest_weight_per_minute_of_the_hot_band() -> None:
    # Per symbol: 4 klines × 1 (limit 1 < 100) + premiumIndex 1 + openInterest 1 + bookTicker 2
    # + fundingRate 1 + 3 history series × 1 + time 1 = 13, plus aggTrades 20 a page.
    # Per run: the run's clock, 1. The sensor: 12 ticks × time 1 = 12.
    assert hot_weight_per_minute(1) == 13 + 20 + 1 + 12  # 46
    assert hot_weight_per_minute(50) == 50 * 33 + 1 + 12  # 1663: under the default budget of 1800
    # A busy symbol set: 1500 trades a minute each takes two pages.
    assert hot_weight_per_minute(50, agg_trades_per_minute=1500) == 50 * 53 + 1 + 12  # 2663
    # 1000 trades: the page that sees the end is a second one.
    assert hot_weight_per_minute(1, agg_trades_per_minute=1000) == 13 + 40 + 1 + 12
    assert hot_weight_per_minute(50, runs_per_minute=2) == 50 * 33 + 2 + 12
