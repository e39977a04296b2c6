"""The ``live_1m`` table in the registry: its columns are the minute view's (same names, types,
domains) plus the collector's bookkeeping, and the blocking rules follow from the declaration."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from bml_assets.domain import schema
from bml_assets.quality import BlockingCheckFailed, blocking_rules, enforce_blocking
from bml_assets_tests.unit.features.builders import dataset_table, ms

DAY = dt.date(2024, 8, 8)
LIVE = schema.LIVE_1M

# Two good rows, written out in the table's column order.
GOOD: list[tuple] = [
    (
        "2024-08-08 23:55",
        ms("2024-08-08 23:55:59.990"),  # event_time
        ms("2024-08-08 23:55:58.700"),  # arrival_time (the local clock is behind)
        12,  # latency_engine
        -1250,  # latency_network: negative when the local clock is behind
        5123110000000,
        5123112000000,
        61800.25,  # micro_price_close
        0.0,  # liq_long_vol_usdt
        0.0,
        0,
        0,
        None,  # liq_avg_fill_price: none in the minute
        None,
        0.1,  # avg_spread_usdt
        -0.25,  # bid_ask_imbalance
        2.5,
        3.5,
        1.6e-6,  # spread_pct
        2.3e-5,  # price_impact_100k
        None,  # predicted_funding: no market family
        True,
        False,
        True,
        -1270,  # clock_offset_ms
        0,
        0,
        0,
        0,
        0,
        1100,
        11000,
        0,
        3900,
        0,
        0,
    ),
    (
        "2024-08-08 23:56",
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        False,
        False,
        False,
        None,
        1,
        2,
        1,
        0,
        0,
        3,
        4,
        0,
        0,
        0,
        0,
    ),
]


def table(**changes: tuple[int, object]) -> pa.Table:
    rows = [list(r) for r in GOOD]
    for column, (row, value) in changes.items():
        rows[row][LIVE.column_names.index(column)] = value
    return dataset_table(LIVE, [tuple(r) for r in rows])


def test_the_minute_view_columns_are_declared_by_reference() -> None:
    for name in schema.LIVE_VIEW_COLUMNS:
        assert LIVE.column(name) is schema.MINUTE_VIEW.column(name)
    # every LIVE column of the minute view but none of its HARD or other BACKFILL ones
    live = set(schema.LIVE_COLUMNS)
    book = {"micro_price_close", "avg_spread_usdt", "bid_ask_imbalance", "avg_bid_depth", "avg_ask_depth", "spread_pct"}
    assert set(schema.LIVE_VIEW_COLUMNS) == live | book
    assert [n for n in LIVE.column_names if n in live | book] == [
        n for n in schema.MINUTE_VIEW.column_names if n in live | book
    ]
    assert LIVE.time_column == "timestamp" and LIVE.within_day
    assert schema.DATASETS["live_1m"] is LIVE
    assert LIVE.arrow_schema.field("public_covered").type == pa.bool_()
    assert "| 22 | `public_covered` | bool | flag |" in schema.dataset_table_markdown(LIVE)


def test_a_good_live_table_passes_and_the_rules_are_derived() -> None:
    enforce_blocking(table(), DAY, label="live_1m BTCUSDT 2024-08-08", dataset=LIVE)
    names = [r.name for r in blocking_rules(LIVE)]
    assert names[:2] == ["schema_columns", "timestamps_unique_sorted_in_day"]
    assert "hard_columns_not_null" not in names  # nothing is HARD here: an uncovered minute is all NULL
    assert {"flags_boolean", "durations_within_a_day", "counts_non_negative", "rates_finite_bounded"} <= set(names)


@pytest.mark.parametrize(
    ("column", "change", "rule", "shown"),
    [
        ("latency_network", (0, 90_000_000), "durations_within_a_day", "90000000"),
        ("clock_offset_ms", (0, -90_000_000), "durations_within_a_day", "-90000000"),
        ("depth_events", (1, -1), "counts_non_negative", "-1"),
        ("spread_pct", (0, float("nan")), "rates_finite_bounded", "nan"),
        ("price_impact_100k", (0, 20.0), "rates_finite_bounded", "20.0"),
        ("micro_price_close", (0, 0.0), "prices_positive_finite", "0.0"),
        ("bid_ask_imbalance", (0, 1.5), "signed_fractions_within_minus_1_1", "1.5"),
        ("event_time", (0, 1_723_161_359_990_000), "epoch_ms_in_range", "1723161359990000"),
    ],
)
def test_a_bad_value_is_refused_naming_rule_column_value_and_minute(
    column: str, change: tuple[int, object], rule: str, shown: str
) -> None:
    with pytest.raises(BlockingCheckFailed) as info:
        enforce_blocking(table(**{column: change}), DAY, label="live_1m BTCUSDT 2024-08-08", dataset=LIVE)
    text = str(info.value)
    minute = "23:55" if change[0] == 0 else "23:56"
    assert f"blocking rule '{rule}'" in text and f"{column} = {shown}" in text and minute in text


def test_minutes_out_of_order_or_of_another_day_are_refused() -> None:
    swapped = dataset_table(LIVE, [GOOD[1], GOOD[0]])
    with pytest.raises(BlockingCheckFailed, match="timestamps_unique_sorted_in_day"):
        enforce_blocking(swapped, DAY, label="x", dataset=LIVE)
    with pytest.raises(BlockingCheckFailed, match="timestamps_unique_sorted_in_day"):
        enforce_blocking(table(), dt.date(2024, 8, 9), label="x", dataset=LIVE)
