"""coverage: what a stream table lacks of its day, and filling it from a second source."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.features.coverage import (
    first_traded_minute,
    merge_minutes,
    missing_minutes,
    short_trade_minutes,
    take_fuller_minutes,
    trades_counted,
    trades_held,
)
from bml_assets.features.trade_flow import trade_flow
from bml_assets_tests.unit.features.builders import column, dataset_table, ms, raw_agg_trades

DAY = dt.date(2024, 3, 1)
SOURCE = "BTCUSDT-aggTrades-2024-03-01.csv"


def price_klines(minutes: list[str], close: float = 1.0) -> pa.Table:
    return dataset_table(schema.MARK_PRICE_KLINES, [(m, close, close, close, close) for m in minutes])


def trade_klines(rows: list[tuple[str, int]]) -> pa.Table:
    """klines_1m rows of (minute, count); the other values do not matter here."""
    return dataset_table(schema.KLINES, [(m, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, n, 0.5, 0.5) for m, n in rows])


def test_missing_minutes_of_a_file_holding_its_first_100_minutes() -> None:
    table = price_klines([f"2024-03-01 {i // 60:02d}:{i % 60:02d}" for i in range(100)])
    missing = missing_minutes(table, DAY)
    assert len(missing) == 1340
    assert (int(missing[0]), int(missing[-1])) == (ms("2024-03-01 01:40"), ms("2024-03-01 23:59"))


def test_missing_minutes_with_holes_inside_the_day() -> None:
    every = [f"2024-03-01 {h:02d}:{m:02d}" for h in range(24) for m in range(60)]
    kept = [t for t in every if t not in ("2024-03-01 10:00", "2024-03-01 10:01", "2024-03-01 23:59")]
    assert missing_minutes(price_klines(kept), DAY).tolist() == [
        ms("2024-03-01 10:00"),
        ms("2024-03-01 10:01"),
        ms("2024-03-01 23:59"),
    ]
    assert missing_minutes(price_klines(every), DAY).tolist() == []


def test_merge_minutes_adds_what_the_first_source_lacks_and_keeps_its_rows() -> None:
    vision = price_klines(["2024-03-01 00:00", "2024-03-01 00:02"], close=10.0)
    rest = price_klines(["2024-03-01 00:00", "2024-03-01 00:01", "2024-03-01 00:03"], close=20.0)
    merged = merge_minutes(vision, rest)
    assert merged.schema == schema.MARK_PRICE_KLINES.arrow_schema
    assert [t.strftime("%H:%M") for t in column(merged, "timestamp")] == ["00:00", "00:01", "00:02", "00:03"]
    assert column(merged, "close") == [10.0, 20.0, 10.0, 20.0]  # 00:00 stays Vision's


def flow(rows: list[tuple]) -> pa.Table:
    return trade_flow(raw_agg_trades(rows), DAY, source=SOURCE)


# aggTrades (id, price, qty, first_trade_id, last_trade_id, time, is_buyer_maker)
FULL = [
    (1, 100.0, 1.0, 1, 3, "2024-03-01 00:00:01", False),  # 3 trades
    (2, 101.0, 2.0, 4, 4, "2024-03-01 00:00:30", True),  # 1
    (3, 102.0, 1.0, 5, 6, "2024-03-01 00:01:05", False),  # 2
    (4, 103.0, 1.0, 7, 7, "2024-03-01 00:03:00", True),  # 1
]
KLINES = trade_klines(
    [("2024-03-01 00:00", 4), ("2024-03-01 00:01", 2), ("2024-03-01 00:02", 0), ("2024-03-01 00:03", 1)]
)


def test_short_trade_minutes_are_those_where_klines_count_more_trades() -> None:
    complete = flow(FULL)
    assert (trades_held(complete), trades_counted(KLINES)) == (7, 7)
    assert short_trade_minutes(complete, KLINES).tolist() == []
    cut = flow(FULL[:1])  # the file stops after its first aggTrade: 3 of 7 trades
    assert trades_held(cut) == 3
    assert short_trade_minutes(cut, KLINES).tolist() == [
        ms("2024-03-01 00:00"),  # 3 of 4
        ms("2024-03-01 00:01"),  # 0 of 2
        ms("2024-03-01 00:03"),  # 0 of 1
    ]


def test_first_traded_minute_skips_minutes_without_trades() -> None:
    quiet_start = trade_klines([("2024-03-01 00:00", 0), ("2024-03-01 00:01", 0), ("2024-03-01 00:02", 5)])
    assert first_traded_minute(quiet_start) == ms("2024-03-01 00:02")
    assert first_traded_minute(trade_klines([("2024-03-01 00:00", 0)])) is None


def test_take_fuller_minutes_replaces_only_where_the_other_source_has_more_trades() -> None:
    cut = flow(FULL[:1])
    rest = flow(FULL[1:])  # REST starting later: 00:00 has 1 trade there, 00:01 2, 00:03 1
    short = short_trade_minutes(cut, KLINES)
    merged, replaced = take_fuller_minutes(cut, rest, short)
    # 00:00: Vision holds 3 trades, REST 1 -> Vision's row stays; 00:01 and 00:03 come from REST.
    assert replaced == 2
    assert [t.strftime("%H:%M") for t in column(merged, "timestamp")] == ["00:00", "00:01", "00:03"]
    assert column(merged, "count_buy_trades") == [3, 2, 0]
    assert column(merged, "count_sell_trades") == [0, 0, 1]
    assert short_trade_minutes(merged, KLINES).tolist() == [ms("2024-03-01 00:00")]  # short in every source
    whole, replaced = take_fuller_minutes(cut, flow(FULL), short)
    assert replaced == 3 and whole.equals(flow(FULL))
    unchanged, replaced = take_fuller_minutes(cut, cut, short)
    assert replaced == 0 and unchanged.equals(cut)
