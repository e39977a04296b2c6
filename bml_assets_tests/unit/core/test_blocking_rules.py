"""checks.blocking_rules on hand-written tables of every dataset: each bad value is refused,
named by rule, column, value, minute and where its row came from; good tables pass."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import pandera.pandas as pdr
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bml_assets.days.partition_data import PartitionData
from bml_assets.defs.io_manager import _validator
from bml_assets.domain import schema
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.streams import Stream
from bml_assets.features.funding import funding_settlements
from bml_assets.features.klines import kline_table
from bml_assets.quality import (
    BLOCKING_RULES,
    BadSourceRows,
    BlockingCheckFailed,
    Evidence,
    blocking_rules,
    check_source_rows,
    enforce_blocking,
    judge_blocking,
    to_frame,
)
from bml_assets.sources.vision_csv import iter_vision_csv_batches, read_vision_csv
from bml_assets_tests.unit.features.builders import dataset_table, ms

from .test_checks import view

DAY = dt.date(2024, 3, 1)
INF, NAN = math.inf, math.nan

# Two good rows per stream table, written out (time as text, then the columns in order).
GOOD: dict[str, list[tuple]] = {
    schema.KLINES.name: [
        ("2024-03-01 00:00", 100.0, 101.0, 99.0, 100.5, 2.0, 201.0, 3, 1.0, 100.5),
        ("2024-03-01 00:01", 100.5, 100.5, 100.5, 100.5, 0.0, 0.0, 0, 0.0, 0.0),
    ],
    schema.MARK_PRICE_KLINES.name: [
        ("2024-03-01 00:00", 100.1, 101.1, 99.1, 100.6),
        ("2024-03-01 00:01", 100.6, 100.9, 100.2, 100.4),
    ],
    schema.INDEX_PRICE_KLINES.name: [
        ("2024-03-01 00:00", 0.00001234, 0.00001240, 0.00001230, 0.00001238),  # a memecoin's price
        ("2024-03-01 00:01", 0.00001238, 0.00001238, 0.00001238, 0.00001238),
    ],
    schema.PREMIUM_INDEX_KLINES.name: [  # a signed fraction, negative is fine
        ("2024-03-01 00:00", -0.0003, 0.0002, -0.0004, 0.0001),
        ("2024-03-01 00:01", 0.0001, 0.0001, -0.0001, 0.0),
    ],
    schema.TRADE_FLOW.name: [
        (
            "2024-03-01 00:00",
            ms("2024-03-01 00:00:59.5"),
            3,
            10,
            12,
            2.0,
            201.0,
            1.5,
            1.5,
            0.5,
            4,
            1,
            0.0,
            0.0,
            0.5,
            0.5,
            0,
            0.0012,
        ),
        (
            "2024-03-01 00:02",
            ms("2024-03-01 00:02:00.1"),
            1,
            13,
            13,
            0.5,
            50.0,
            0.5,
            0.0,
            0.5,
            0,
            1,
            0.0,
            0.0,
            0.0,
            0.5,
            0,
            0.0,
        ),
    ],
    schema.BOOK_TICKER.name: [
        # the previous day's last minute seeds the day
        (
            "2024-02-29 23:59",
            4,
            100.2,
            0.1,
            0.2,
            1.5,
            0.9,
            0.001,
            ms("2024-02-29 23:59:58"),
            0.1,
            0.25,
            1.5,
            0.9,
            0.001,
        ),
        (
            "2024-03-01 00:00",
            2,
            100.3,
            -0.1,
            -1.0,
            0.0,
            2.0,
            -0.001,
            ms("2024-03-01 00:00:30"),
            -0.1,
            -1.0,
            0.0,
            2.0,
            -0.001,
        ),
    ],
    schema.METRICS.name: [  # the previous day's snapshots seed the day
        ("2024-02-29 23:55", 81000.5, 5.1e9, 1.81, 0.56),
        ("2024-03-01 00:00", 81010.0, 5.2e9, None, 0.55),
    ],
    schema.FUNDING.name: [
        ("2024-02-29 16:00", -0.0001, 8),
        ("2024-03-01 00:00", 0.0003, 8),
    ],
    schema.HOT_SNAPSHOTS.name: [
        ("2024-03-01 00:00:05", 100.2, 100.1, 0.0001, ms("2024-03-01 08:00"), 81000.5, 100.2, 1.5, 100.3, 0.0, 77),
        ("2024-03-01 00:00:35", 100.3, 100.2, 0.0001, ms("2024-03-01 08:00"), 81000.5, 100.3, 0.0, 100.4, 2.0, 78),
    ],
}
STREAMS = [schema.DATASETS[name] for name in GOOD]


def table(dataset: schema.Dataset, **changes: tuple[int, object]) -> pa.Table:
    """The good table with ``column=(row, value)`` changes."""
    rows = [list(r) for r in GOOD[dataset.name]]
    for column, (row, value) in changes.items():
        rows[row][dataset.column_names.index(column)] = value
    return dataset_table(dataset, [tuple(r) for r in rows])


def refusal(dataset: schema.Dataset, t: pa.Table) -> str:
    def locate(minute: dt.datetime, column: str) -> str:
        return f"file.zip, the row of {minute:%H:%M}"

    with pytest.raises(BlockingCheckFailed) as info:
        enforce_blocking(t, DAY, label=f"{dataset.name} BTCUSDT {DAY}", dataset=dataset, locate=locate)
    return str(info.value)


@pytest.mark.parametrize("dataset", STREAMS, ids=lambda d: d.name)
def test_good_tables_pass(dataset: schema.Dataset) -> None:
    enforce_blocking(table(dataset), DAY, label="x", dataset=dataset)


def test_the_minute_view_keeps_its_check_names_and_gets_one_rule_per_domain() -> None:
    names = [r.name for r in BLOCKING_RULES]
    assert names[:3] == ["schema_columns", "timestamps_unique_sorted_in_day", "hard_columns_not_null"]
    assert names[-1] == "ohlc_consistent"
    assert {"prices_positive_finite", "quantities_non_negative_finite", "counts_non_negative"} <= set(names)
    assert [r.name for r in blocking_rules(schema.KLINES)] == [
        "schema_columns",
        "timestamps_unique_sorted_in_day",
        "prices_positive_finite",
        "quantities_non_negative_finite",
        "counts_non_negative",
        "ohlc_consistent",
    ]
    assert [r.name for r in blocking_rules(schema.PREMIUM_INDEX_KLINES)][2:] == [
        "rates_finite_bounded",
        "ohlc_consistent",
    ]


# dataset, column, (row, value), rule, the value as the error shows it
BAD_VALUES = [
    (schema.KLINES, "high", (1, INF), "prices_positive_finite", "inf"),
    (schema.KLINES, "high", (1, NAN), "prices_positive_finite", "nan"),
    (schema.KLINES, "low", (1, 0.0), "prices_positive_finite", "0.0"),
    (schema.KLINES, "low", (1, -1.0), "prices_positive_finite", "-1.0"),
    (schema.KLINES, "high", (1, 1e308), "prices_positive_finite", "1e+308"),
    (schema.KLINES, "low", (1, 1e-300), "prices_positive_finite", "1e-300"),
    (schema.KLINES, "volume", (1, -2.0), "quantities_non_negative_finite", "-2.0"),
    (schema.KLINES, "quote_volume", (1, INF), "quantities_non_negative_finite", "inf"),
    (schema.KLINES, "count", (1, -1), "counts_non_negative", "-1"),
    (schema.MARK_PRICE_KLINES, "open", (1, 0.0), "prices_positive_finite", "0.0"),
    (schema.INDEX_PRICE_KLINES, "close", (1, NAN), "prices_positive_finite", "nan"),
    (schema.PREMIUM_INDEX_KLINES, "high", (1, 1e308), "rates_finite_bounded", "1e+308"),
    (schema.PREMIUM_INDEX_KLINES, "low", (1, -INF), "rates_finite_bounded", "-inf"),
    (schema.TRADE_FLOW, "quantity_sum", (1, -0.5), "quantities_non_negative_finite", "-0.5"),
    (schema.TRADE_FLOW, "count_buy_trades", (1, -1), "counts_non_negative", "-1"),
    (schema.TRADE_FLOW, "first_agg_trade_id", (1, -13), "ids_non_negative", "-13"),
    (schema.TRADE_FLOW, "realized_vol_1m", (1, NAN), "ratios_non_negative_finite", "nan"),
    # microseconds read as milliseconds: the year 56000
    (schema.TRADE_FLOW, "transact_time", (1, 1_709_251_320_100_000), "epoch_ms_in_range", "1709251320100000"),
    (schema.BOOK_TICKER, "micro_price_close", (1, INF), "prices_positive_finite", "inf"),
    (schema.BOOK_TICKER, "bid_ask_imbalance", (1, 1.5), "signed_fractions_within_minus_1_1", "1.5"),
    (schema.BOOK_TICKER, "avg_ask_depth", (1, -2.0), "quantities_non_negative_finite", "-2.0"),
    (schema.METRICS, "oi_contracts", (1, -1.0), "quantities_non_negative_finite", "-1.0"),
    (schema.METRICS, "global_ls_ratio_acct", (1, INF), "ratios_non_negative_finite", "inf"),
    (schema.FUNDING, "funding_rate", (1, NAN), "rates_finite_bounded", "nan"),
    (schema.FUNDING, "funding_rate", (1, 1e308), "rates_finite_bounded", "1e+308"),
    (schema.FUNDING, "funding_interval_hours", (1, -8), "counts_non_negative", "-8"),
    (schema.HOT_SNAPSHOTS, "mark_price", (1, 0.0), "prices_positive_finite", "0.0"),
    (schema.HOT_SNAPSHOTS, "bid_qty", (1, -1.5), "quantities_non_negative_finite", "-1.5"),
    (schema.HOT_SNAPSHOTS, "book_update_id", (1, -78), "ids_non_negative", "-78"),
]


@pytest.mark.parametrize(
    ("dataset", "column", "change", "rule", "shown"),
    BAD_VALUES,
    ids=[f"{d.name}-{c}-{s}" for d, c, _, _, s in BAD_VALUES],
)
def test_a_bad_value_is_refused_naming_rule_column_value_minute_and_row(
    dataset: schema.Dataset, column: str, change: tuple[int, object], rule: str, shown: str
) -> None:
    minute = GOOD[dataset.name][1][0]  # the changed row's time, as written
    at = dt.datetime.fromisoformat(minute).replace(tzinfo=dt.UTC)
    text = refusal(dataset, table(dataset, **{column: change}))
    assert text.startswith(f"{dataset.name} BTCUSDT 2024-03-01: not committed — "), text
    assert (
        f"blocking rule '{rule}' failed (1 failure): {column} = {shown} at minute {at.isoformat()} "
        f"(file.zip, the row of {at:%H:%M})"
    ) in text, text


def test_a_null_is_not_a_bad_value_but_nan_is() -> None:
    enforce_blocking(table(schema.METRICS), DAY, label="x", dataset=schema.METRICS)  # one ratio is NULL
    text = refusal(schema.METRICS, table(schema.METRICS, top_trader_ls_ratio_acct=(1, NAN)))
    assert "top_trader_ls_ratio_acct = nan at minute 2024-03-01T00:00:00+00:00" in text


@pytest.mark.parametrize(
    "dataset", [schema.KLINES, schema.MARK_PRICE_KLINES, schema.INDEX_PRICE_KLINES, schema.PREMIUM_INDEX_KLINES]
)
def test_low_above_high_is_refused_with_the_bar(dataset: schema.Dataset) -> None:
    o, h, low, c = GOOD[dataset.name][0][1:5]
    text = refusal(dataset, table(dataset, high=(0, low), low=(0, h)))
    assert (
        f"blocking rule 'ohlc_consistent' failed (1 failure): open/high/low/close = {o}/{low}/{h}/{c} "
        "at minute 2024-03-01T00:00:00+00:00 (file.zip, the row of 00:00)"
    ) in text, text


def test_close_above_high_is_refused() -> None:
    text = refusal(schema.KLINES, table(schema.KLINES, close=(0, 101.5)))
    assert "'ohlc_consistent' failed (1 failure): open/high/low/close = 100.0/101.0/99.0/101.5 at minute" in text


def test_times_of_a_day_table_are_unique_sorted_aligned_and_inside_the_day() -> None:
    rule = "blocking rule 'timestamps_unique_sorted_in_day' failed"
    dup = refusal(schema.KLINES, table(schema.KLINES, timestamp=(1, "2024-03-01 00:00")))
    assert f"{rule} (3 failures): timestamp not unique at minute 2024-03-01T00:00:00+00:00" in dup, dup
    assert "timestamp not after the previous row at minute 2024-03-01T00:00:00+00:00" in dup, dup
    odd = refusal(schema.KLINES, table(schema.KLINES, timestamp=(1, "2024-03-01 00:01:30")))
    assert f"{rule} (1 failure): timestamp not on a whole minute at minute 2024-03-01T00:01:30+00:00" in odd, odd
    late = refusal(schema.TRADE_FLOW, table(schema.TRADE_FLOW, timestamp=(1, "2024-03-02 00:00")))
    assert f"{rule} (1 failure): timestamp not before the day's end at minute 2024-03-02T00:00:00+00:00" in late
    hot = refusal(schema.HOT_SNAPSHOTS, table(schema.HOT_SNAPSHOTS, observation_time=(0, "2024-02-29 23:59:59")))
    assert (
        "blocking rule 'observation_times_unique_sorted_in_day' failed (1 failure): "
        "observation_time not on or after the day's start at minute 2024-02-29T23:59:59+00:00"
    ) in hot, hot


def test_seeded_tables_may_reach_before_the_day_but_not_outside_2017_2100() -> None:
    # the good book, metrics and funding tables already hold rows of the previous day
    text = refusal(schema.FUNDING, table(schema.FUNDING, settlement_time=(0, "2016-12-31 16:00")))
    assert (
        "blocking rule 'settlement_times_unique_sorted' failed (1 failure): "
        "settlement_time not in 2017+ at minute 2016-12-31T16:00:00+00:00"
    ) in text, text
    text = refusal(schema.METRICS, table(schema.METRICS, observation_time=(0, "2024-03-01 00:05")))
    assert (
        "blocking rule 'observation_times_unique_sorted' failed (1 failure): "
        "observation_time not after the previous row at minute 2024-03-01T00:00:00+00:00"
    ) in text, text


def test_a_wrong_arrow_schema_names_the_column() -> None:
    wrong = table(schema.FUNDING).set_column(2, "funding_interval_hours", pa.array([8.0, 8.0]))
    with pytest.raises(BlockingCheckFailed, match=r"schema_columns.*#3 expected funding_interval_hours:int64"):
        enforce_blocking(wrong, DAY, label="x", dataset=schema.FUNDING)


# --- the minute view ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "values", "rule", "shown"),
    [
        ("close", [101.0, INF, 102.5], "prices_positive_finite", "inf"),
        ("close", [101.0, NAN, 102.5], "prices_positive_finite", "nan"),
        ("low", [99.0, 0.0, 101.0], "prices_positive_finite", "0.0"),
        ("low", [99.0, -1.0, 101.0], "prices_positive_finite", "-1.0"),
        ("high", [101.0, 1e308, 103.0], "prices_positive_finite", "1e+308"),
        ("low", [99.0, 1e-300, 101.0], "prices_positive_finite", "1e-300"),
        ("mark_price_close", [101.0, 0.0, 102.5], "prices_positive_finite", "0.0"),
        ("volume_btc", [2.0, -1.0, 0.5], "quantities_non_negative_finite", "-1.0"),
        ("trade_count", [4, -2, 1], "counts_non_negative", "-2"),
        ("funding_rate", [0.0001, NAN, 0.0001], "rates_finite_bounded", "nan"),
        ("spread_pct", [0.0001, 3.0e9, 0.0001], "rates_finite_bounded", "3000000000.0"),
        ("taker_buy_ratio", [0.5, -0.5, 0.0], "ratios_non_negative_finite", "-0.5"),
    ],
)
def test_the_minute_view_refuses_bad_values(column: str, values: list, rule: str, shown: str) -> None:
    with pytest.raises(BlockingCheckFailed) as info:
        enforce_blocking(view(**{column: values}), DAY, label="minute view BTCUSDT 2024-03-01")
    assert (
        f"minute view BTCUSDT 2024-03-01: not committed — blocking rule '{rule}' failed (1 failure): "
        f"{column} = {shown} at minute 2024-03-01T00:01:00+00:00"
    ) in str(info.value)


def test_the_minute_view_refuses_low_above_high() -> None:
    with pytest.raises(BlockingCheckFailed) as info:
        enforce_blocking(view(low=[99.0, 102.5, 101.0]), DAY, label="minute view BTCUSDT 2024-03-01")
    assert (
        "blocking rule 'ohlc_consistent' failed (1 failure): open/high/low/close = 101.0/102.0/102.5/102.0 "
        "at minute 2024-03-01T00:01:00+00:00"
    ) in str(info.value)


# --- raw source rows, vectorised ---------------------------------------------------------


def agg_trades(**changes: tuple[int, object]) -> pa.RecordBatch:
    """Five good aggTrades of 2024-03-01 00:00-00:02, with ``column=(row, value)`` changes."""
    columns: dict[str, list] = {
        "agg_trade_id": [100, 101, 102, 103, 104],
        "price": [100.5, 100.6, 100.4, 0.00001234, 100.5],
        "quantity": [0.01, 0.0, 2.5, 1e9, 0.3],
        "first_trade_id": [200, 201, 203, 204, 204],
        "last_trade_id": [200, 202, 203, 204, 206],
        "transact_time": [ms(f"2024-03-01 {t}") for t in ("00:00:01", "00:00:59.999", "00:01", "00:01:30", "00:02")],
        "is_buyer_maker": [True, False, True, False, True],
    }
    for column, (row, value) in changes.items():
        columns[column][row] = value
    types = {"price": pa.float64(), "quantity": pa.float64(), "is_buyer_maker": pa.bool_()}
    return pa.RecordBatch.from_pydict({k: pa.array(v, type=types.get(k, pa.int64())) for k, v in columns.items()})


def test_good_raw_rows_pass() -> None:
    check_source_rows(agg_trades(), schema.AGG_TRADE_ROWS)


def test_bad_raw_rows_are_found_with_their_index_and_minute() -> None:
    bad = agg_trades(quantity=(1, -0.5), price=(3, INF), first_trade_id=(4, 207))
    with pytest.raises(BadSourceRows) as info:
        check_source_rows(bad, schema.AGG_TRADE_ROWS)
    found = [(r.rule, r.column, r.value, r.index, r.minute) for r in info.value.rows]
    assert found == [
        ("quantities_non_negative_finite", "quantity", -0.5, 1, "2024-03-01T00:00:00+00:00"),
        ("prices_positive_finite", "price", INF, 3, "2024-03-01T00:01:00+00:00"),
        (
            "first_trade_id_not_after_last_trade_id",
            "first_trade_id/last_trade_id",
            "207/206",
            4,
            "2024-03-01T00:02:00+00:00",
        ),
    ]
    located = info.value.located("trade_flow_1m BTCUSDT 2024-03-01", lambda i: f"file.zip, data row {i + 11}")
    assert str(located) == (
        "trade_flow_1m BTCUSDT 2024-03-01: not committed — "
        "blocking rule 'quantities_non_negative_finite' failed: quantity = -0.5 at minute 2024-03-01T00:00:00+00:00 "
        "(file.zip, data row 12); "
        "blocking rule 'prices_positive_finite' failed: price = inf at minute 2024-03-01T00:01:00+00:00 "
        "(file.zip, data row 14); "
        "blocking rule 'first_trade_id_not_after_last_trade_id' failed: first_trade_id/last_trade_id = 207/206 "
        "at minute 2024-03-01T00:02:00+00:00 (file.zip, data row 15)"
    )


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        ({"price": (0, NAN)}, "prices_positive_finite"),
        ({"price": (0, 0.0)}, "prices_positive_finite"),
        ({"price": (0, 1e308)}, "prices_positive_finite"),
        ({"price": (0, 1e-300)}, "prices_positive_finite"),
        ({"quantity": (0, INF)}, "quantities_non_negative_finite"),
        ({"quantity": (0, NAN)}, "quantities_non_negative_finite"),
        ({"agg_trade_id": (0, -1)}, "ids_non_negative"),
        ({"last_trade_id": (0, -200)}, "ids_non_negative"),
        ({"transact_time": (0, 1_709_251_201_000_000)}, "epoch_ms_in_range"),
    ],
)
def test_each_bad_raw_value_is_found(change: dict, rule: str) -> None:
    with pytest.raises(BadSourceRows) as info:
        check_source_rows(agg_trades(**change), schema.AGG_TRADE_ROWS)
    assert (info.value.rows[0].rule, info.value.rows[0].index) == (rule, 0)


def test_raw_book_ticker_rows() -> None:
    book = pa.RecordBatch.from_pydict(
        {
            "update_id": pa.array([7, 8], pa.int64()),
            "best_bid_price": pa.array([100.0, 100.1]),
            "best_bid_qty": pa.array([1.5, 0.0]),
            "best_ask_price": pa.array([100.2, 0.0]),
            "best_ask_qty": pa.array([0.5, 2.0]),
            "transaction_time": pa.array([ms("2024-03-01 00:00:01"), ms("2024-03-01 00:03:02")], pa.int64()),
            "event_time": pa.array([ms("2024-03-01 00:00:01"), ms("2024-03-01 00:03:02")], pa.int64()),
        }
    )
    with pytest.raises(BadSourceRows) as info:
        check_source_rows(book, schema.BOOK_TICKER_ROWS)
    assert [(r.rule, r.column, r.value, r.index, r.minute) for r in info.value.rows] == [
        ("prices_positive_finite", "best_ask_price", 0.0, 1, "2024-03-01T00:03:00+00:00")
    ]


def test_the_io_managers_validator_names_the_source_of_the_failing_column() -> None:
    klines = "https://data.binance.vision/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-01.zip"
    mark = "https://data.binance.vision/data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-03-01.zip"
    provenance = {
        "klines": {"status": "vision", "files": [{"url": klines}]},
        "markPriceKlines": {"status": "vision", "files": [{"url": mark}]},
        "fundingRate": {"status": "rest", "base_url": "https://fapi.binance.com"},
    }
    bad = view(close=[101.0, INF, 102.5], mark_price_close=[101.0, -1.0, 102.5], funding_rate=[None, NAN, None])
    with pytest.raises(BlockingCheckFailed) as info:
        _validator(schema.MINUTE_VIEW, SymbolDay("BTCUSDT", DAY), PartitionData(bad, provenance))(bad)
    text = str(info.value)
    assert text.startswith("minute view BTCUSDT 2024-03-01: not committed — "), text
    assert f"close = inf at minute 2024-03-01T00:01:00+00:00 ({klines})" in text, text
    assert f"mark_price_close = -1.0 at minute 2024-03-01T00:01:00+00:00 ({mark})" in text, text
    assert "funding_rate = nan at minute 2024-03-01T00:01:00+00:00 (REST https://fapi.binance.com)" in text, text


def test_a_locator_that_fails_does_not_hide_the_refusal() -> None:
    def broken(minute: dt.datetime, column: str) -> str:
        raise OSError("the cached zip is gone")

    with pytest.raises(BlockingCheckFailed) as info:
        enforce_blocking(
            table(schema.FUNDING, funding_rate=(1, NAN)), DAY, label="x", dataset=schema.FUNDING, locate=broken
        )
    assert "funding_rate = nan at minute 2024-03-01T00:00:00+00:00 (row not located: the cached zip is gone)" in str(
        info.value
    )


def test_real_binance_files_pass_every_rule(real_fixtures: Path) -> None:
    """The bounds are far from real data: real klines (futures 2023, spot 2020), a real
    day of COIN-M aggTrades and a month of real funding pass."""
    for path, day in [
        (real_fixtures / "klines_1m" / "BTCUSDT-1m-2023-04-15.csv", dt.date(2023, 4, 15)),
        (real_fixtures / "spot_fallback" / "BTCUSDT-1m-2020-01-01.zip", dt.date(2020, 1, 1)),
    ]:
        klines = kline_table(read_vision_csv(path, Stream.KLINES), day, schema.KLINES, source=str(path))
        assert klines.num_rows == 1440
        enforce_blocking(klines, day, label=path.name, dataset=schema.KLINES)
    trades = real_fixtures / "aggTrades_cm_fallback" / "BTCUSD_PERP-aggTrades-2026-05-08.zip"
    rows = 0
    for batch in iter_vision_csv_batches(trades, Stream.AGG_TRADES):
        check_source_rows(batch, schema.AGG_TRADE_ROWS)
        rows += batch.num_rows
    assert rows == 105_280
    funding = read_vision_csv(real_fixtures / "fundingRate" / "BTCUSDT-fundingRate-2026-04.zip", Stream.FUNDING_RATE)
    enforce_blocking(funding_settlements(funding), dt.date(2026, 4, 15), label="funding", dataset=schema.FUNDING)


# --- the vectorised pass: a clean table needs no pandera; anything else gets the rules -----


def _verdict_of_the_rules(t: pa.Table, dataset: schema.Dataset) -> list[tuple[str, bool, dict]]:
    ev = Evidence(day=DAY, frame=to_frame(t), closed_day=True, time_column=dataset.time_column)
    return [(o.rule.name, o.passed, dict(o.facts)) for o in (r.run(ev) for r in blocking_rules(dataset))]


def _verdict(t: pa.Table, dataset: schema.Dataset) -> list[tuple[str, bool, dict]]:
    return [(o.rule.name, o.passed, dict(o.facts)) for o in judge_blocking(t, DAY, dataset).outcomes]


GOOD_TABLES = [(d, table(d)) for d in STREAMS] + [(schema.MINUTE_VIEW, view())]


@pytest.mark.parametrize(("dataset", "good"), GOOD_TABLES, ids=[d.name for d, _ in GOOD_TABLES])
def test_a_clean_table_passes_without_pandera_with_the_rules_facts(
    dataset: schema.Dataset, good: pa.Table, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = _verdict_of_the_rules(good, dataset)
    assert all(passed for _, passed, _ in expected)

    def no_pandera(*args: object, **kwargs: object) -> None:
        raise AssertionError("pandera ran on a clean table")

    monkeypatch.setattr(pdr.DataFrameSchema, "validate", no_pandera)
    assert _verdict(good, dataset) == expected
    enforce_blocking(good, DAY, label="x", dataset=dataset)


# Tables the vectorised pass must hand to the rules, bad or not: its verdict is then theirs.
DOUBTFUL = [
    *((d, table(d, **{c: ch})) for d, c, ch, _, _ in BAD_VALUES),
    (schema.KLINES, table(schema.KLINES, high=(0, 99.0), low=(0, 101.0))),
    (schema.KLINES, table(schema.KLINES, open=(1, None))),  # a NULL inside an OHLC group
    (schema.KLINES, table(schema.KLINES, timestamp=(1, "2024-03-01 00:00"))),
    (schema.KLINES, table(schema.KLINES, timestamp=(1, "2024-03-01 00:01:30"))),
    (schema.TRADE_FLOW, table(schema.TRADE_FLOW, timestamp=(1, "2024-03-02 00:00"))),
    (schema.HOT_SNAPSHOTS, table(schema.HOT_SNAPSHOTS, observation_time=(0, "2024-02-29 23:59:59"))),
    (schema.FUNDING, table(schema.FUNDING, settlement_time=(0, "2016-12-31 16:00"))),
    (schema.METRICS, table(schema.METRICS, observation_time=(0, "2024-03-01 00:05"))),
    (schema.MINUTE_VIEW, view(close=[101.0, None, 102.5])),
    (schema.MINUTE_VIEW, view(high=[101.0, 102.0, 102.2])),
    (schema.MINUTE_VIEW, view(taker_buy_ratio=[0.5, NAN, 0.0])),
]


@pytest.mark.parametrize(("dataset", "t"), DOUBTFUL, ids=[f"{d.name}-{i}" for i, (d, _) in enumerate(DOUBTFUL)])
def test_a_doubtful_table_is_judged_by_the_rules_themselves(dataset: schema.Dataset, t: pa.Table) -> None:
    assert _verdict(t, dataset) == _verdict_of_the_rules(t, dataset)


# Whatever one value becomes, the vectorised pass never lets through a table the rules refuse.
_NUMERIC_VALUES = st.one_of(
    st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-300, 1e300, 100.0, 101.0, 99.0, 0.5, 1.0, 2.0]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_the_vectorised_pass_is_never_laxer_than_the_rules(data: st.DataObject) -> None:
    dataset = data.draw(st.sampled_from(STREAMS), label="dataset")
    numeric = [c.name for c in dataset.columns if c.name != dataset.time_column and c.type in (schema.F64, schema.I64)]
    column = data.draw(st.sampled_from(numeric), label="column")
    row = data.draw(st.integers(0, len(GOOD[dataset.name]) - 1), label="row")
    value = data.draw(_NUMERIC_VALUES, label="value")
    if value is not None and dataset.column(column).type == schema.I64:
        if not math.isfinite(value) or abs(value) >= 2**62:
            return  # not an int64: the table cannot be built
        value = int(value)
    t = table(dataset, **{column: (row, value)})
    assert _verdict(t, dataset) == _verdict_of_the_rules(t, dataset)
