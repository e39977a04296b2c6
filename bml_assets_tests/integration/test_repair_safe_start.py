"""Against the real exchange without an explicit BML_START_DATE, the repair sensor does not walk
from 2020-01-01: it starts at the earliest committed day, or requests nothing and says why."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context

from bml_assets.definitions import build_definitions
from bml_assets.defs.repair import build_repair_sensor
from bml_assets.defs.resources import resources_for
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger, PartitionRecord

DEFAULT_START = dt.date(2020, 1, 1)
FIRST = dt.date(2024, 5, 10)
TODAY = dt.date(2024, 5, 13)


def tick(settings: Settings, *, cautious: bool) -> list[object]:
    sensor = build_repair_sensor(
        ("BTCUSDT",), DEFAULT_START, job_name="minute_view_job", today=lambda _rest: TODAY, cautious=cautious
    )
    with DagsterInstance.ephemeral() as instance:
        with build_sensor_context(instance=instance, resources=resources_for(settings).by_key()) as context:
            return list(sensor(context))


def test_cautious_start_waits_for_a_commit_then_walks_from_the_earliest(tmp_path: Path) -> None:
    settings = Settings(lake_root=tmp_path / "lake")
    ledger = Ledger(settings.state_url)
    ledger.init()
    (skip,) = tick(settings, cautious=True)
    assert isinstance(skip, SkipReason) and "BML_START_DATE" in str(skip.skip_message)

    ledger.commit_partition(
        PartitionRecord(
            dataset="minute",
            symbol="BTCUSDT",
            day=FIRST,
            status="committed",
            committed_at=dt.datetime(2024, 5, 11, tzinfo=dt.UTC),
            path=f"futures/um/minute/symbol=BTCUSDT/date={FIRST}/part.parquet",
            row_count=1440,
            content_hash="0" * 64,
        ),
        expected_content_hash=None,
    )
    requested = [r for r in tick(settings, cautious=True) if isinstance(r, RunRequest)]
    days = sorted({r.partition_key.split("|")[0] for r in requested})
    # Its file is missing (rebuilt), and the two days after it are not built yet.
    assert days == ["2024-05-10", "2024-05-11", "2024-05-12"]
    # Not cautious: the walk starts at the configured start, years back.
    walked = [r for r in tick(settings, cautious=False) if isinstance(r, RunRequest)]
    assert min(r.partition_key for r in walked).startswith("2020-01-01")


def test_the_sensor_description_says_where_it_starts() -> None:
    def description(settings: Settings) -> str:
        return build_definitions(settings).resolve_sensor_def("repair_sensor").description or ""

    assert "earliest day already committed" in description(Settings())
    assert "BML_START_DATE" in description(Settings())
    chosen = description(Settings(start_date=dt.date(2024, 1, 1)))
    assert "from 2024-01-01 to yesterday" in chosen and "earliest" not in chosen
    replay = description(Settings(vision_base_url="http://127.0.0.1:8765"))
    assert "from 2020-01-01 to yesterday" in replay
