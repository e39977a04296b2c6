"""A zip bomb served from a folder by the replay server, through the real definitions:
refused with an error naming the file, the sizes and ``BML_VISION_MAX_CSV_BYTES``, and
the partition already in the lake keeps its file and its ledger rows."""

from __future__ import annotations

import zipfile
from pathlib import Path

from dagster import DagsterInstance

from bml_assets.replay.server import ReplayServer

from .conftest import DAY, failure_text, make_lake
from .test_bad_input_e2e import AGG_PATH, assert_untouched, built  # noqa: F401 (built: a fixture)

LIMIT = 4 << 20  # a small limit keeps the bomb small and the test fast
ROW = b"1,60000.5,0.125,1,1,1709251200000,true\n"  # 39 bytes, repeated: deflates ~1000:1
BOMB_ROWS = 26_000 * 40  # 40,560,000 bytes of CSV


def _bomb(path: Path) -> None:
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(f"BTCUSDT-aggTrades-{DAY.isoformat()}.csv", "w") as out:
            for _ in range(BOMB_ROWS // 26_000):
                out.write(ROW * 26_000)


def test_a_zip_bomb_is_refused_and_the_lake_keeps_the_committed_day(built, market, tmp_path: Path) -> None:  # noqa: F811
    lake, before, record = built
    flow_path = lake.root / "futures/um/trade_flow_1m/symbol=BTCUSDT" / f"date={DAY.isoformat()}" / "part.parquet"
    flow_bytes = flow_path.read_bytes()
    flow_record = lake.ledger.get_partition("trade_flow_1m", "BTCUSDT", DAY)
    assert flow_record is not None and flow_record.status == "committed"
    zip_path = tmp_path / "real" / "data/futures/um/daily" / AGG_PATH
    _bomb(zip_path)
    assert zip_path.stat().st_size < 200_000
    with ReplayServer(market=market, real_dir=tmp_path / "real") as bad, DagsterInstance.ephemeral() as instance:
        url = f"{bad.base_url}/data/futures/um/daily/{AGG_PATH}"
        bad_lake = make_lake(lake.root, bad.base_url, instance, vision_max_csv_bytes=LIMIT)
        result = bad_lake.materialize("BTCUSDT", DAY)
    assert not result.success
    text = failure_text(result)
    expected = (
        f"{url}: its CSV BTCUSDT-aggTrades-{DAY.isoformat()}.csv declares 40,560,000 bytes, "
        "over the limit of 4,194,304 bytes (4 MiB) of CSV a Vision file may unpack to: refused without unpacking it"
    )
    assert expected in text, text
    assert "If the file is genuine, raise BML_VISION_MAX_CSV_BYTES." in text
    assert_untouched(lake, before, record)
    assert flow_path.read_bytes() == flow_bytes
    assert lake.ledger.get_partition("trade_flow_1m", "BTCUSDT", DAY) == flow_record
    # The refused file was verified and cached, but never recorded as a source of the lake.
    assert lake.ledger.get_source_file(url) is None
