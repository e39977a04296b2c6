"""The code location loads, with the asset keys, checks and job it promises."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import AssetKey

from bml_assets.definitions import HOT_JOB, MINUTE_VIEW_JOB, build_definitions, defs
from bml_assets.domain.schema import column_table_markdown
from bml_assets.domain.settings import Settings


def test_definitions_load_with_asset_keys_and_checks() -> None:
    d = build_definitions(Settings(symbols=("BTCUSDT",), start_date=dt.date(2024, 1, 1)))
    graph = d.resolve_asset_graph()
    assert {k.to_user_string() for k in graph.get_all_asset_keys()} == {
        "klines_1m",
        "mark_price_klines_1m",
        "index_price_klines_1m",
        "premium_index_klines_1m",
        "trade_flow_1m",
        "book_ticker_1m",
        "metrics_5m",
        "funding_settlements",
        "hot_snapshots",
        "live_1m",
        "minute_view",
    }
    # live_1m is written by the live collector, never by a run: not executable.
    assert not graph.get(AssetKey("live_1m")).is_executable
    assert AssetKey("live_1m") in graph.get(AssetKey("minute_view")).parent_keys
    checks = {k.name for k in graph.asset_check_keys if k.asset_key == AssetKey("minute_view")}
    assert {
        "schema_columns",
        "hard_columns_not_null",
        "ohlc_consistent",
        "timestamps_unique_sorted_in_day",
        # one blocking rule per value domain of the 58 columns
        "prices_positive_finite",
        "quantities_non_negative_finite",
        "counts_non_negative",
        "rates_finite_bounded",
    } <= checks
    # 4 structural + 13 domain blocking rules, 10 reported rules, the lake scan
    assert len(checks) == 28
    assert d.resolve_job_def(MINUTE_VIEW_JOB) is not None
    assert d.resolve_job_def(HOT_JOB) is not None
    assert {s.name for s in d.sensors} == {
        "hot_poll_sensor",
        "vision_promotion_sensor",
        "repair_sensor",
        "live_collector_sensor",
        "coverage_sensor",
    }
    assert d.resolve_job_def("lake_scan_job") is not None


def test_lazy_entry_point_reads_the_environment_when_called(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BML_SYMBOLS", "ETHUSDT,SOLUSDT")
    monkeypatch.setenv("BML_START_DATE", "2024-01-01")
    loaded = defs()
    pdef = loaded.resolve_assets_def("minute_view").partitions_def
    keys = pdef.get_partition_keys(current_time=dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC))
    assert sorted(keys) == ["2024-01-01|ETHUSDT", "2024-01-01|SOLUSDT"]


def test_docs_column_table_comes_from_the_registry() -> None:
    table = column_table_markdown()
    assert table.count("\n") == 59  # header, rule, 58 columns
    assert "| 8 | `timestamp` | timestamp[ms, tz=UTC] | HARD |" in table
    assert "| 58 | `next_funding_time` | int64 | BACKFILL |" in table
