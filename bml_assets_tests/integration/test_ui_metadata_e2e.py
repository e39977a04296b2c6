"""What Dagster's UI reads from a materialization: ``dagster/row_count`` and
``dagster/column_schema`` from the registry, per partition even in a ranged run; the
asset checks' results against their partition (the Checks tab); and a normal absence (a past day's hot snapshots) logged as INFO, not as a WARNING."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.parquet as pq
from dagster import AssetCheckKey, AssetKey, TableSchema

from bml_assets.definitions import MINUTE_VIEW_JOB
from bml_assets.defs.assets.minute_view import LAKE_SCAN_CHECK
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import HOT_SNAPSHOTS, MINUTE_VIEW, TRADE_FLOW
from bml_assets.quality import ALL_RULES
from bml_assets_tests.integration.conftest import DAY, Lake

RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def _schema_columns(schema: TableSchema) -> list[tuple[str, str, bool]]:
    return [(c.name, c.type, c.constraints.nullable) for c in schema.columns]


def test_single_partition_carries_row_count_and_column_schema(lake: Lake) -> None:
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success
    by_asset = {e.asset_key.to_user_string(): e for e in result.get_asset_materialization_events()}
    view = by_asset["minute_view"].materialization.metadata
    assert view["dagster/row_count"].value == 1440
    schema = view["dagster/column_schema"].schema
    assert len(schema.columns) == 58
    assert schema.columns[0].name == MINUTE_VIEW.columns[0].name
    assert ("timestamp", "timestamp[ms, tz=UTC]", False) in _schema_columns(schema)
    assert ("close", "double", True) in _schema_columns(schema)
    # Every table, not only the view: the stream tables say theirs.
    trade = by_asset[TRADE_FLOW.name].materialization.metadata
    # Minutes without a trade have no row here: the count is the committed file's.
    assert trade["dagster/row_count"].value == pq.read_metadata(str(trade["path"].value)).num_rows < 1440
    assert [c.name for c in trade["dagster/column_schema"].schema.columns] == TRADE_FLOW.column_names
    # The hot snapshots of a past day do not exist: normal, so INFO, and no warning at all about it.
    records = lake.instance.all_logs(result.run_id)
    about_snapshots = [r for r in records if r.user_message.startswith(f"{HOT_SNAPSHOTS.name} ")]
    assert about_snapshots and all(r.level == logging.INFO for r in about_snapshots), [
        (r.level, r.user_message) for r in about_snapshots
    ]


def _ranged_run(lake: Lake) -> tuple[Any, str, str]:
    """One run of the minute view over BTCUSDT and ETHUSDT of DAY (a partition range)."""
    job = lake.defs.resolve_job_def(MINUTE_VIEW_JOB)
    first, last = partition_key("BTCUSDT", DAY), partition_key("ETHUSDT", DAY)
    result = job.execute_in_process(
        instance=lake.instance, raise_on_error=False, tags={RANGE_START_TAG: first, RANGE_END_TAG: last}
    )
    assert result.success
    return result, first, last


def test_ranged_run_scopes_row_count_to_each_partition(lake: Lake) -> None:
    result, first, last = _ranged_run(lake)
    views = {
        str(e.partition): e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() == "minute_view"
    }
    assert set(views) == {first, last}
    for key, md in views.items():
        assert md["dagster/row_count"].value == 1440, key
        assert md["partitions"].value == 2 and md["rows"].value == 2880
        assert key.split("|")[1] in str(md["path"].value)
        assert len(md["dagster/column_schema"].schema.columns) == 58


def test_ranged_run_reports_each_check_against_its_partition(lake: Lake) -> None:
    result, first, last = _ranged_run(lake)
    names = sorted([r.name for r in ALL_RULES] + [LAKE_SCAN_CHECK])
    seen = sorted((e.check_name, e.partition) for e in result.get_asset_check_evaluations())
    assert seen == sorted((n, k) for n in names for k in (first, last))
    # What the UI's Checks tab reads: the instance's execution records, each with its partition.
    for name in ("hard_columns_not_null", LAKE_SCAN_CHECK):
        history = lake.instance.event_log_storage.get_asset_check_execution_history(
            AssetCheckKey(AssetKey("minute_view"), name), limit=10
        )
        assert sorted(h.partition for h in history if h.run_id == result.run_id) == [first, last], name


def test_each_stream_partition_records_what_it_downloaded(lake: Lake) -> None:
    """A stream step records per partition what it downloaded (``bytes received``, ``REST
    weight``): with Celery workers, the backfill adds these up from the run's events
    (``runner._traffic_of_steps``) because its own process downloads nothing. In process, the
    sum must equal what this process counted."""
    from bml_assets.defs.assets.streams import BYTES_KEY, WEIGHT_KEY
    from bml_assets.orchestration.runner import _traffic_of_steps
    from bml_assets.sources.http import traffic

    before = traffic()
    result = lake.materialize("BTCUSDT", DAY)
    spent = traffic() - before
    assert result.success and spent.bytes_received > 0
    streams = [
        e.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key.to_user_string() != "minute_view"
    ]
    assert streams and all(BYTES_KEY in m and WEIGHT_KEY in m for m in streams)
    assert _traffic_of_steps(result) == spent
