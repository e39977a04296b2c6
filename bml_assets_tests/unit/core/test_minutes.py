"""The minute arithmetic (domain/minutes.py), and that it is declared nowhere else."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path

import pytest

from bml_assets.domain.minutes import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    MINUTES_PER_DAY,
    datetime_to_ms,
    day_bounds_ms,
    day_of_ms,
    day_start,
    day_start_ms,
    describe_ms,
    floor_minute_ms,
    ms_to_datetime,
)

PACKAGE = Path(__file__).resolve().parents[3] / "bml_assets"
CONSTANTS = {"MINUTE_MS", "HOUR_MS", "DAY_MS", "MINUTES_PER_DAY"}


def test_the_lengths() -> None:
    assert (MINUTE_MS, HOUR_MS, DAY_MS, MINUTES_PER_DAY) == (60_000, 3_600_000, 86_400_000, 1440)


def test_day_bounds_in_epoch_ms() -> None:
    assert day_start(dt.date(2024, 3, 1)) == dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    assert day_start_ms(dt.date(2024, 3, 1)) == 1_709_251_200_000
    # 2024 is a leap year: 29 February is a whole day.
    assert day_bounds_ms(dt.date(2024, 2, 29)) == (1_709_164_800_000, 1_709_251_200_000)
    assert day_of_ms(1_709_251_199_999) == dt.date(2024, 2, 29)
    assert day_of_ms(1_709_251_200_000) == dt.date(2024, 3, 1)


def test_floor_to_the_minute() -> None:
    assert floor_minute_ms(1_709_251_259_999) == 1_709_251_200_000
    assert floor_minute_ms(1_709_251_260_000) == 1_709_251_260_000


def test_ms_and_aware_datetimes_convert_exactly() -> None:
    t = dt.datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=dt.UTC)
    assert ms_to_datetime(1_704_164_645_678) == t
    assert datetime_to_ms(t) == 1_704_164_645_678
    # Another zone names the same instant.
    assert datetime_to_ms(dt.datetime(2024, 3, 1, 1, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))) == 1_709_251_200_000
    # Sub-millisecond parts are dropped towards the past.
    assert datetime_to_ms(dt.datetime(2024, 1, 2, 3, 4, 5, 678_999, tzinfo=dt.UTC)) == 1_704_164_645_678


def test_a_naive_datetime_has_no_instant() -> None:
    with pytest.raises(ValueError, match=r"naive datetime .*2024-03-01T00:00:00"):
        datetime_to_ms(dt.datetime(2024, 3, 1))


def test_describe_ms_for_messages() -> None:
    assert describe_ms(1_704_164_645_678) == "2024-01-02T03:04:05.678Z (1704164645678)"
    assert describe_ms(10**20) == "out of range (100000000000000000000)"


def test_the_lengths_are_defined_in_domain_minutes_only() -> None:
    """Every other module imports them: no second definition can drift."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PACKAGE / "domain" / "minutes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            found += [
                f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {t.id}"
                for t in targets
                if isinstance(t, ast.Name) and t.id in CONSTANTS
            ]
    assert found == []
