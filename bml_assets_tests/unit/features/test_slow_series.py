"""asof_fill: the as-of join with its forward-fill bound and no look-ahead."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from bml_assets.features.slow_series import asof_fill
from bml_assets_tests.unit.features.builders import ms, timestamps


def grid(first: str, count: int) -> np.ndarray:
    start = ms(first)
    return np.array([start + 60_000 * i for i in range(count)], dtype=np.int64)


def test_value_at_exactly_the_bound_is_kept_one_minute_beyond_is_null_and_warned():
    minutes = grid("2024-03-01 10:00", 62)  # 10:00 … 11:01
    fill = asof_fill(
        minutes, timestamps(["2024-03-01 10:00:00"]), {"oi_contracts": pa.array([5.0])}, max_ffill_minutes=60
    )
    values = fill.columns["oi_contracts"].to_pylist()
    assert values[0] == 5.0
    assert values[60] == 5.0  # 11:00, age 60
    assert values[61] is None  # 11:01, age 61
    assert fill.stale_minutes == {"oi_contracts": 1}
    (warning,) = fill.warnings()
    assert "oi_contracts" in warning
    assert "1 minute" in warning
    assert "60 minutes" in warning


def test_an_observation_inside_the_minute_serves_that_minute_but_not_the_one_before():
    minutes = grid("2024-03-01 09:59", 2)  # 09:59, 10:00
    fill = asof_fill(minutes, timestamps(["2024-03-01 10:00:30"]), {"x": pa.array([1.25])}, max_ffill_minutes=60)
    assert fill.columns["x"].to_pylist() == [None, 1.25]
    assert fill.stale_minutes == {"x": 0}  # nothing observed before 09:59: not a bound miss
    assert fill.warnings() == []


def test_an_observation_at_the_next_minute_start_is_not_used_early():
    fill = asof_fill(
        grid("2024-03-01 10:00", 2), timestamps(["2024-03-01 10:01:00"]), {"x": pa.array([3.0])}, max_ffill_minutes=5
    )
    assert fill.columns["x"].to_pylist() == [None, 3.0]


def test_a_future_observation_never_fills_earlier_minutes():
    # Yesterday's last value and an observation from "today" far later.
    fill = asof_fill(
        grid("2024-03-01 00:00", 3),
        timestamps(["2024-02-29 23:55:00", "2024-03-01 12:00:00"]),
        {"x": pa.array([1.0, 99.0])},
        max_ffill_minutes=60,
    )
    assert fill.columns["x"].to_pylist() == [1.0, 1.0, 1.0]


def test_with_a_zero_bound_only_the_minute_of_the_observation_is_filled():
    fill = asof_fill(
        grid("2024-03-01 10:00", 2),
        timestamps(["2024-03-01 10:00:59.999"]),
        {"x": pa.array([2.0])},
        max_ffill_minutes=0,
    )
    assert fill.columns["x"].to_pylist() == [2.0, None]
    assert fill.stale_minutes == {"x": 1}


def test_null_values_are_not_observations_each_column_uses_its_own_latest():
    fill = asof_fill(
        grid("2024-03-01 10:10", 1),
        timestamps(["2024-03-01 10:00", "2024-03-01 10:05"]),
        {"a": pa.array([1.0, None]), "b": pa.array([10.0, 20.0])},
        max_ffill_minutes=60,
    )
    assert fill.columns["a"].to_pylist() == [1.0]
    assert fill.columns["b"].to_pylist() == [20.0]


def test_unsorted_observations_and_minutes_and_a_repeated_instant():
    minutes = np.array([ms("2024-03-01 10:06"), ms("2024-03-01 10:01")], dtype=np.int64)
    fill = asof_fill(
        minutes,
        timestamps(["2024-03-01 10:05", "2024-03-01 10:00", "2024-03-01 10:05"]),
        {"x": pa.array([7.0, 6.0, 8.0])},
        max_ffill_minutes=60,
    )
    assert fill.columns["x"].to_pylist() == [8.0, 6.0]  # the later of the two 10:05 rows


def test_no_observations_give_nulls_without_warning():
    fill = asof_fill(
        grid("2024-03-01 10:00", 2), timestamps([]), {"x": pa.array([], pa.float64())}, max_ffill_minutes=60
    )
    assert fill.columns["x"].to_pylist() == [None, None]
    assert fill.warnings() == []


def test_a_negative_bound_is_refused():
    with pytest.raises(ValueError, match="max_ffill_minutes"):
        asof_fill(grid("2024-03-01 10:00", 1), timestamps([]), {}, max_ffill_minutes=-1)
