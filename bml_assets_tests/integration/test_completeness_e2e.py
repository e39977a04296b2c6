"""SPEC §8 end to end: every column a source can fill is filled, through the real definitions.

Vision holes on an old day are filled from REST (and the REST weight is held to the
minimum for the day's trades); a short but checksummed Vision file is downloaded once
more and completed from REST, so a truncated file never ends in "confirmed" source
gaps; a fillable stream REST cannot serve leaves the day committed but incomplete,
and a rebuild completes it. Expected numbers are written out.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from dagster import DagsterInstance, ExecuteInProcessResult

from bml_assets.definitions import MINUTE_VIEW_JOB
from bml_assets.defs.assets.streams import BAND_TAG
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import MINUTE_COLUMNS, ColumnClass
from bml_assets.domain.streams import Stream
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.render import csv_bytes, sha256_hex, zip_bytes
from bml_assets.replay.server import ReplayServer
from bml_assets.replay.vision_archive import vision_file

from .conftest import DAY, MARKET_TODAY, Lake, failure_text, make_lake

D = DAY.isoformat()  # 2024-03-01: older than 30 days by any clock these tests see
T0 = 1709251200000  # 2024-03-01 00:00 UTC
MIN = 60_000
VISION = "/data/futures/um/daily"
KLINES_ZIP = f"{VISION}/klines/BTCUSDT/1m/BTCUSDT-1m-{D}.zip"
MARK_ZIP = f"{VISION}/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{D}.zip"
PREMIUM_ZIP = f"{VISION}/premiumIndexKlines/BTCUSDT/1m/BTCUSDT-1m-{D}.zip"
AGG_ZIP = f"{VISION}/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{D}.zip"
METRICS_ZIP = f"{VISION}/metrics/BTCUSDT/BTCUSDT-metrics-{D}.zip"
BACKFILL = [c.name for c in MINUTE_COLUMNS if c.klass is ColumnClass.BACKFILL]
TRADE_COLUMNS = ["transact_time", "max_trade_size_btc", "count_buy_trades", "realized_vol_1m", "whale_trade_count"]


def minute_view_metadata(result: ExecuteInProcessResult) -> dict[str, object]:
    (event,) = result.asset_materializations_for_node("minute_view")
    return {k: getattr(v, "value", v) for k, v in event.metadata.items()}


def rest_weight_by_path(server: ReplayServer) -> dict[str, int]:
    weight: Counter[str] = Counter()
    for entry in server.rest_log:
        weight[entry.path] += entry.weight
    return dict(weight)


def zip_gets(server: ReplayServer, path: str) -> list[int]:
    return [status for method, p, status in server.request_log if method == "GET" and p == path]


def plant(real: Path, route: str, zip_data: bytes) -> None:
    """A file served at ``route`` by a replay server with ``real_dir=real`` (its CHECKSUM
    is computed by the server, so it verifies)."""
    target = real / route.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(zip_data)


def first_rows_zip(market: SyntheticMarket, stream: Stream, rows: int) -> bytes:
    """The market's own Vision file of BTCUSDT on DAY cut after its header and ``rows`` rows."""
    file = vision_file(market, stream, "BTCUSDT", DAY)
    assert file is not None and file.header
    lines = csv_bytes(file.columns(), header=True).splitlines(keepends=True)
    return zip_bytes(file.csv_name, b"".join(lines[: rows + 1]), modified=file.modified)


@pytest.fixture(scope="module")
def clean_market() -> SyntheticMarket:
    """Files in order without duplicates: the first N rows of a file are its first N trades/minutes."""
    return SyntheticMarket(MarketConfig(seed=11, trades_per_day=4000, today=MARKET_TODAY))


