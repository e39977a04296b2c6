"""trade_flow: aggTrades -> one row per minute with trades."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from bml_assets.domain import schema
from bml_assets.features.trade_flow import TradeOutsideDay, trade_flow
from bml_assets_tests.unit.features.builders import column, ms, raw_agg_trades, utc

DAY = dt.date(2024, 3, 1)
SOURCE = "BTCUSDT-aggTrades-2024-03-01.csv"
BUY, SELL = False, True  # is_buyer_maker: False = the taker bought


def single_trade_minute(price: float, quantity: float, is_buyer_maker: bool) -> dict:
    table = trade_flow(
        raw_agg_trades([(1, price, quantity, 1, 1, "2024-03-01 10:00:00", is_buyer_maker)]), DAY, source=SOURCE
    )
    assert table.num_rows == 1
    return table.to_pylist()[0]


@pytest.mark.parametrize(
    ("price", "quantity", "side", "buy_whale", "sell_whale", "whales"),
    [
        (50000.0, 2.0, BUY, 2.0, 0.0, 1),  # notional exactly 100 000 counts
        (25000.0, 4.0, SELL, 0.0, 4.0, 1),  # exactly 100 000, taker sell
        (49999.99, 2.0, BUY, 0.0, 0.0, 0),  # 99 999.98, just below
        (99999.0, 1.0, SELL, 0.0, 0.0, 0),  # 99 999, just below
        (100001.0, 1.0, SELL, 0.0, 1.0, 1),  # just above
        (50000.01, 2.0, BUY, 2.0, 0.0, 1),  # 100 000.02, just above
    ],
)
def test_whale_threshold_is_inclusive_at_100k_notional(price, quantity, side, buy_whale, sell_whale, whales):
    row = single_trade_minute(price, quantity, side)
    assert row["vol_buy_whale_btc"] == buy_whale
    assert row["vol_sell_whale_btc"] == sell_whale
    assert row["whale_trade_count"] == whales
    assert row["vol_buy_retail_btc"] == 0.0
    assert row["vol_sell_retail_btc"] == 0.0


@pytest.mark.parametrize(
    ("price", "quantity", "side", "buy_retail", "sell_retail"),
    [
        (500.0, 2.0, BUY, 2.0, 0.0),  # notional exactly 1 000 counts
        (62.5, 16.0, SELL, 0.0, 16.0),  # exactly 1 000, taker sell
        (195312.5, 0.00512, BUY, 0.00512, 0.0),  # exactly 1 000 in decimal; 1000.0000000000001 in float
        (999.0, 1.0, SELL, 0.0, 1.0),  # just below
        (500.01, 2.0, BUY, 0.0, 0.0),  # 1 000.02, just above
        (1000.5, 1.0, SELL, 0.0, 0.0),  # just above
    ],
)
def test_retail_threshold_is_inclusive_at_1000_notional(price, quantity, side, buy_retail, sell_retail):
    row = single_trade_minute(price, quantity, side)
    assert row["vol_buy_retail_btc"] == buy_retail
    assert row["vol_sell_retail_btc"] == sell_retail
    assert row["whale_trade_count"] == 0


def test_minute_sums_counts_and_extremes():
    trades = raw_agg_trades(
        [
            # id, price, qty, first, last, time, is_buyer_maker
            (100, 10.0, 1.5, 1000, 1002, "2024-03-01 10:00:00.000", BUY),
            (101, 20.0, 0.5, 1003, 1003, "2024-03-01 10:00:10.000", SELL),
            (102, 10.0, 3.0, 1004, 1007, "2024-03-01 10:00:59.999", BUY),
            (103, 30.0, 2.0, 1008, 1009, "2024-03-01 10:01:00.000", SELL),  # next minute
        ]
    )
    table = trade_flow(trades, DAY, source=SOURCE)

    assert table.schema.equals(schema.TRADE_FLOW.arrow_schema)
    assert column(table, "timestamp") == [utc("2024-03-01 10:00"), utc("2024-03-01 10:01")]
    assert column(table, "transact_time") == [ms("2024-03-01 10:00:59.999"), ms("2024-03-01 10:01:00")]
    assert column(table, "agg_trade_count") == [3, 1]
    assert column(table, "first_agg_trade_id") == [100, 103]
    assert column(table, "last_agg_trade_id") == [102, 103]
    assert column(table, "quantity_sum") == [5.0, 2.0]
    assert column(table, "notional_sum") == [55.0, 60.0]  # 15 + 10 + 30; 60
    assert column(table, "max_trade_size_btc") == [3.0, 2.0]
    assert column(table, "taker_buy_qty") == [4.5, 0.0]
    assert column(table, "taker_sell_qty") == [0.5, 2.0]
    assert column(table, "count_buy_trades") == [7, 0]  # 3 + 4 individual trades
    assert column(table, "count_sell_trades") == [1, 2]
    assert column(table, "vol_buy_retail_btc") == [4.5, 0.0]
    assert column(table, "vol_sell_retail_btc") == [0.5, 2.0]
    assert column(table, "whale_trade_count") == [0, 0]


def test_realized_vol_orders_trades_sharing_a_millisecond_by_agg_trade_id():
    # Given out of id order; by id the prices are 100, 101, 100.
    trades = raw_agg_trades(
        [
            (12, 100.0, 1.0, 12, 12, "2024-03-01 10:00:00.007", BUY),
            (10, 100.0, 1.0, 10, 10, "2024-03-01 10:00:00.007", BUY),
            (11, 101.0, 1.0, 11, 11, "2024-03-01 10:00:00.007", BUY),
        ]
    )
    (row,) = trade_flow(trades, DAY, source=SOURCE).to_pylist()
    # sqrt(ln(101/100)^2 + ln(100/101)^2)
    assert row["realized_vol_1m"] == pytest.approx(0.0140718928426497526, rel=1e-12)
    assert row["first_agg_trade_id"] == 10
    assert row["last_agg_trade_id"] == 12


def test_realized_vol_orders_by_transact_time_before_agg_trade_id():
    # By time the prices are 100, 121, 110; by id they would be 100, 110, 121.
    trades = raw_agg_trades(
        [
            (1, 100.0, 1.0, 1, 1, "2024-03-01 10:00:01", BUY),
            (2, 110.0, 1.0, 2, 2, "2024-03-01 10:00:03", BUY),
            (3, 121.0, 1.0, 3, 3, "2024-03-01 10:00:02", BUY),
        ]
    )
    (row,) = trade_flow(trades, DAY, source=SOURCE).to_pylist()
    assert row["realized_vol_1m"] == pytest.approx(0.2131200409901979915, rel=1e-12)
    assert row["transact_time"] == ms("2024-03-01 10:00:03")


def test_realized_vol_uses_returns_within_the_minute_only():
    trades = raw_agg_trades(
        [
            (1, 100.0, 1.0, 1, 1, "2024-03-01 10:00:58", BUY),
            (2, 101.0, 1.0, 2, 2, "2024-03-01 10:00:59.999", BUY),
            (3, 200.0, 1.0, 3, 3, "2024-03-01 10:01:00", BUY),  # alone in its minute
        ]
    )
    table = trade_flow(trades, DAY, source=SOURCE)
    vols = column(table, "realized_vol_1m")
    assert vols[0] == pytest.approx(0.00995033085316808285, rel=1e-12)  # |ln(101/100)|
    assert vols[1] == 0.0


def test_unsorted_input_gives_the_same_minutes_as_sorted_input():
    rows = [
        (1, 100.0, 1.0, 1, 1, "2024-03-01 00:00:01", BUY),
        (2, 101.0, 2.0, 2, 3, "2024-03-01 00:00:02", SELL),
        (3, 102.0, 1.0, 4, 4, "2024-03-01 23:59:59.999", BUY),
    ]
    shuffled = trade_flow(raw_agg_trades([rows[2], rows[0], rows[1]]), DAY, source=SOURCE)
    assert shuffled.equals(trade_flow(raw_agg_trades(rows), DAY, source=SOURCE))
    assert column(shuffled, "timestamp") == [utc("2024-03-01 00:00"), utc("2024-03-01 23:59")]


@pytest.mark.parametrize("bad_time", ["2024-03-02 00:00:00", "2024-02-29 23:59:59.999"])
def test_a_trade_outside_the_day_names_source_and_row(bad_time):
    trades = raw_agg_trades(
        [
            (1, 100.0, 1.0, 1, 1, "2024-03-01 00:00:01", BUY),
            (2, 100.0, 1.0, 2, 2, "2024-03-01 00:00:02", BUY),
            (3, 100.0, 1.0, 3, 3, bad_time, BUY),
        ]
    )
    with pytest.raises(TradeOutsideDay, match=r"BTCUSDT-aggTrades-2024-03-01\.csv: row 3: transact_time"):
        trade_flow(trades, DAY, source=SOURCE)


def test_no_trades_gives_no_rows():
    table = trade_flow(raw_agg_trades([]), DAY, source=SOURCE)
    assert table.num_rows == 0
    assert table.schema.equals(schema.TRADE_FLOW.arrow_schema)


def test_streaming_builder_equals_the_whole_table_when_batches_split_minutes() -> None:
    import datetime as _dt

    from bml_assets.features.trade_flow import TradeFlowBuilder

    day = _dt.date(2024, 3, 1)
    t0 = 1709251200000
    rows = [
        # (id, price, qty, first, last, time, is_buyer_maker) — minute 00:00 spans both batches
        (1, 100.0, 1.0, 10, 11, t0 + 1_000, False),
        (2, 101.0, 0.5, 12, 12, t0 + 1_000, True),
        (3, 100.5, 2.0, 13, 15, t0 + 30_000, False),
        (4, 99.0, 0.1, 16, 16, t0 + 59_999, True),
        (5, 98.0, 3.0, 17, 19, t0 + 60_000, False),
        (6, 98.5, 1.5, 20, 20, t0 + 180_000, True),
    ]
    names = ["agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker"]
    table = pa.table({n: [r[i] for r in rows] for i, n in enumerate(names)})
    builder = TradeFlowBuilder(day, source="test")
    for batch in (table.slice(0, 2), table.slice(2, 3), table.slice(5, 1)):
        assert builder.add(batch)
    assert builder.rows == 6
    assert builder.finish().equals(trade_flow(table, day, source="test"))


def test_streaming_builder_refuses_rows_out_of_order() -> None:
    import datetime as _dt

    from bml_assets.features.trade_flow import TradeFlowBuilder

    t0 = 1709251200000
    names = ["agg_trade_id", "price", "quantity", "first_trade_id", "last_trade_id", "transact_time", "is_buyer_maker"]
    first = pa.table({n: [v] for n, v in zip(names, (2, 100.0, 1.0, 2, 2, t0 + 5, False), strict=True)})
    second = pa.table({n: [v] for n, v in zip(names, (1, 100.0, 1.0, 1, 1, t0 + 1, False), strict=True)})
    builder = TradeFlowBuilder(_dt.date(2024, 3, 1), source="test")
    assert builder.add(first)
    assert not builder.add(second)
