"""The raw spool (write/read round trip, a killed writer's truncated gzip, processes in order), the
sink's idempotent commits, and the rebuild of live_1m from the spool (library and CLI)."""

from __future__ import annotations

import datetime as dt
import gzip
import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from click.testing import CliRunner

from bml_assets.cli import main
from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live.core import LiveCore
from bml_assets.live.rebuild import rebuild_day, recording_lines
from bml_assets.live.sink import LiveSink
from bml_assets.live.spool import (
    UNROUTED,
    SpoolError,
    SpoolWriter,
    read_segment,
    segment_key,
    segments,
    spool_lines,
    spool_store,
)
from bml_assets.quality import BlockingCheckFailed
from bml_assets.storage.store import LocalStore

H = 3_600 * 10**9
T0 = 1_723_161_255_030_314_667  # 2024-08-08 23:54:15.03 UTC, the recording's first line
DAY = dt.date(2024, 8, 8)


def test_spool_lines_round_trip_across_hours_and_processes(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    first = SpoolWriter(store, started_ns=T0, pid=41)
    first.write("BTCUSDT", T0, '{"stream":"a"}')
    first.write("BTCUSDT", T0 + 1, '{"x":\n1}')  # a raw newline is JSON whitespace: a space
    first.write("BTCUSDT", T0 + H, '{"stream":"next hour"}')  # 00:54 on 2024-08-09: a new segment
    first.write(UNROUTED, T0 + 2, "not json")
    first.close()
    second = SpoolWriter(store, started_ns=T0 + H + 10, pid=7)
    second.write("BTCUSDT", T0 + H + 20, '{"stream":"restarted"}')
    second.close()
    found = segments(store, "BTCUSDT", [DAY, DAY + dt.timedelta(days=1)])
    assert [s.key.rsplit("/", 1)[1] for s in found] == [
        "20240808T23Z_20240808T235415030314_0000000041.gz",
        "20240809T00Z_20240808T235415030314_0000000041.gz",
        "20240809T00Z_20240809T005415030314_0000000007.gz",
    ]
    assert found[0].key.startswith("_spool/live/BTCUSDT/2024-08-08/")
    lines = list(spool_lines(store, "BTCUSDT", T0 - H, T0 + 2 * H))
    assert [(line.local_ns, line.text) for line in lines] == [
        (T0, '{"stream":"a"}'),
        (T0 + 1, '{"x": 1}'),
        (T0 + H, '{"stream":"next hour"}'),
        (T0 + H + 20, '{"stream":"restarted"}'),
    ]
    assert [line.process[1] for line in lines] == [41, 41, 41, 7]
    assert [t for _, t in read_segment(store, segments(store, UNROUTED, [DAY])[0])] == ["not json"]
    # the gzip is standard: any reader sees the recording format
    with gzip.open(store.location(found[0].key), "rt") as f:
        assert f.read() == f'{T0} {{"stream":"a"}}\n{T0 + 1} {{"x": 1}}\n'


def test_a_killed_writers_truncated_last_member_keeps_its_complete_lines(tmp_path: Path) -> None:
    store = LocalStore(tmp_path)
    writer = SpoolWriter(store, started_ns=T0, pid=1)
    for i in range(3):
        writer.write("BTCUSDT", T0 + i, f'{{"n":{i}}}')
    writer.flush()  # member 1 complete on disk
    for i in range(3, 2000):
        writer.write("BTCUSDT", T0 + i, f'{{"n":{i},"pad":"{"x" * 40}"}}')
    writer.flush()
    path = Path(writer.files[0])
    whole = path.stat().st_size
    member_two = whole  # cut inside the second member, as a kill -9 mid-write leaves it
    with open(path, "r+b") as f:
        f.truncate(member_two - 700)
    [segment] = segments(store, "BTCUSDT", [DAY])
    from bml_assets.live.spool import SegmentRead

    report = SegmentRead(segment.key)
    got = [json.loads(t)["n"] for _, t in read_segment(store, segment, report)]
    assert got[:3] == [0, 1, 2] and got == list(range(len(got)))  # in order, no partial line
    assert 3 < len(got) < 2000
    assert report.truncated == "the last gzip member is truncated (a killed writer)"
    # never reopened: the same process start cannot write that file again
    again = SpoolWriter(store, started_ns=T0, pid=1)
    with pytest.raises(SpoolError, match="cannot write"):
        again.write("BTCUSDT", T0 + 5, "{}")


def test_the_writer_refuses_a_store_it_cannot_append_to() -> None:
    class ObjectStore:
        root = "s3://bucket/lake"

    with pytest.raises(SpoolError, match="it needs a local folder, not s3://bucket/lake"):
        SpoolWriter(ObjectStore(), started_ns=T0)  # type: ignore[arg-type]


def test_an_object_store_lake_spools_on_this_hosts_disk(tmp_path: Path) -> None:
    class ObjectStore:
        root = "s3://bucket/lake"

    local = LocalStore(tmp_path / "lake")
    assert spool_store(local, tmp_path / "work") is local
    chosen = spool_store(ObjectStore(), tmp_path / "work")  # type: ignore[arg-type]
    assert isinstance(chosen, LocalStore) and chosen.root == str(tmp_path / "work")


# --------------------------------------------------------------------------- sink


def _row(minute: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(LIVE_1M.column_names)
    row.update({"timestamp": minute, "public_covered": False, "market_covered": False, "book_synced": False})
    for name in ("resyncs", "reconnects", "silent_streams", "late_events", "duplicate_events", "depth_events"):
        row[name] = 0
    for name in ("book_ticker_events", "agg_trade_events", "trade_events", "mark_price_events", "force_order_events"):
        row[name] = 0
    row.update(values)
    return row


M = 1_723_161_300_000  # 2024-08-08 23:55


def test_the_sink_commits_each_minute_once_across_restarts(tmp_path: Path) -> None:
    lake, ledger = Lake.at(tmp_path), Ledger(f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}")
    sink = LiveSink(lake, ledger)
    [first] = sink.commit("BTCUSDT", [_row(M, public_covered=True, avg_spread_usdt=0.1)])
    assert first.row_count == 1 and first.path.endswith(
        "futures/um/live_1m/symbol=BTCUSDT/date=2024-08-08/part.parquet"
    )
    assert sink.commit("BTCUSDT", [_row(M, avg_spread_usdt=9.9)]) == []  # already committed: nothing
    # a restarted collector (a new sink) re-closes 23:55 and closes 23:56 and 00:00 of the next day
    again = LiveSink(lake, ledger)
    results = again.commit("BTCUSDT", [_row(M, avg_spread_usdt=7.7), _row(M + 60_000), _row(M + 300_000)])
    assert [(r.row_count, r.previous_content_hash) for r in results] == [(2, first.content_hash), (1, None)]
    table = lake.read(LIVE_1M, "BTCUSDT", DAY)
    assert table.column("timestamp").cast(pa.int64()).to_pylist() == [M, M + 60_000]
    assert table.column("avg_spread_usdt").to_pylist() == [0.1, None]  # the first close stands
    record = ledger.get_partition(LIVE_1M, "BTCUSDT", DAY)
    assert record is not None and record.provenance["live"]["covered"] == {
        "public": [["2024-08-08T23:55:00+00:00", "2024-08-08T23:56:00+00:00"]],
        "market": [],
    }
    assert lake.read(LIVE_1M, "BTCUSDT", DAY + dt.timedelta(days=1)).num_rows == 1


def test_a_bad_row_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    lake, ledger = Lake.at(tmp_path), Ledger(f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}")
    with pytest.raises(BlockingCheckFailed, match="latency_network = 99999999999"):
        LiveSink(lake, ledger).commit("BTCUSDT", [_row(M, latency_network=99_999_999_999)])
    assert ledger.get_partition(LIVE_1M, "BTCUSDT", DAY) is None
    assert lake.stat(LIVE_1M, "BTCUSDT", DAY) is None


def test_a_failed_commit_keeps_the_rows_for_the_next_tick(tmp_path: Path) -> None:
    class Full:
        calls = 0

        def commit(self, symbol: str, rows: list) -> list:
            self.calls += 1
            if self.calls == 1:
                raise OSError(28, "No space left on device")
            return [len(rows)]

    core = LiveCore(["BTCUSDT"], sink=Full())
    core.rows["BTCUSDT"] = [_row(M)]
    assert core.commit() == [] and core.stats.commit_errors == 1 and len(core.rows["BTCUSDT"]) == 1
    assert core.commit() == [1] and core.rows["BTCUSDT"] == []


# --------------------------------------------------------------------------- rebuild


def _collect(tmp_path: Path, fixture: Path, *, kill_at: int | None = None) -> tuple[Lake, Ledger, LiveCore]:
    """The recording through a collecting core (spool + sink), as the process would feed it."""
    lake, ledger = Lake.at(tmp_path), Ledger(f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}")
    spool = SpoolWriter(lake.store, started_ns=T0 - 10**9, pid=os.getpid())
    core = LiveCore(["BTCUSDT"], sink=LiveSink(lake, ledger), spool=spool, families=("public",))
    for i, (ns, text) in enumerate(recording_lines(fixture)):
        if text.startswith('{"lastUpdateId"'):
            core.on_snapshot("BTCUSDT", text, ns)
        else:
            core.on_frame("public", text, ns)
        if kill_at is not None and i == kill_at:
            spool.flush()
            return lake, ledger, core
    core.flush()
    spool.close()
    return lake, ledger, core


def test_rebuild_from_the_spool_gives_the_live_table(tmp_path: Path, real_fixtures: Path) -> None:
    fixture = real_fixtures / "ws" / "btcusdt_20240808.gz"
    lake, ledger, _ = _collect(tmp_path, fixture)
    live = lake.read(LIVE_1M, "BTCUSDT", DAY)
    assert live.num_rows == 6  # 23:54 … 23:59 (00:00 is the next day's)
    assert live.column("public_covered").to_pylist() == [False, True, True, True, True, True]
    live_hash = ledger.get_partition(LIVE_1M, "BTCUSDT", DAY).content_hash  # type: ignore[union-attr]
    result = rebuild_day(lake, ledger, "BTCUSDT", DAY)
    assert result.rows == 6 and result.replayed.snapshots == 1 and result.replayed.frames == 93953
    assert result.commit is not None and not result.commit.rewritten  # the same bytes: nothing rewritten
    assert result.commit.content_hash == live_hash
    # and through the command line
    env = {"BML_LAKE_ROOT": str(tmp_path), "BML_STATE_URL": f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}"}
    out = CliRunner().invoke(main, ["live-rebuild", "--symbol", "BTCUSDT", "--date", "2024-08-08"], env=env)
    assert out.exit_code == 0, out.output
    assert "6 minute(s): public covered 5, market covered 0" in out.output
    assert "93953 frame(s), 1 snapshot(s)" in out.output
    empty = CliRunner().invoke(main, ["live-rebuild", "--symbol", "BTCUSDT", "--date", "2024-08-10"], env=env)
    assert empty.exit_code == 1 and "holds no minute of BTCUSDT on 2024-08-10" in empty.output


def test_a_killed_collector_loses_no_committed_minute_and_the_rebuild_reads_its_spool(
    tmp_path: Path, real_fixtures: Path
) -> None:
    fixture = real_fixtures / "ws" / "btcusdt_20240808.gz"
    # killed after the line of 23:58:30 or so (no flush, no close): the ticks had committed what closed
    lake, ledger, core = _collect(tmp_path, fixture, kill_at=70_000)
    core.on_tick(core.coverage.progress("public") or 0)  # the last tick before the kill
    committed = lake.read(LIVE_1M, "BTCUSDT", DAY).column("timestamp").cast(pa.int64()).to_pylist()
    assert committed and committed[-1] < M + 4 * 60_000
    result = rebuild_day(lake, ledger, "BTCUSDT", DAY)
    rebuilt = lake.read(LIVE_1M, "BTCUSDT", DAY).column("timestamp").cast(pa.int64()).to_pylist()
    assert set(committed) <= set(rebuilt) and result.rows == len(rebuilt)
    assert segment_key("BTCUSDT", T0, T0, 1).endswith("20240808T23Z_20240808T235415030314_0000000001.gz")
