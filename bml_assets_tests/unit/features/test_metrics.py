"""metrics_observations / combine_observations: label conventions and combination."""

from __future__ import annotations

import datetime as dt

import pytest

from bml_assets.domain import schema
from bml_assets.features.metrics import METRICS_LABEL_CHANGE, combine_observations, metrics_observations
from bml_assets_tests.unit.features.builders import column, raw_metrics, utc


def test_the_label_change_date():
    assert dt.date(2026, 6, 25) == METRICS_LABEL_CHANGE


@pytest.mark.parametrize(
    ("file_day", "label", "taken_at"),
    [
        (dt.date(2026, 6, 24), "2026-06-24 00:05:00", "2026-06-24 00:05"),  # old: label = snapshot time
        (dt.date(2026, 6, 24), "2026-06-25 00:00:00", "2026-06-25 00:00"),  # old file's last row
        (dt.date(2026, 6, 25), "2026-06-25 00:00:00", "2026-06-25 00:05"),  # new: label + 5 min
        (dt.date(2026, 6, 25), "2026-06-25 23:55:00", "2026-06-26 00:00"),  # new file's last row
        (dt.date(2021, 1, 1), "2021-01-01 12:05:00", "2021-01-01 12:05"),
        (dt.date(2027, 1, 1), "2027-01-01 12:00:00", "2027-01-01 12:05"),
    ],
)
def test_rows_are_stamped_with_the_instant_their_snapshot_was_taken(file_day, label, taken_at):
    table = metrics_observations(raw_metrics([(label, 1.0, 2.0, 3.0, 4.0)]), file_day)
    assert column(table, "observation_time") == [utc(taken_at)]


def test_both_conventions_put_the_same_snapshot_on_the_same_instant():
    # The snapshot taken at 2026-06-24 12:05: labelled 12:05 in an old-style file and
    # 12:00 in a new-style one.
    old = metrics_observations(raw_metrics([("2026-06-24 12:05:00", 7.0, 8.0, 1.5, 2.0)]), dt.date(2026, 6, 24))
    new = metrics_observations(raw_metrics([("2026-06-24 12:00:00", 7.0, 8.0, 1.5, 2.0)]), dt.date(2026, 6, 25))
    assert old.equals(new)


def test_columns_are_mapped_to_minute_view_names():
    table = metrics_observations(
        raw_metrics(
            [
                ("2024-03-01 00:10:00", 81000.5, 5.1e9, 1.75, None),
                ("2024-03-01 00:05:00", 80000.0, 5.0e9, 1.5, 2.25),
            ]
        ),
        dt.date(2024, 3, 1),
    )
    assert table.schema.equals(schema.METRICS.arrow_schema)
    assert table.to_pylist() == [
        {
            "observation_time": utc("2024-03-01 00:05"),
            "oi_contracts": 80000.0,
            "oi_value_usdt": 5.0e9,
            "top_trader_ls_ratio_acct": 1.5,
            "global_ls_ratio_acct": 2.25,
        },
        {
            "observation_time": utc("2024-03-01 00:10"),
            "oi_contracts": 81000.5,
            "oi_value_usdt": 5.1e9,
            "top_trader_ls_ratio_acct": 1.75,
            "global_ls_ratio_acct": None,  # an empty cell stays NULL
        },
    ]


def test_files_across_the_label_change_combine_into_one_five_minute_series():
    old = metrics_observations(
        raw_metrics([("2026-06-24 23:55:00", 1.0, 1.0, 1.0, 1.0), ("2026-06-25 00:00:00", 2.0, 2.0, 2.0, 2.0)]),
        dt.date(2026, 6, 24),
    )
    new = metrics_observations(
        raw_metrics([("2026-06-25 00:00:00", 3.0, 3.0, 3.0, 3.0), ("2026-06-25 00:05:00", 4.0, 4.0, 4.0, 4.0)]),
        dt.date(2026, 6, 25),
    )
    combined = combine_observations([new, old])
    assert column(combined, "observation_time") == [
        utc("2026-06-24 23:55"),
        utc("2026-06-25 00:00"),
        utc("2026-06-25 00:05"),
        utc("2026-06-25 00:10"),
    ]
    assert column(combined, "oi_contracts") == [1.0, 2.0, 3.0, 4.0]


def test_a_repeated_instant_keeps_the_row_of_the_later_table():
    earlier = metrics_observations(raw_metrics([("2024-03-01 00:05:00", 1.0, 1.0, 1.0, 1.0)]), dt.date(2024, 3, 1))
    later = metrics_observations(
        raw_metrics([("2024-03-01 00:05:00", 9.0, 9.0, 9.0, 9.0), ("2024-03-01 00:10:00", 5.0, 5.0, 5.0, 5.0)]),
        dt.date(2024, 3, 1),
    )
    combined = combine_observations([earlier, later])
    assert column(combined, "observation_time") == [utc("2024-03-01 00:05"), utc("2024-03-01 00:10")]
    assert column(combined, "oi_contracts") == [9.0, 5.0]
    assert column(combine_observations([later, earlier]), "oi_contracts") == [1.0, 5.0]


def test_combining_nothing_gives_an_empty_table():
    combined = combine_observations([])
    assert combined.num_rows == 0
    assert combined.schema.equals(schema.METRICS.arrow_schema)
