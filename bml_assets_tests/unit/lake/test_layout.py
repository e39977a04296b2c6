"""lake/layout.py: the hive paths of SPEC §2, lock and temporary names, path-part validation."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path, PurePosixPath

import pytest

from bml_assets.domain.schema import KLINES, MINUTE_VIEW, Dataset
from bml_assets.domain.settings import SettingsError
from bml_assets.lake.layout import (
    is_temp_name,
    lock_path,
    partition_dir,
    partition_label,
    partition_path,
    relative_partition_path,
    temp_files,
    temp_path,
)

ROOT = Path("/lake")
DAY = date(2024, 3, 5)


def test_minute_view_lands_at_the_spec_path() -> None:
    assert partition_path(ROOT, MINUTE_VIEW, "BTCUSDT", DAY) == Path(
        "/lake/futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    )
    assert partition_dir(ROOT, MINUTE_VIEW, "BTCUSDT", DAY) == Path(
        "/lake/futures/um/minute/symbol=BTCUSDT/date=2024-03-05"
    )


def test_per_stream_dataset_path_and_relative_form() -> None:
    assert partition_path(ROOT, KLINES, "ETHUSDT", date(2020, 1, 1)) == Path(
        "/lake/futures/um/klines_1m/symbol=ETHUSDT/date=2020-01-01/part.parquet"
    )
    assert relative_partition_path("klines_1m", "ETHUSDT", date(2020, 1, 1)) == PurePosixPath(
        "futures/um/klines_1m/symbol=ETHUSDT/date=2020-01-01/part.parquet"
    )
    assert partition_label(KLINES, "ETHUSDT", date(2020, 1, 1)) == "klines_1m/ETHUSDT/2020-01-01"


def test_lock_path_is_under_state_locks() -> None:
    assert lock_path(ROOT, MINUTE_VIEW, "BTCUSDT", DAY) == Path("/lake/_state/locks/minute/BTCUSDT/2024-03-05.lock")


@pytest.mark.parametrize("symbol", ["../x", "btc usdt", "btcusdt", "B", "", "BTC/USDT", "A" * 21])
def test_bad_symbols_are_rejected(symbol: str) -> None:
    with pytest.raises(SettingsError, match="invalid symbol"):
        partition_path(ROOT, MINUTE_VIEW, symbol, DAY)
    with pytest.raises(SettingsError):
        lock_path(ROOT, MINUTE_VIEW, symbol, DAY)


@pytest.mark.parametrize("name", ["../evil", "Minute", "a/b", "", "_state"])
def test_bad_dataset_names_are_rejected(name: str) -> None:
    with pytest.raises(ValueError, match="invalid dataset name"):
        partition_path(
            ROOT, Dataset(name, "x", (("timestamp", MINUTE_VIEW.arrow_schema.field(7).type),)), "BTCUSDT", DAY
        )


def test_a_datetime_is_not_a_day() -> None:
    with pytest.raises(TypeError, match=r"datetime\.date"):
        partition_path(ROOT, MINUTE_VIEW, "BTCUSDT", datetime(2024, 3, 5, 12))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        partition_path(ROOT, MINUTE_VIEW, "BTCUSDT", "2024-03-05")  # type: ignore[arg-type]


def test_temp_path_is_beside_the_target_and_hidden(tmp_path: Path) -> None:
    target = partition_path(tmp_path, MINUTE_VIEW, "BTCUSDT", DAY)
    tmp = temp_path(target)
    assert tmp.parent == target.parent
    assert tmp.name.startswith(".part.parquet.") and tmp.name.endswith(".tmp")
    assert is_temp_name(tmp.name)
    assert temp_path(target) != tmp
    assert not is_temp_name("part.parquet") and not is_temp_name(".part.parquet.x.tmp")

    assert temp_files(target.parent) == []  # folder absent
    target.parent.mkdir(parents=True)
    tmp.touch()
    target.touch()
    (target.parent / "notes.tmp").touch()
    assert temp_files(target.parent) == [tmp]
