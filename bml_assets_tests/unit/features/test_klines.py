"""kline_table: parsed klines CSV -> per-stream klines tables."""

from __future__ import annotations

import datetime as dt

import pytest

from bml_assets.domain import schema
from bml_assets.features.klines import KlineOutsideDay, kline_table
from bml_assets_tests.unit.features.builders import column, raw_klines, utc

DAY = dt.date(2024, 3, 1)
SOURCE = "BTCUSDT-1m-2024-03-01.csv"


def test_trade_klines_keep_every_column_sorted_by_minute():
    raw = raw_klines(
        [
            ("2024-03-01 00:01", 61.0, 62.0, 60.0, 61.5, 2.0, 123.0, 7, 1.5, 92.0),
            ("2024-03-01 00:00", 60.0, 61.0, 59.0, 60.5, 1.0, 60.5, 3, 0.25, 15.0),
        ]
    )
    table = kline_table(raw, DAY, schema.KLINES, source=SOURCE)

    assert table.schema.equals(schema.KLINES.arrow_schema)
    assert column(table, "timestamp") == [utc("2024-03-01 00:00"), utc("2024-03-01 00:01")]
    assert column(table, "open") == [60.0, 61.0]
    assert column(table, "high") == [61.0, 62.0]
    assert column(table, "low") == [59.0, 60.0]
    assert column(table, "close") == [60.5, 61.5]
    assert column(table, "volume") == [1.0, 2.0]
    assert column(table, "quote_volume") == [60.5, 123.0]
    assert column(table, "count") == [3, 7]
    assert column(table, "taker_buy_volume") == [0.25, 1.5]
    assert column(table, "taker_buy_quote_volume") == [15.0, 92.0]


@pytest.mark.parametrize("dataset", [schema.MARK_PRICE_KLINES, schema.INDEX_PRICE_KLINES, schema.PREMIUM_INDEX_KLINES])
def test_price_klines_keep_only_timestamp_and_prices(dataset):
    raw = raw_klines([("2024-03-01 23:59", 1.5, 2.5, 0.5, 2.0, 0.0, 0.0, 0, 0.0, 0.0)])
    table = kline_table(raw, DAY, dataset, source=SOURCE)

    assert table.schema.equals(dataset.arrow_schema)
    assert table.column_names == ["timestamp", "open", "high", "low", "close"]
    assert table.to_pylist() == [
        {"timestamp": utc("2024-03-01 23:59"), "open": 1.5, "high": 2.5, "low": 0.5, "close": 2.0}
    ]


@pytest.mark.parametrize(
    ("bad_time", "shown"),
    [
        ("2024-03-02 00:00", "2024-03-02T00:00:00.000Z"),  # next day
        ("2024-02-29 23:59", "2024-02-29T23:59:00.000Z"),  # previous day
        ("2024-03-01 00:02:30", "2024-03-01T00:02:30.000Z"),  # not a whole minute
    ],
)
def test_a_kline_that_is_not_a_minute_of_the_day_names_source_row_and_time(bad_time, shown):
    raw = raw_klines(
        [
            ("2024-03-01 00:00", 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0, 0.0, 0.0),
            (bad_time, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0, 0.0, 0.0),
        ]
    )
    with pytest.raises(KlineOutsideDay) as caught:
        kline_table(raw, DAY, schema.KLINES, source=SOURCE)

    message = str(caught.value)
    assert SOURCE in message
    assert "row 2" in message
    assert shown in message
    assert isinstance(caught.value, ValueError)


def test_a_repeated_minute_is_refused():
    row = ("2024-03-01 00:00", 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0, 0.0, 0.0)
    with pytest.raises(ValueError, match="more than once"):
        kline_table(raw_klines([row, row]), DAY, schema.KLINES, source=SOURCE)


def test_an_empty_file_gives_an_empty_table_of_the_right_shape():
    table = kline_table(raw_klines([]), DAY, schema.KLINES, source=SOURCE)
    assert table.num_rows == 0
    assert table.schema.equals(schema.KLINES.arrow_schema)
