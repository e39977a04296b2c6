"""Funding settlements and the funding step functions (columns 56 and 58)."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from bml_assets.domain import schema
from bml_assets.features.funding import (
    funding_rate_at,
    funding_settlements,
    next_funding_time_at,
    settlements_for_day,
)
from bml_assets_tests.unit.features.builders import column, ms, raw_funding, utc


def minutes(*texts: str) -> np.ndarray:
    return np.array([ms(t) for t in texts], dtype=np.int64)


def test_calc_time_is_floored_to_its_settlement_minute_sorted_and_unique():
    raw = raw_funding(
        [
            ("2026-04-02 00:00:00.003", 8, 0.00003521),
            ("2026-04-01 16:00:00.000", 8, -0.00000461),
            ("2026-04-01 16:00:00.010", 8, 0.0001),  # the same settlement again: the later row is kept
        ]
    )
    table = funding_settlements(raw)
    assert table.schema.equals(schema.FUNDING.arrow_schema)
    assert table.to_pylist() == [
        {"settlement_time": utc("2026-04-01 16:00"), "funding_rate": 0.0001, "funding_interval_hours": 8},
        {"settlement_time": utc("2026-04-02 00:00"), "funding_rate": 0.00003521, "funding_interval_hours": 8},
    ]


HISTORY = funding_settlements(
    raw_funding(
        [
            ("2026-03-31 08:00:00.004", 8, 0.0001),
            ("2026-03-31 16:00:00.002", 8, 0.0002),
            ("2026-04-01 00:00:00.005", 8, 0.0003),
            ("2026-04-01 08:00:00.001", 8, 0.0004),
            ("2026-04-01 16:00:00.000", 8, 0.0005),
            ("2026-04-02 00:00:00.003", 8, 0.0006),
            ("2026-04-02 08:00:00.003", 8, 0.0007),
        ]
    )
)


def test_settlements_for_day_keep_the_last_before_all_inside_and_the_first_after():
    table = settlements_for_day(HISTORY, dt.date(2026, 4, 1))
    assert column(table, "settlement_time") == [
        utc("2026-03-31 16:00"),
        utc("2026-04-01 00:00"),
        utc("2026-04-01 08:00"),
        utc("2026-04-01 16:00"),
        utc("2026-04-02 00:00"),
    ]


def test_settlements_for_day_at_the_edges_of_the_history():
    assert column(settlements_for_day(HISTORY, dt.date(2026, 3, 1)), "settlement_time") == [utc("2026-03-31 08:00")]
    assert column(settlements_for_day(HISTORY, dt.date(2026, 4, 3)), "settlement_time") == [utc("2026-04-02 08:00")]
    assert column(settlements_for_day(HISTORY, dt.date(2026, 4, 2)), "settlement_time") == [
        utc("2026-04-01 16:00"),
        utc("2026-04-02 00:00"),
        utc("2026-04-02 08:00"),
    ]


def test_on_the_first_of_a_month_the_midnight_settlement_applies_from_the_midnight_minute():
    day = settlements_for_day(HISTORY, dt.date(2026, 4, 1))
    at = minutes("2026-04-01 00:00", "2026-04-01 07:59", "2026-04-01 08:00", "2026-04-01 23:59")
    assert funding_rate_at(at, day).to_pylist() == [0.0003, 0.0003, 0.0004, 0.0005]
    assert next_funding_time_at(at, day).to_pylist() == [
        ms("2026-04-01 08:00"),
        ms("2026-04-01 08:00"),
        ms("2026-04-01 16:00"),
        ms("2026-04-02 00:00"),
    ]


def test_previous_month_settlement_seeds_a_day_whose_first_settlement_is_later():
    settlements = funding_settlements(
        raw_funding([("2026-03-31 20:00:00.007", 8, -0.0001), ("2026-04-01 04:00:00.002", 8, 0.0002)])
    )
    at = minutes("2026-04-01 00:00", "2026-04-01 03:59", "2026-04-01 04:00")
    assert funding_rate_at(at, settlements).to_pylist() == [-0.0001, -0.0001, 0.0002]
    # past the known history: the last settlement (04:00) plus its 8-hour interval
    assert next_funding_time_at(at, settlements).to_pylist() == [
        ms("2026-04-01 04:00"),
        ms("2026-04-01 04:00"),
        ms("2026-04-01 12:00"),
    ]


@pytest.mark.parametrize(
    ("interval", "minute", "expected"),
    [
        (8, "2026-04-01 08:00", "2026-04-01 16:00"),
        (8, "2026-04-01 15:59", "2026-04-01 16:00"),
        (8, "2026-04-01 16:00", "2026-04-02 00:00"),  # strictly after: the addition repeats
        (8, "2026-04-02 03:00", "2026-04-02 08:00"),
        (4, "2026-04-01 12:30", "2026-04-01 16:00"),
        (1, "2026-04-01 08:00", "2026-04-01 09:00"),
        (1, "2026-04-01 10:59", "2026-04-01 11:00"),
    ],
)
def test_next_funding_time_falls_back_to_the_interval_after_the_history(interval, minute, expected):
    settlements = funding_settlements(raw_funding([("2026-04-01 08:00:00.005", interval, 0.0001)]))
    assert next_funding_time_at(minutes(minute), settlements).to_pylist() == [ms(expected)]


def test_before_the_first_known_settlement_the_rate_is_null_and_the_next_time_known():
    settlements = funding_settlements(raw_funding([("2026-04-01 08:00:00.005", 8, 0.0001)]))
    at = minutes("2026-04-01 07:59", "2026-04-01 08:00")
    assert funding_rate_at(at, settlements).to_pylist() == [None, 0.0001]
    assert next_funding_time_at(at, settlements).to_pylist() == [ms("2026-04-01 08:00"), ms("2026-04-01 16:00")]


def test_without_any_settlement_both_columns_are_null():
    empty = funding_settlements(raw_funding([]))
    at = minutes("2026-04-01 00:00", "2026-04-01 00:01")
    assert funding_rate_at(at, empty).to_pylist() == [None, None]
    assert next_funding_time_at(at, empty).to_pylist() == [None, None]


def test_the_rate_is_a_step_function_not_bounded_by_any_fill_limit():
    settlements = funding_settlements(raw_funding([("2026-03-01 00:00:00.001", 8, 0.0001)]))
    assert funding_rate_at(minutes("2026-04-01 23:59"), settlements).to_pylist() == [0.0001]
