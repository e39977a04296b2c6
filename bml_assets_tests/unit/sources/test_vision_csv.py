"""read_vision_csv / iter_vision_csv_batches on hand-written CSV bytes."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from bml_assets.domain.streams import Stream
from bml_assets.sources.vision import VisionError
from bml_assets.sources.vision_csv import iter_vision_csv_batches, output_schema, read_vision_csv

from .conftest import make_zip

KLINE_HEADER = (
    b"open_time,open,high,low,close,volume,close_time,quote_volume,count,"
    b"taker_buy_volume,taker_buy_quote_volume,ignore\n"
)
KLINE_ROWS = (
    b"1681516800000,30453.00,30455.00,30446.40,30452.40,174.120,1681516859999,5301913.57520,1884,83.714,2549037.25020,0\n"
    b"1681516860000,30452.30,30452.40,30445.90,30445.90,112.213,1681516919999,3416824.62540,1337,33.897,1032170.88160,0\n"
)
AGG_HEADER = b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
METRICS_HEADER = (
    b"create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
    b"sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio\n"
)


def write(tmp_path: Path, data: bytes, name: str = "f.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_output_schemas_are_exactly_as_documented() -> None:
    i, f, b, s = pa.int64(), pa.float64(), pa.bool_(), pa.string()
    kline = [
        ("open_time", i),
        ("open", f),
        ("high", f),
        ("low", f),
        ("close", f),
        ("volume", f),
        ("close_time", i),
        ("quote_volume", f),
        ("count", i),
        ("taker_buy_volume", f),
        ("taker_buy_quote_volume", f),
    ]
    expected = {
        Stream.KLINES: kline,
        Stream.MARK_PRICE_KLINES: kline,
        Stream.INDEX_PRICE_KLINES: kline,
        Stream.PREMIUM_INDEX_KLINES: kline,
        Stream.AGG_TRADES: [
            ("agg_trade_id", i),
            ("price", f),
            ("quantity", f),
            ("first_trade_id", i),
            ("last_trade_id", i),
            ("transact_time", i),
            ("is_buyer_maker", b),
        ],
        Stream.BOOK_TICKER: [
            ("update_id", i),
            ("best_bid_price", f),
            ("best_bid_qty", f),
            ("best_ask_price", f),
            ("best_ask_qty", f),
            ("transaction_time", i),
            ("event_time", i),
        ],
        Stream.METRICS: [
            ("create_time", i),
            ("symbol", s),
            ("sum_open_interest", f),
            ("sum_open_interest_value", f),
            ("count_toptrader_long_short_ratio", f),
            ("sum_toptrader_long_short_ratio", f),
            ("count_long_short_ratio", f),
            ("sum_taker_long_short_vol_ratio", f),
        ],
        Stream.FUNDING_RATE: [("calc_time", i), ("funding_interval_hours", i), ("last_funding_rate", f)],
    }
    for stream, columns in expected.items():
        schema = output_schema(stream)
        assert list(zip(schema.names, schema.types, strict=True)) == columns, stream


def test_klines_with_and_without_header_read_the_same(tmp_path: Path) -> None:
    with_header = read_vision_csv(write(tmp_path, KLINE_HEADER + KLINE_ROWS, "a.csv"), Stream.KLINES)
    without = read_vision_csv(write(tmp_path, KLINE_ROWS, "b.csv"), Stream.KLINES)
    assert with_header.equals(without)
    assert with_header.num_rows == 2
    assert with_header.slice(0, 1).to_pylist() == [
        {
            "open_time": 1681516800000,
            "open": 30453.0,
            "high": 30455.0,
            "low": 30446.4,
            "close": 30452.4,
            "volume": 174.12,
            "close_time": 1681516859999,
            "quote_volume": 5301913.5752,
            "count": 1884,
            "taker_buy_volume": 83.714,
            "taker_buy_quote_volume": 2549037.2502,
        }
    ]


def test_zip_input_reads_the_single_member(tmp_path: Path) -> None:
    path = tmp_path / "BTCUSDT-1m-2023-04-15.zip"
    path.write_bytes(make_zip("BTCUSDT-1m-2023-04-15.csv", KLINE_HEADER + KLINE_ROWS))
    assert read_vision_csv(path, Stream.MARK_PRICE_KLINES)["open_time"].to_pylist() == [1681516800000, 1681516860000]


def test_microseconds_become_milliseconds(tmp_path: Path) -> None:
    rows = (
        b"1735689600000000,93576.00,93610.93,93537.50,93610.93,8.2197,1735689659999999,769089.4,1327,3.6,337000.0,0\n"
        b"1735689660000000,93610.93,93652.00,93606.00,93634.01,10.4,1735689719999999,974000.1,1100,5.2,487000.2,0\n"
    )
    table = read_vision_csv(write(tmp_path, rows), Stream.KLINES)
    assert table["open_time"].to_pylist() == [1735689600000, 1735689660000]
    assert table["close_time"].to_pylist() == [1735689659999, 1735689719999]

    agg = AGG_HEADER + b"1,100.0,1.0,10,10,1735689600123456,true\n2,100.5,2.0,11,12,1735689600200,false\n"
    trades = read_vision_csv(write(tmp_path, agg, "agg.csv"), Stream.AGG_TRADES)
    assert trades["transact_time"].to_pylist() == [1735689600123, 1735689600200]  # per value: a mixed file


def test_unsorted_and_duplicated_rows_become_sorted_and_unique(tmp_path: Path) -> None:
    data = AGG_HEADER + (
        b"3,103.0,1.0,30,30,1700000000300,true\n"
        b"1,101.0,1.0,10,10,1700000000100,false\n"
        b"2,102.0,1.0,20,20,1700000000200,true\n"
        b"1,999.0,9.0,10,10,1700000000100,false\n"  # duplicate id: the first one wins
        b"3,998.0,9.0,30,30,1700000000300,true\n"
    )
    table = read_vision_csv(write(tmp_path, data), Stream.AGG_TRADES)
    assert table["agg_trade_id"].to_pylist() == [1, 2, 3]
    assert table["price"].to_pylist() == [101.0, 102.0, 103.0]
    assert table["quantity"].to_pylist() == [1.0, 1.0, 1.0]


def test_booleans(tmp_path: Path) -> None:
    data = AGG_HEADER + b"1,1.0,1.0,1,1,1700000000000,true\n2,1.0,1.0,2,2,1700000000001,false\n"
    table = read_vision_csv(write(tmp_path, data), Stream.AGG_TRADES)
    assert table["is_buyer_maker"].type == pa.bool_()
    assert table["is_buyer_maker"].to_pylist() == [True, False]


def test_metrics_create_time_text_is_int64_ms_as_labelled(tmp_path: Path) -> None:
    data = METRICS_HEADER + (
        b"2024-01-01 00:10:00,BTCUSDT,79000.5,3350000000.1,1.5,1.6,1.7,0.9\n"
        b"2024-01-01 00:05:00,BTCUSDT,79001.5,3350000001.1,,1.6,1.7,\n"
    )
    table = read_vision_csv(write(tmp_path, data), Stream.METRICS)
    # 2024-01-01 00:05:00 UTC = 1704067500000 ms; labels are not shifted here.
    assert table["create_time"].to_pylist() == [1704067500000, 1704067800000]
    assert table["symbol"].to_pylist() == ["BTCUSDT", "BTCUSDT"]
    assert table["count_toptrader_long_short_ratio"].to_pylist() == [None, 1.5]
    assert table["sum_taker_long_short_vol_ratio"].to_pylist() == [None, 0.9]


def test_metrics_without_header(tmp_path: Path) -> None:
    data = b"2024-01-01 00:05:00,BTCUSDT,1,2,3,4,5,6\n"
    assert read_vision_csv(write(tmp_path, data), Stream.METRICS)["create_time"].to_pylist() == [1704067500000]


def test_book_ticker_and_funding_rate(tmp_path: Path) -> None:
    book = (
        b"update_id,best_bid_price,best_bid_qty,best_ask_price,best_ask_qty,transaction_time,event_time\n"
        b"3837201,42283.50,5.123,42283.60,0.410,1704067200005,1704067200009\n"
    )
    table = read_vision_csv(write(tmp_path, book, "book.csv"), Stream.BOOK_TICKER)
    assert table.to_pylist() == [
        {
            "update_id": 3837201,
            "best_bid_price": 42283.5,
            "best_bid_qty": 5.123,
            "best_ask_price": 42283.6,
            "best_ask_qty": 0.41,
            "transaction_time": 1704067200005,
            "event_time": 1704067200009,
        }
    ]
    funding = b"calc_time,funding_interval_hours,last_funding_rate\n1775030400000,8,-0.00000461\n1775001600000,8,-0.00003449\n"
    table = read_vision_csv(write(tmp_path, funding, "funding.csv"), Stream.FUNDING_RATE)
    assert table.to_pylist() == [
        {"calc_time": 1775001600000, "funding_interval_hours": 8, "last_funding_rate": -0.00003449},
        {"calc_time": 1775030400000, "funding_interval_hours": 8, "last_funding_rate": -0.00000461},
    ]


def test_header_only_is_an_empty_table(tmp_path: Path) -> None:
    for data in (AGG_HEADER, AGG_HEADER.rstrip(b"\n")):
        table = read_vision_csv(write(tmp_path, data), Stream.AGG_TRADES)
        assert table.num_rows == 0 and table.schema == output_schema(Stream.AGG_TRADES)
        assert list(iter_vision_csv_batches(write(tmp_path, data), Stream.AGG_TRADES)) == []


# --- errors ------------------------------------------------------------------


def test_wrong_column_count_names_file_and_row(tmp_path: Path) -> None:
    data = AGG_HEADER + b"1,1.0,1.0,1,1,1700000000000,true\n2,1.0,1.0,2,2,1700000000001,false\n3,1.0,1.0,3,3,true\n"
    path = write(tmp_path, data)
    with pytest.raises(VisionError) as info:
        read_vision_csv(path, Stream.AGG_TRADES)
    message = str(info.value)
    assert str(path) in message and "data row 3 (line 4)" in message and "Expected 7 columns, got 6" in message


def test_non_numeric_field_names_source_row_and_column(tmp_path: Path) -> None:
    data = KLINE_ROWS + b"1681516920000,30445.9,abc,30440.0,30441.0,1.0,1681516979999,1.0,1,0.5,0.5,0\n"
    url = "https://data.binance.vision/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip"
    with pytest.raises(VisionError) as info:
        read_vision_csv(write(tmp_path, data), Stream.KLINES, source=url)
    message = str(info.value)
    assert message.startswith(url)
    assert "data row 3 (line 3)" in message and "column 'high'" in message and "'abc'" in message
    assert info.value.url == url


def test_empty_numeric_field_is_an_error_outside_metrics(tmp_path: Path) -> None:
    data = AGG_HEADER + b"1,1.0,,1,1,1700000000000,true\n"
    with pytest.raises(VisionError, match=r"data row 1 \(line 2\), column 'quantity'"):
        read_vision_csv(write(tmp_path, data), Stream.AGG_TRADES)


def test_truncated_last_line_is_an_error(tmp_path: Path) -> None:
    data = KLINE_HEADER + KLINE_ROWS + b"1681516920000,30445.9,30446"
    with pytest.raises(VisionError, match=r"data row 3 \(line 4\)"):
        read_vision_csv(write(tmp_path, data), Stream.KLINES)


def test_bad_bool_is_an_error(tmp_path: Path) -> None:
    data = AGG_HEADER + b"1,1.0,1.0,1,1,1700000000000,fal"
    with pytest.raises(VisionError, match=r"data row 1 \(line 2\), column 'is_buyer_maker'"):
        read_vision_csv(write(tmp_path, data), Stream.AGG_TRADES)


@pytest.mark.parametrize("data", [b"", b"\n", b"  \n\n"])
def test_empty_file_is_an_error(tmp_path: Path, data: bytes) -> None:
    path = write(tmp_path, data)
    with pytest.raises(VisionError, match="empty file") as info:
        read_vision_csv(path, Stream.KLINES)
    assert str(path) in str(info.value)


def test_wrong_header_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, b"id,price,qty,quote_qty,time,is_buyer_maker\n1,1,1,1,1,true\n")
    with pytest.raises(VisionError, match="unexpected header") as info:
        read_vision_csv(path, Stream.AGG_TRADES)
    assert str(path) in str(info.value)


def test_empty_metrics_time_is_an_error(tmp_path: Path) -> None:
    data = METRICS_HEADER + b"2024-01-01 00:05:00,BTCUSDT,1,2,3,4,5,6\n,BTCUSDT,1,2,3,4,5,6\n"
    with pytest.raises(VisionError, match="data row 2: empty 'create_time'"):
        read_vision_csv(write(tmp_path, data), Stream.METRICS)


def test_corrupted_zip_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "x.zip"
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(VisionError, match="corrupted zip"):
        read_vision_csv(path, Stream.KLINES, source="https://host/x.zip")


# --- batches -----------------------------------------------------------------


def test_batches_cover_the_file_in_order(tmp_path: Path) -> None:
    rows = b"".join(b"%d,100.0,1.0,%d,%d,%d,%s\n" % (i, i, i, 1700000000000000 + i, b"true") for i in range(1, 5001))
    path = tmp_path / "BTCUSDT-aggTrades-2023-11-14.zip"
    path.write_bytes(make_zip("BTCUSDT-aggTrades-2023-11-14.csv", AGG_HEADER + rows))
    batches = list(iter_vision_csv_batches(path, Stream.AGG_TRADES, block_size=16 * 1024))
    assert len(batches) > 1
    assert all(b.schema == output_schema(Stream.AGG_TRADES) for b in batches)
    table = pa.Table.from_batches(batches)
    assert table.equals(read_vision_csv(path, Stream.AGG_TRADES))
    assert table["transact_time"][0].as_py() == 1700000000000  # µs guard applied per batch


def test_batch_errors_name_the_row(tmp_path: Path) -> None:
    rows = b"".join(b"%d,100.0,1.0,%d,%d,1700000000000,false\n" % (i, i, i) for i in range(1, 3001))
    path = write(tmp_path, rows + b"3001,x,1.0,1,1,1700000000000,false\n")
    with pytest.raises(VisionError, match=r"data row 3001 \(line 3001\), column 'price'"):
        for _ in iter_vision_csv_batches(path, Stream.AGG_TRADES, block_size=16 * 1024):
            pass
