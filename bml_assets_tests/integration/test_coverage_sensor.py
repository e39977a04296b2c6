"""``coverage_sensor`` (defs/coverage.py): from the ledger it draws the minute view's coverage
heatmap under the lake root and shows it on ``minute_view`` as an observation, once per change
of the picture; without matplotlib it says how to install it and still reports the counts."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import pytest
from dagster import AssetKey, AssetObservation, SensorResult, SkipReason, build_sensor_context

from bml_assets.definitions import build_definitions
from bml_assets.defs.coverage import build_coverage_sensor, heatmap_path
from bml_assets.defs.resources import resources_for
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger, PartitionRecord

TODAY = dt.date(2024, 3, 6)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        symbols=("BTCUSDT", "ETHUSDT"),
        start_date=dt.date(2024, 3, 1),
        lake_root=tmp_path / "lake",
        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}",
    )


def _commit(settings: Settings, symbol: str, day: dt.date) -> None:
    with Ledger(settings.state_url) as ledger:
        ledger.init()
        ledger.commit_partition(
            PartitionRecord(
                dataset="minute",
                symbol=symbol,
                day=day,
                status="committed",
                committed_at=dt.datetime(2024, 3, 6, tzinfo=dt.UTC),
                path=f"futures/um/minute/symbol={symbol}/date={day.isoformat()}/part.parquet",
                row_count=1440,
                content_hash=f"{day.day:064x}",
                provenance={"klines": {"status": "vision"}},
            ),
            expected_content_hash=None,
        )


def _evaluate(settings: Settings, cursor: str | None) -> tuple[object, str | None]:
    sensor = build_coverage_sensor(settings.symbols, today=lambda: TODAY)
    with build_sensor_context(
        resources=resources_for(settings).by_key(), definitions=build_definitions(settings), cursor=cursor
    ) as context:
        return sensor(context), context.cursor


def test_the_heatmap_is_drawn_and_shown_on_minute_view_when_the_coverage_changes(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    for n in (2, 3, 4):
        _commit(settings, "BTCUSDT", dt.date(2024, 3, n))
    result, cursor = _evaluate(settings, None)
    assert isinstance(result, SensorResult)
    [observed] = result.asset_events
    assert isinstance(observed, AssetObservation) and observed.asset_key == AssetKey("minute_view")
    png = heatmap_path(settings.lake_root)
    assert png == settings.lake_root / "_reports" / "coverage.png"
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert observed.metadata["coverage_png"].value == str(png)
    assert observed.metadata["coverage"].value.startswith("![coverage heatmap](data:image/png;base64,iVBORw0KGgo")
    # Window 2024-03-02..2024-03-06, 2 symbols: BTC 3 committed, 2 missing; ETH 5 missing.
    assert observed.metadata["coverage_window"].value == "2024-03-02..2024-03-06"
    assert observed.metadata["coverage/committed"].value == 3
    assert observed.metadata["coverage/missing"].value == 7
    assert not list(png.parent.glob(".coverage.*"))  # no temporary file left

    again, same = _evaluate(settings, cursor)
    assert isinstance(again, SkipReason) and same == cursor

    _commit(settings, "ETHUSDT", dt.date(2024, 3, 5))
    third, _ = _evaluate(settings, cursor)
    assert isinstance(third, SensorResult)
    assert third.asset_events[0].metadata["coverage/committed"].value == 4


def test_without_matplotlib_the_counts_are_reported_and_the_note_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings(tmp_path)
    _commit(settings, "BTCUSDT", dt.date(2024, 3, 5))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib raises ImportError
    result, _ = _evaluate(settings, None)
    assert isinstance(result, SensorResult)
    metadata = result.asset_events[0].metadata
    assert "pip install 'bml-assets[plot]'" in metadata["coverage_note"].value
    assert metadata["coverage/committed"].value == 1 and metadata["coverage/missing"].value == 3
    assert not heatmap_path(settings.lake_root).exists()
