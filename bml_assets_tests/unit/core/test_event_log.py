"""The event log of the instance the bml commands open (defs/event_log.py via
orchestration/runner.dagster_instance): Dagster's SQLite files, connections kept open,
readable by the default storage the daemon and the webserver use."""

from __future__ import annotations

from pathlib import Path

import pytest
from dagster import AssetKey, AssetMaterialization, DagsterInstance
from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME, SqliteEventLogStorage

from bml_assets.defs.event_log import MAX_OPEN_SHARDS, KeptOpenSqliteEventLogStorage
from bml_assets.domain.settings import Settings
from bml_assets.orchestration.runner import dagster_home, dagster_instance


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return Settings(symbols=("BTCUSDT",), lake_root=tmp_path / "lake")


def test_events_stored_with_kept_connections_are_read_by_dagsters_default_storage(settings: Settings) -> None:
    with dagster_instance(settings) as instance:
        storage = instance.event_log_storage
        assert isinstance(storage, KeptOpenSqliteEventLogStorage)
        for key in ("2024-06-03|BTCUSDT", "2024-06-04|BTCUSDT"):
            instance.report_runless_asset_event(AssetMaterialization(asset_key="minute_view", partition=key))
        assert INDEX_SHARD_NAME in storage.open_shards  # its connection stays open
    assert storage.open_shards == ()  # closed with the instance
    # The daemon and the webserver open the same home with Dagster's own storage.
    with DagsterInstance.from_config(str(dagster_home(settings))) as default:
        assert type(default.event_log_storage) is SqliteEventLogStorage
        assert default.get_materialized_partitions(AssetKey("minute_view")) == {
            "2024-06-03|BTCUSDT",
            "2024-06-04|BTCUSDT",
        }


def test_only_the_shards_written_last_keep_a_connection(settings: Settings) -> None:
    with dagster_instance(settings) as instance:
        storage = instance.event_log_storage
        runs = [f"run{i}" for i in range(MAX_OPEN_SHARDS + 3)]
        for run_id in runs:
            with storage.run_connection(run_id) as conn:
                conn.exec_driver_sql("SELECT 1")
        assert storage.open_shards == tuple(runs[-MAX_OPEN_SHARDS:])
        with storage.run_connection(runs[-MAX_OPEN_SHARDS]):
            pass  # used again: now the most recent
        assert storage.open_shards[-1] == runs[-MAX_OPEN_SHARDS]


def test_a_home_that_chooses_its_storage_keeps_it(settings: Settings, tmp_path: Path) -> None:
    home = dagster_home(settings)
    (home / "dagster.yaml").write_text(f"storage:\n  sqlite:\n    base_dir: {tmp_path / 'elsewhere'}\n")
    with dagster_instance(settings) as instance:
        assert not isinstance(instance.event_log_storage, KeptOpenSqliteEventLogStorage)
