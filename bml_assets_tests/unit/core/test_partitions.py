"""The partition space: keys in Dagster's dimension order, and clear errors."""

from __future__ import annotations

import datetime as dt

import pytest

from bml_assets.defs.partitions import build_partitions_def
from bml_assets.domain.partitions import SymbolDay, parse_partition_key, partition_key
from bml_assets.domain.settings import Settings, SettingsError


def test_keys_are_date_then_symbol() -> None:
    assert partition_key("BTCUSDT", dt.date(2024, 3, 1)) == "2024-03-01|BTCUSDT"
    assert parse_partition_key("2024-03-01|BTCUSDT") == SymbolDay("BTCUSDT", dt.date(2024, 3, 1))


def test_partitions_def_covers_symbols_from_start_date() -> None:
    pdef = build_partitions_def(Settings(symbols=("BTCUSDT", "ETHUSDT"), start_date=dt.date(2024, 1, 1)))
    keys = pdef.get_partition_keys(current_time=dt.datetime(2024, 1, 3, 12, tzinfo=dt.UTC))
    # 2024-01-01 … 2024-01-03 (today included) × 2 symbols
    assert sorted(keys) == [
        "2024-01-01|BTCUSDT",
        "2024-01-01|ETHUSDT",
        "2024-01-02|BTCUSDT",
        "2024-01-02|ETHUSDT",
        "2024-01-03|BTCUSDT",
        "2024-01-03|ETHUSDT",
    ]


@pytest.mark.parametrize("bad", ["2024-03-01|../x", "2024-03-01|btc usdt"])
def test_bad_symbol_in_key(bad: str) -> None:
    with pytest.raises(SettingsError):
        parse_partition_key(bad)


@pytest.mark.parametrize("bad", ["2024-03-01", "2024-13-01|BTCUSDT", "a|b|c"])
def test_malformed_key(bad: str) -> None:
    with pytest.raises(ValueError, match="partition key"):
        parse_partition_key(bad)
