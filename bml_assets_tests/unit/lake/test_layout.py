"""lake/layout.py: the hive keys of SPEC §2, where the local lake puts them and its locks, part validation."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path

import pytest

from bml_assets.domain.schema import KLINES, MINUTE_VIEW, Dataset
from bml_assets.domain.settings import SettingsError
from bml_assets.lake.lake import Lake
from bml_assets.lake.layout import (
    day_file_key,
    day_folder_key,
    file_key,
    file_key_of,
    folder_key,
    partition_label,
    symbol_folder_key,
)

ROOT = Path("/lake")
DAY = date(2024, 3, 5)


def test_minute_view_lands_at_the_spec_path() -> None:
    assert file_key(MINUTE_VIEW, "BTCUSDT", DAY) == "futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    assert folder_key(MINUTE_VIEW, "BTCUSDT", DAY) == "futures/um/minute/symbol=BTCUSDT/date=2024-03-05"
    assert Lake.at(ROOT).location(MINUTE_VIEW, "BTCUSDT", DAY) == (
        "/lake/futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    )


def test_per_stream_dataset_path_and_relative_form() -> None:
    assert Lake.at(ROOT).location(KLINES, "ETHUSDT", date(2020, 1, 1)) == (
        "/lake/futures/um/klines_1m/symbol=ETHUSDT/date=2020-01-01/part.parquet"
    )
    assert file_key("klines_1m", "ETHUSDT", date(2020, 1, 1)) == (
        "futures/um/klines_1m/symbol=ETHUSDT/date=2020-01-01/part.parquet"
    )
    assert partition_label(KLINES, "ETHUSDT", date(2020, 1, 1)) == "klines_1m/ETHUSDT/2020-01-01"


def test_the_fast_key_forms_agree_with_the_checked_ones() -> None:
    symbol_folder = symbol_folder_key(MINUTE_VIEW, "BTCUSDT")
    assert symbol_folder == "futures/um/minute/symbol=BTCUSDT"
    assert day_file_key(symbol_folder, "2024-03-02") == file_key(MINUTE_VIEW, "BTCUSDT", date(2024, 3, 2))
    assert day_folder_key(symbol_folder, "2024-03-02") == folder_key(MINUTE_VIEW, "BTCUSDT", date(2024, 3, 2))
    assert file_key_of("klines_1m", "ETHUSDT", "2020-01-01") == file_key(KLINES, "ETHUSDT", date(2020, 1, 1))


def test_lock_path_is_under_state_locks() -> None:
    lake = Lake.at(ROOT)
    assert lake.locks.location(partition_label(MINUTE_VIEW, "BTCUSDT", DAY)) == (
        "/lake/_state/locks/minute/BTCUSDT/2024-03-05.lock"
    )


@pytest.mark.parametrize("symbol", ["../x", "btc usdt", "btcusdt", "B", "", "BTC/USDT", "A" * 21])
def test_bad_symbols_are_rejected(symbol: str) -> None:
    with pytest.raises(SettingsError, match="invalid symbol"):
        file_key(MINUTE_VIEW, symbol, DAY)
    with pytest.raises(SettingsError):
        partition_label(MINUTE_VIEW, symbol, DAY)


@pytest.mark.parametrize("name", ["../evil", "Minute", "a/b", "", "_state"])
def test_bad_dataset_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid dataset name"):
        file_key(Dataset(name, "x", (("timestamp", MINUTE_VIEW.arrow_schema.field(7).type),)), "BTCUSDT", DAY)


def test_a_datetime_is_not_a_day() -> None:
    with pytest.raises(TypeError, match=r"datetime\.date"):
        file_key(MINUTE_VIEW, "BTCUSDT", datetime(2024, 3, 5, 12))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        file_key(MINUTE_VIEW, "BTCUSDT", "2024-03-05")  # type: ignore[arg-type]
