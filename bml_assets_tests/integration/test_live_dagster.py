"""The live collector's table in Dagster: the minute view takes its LIVE columns from
``live_1m``; ``live_collector_sensor`` reads the ledger's ``live_1m`` rows and reports each
new commit as a runless materialization of ``live_1m``, and the collector's state as an
observation when it changes.

The rows are committed with the collector's own sink; the sensor's clock is fixed by the test.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pyarrow.parquet as pq
from dagster import AssetKey, AssetMaterialization, AssetObservation, SensorResult, SkipReason, build_sensor_context

from bml_assets.definitions import build_definitions
from bml_assets.defs.resources import resources_for
from bml_assets.defs.sensors import build_live_collector_sensor
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import LIVE_1M, LIVE_EVENT_COUNT_COLUMNS
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live.sink import LiveSink

from .conftest import DAY
from .conftest import Lake as ConftestLake

MINUTE_MS = 60_000


def _row(minute: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(LIVE_1M.column_names)
    row.update({"timestamp": minute, "public_covered": False, "market_covered": True, "book_synced": False})
    for name in (
        "resyncs",
        "reconnects",
        "silent_streams",
        "late_events",
        "duplicate_events",
        *LIVE_EVENT_COUNT_COLUMNS,
    ):
        row[name] = 0
    row.update(values)
    return row


NOW_MS = 1_717_410_630_000  # 2024-06-03 10:30:30 UTC


def _evaluate(settings: Settings, cursor: str | None, now_ms: int = NOW_MS) -> tuple[object, str | None]:
    defs = build_definitions(settings)
    sensor = build_live_collector_sensor(settings.symbols, clock_ms=lambda: now_ms)
    with build_sensor_context(resources=resources_for(settings).by_key(), definitions=defs, cursor=cursor) as context:
        result = sensor(context)
        return result, context.cursor


def test_the_sensor_reports_each_commit_once_and_the_state_when_it_changes(tmp_path: Path) -> None:
    minute = NOW_MS - NOW_MS % MINUTE_MS - MINUTE_MS  # the last closed minute, 10:29
    day = dt.datetime.fromtimestamp(minute / 1000, dt.UTC).date()
    settings = Settings(
        symbols=("BTCUSDT", "ETHUSDT"),
        start_date=day - dt.timedelta(days=2),
        lake_root=tmp_path / "lake",
        state_url=f"sqlite:///{tmp_path / 'state.sqlite'}",
    )
    ledger = Ledger(settings.state_url)
    ledger.init()
    sink = LiveSink(Lake.at(settings.lake_root), ledger)
    sink.commit("BTCUSDT", [_row(minute - MINUTE_MS), _row(minute, predicted_funding=0.0001)])

    result, cursor = _evaluate(settings, None)
    assert isinstance(result, SensorResult)
    [materialized] = [e for e in result.asset_events if isinstance(e, AssetMaterialization)]
    assert materialized.asset_key == AssetKey("live_1m")
    assert materialized.partition == partition_key("BTCUSDT", day)
    assert materialized.metadata["minutes"].value == 2
    last = dt.datetime.fromtimestamp(minute / 1000, dt.UTC).isoformat()
    assert materialized.metadata["last_minute"].value == last
    start = dt.datetime.fromtimestamp((minute - MINUTE_MS) / 1000, dt.UTC).isoformat()
    end = dt.datetime.fromtimestamp((minute + MINUTE_MS) / 1000, dt.UTC).isoformat()
    assert materialized.metadata["covered_ranges"].value == {"public": [], "market": [[start, end]]}
    # ETHUSDT has no minute: the collector is not running for it, and the UI says so.
    [observed] = [e for e in result.asset_events if isinstance(e, AssetObservation)]
    assert observed.metadata["collector"].value == "not running"
    assert observed.metadata["stale_symbols"].value == ["ETHUSDT"]
    assert "ETHUSDT last minute never" in observed.metadata["state"].value

    # Nothing new: a skip that says the state, and nothing reported twice.
    again, cursor2 = _evaluate(settings, cursor)
    assert isinstance(again, SkipReason)
    assert "not running or not receiving: ETHUSDT last minute never" in str(again.skip_message)
    assert cursor2 == cursor

    # Both symbols commit: two materializations of the new content, and the state turns to running.
    sink.commit("BTCUSDT", [_row(minute + MINUTE_MS)])
    sink.commit("ETHUSDT", [_row(minute)])
    third, cursor3 = _evaluate(settings, cursor2)
    assert isinstance(third, SensorResult)
    keys = sorted(e.partition for e in third.asset_events if isinstance(e, AssetMaterialization))
    assert keys == sorted([partition_key("BTCUSDT", day), partition_key("ETHUSDT", day)])
    [observed] = [e for e in third.asset_events if isinstance(e, AssetObservation)]
    assert observed.metadata["collector"].value == "running" and observed.metadata["stale_symbols"].value == []
    assert json.loads(cursor3 or "{}")["state"].startswith("live collector running")

    # Four minutes later with nothing new: both are stale, and the state changes back.
    fourth, _ = _evaluate(settings, cursor3, now_ms=NOW_MS + 4 * MINUTE_MS)
    assert isinstance(fourth, SensorResult)
    [observed] = fourth.asset_events
    assert isinstance(observed, AssetObservation)
    assert observed.metadata["stale_symbols"].value == ["BTCUSDT", "ETHUSDT"]
    assert observed.metadata["state"].value == (
        "live collector not running or not receiving: "
        "BTCUSDT last minute 2024-06-03 10:30, ETHUSDT last minute 2024-06-03 10:29"
    )


def test_the_minute_view_takes_the_live_columns_from_live_1m(lake: ConftestLake) -> None:
    """A closed day built from Vision with a live_1m partition for two of its minutes: those
    minutes carry the collector's values, the metadata names its coverage, the rest stays as
    built without it."""
    day_ms = int(dt.datetime.combine(DAY, dt.time(), dt.UTC).timestamp() * 1000)
    m1, m2 = day_ms + 600 * MINUTE_MS, day_ms + 601 * MINUTE_MS  # 10:00 and 10:01
    ledger = lake.ledger
    LiveSink(lake.lake, ledger).commit(
        "BTCUSDT",
        [
            _row(
                m1,
                public_covered=True,
                book_synced=True,
                event_time=m1 + 59_990,
                arrival_time=m1 + 59_997,
                latency_engine=4,
                latency_network=7,
                update_id_start=5001,
                update_id_end=5321,
                micro_price_close=61234.5,
                avg_spread_usdt=0.1,
                bid_ask_imbalance=0.2,
                avg_bid_depth=3.5,
                avg_ask_depth=2.5,
                spread_pct=0.0000016,
                liq_long_vol_usdt=1500.0,
                liq_short_vol_usdt=0.0,
                liq_long_count=1,
                liq_short_count=0,
                liq_avg_fill_price=61200.0,
                liq_unfilled_ratio=0.0,
                price_impact_100k=0.00003,
                predicted_funding=0.0001,
            ),
            _row(m2, predicted_funding=0.00012, liq_long_vol_usdt=0.0, liq_long_count=0),
        ],
    )
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success
    view = pq.read_table(lake.minute_path("BTCUSDT", DAY)).to_pylist()
    by_minute = {int(r["timestamp"].timestamp() * 1000): r for r in view}
    first, second = by_minute[m1], by_minute[m2]
    assert (first["event_time"], first["arrival_time"], first["latency_engine"], first["latency_network"]) == (
        m1 + 59_990,
        m1 + 59_997,
        4,
        7,
    )
    assert (first["update_id_start"], first["update_id_end"], first["price_impact_100k"]) == (5001, 5321, 0.00003)
    assert (first["micro_price_close"], first["avg_spread_usdt"], first["avg_bid_depth"]) == (61234.5, 0.1, 3.5)
    assert (first["liq_long_vol_usdt"], first["liq_long_count"], first["predicted_funding"]) == (1500.0, 1, 0.0001)
    assert (second["predicted_funding"], second["liq_long_count"], second["event_time"]) == (0.00012, 0, None)
    # Every other minute: no live value (this day's Vision bookTicker still fills the book columns).
    others = [r for ms, r in by_minute.items() if ms not in (m1, m2)]
    assert all(r["event_time"] is None and r["predicted_funding"] is None for r in others)
    [materialization] = [m for m in result.get_asset_materialization_events() if m.asset_key == AssetKey("minute_view")]
    meta = materialization.materialization.metadata
    assert meta["live_coverage"].value == {
        "market": [["2024-03-01T10:00:00+00:00", "2024-03-01T10:02:00+00:00"]],
        "public": [["2024-03-01T10:00:00+00:00", "2024-03-01T10:01:00+00:00"]],
    }
    record = ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and record.provenance["live"]["status"] == "live"