@pytest.fixture(scope="module")
def reference_day(clean_market: SyntheticMarket, tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The minute view of DAY built from the market's complete Vision files."""
    root = tmp_path_factory.mktemp("reference")
    with ReplayServer(market=clean_market) as server, DagsterInstance.ephemeral() as instance:
        lake = make_lake(root / "lake", server.base_url, instance)
        result = lake.materialize("BTCUSDT", DAY)
        assert result.success, failure_text(result)
        assert server.rest_log == []  # a complete Vision day needs no REST at all
        return lake.minute_path("BTCUSDT", DAY).read_bytes()


def test_a_truncated_checksummed_klines_file_is_completed_from_rest_not_called_source_gaps(
    clean_market: SyntheticMarket, reference_day: bytes, tmp_path: Path
) -> None:
    short = first_rows_zip(clean_market, Stream.KLINES, 100)  # the header and minutes 00:00-01:39
    plant(tmp_path / "real", KLINES_ZIP, short)
    with (
        ReplayServer(market=clean_market, real_dir=tmp_path / "real") as server,
        DagsterInstance.ephemeral() as instance,
    ):
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        result = lake.materialize("BTCUSDT", DAY)
        assert result.success, failure_text(result)
        gets = zip_gets(server, KLINES_ZIP)
        kline_requests = [
            (int(e.params["startTime"]), int(e.params["endTime"]), int(e.params["limit"]), e.weight)
            for e in server.rest_log
            if e.path == "/fapi/v1/klines"
        ]
    table = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    assert table.num_rows == 1440
    # The same bytes as the day built from the complete file: REST served the same market.
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == reference_day
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and record.status == "committed"
    assert (record.row_count, record.source_gaps, list(record.missing_streams)) == (1440, [], [])
    klines = record.provenance["klines"]
    assert klines["status"] == "vision" and klines["files"][0]["rows"] == 100
    assert klines["files"][0]["sha256"] == sha256_hex(short)
    repaired = klines["repaired"]
    assert (repaired["source"], repaired["minutes"], repaired["absent_from_rest"], repaired["rest_weight"]) == (
        "rest",
        1340,
        0,
        10,
    )
    assert repaired["reason"] == (
        f"the Vision file holds 100 of 1440 minutes; re-downloaded once, same sha256 {sha256_hex(short)}; "
        "1340 missing minutes asked from REST: 1340 filled, 0 absent there too"
    )
    assert gets == [200, 200]  # downloaded, then once more before REST was asked
    # Exactly the 1340 missing minutes, 01:40 to the end of the day, in one request of weight 10.
    assert kline_requests == [(T0 + 100 * MIN, T0 + 1440 * MIN - 1, 1340, 10)]
    stream_row = lake.ledger.get_partition("klines_1m", "BTCUSDT", DAY)
    assert stream_row is not None and stream_row.row_count == 1440
    assert stream_row.provenance["klines"]["repaired"]["minutes"] == 1340


def test_a_truncated_checksummed_agg_trades_file_is_completed_from_rest(
    clean_market: SyntheticMarket, reference_day: bytes, tmp_path: Path
) -> None:
    # 500 aggTrades (947 trades) of the day's 4000 (7720 trades): 00:00 to 03:49:39.678.
    short = first_rows_zip(clean_market, Stream.AGG_TRADES, 500)
    plant(tmp_path / "real", AGG_ZIP, short)
    with (
        ReplayServer(market=clean_market, real_dir=tmp_path / "real") as server,
        DagsterInstance.ephemeral() as instance,
    ):
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        result = lake.materialize("BTCUSDT", DAY)
        assert result.success, failure_text(result)
        gets = zip_gets(server, AGG_ZIP)
        requests = [(e.params, e.weight) for e in server.rest_log]
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == reference_day
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and list(record.missing_streams) == [] and record.source_gaps == []
    agg = record.provenance["aggTrades"]
    assert agg["status"] == "vision" and agg["files"][0]["rows"] == 500
    assert gets == [200, 200]
    repaired = agg["repaired"]
    assert repaired["reason"] == (
        "the Vision file holds 947 of the 7720 trades the day's klines count (1089 minutes short); "
        f"re-downloaded once, same sha256 {sha256_hex(short)}; "
        "REST asked for the trades of 03:51-23:59 UTC: 1089 minutes taken from REST, 0 short in every source"
    )
    assert (repaired["minutes"], repaired["short_in_every_source"], repaired["rest_weight"]) == (1089, 0, 100)
    # The first id by a window at 03:51 (03:50 had no trade), then 4 pages by id: 5 × 20.
    assert requests[0] == (
        {"symbol": "BTCUSDT", "startTime": str(T0 + 231 * MIN), "endTime": str(T0 + 291 * MIN - 1), "limit": "1000"},
        20,
    )
    assert [("fromId" in p, w) for p, w in requests[1:]] == [(True, 20)] * 4


# --- an old day with Vision holes ---------------------------------------------------------------

BUSY_TRADES = 40_000


@pytest.fixture(scope="module")
def busy_market() -> SyntheticMarket:
    return SyntheticMarket(
        MarketConfig(seed=11, trades_per_day=BUSY_TRADES, shuffle_and_duplicate=True, today=MARKET_TODAY)
    )


def test_an_old_day_missing_agg_trades_premium_and_mark_on_vision_is_built_from_rest_at_minimum_weight(
    busy_market: SyntheticMarket, tmp_path: Path
) -> None:
    assert busy_market.agg_trades("BTCUSDT", DAY).num_rows == 40_000
    with ReplayServer(market=busy_market) as server, DagsterInstance.ephemeral() as instance:
        base = server.base_url
        vision_built = make_lake(tmp_path / "vision", base, instance)
        assert vision_built.materialize("BTCUSDT", DAY).success
        for route in (AGG_ZIP, PREMIUM_ZIP, MARK_ZIP):
            server.faults.add(FaultRule("missing", route))
        server.clear_rest_log()
        holes = make_lake(tmp_path / "holes", server.base_url, instance)
        result = holes.materialize("BTCUSDT", DAY)
        assert result.success, failure_text(result)
        weight = rest_weight_by_path(server)
        agg_requests = [e.params for e in server.rest_log if e.path == "/fapi/v1/aggTrades"]
    expected = pq.read_table(vision_built.minute_path("BTCUSDT", DAY))
    got = pq.read_table(holes.minute_path("BTCUSDT", DAY))
    assert got.num_rows == 1440
    for name in BACKFILL:
        assert got.column(name).null_count == expected.column(name).null_count, name
        assert got.column(name).equals(expected.column(name)), name
    assert got.equals(expected)  # HARD and LIVE columns too
    record = holes.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and list(record.missing_streams) == [] and record.source_gaps == []
    for stream, route in (("aggTrades", AGG_ZIP), ("premiumIndexKlines", PREMIUM_ZIP), ("markPriceKlines", MARK_ZIP)):
        p = record.provenance[stream]
        assert p["status"] == "rest" and p["vision_http_status"] == 404, stream
        assert p["vision_url"] == base + route
        assert p["reason"] == f"Vision has no file (HTTP 404 at {base + route}): built from REST"
    assert record.provenance["klines"]["status"] == "vision"
    # The weight, from the server's own log: 41 aggTrades requests (the first id by a
    # time window, then 40 pages by fromId, the last one seeing the next day begin) and
    # one 1440-minute request per kline stream (weight 10 each).
    assert weight == {"/fapi/v1/aggTrades": 820, "/fapi/v1/markPriceKlines": 10, "/fapi/v1/premiumIndexKlines": 10}
    assert sum("startTime" in p for p in agg_requests) == 1 and int(agg_requests[0]["startTime"]) == T0
    # The least any client could spend: 40 pages of 1000 trades × 20, and 1440 minutes
    # of each kline stream as 3 requests of ≤ 499 minutes × weight 2.
    minimum = 40 * 20 + 2 * (3 * 2)
    assert minimum == 812
    assert sum(weight.values()) == 840 <= 1.1 * minimum
    # Reported: per stream in the provenance, and in total in the materialization metadata.
    assert [record.provenance[s]["rest_weight"] for s in ("aggTrades", "markPriceKlines", "premiumIndexKlines")] == [
        820,
        10,
        10,
    ]
    metadata = minute_view_metadata(result)
    assert metadata["rest_weight"] == 840 and metadata["incomplete"] is False
    assert metadata["sources"]["aggTrades"] == "rest"


# --- a fillable stream REST cannot serve now -------------------------------------------------------


def test_agg_trades_missing_from_vision_and_failing_on_rest_leave_the_day_incomplete_until_rebuilt(
    lake: Lake, replay: ReplayServer
) -> None:
    replay.faults.add(FaultRule("missing", AGG_ZIP))
    replay.faults.add(FaultRule("error_500", "/fapi/v1/aggTrades"))
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success, failure_text(result)  # committed without it, not a failed run
    table = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    assert table.num_rows == 1440
    for name in TRADE_COLUMNS:
        assert table.column(name).null_count == 1440, name  # NULL, never a made-up 0
    assert table.column("close").null_count == 0 and table.column("premium_index").null_count == 0
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and record.incomplete and record.incomplete_builds == 1
    ((missing,),) = [tuple(record.missing_streams)]
    assert missing["stream"] == "aggTrades"
    reason = missing["reason"]
    assert reason.startswith(f"Vision has no file (HTTP 404 at {replay.base_url}{AGG_ZIP}); REST failed: HTTP 500 for ")
    assert f"{replay.base_url}/fapi/v1/aggTrades?symbol=BTCUSDT&startTime=" in reason
    assert "exchange code -1000" in reason
    assert record.provenance["aggTrades"]["status"] == "missing"
    stream_row = lake.ledger.get_partition("trade_flow_1m", "BTCUSDT", DAY)
    assert stream_row is not None and stream_row.status == "not_published"
    assert stream_row.message == f"trade_flow_1m BTCUSDT {D}: {reason}"
    metadata = minute_view_metadata(result)
    assert metadata["incomplete"] is True
    assert metadata["missing_streams"] == [{"stream": "aggTrades", "reason": reason}]
    assert metadata["sources"]["aggTrades"] == f"missing; incomplete: {reason}"

    # The exchange answers again (Vision still has no file): the rebuild completes the day.
    replay.faults.clear()
    replay.faults.add(FaultRule("missing", AGG_ZIP))
    again = lake.materialize("BTCUSDT", DAY)
    assert again.success, failure_text(again)
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and not record.incomplete
    assert (list(record.missing_streams), record.incomplete_builds) == ([], 0)
    assert record.provenance["aggTrades"]["status"] == "rest"
    assert minute_view_metadata(again)["incomplete"] is False
    table = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    assert table.column("count_buy_trades").null_count == 0
    # The market's 4000 aggTrades of the day cover 7720 individual trades.
    assert column_sum(table, "count_buy_trades") + column_sum(table, "count_sell_trades") == 7720
    assert column_sum(table, "trade_count") == 7720


def column_sum(table: pa.Table, name: str) -> int:
    return int(pc.sum(table.column(name)).as_py())


def test_an_old_metrics_file_missing_on_vision_is_known_missing_not_incomplete(
    lake: Lake, replay: ReplayServer
) -> None:
    replay.faults.add(FaultRule("missing", METRICS_ZIP))
    replay.clear_rest_log()
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success, failure_text(result)
    assert [e.path for e in replay.rest_log] == []  # REST keeps 30 days of metrics: not even asked
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and list(record.missing_streams) == [] and not record.incomplete
    metrics = record.provenance["metrics"]
    assert (metrics["status"], metrics["fillable"], metrics["vision_http_status"]) == ("not_published", False, 404)
    assert "REST keeps 5-minute metrics for 30 days only" in metrics["reason"]


def test_a_short_premium_file_rest_cannot_complete_is_committed_incomplete(
    clean_market: SyntheticMarket, tmp_path: Path
) -> None:
    plant(tmp_path / "real", PREMIUM_ZIP, first_rows_zip(clean_market, Stream.PREMIUM_INDEX_KLINES, 100))
    with (
        ReplayServer(market=clean_market, real_dir=tmp_path / "real") as server,
        DagsterInstance.ephemeral() as instance,
    ):
        server.faults.add(FaultRule("error_500", "/fapi/v1/premiumIndexKlines"))
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        result = lake.materialize("BTCUSDT", DAY)
        base = server.base_url
    assert result.success, failure_text(result)
    table = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    assert table.num_rows == 1440  # HARD streams complete: every minute is a row
    premium = table.column("premium_index")
    assert (premium.slice(0, 100).null_count, premium.slice(100).null_count) == (0, 1340)
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and record.incomplete and record.source_gaps == []
    ((missing,),) = [tuple(record.missing_streams)]
    assert missing["stream"] == "premiumIndexKlines"
    assert missing["reason"].startswith("the Vision file holds 100 of 1440 minutes; re-downloaded once, same sha256 ")
    assert (
        "; REST failed for the 1340 missing minutes: HTTP 500 for "
        f"{base}/fapi/v1/premiumIndexKlines?symbol=BTCUSDT&interval=1m&startTime={T0 + 100 * MIN}"
    ) in missing["reason"]
    assert record.provenance["premiumIndexKlines"]["status"] == "vision"


def test_a_short_klines_file_rest_cannot_complete_fails_the_run_and_keeps_the_lake(
    clean_market: SyntheticMarket, reference_day: bytes, tmp_path: Path
) -> None:
    with ReplayServer(market=clean_market) as server, DagsterInstance.ephemeral() as instance:
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        assert lake.materialize("BTCUSDT", DAY).success
    before = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == reference_day
    plant(tmp_path / "real", KLINES_ZIP, first_rows_zip(clean_market, Stream.KLINES, 100))
    with (
        ReplayServer(market=clean_market, real_dir=tmp_path / "real") as server,
        DagsterInstance.ephemeral() as instance,
    ):
        server.faults.add(FaultRule("error_500", "/fapi/v1/klines"))
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        result = lake.materialize("BTCUSDT", DAY)
        base = server.base_url
    assert not result.success
    text = failure_text(result)
    assert f"klines_1m BTCUSDT {D}: the Vision file holds 100 of 1440 minutes; re-downloaded once" in text
    assert f"REST failed for the 1340 missing minutes: HTTP 500 for {base}/fapi/v1/klines?symbol=BTCUSDT" in text
    assert "Nothing was published." in text
    # The day built before stays, file and ledger row: never 1340 minutes called source gaps.
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == reference_day
    assert lake.ledger.get_partition("minute", "BTCUSDT", DAY) == before


def test_metrics_missing_on_vision_within_rests_30_days_are_filled_from_rest(
    clean_market: SyntheticMarket, tmp_path: Path
) -> None:
    """20 days old by the exchange's clock (a sensor-started run follows it): REST keeps
    the 5-minute history that long, and serves the very snapshots Vision would have."""
    now = dt.datetime.combine(DAY + dt.timedelta(days=20), dt.time(12), dt.UTC)
    tags = {BAND_TAG: "catch-up"}
    with (
        ReplayServer(market=clean_market, clock=MarketClock.fixed(now)) as server,
        DagsterInstance.ephemeral() as instance,
    ):
        vision_built = make_lake(tmp_path / "vision", server.base_url, instance)
        assert run(vision_built, tags).success
        server.faults.add(FaultRule("missing", METRICS_ZIP))
        server.clear_rest_log()
        lake = make_lake(tmp_path / "lake", server.base_url, instance)
        result = run(lake, tags)
        assert result.success, failure_text(result)
        paths = Counter(e.path for e in server.rest_log)
    expected = pq.read_table(vision_built.minute_path("BTCUSDT", DAY))
    got = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    for name in ("oi_contracts", "oi_value_usdt", "top_trader_ls_ratio_acct", "global_ls_ratio_acct"):
        assert got.column(name).null_count == 0, name
        assert got.column(name).equals(expected.column(name)), name
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and list(record.missing_streams) == []
    assert record.provenance["metrics"]["status"] == "rest"
    # One page of each 5-minute history (288 snapshots of the day and 12 of the hour
    # before, ≤ 500), the exchange's time for the 30-day check and for the run's clock;
    # and March's funding, whose monthly file is not out on the 21st (the warm band).
    assert paths == {
        "/futures/data/openInterestHist": 1,
        "/futures/data/topLongShortAccountRatio": 1,
        "/futures/data/globalLongShortAccountRatio": 1,
        "/fapi/v1/time": 2,
        "/fapi/v1/fundingRate": 1,
    }


def run(lake: Lake, tags: dict[str, str]) -> ExecuteInProcessResult:
    job = lake.defs.resolve_job_def(MINUTE_VIEW_JOB)
    return job.execute_in_process(
        partition_key=partition_key("BTCUSDT", DAY), instance=lake.instance, raise_on_error=False, tags=tags
    )
