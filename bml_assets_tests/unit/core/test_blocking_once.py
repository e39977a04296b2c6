"""The blocking rules run once per table: the minute view's asset judges its table and hands
the verdict to the IO manager, whose commit does not judge that very table again. Any table
without a verdict about it is judged by the commit, so a bad value is never published."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from dagster import AssetKey, build_output_context

from bml_assets import quality
from bml_assets.days.partition_data import PartitionData
from bml_assets.definitions import build_definitions
from bml_assets.defs.io_manager import DATASET_METADATA_KEY, LakeIOManager
from bml_assets.defs.partitions import build_partitions_def
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger
from bml_assets.quality import BlockingCheckFailed, BlockingVerdict, Evidence, judge_blocking, to_frame
from bml_assets_tests.unit.lake._helpers import minute_table

DAY = dt.date(2024, 3, 1)
KEY = partition_key("BTCUSDT", DAY)
PROVENANCE = {"klines": {"status": "vision"}}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(symbols=("BTCUSDT",), start_date=dt.date(2024, 1, 1), lake_root=tmp_path / "lake")


def commit(settings: Settings, data: PartitionData) -> None:
    """The minute view's output through the IO manager of the real definitions."""
    io_manager = build_definitions(settings).resources["lake_io_manager"]
    assert isinstance(io_manager, LakeIOManager)
    context = build_output_context(
        asset_key=AssetKey("minute_view"),
        partition_key=KEY,
        definition_metadata={DATASET_METADATA_KEY: MINUTE_VIEW.name},
        asset_partitions_def=build_partitions_def(settings),
    )
    io_manager.handle_output(context, {KEY: data})


def bad_table() -> pa.Table:
    """A minute view whose close is infinite at 00:05."""
    table = minute_table(DAY)
    i = table.schema.get_field_index("close")
    close = table.column("close").to_pylist()
    close[5] = math.inf
    return table.set_column(i, "close", pa.array(close, pa.float64()))


def judged(table: pa.Table) -> BlockingVerdict:
    return judge_blocking(table, Evidence(day=DAY, frame=to_frame(table), closed_day=True))


def assert_nothing_published(settings: Settings) -> None:
    assert Ledger(settings.state_url).get_partition(MINUTE_VIEW, "BTCUSDT", DAY) is None
    assert list(settings.lake_root.rglob("*.parquet")) == []


def test_a_table_the_asset_did_not_judge_is_judged_by_the_io_manager(settings: Settings) -> None:
    with pytest.raises(BlockingCheckFailed, match=r"close = inf at minute 2024-03-01T00:05:00\+00:00"):
        commit(settings, PartitionData(bad_table(), PROVENANCE))
    assert_nothing_published(settings)


def test_a_verdict_about_another_table_lets_no_bad_value_through(settings: Settings) -> None:
    good = minute_table(DAY)
    verdict = judged(good)
    assert verdict.passed
    swapped = replace(PartitionData(good, PROVENANCE, blocking=verdict), table=bad_table())
    with pytest.raises(BlockingCheckFailed, match="close = inf"):
        commit(settings, swapped)
    assert_nothing_published(settings)
    # Nor an equal copy of the judged table, nor the judged table as another day.
    copy = pa.Table.from_batches(good.to_batches())
    assert copy.equals(good) and not verdict.covers(copy, DAY, MINUTE_VIEW)
    assert not verdict.covers(good, DAY + dt.timedelta(days=1), MINUTE_VIEW)


def test_a_judged_table_is_not_judged_again_by_the_commit(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    good = minute_table(DAY)
    verdict = judged(good)
    runs: list[int] = []
    original = quality.judge_blocking

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        runs.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(quality, "judge_blocking", counted)
    commit(settings, PartitionData(good, PROVENANCE, blocking=verdict))
    assert runs == []
    row = Ledger(settings.state_url).get_partition(MINUTE_VIEW, "BTCUSDT", DAY)
    assert row is not None and row.status == "committed" and row.row_count == 1440
    # Without a verdict the commit judges the table itself, once.
    commit(settings, PartitionData(good, PROVENANCE))
    assert runs == [1]


def test_a_failed_verdict_is_refused_by_the_commit_too(settings: Settings) -> None:
    bad = bad_table()
    verdict = judged(bad)
    assert [o.rule.name for o in verdict.failed] == ["prices_positive_finite", "ohlc_consistent"]
    with pytest.raises(BlockingCheckFailed, match="close = inf"):
        commit(settings, PartitionData(bad, PROVENANCE, blocking=verdict))
    assert_nothing_published(settings)
