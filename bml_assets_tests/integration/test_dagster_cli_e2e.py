"""The documented shell path: `dagster asset materialize` with BML_* pointing at a Vision-like server.

One test uses the synthetic market only (it always runs); one mixes in the real
klines file of ../shared (2023-04-15), so a real file goes through the whole
product, and skips without ../shared; one builds an old day whose Vision aggTrades,
premium and mark klines are missing (SPEC §8: filled from REST). REST points at the
same server: nothing reaches the internet.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from dagster import DagsterInstance

from bml_assets.domain.schema import MINUTE_COLUMNS, ColumnClass
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .conftest import failure_text, make_lake

REAL_DAY = "2023-04-15"


def _market() -> SyntheticMarket:
    return SyntheticMarket(MarketConfig(seed=3, trades_per_day=2000, today=dt.date(2026, 11, 1)))


def _materialize(tmp_path: Path, server: ReplayServer, day: str) -> subprocess.CompletedProcess[str]:
    """`dagster asset materialize` as the README documents it, configured only through BML_*."""
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "DAGSTER_HOME": str(dagster_home),
        "BML_LAKE_ROOT": str(tmp_path / "lake"),
        "BML_VISION_BASE_URL": server.base_url,
        "BML_REST_BASE_URL": server.base_url,
        "BML_SYMBOLS": "BTCUSDT",
        "BML_START_DATE": "2023-04-01",
    }
    dagster = str(Path(sys.executable).parent / "dagster")
    return subprocess.run(
        [
            dagster,
            "asset",
            "materialize",
            "-m",
            "bml_assets.definitions",
            "--select",
            "+minute_view",
            "--partition",
            f"{day}|BTCUSDT",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_dagster_asset_materialize_from_the_replay_market(tmp_path: Path) -> None:
    with ReplayServer(market=_market()) as server:
        done = _materialize(tmp_path, server, "2024-03-01")
    assert done.returncode == 0, done.stderr[-3000:]
    table = pq.read_table(tmp_path / "lake/futures/um/minute/symbol=BTCUSDT/date=2024-03-01/part.parquet")
    assert (table.num_rows, table.num_columns) == (1440, 58)


def test_dagster_asset_materialize_writes_the_partition_from_real_klines(tmp_path: Path, real_fixtures: Path) -> None:
    with ReplayServer(market=_market(), real_dir=real_fixtures) as server:
        done = _materialize(tmp_path, server, REAL_DAY)
    assert done.returncode == 0, done.stderr[-3000:]
    lake_root = tmp_path / "lake"
    path = lake_root / "futures/um/minute/symbol=BTCUSDT" / f"date={REAL_DAY}" / "part.parquet"
    table = pq.read_table(path)
    assert (table.num_rows, table.num_columns) == (1440, 58)
    first, last = table.slice(0, 1).to_pylist()[0], table.slice(1439, 1).to_pylist()[0]
    # The real file's first and last rows, as written in it.
    assert (first["open"], first["high"], first["low"], first["close"]) == (30453.00, 30455.00, 30446.40, 30452.40)
    assert (first["volume_btc"], first["volume_usdt"], first["trade_count"]) == (174.120, 5301913.57520, 1884)
    assert first["taker_buy_vol_btc"] == 83.714
    assert first["vwap_1m"] == 5301913.57520 / 174.120
    assert (last["open"], last["close"], last["trade_count"]) == (30284.80, 30280.40, 588)
    record = Ledger(f"sqlite:///{lake_root}/_state/ledger.sqlite").get_partition(
        "minute", "BTCUSDT", dt.date(2023, 4, 15)
    )
    assert record is not None and record.status == "committed"
    assert record.provenance["klines"]["files"][0]["url"].endswith(
        f"/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{REAL_DAY}.zip"
    )


def test_dagster_asset_materialize_fills_an_old_days_vision_holes_from_rest(tmp_path: Path) -> None:
    """Vision lacks the day's aggTrades, premium and mark klines: every BACKFILL column
    equals the same day built from Vision, and the REST weight is reported."""
    day = dt.date(2024, 3, 1)
    backfill = [c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.BACKFILL]
    holes = [
        f"/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{day}.zip",
        f"/data/futures/um/daily/premiumIndexKlines/BTCUSDT/1m/BTCUSDT-1m-{day}.zip",
        f"/data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{day}.zip",
    ]
    with ReplayServer(market=_market()) as server, DagsterInstance.ephemeral() as instance:
        reference = make_lake(tmp_path / "vision", server.base_url, instance)
        built = reference.materialize("BTCUSDT", day)
        assert built.success, failure_text(built)
        for route in holes:
            server.faults.add(FaultRule("missing", route))
        server.clear_rest_log()
        done = _materialize(tmp_path, server, day.isoformat())
        weight = sum(e.weight for e in server.rest_log)
    assert done.returncode == 0, done.stderr[-3000:]
    expected = pq.read_table(reference.minute_path("BTCUSDT", day))
    got = pq.read_table(tmp_path / f"lake/futures/um/minute/symbol=BTCUSDT/date={day}/part.parquet")
    assert got.num_rows == 1440
    for name in backfill:
        assert got.column(name).equals(expected.column(name)), name
    record = Ledger(f"sqlite:///{tmp_path}/lake/_state/ledger.sqlite").get_partition("minute", "BTCUSDT", day)
    assert record is not None and list(record.missing_streams) == []
    assert [record.provenance[s]["status"] for s in ("aggTrades", "premiumIndexKlines", "markPriceKlines")] == [
        "rest"
    ] * 3
    # 2000 aggTrades: the first id by a time window, then 2 pages by id (the last one
    # seeing the next day begin): 3 × 20; one 1440-minute request per kline stream: 2 × 10.
    assert weight == 3 * 20 + 2 * 10 == 80
    assert (
        sum(record.provenance[s]["rest_weight"] for s in ("aggTrades", "premiumIndexKlines", "markPriceKlines")) == 80
    )
    assert "minute view BTCUSDT 2024-03-01: 1440 rows, 0 source-gap minutes, REST weight 80" in done.stderr
