"""A shard's handler (``live/shard.py``): what it spooled is on disk before a minute it holds
is handed to a commit, and at least every second, so a process killed with SIGKILL leaves every
committed minute rebuildable (``bml live-rebuild``); it asks for snapshots and hands closed
minutes to the writer once; a commit refused by a full disk keeps its minutes for the next."""

from __future__ import annotations

import datetime as dt
import errno
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live import shard
from bml_assets.live import sink as sink_module
from bml_assets.live.connection import ConnectionEvent, ConnectionEventKind, Family
from bml_assets.live.core import LiveCore
from bml_assets.live.shard import LiveCommits, ShardHandler
from bml_assets.live.spool import SegmentRead, SpoolWriter, read_segment, segments
from bml_assets.storage.store import LocalStore

MINUTE = 1_723_161_240_000  # 2024-08-08 23:54 UTC
M = MINUTE + 60_000  # 23:55
DAY = dt.date(2024, 8, 8)


def _trade(a: int, E: int) -> str:
    data = {"e": "aggTrade", "E": E, "s": "BTCUSDT", "a": a, "p": "60000.1", "q": "0.002"}
    data.update({"f": a, "l": a, "T": E - 3, "m": False})
    return json.dumps({"stream": "btcusdt@aggTrade", "data": data}, separators=(",", ":"))


def _on_disk(store: LocalStore, day: dt.date) -> tuple[list[str], SegmentRead]:
    """The spooled texts a reader finds now (the writer still open), and its report."""
    [segment] = segments(store, "BTCUSDT", [day])
    report = SegmentRead(segment.key)
    return [text for _, text in read_segment(store, segment, report)], report


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    clock = SimpleNamespace(mono=100.0)
    # The shard's own clock: a second passes when the test says so.
    monkeypatch.setattr(shard, "time", SimpleNamespace(monotonic=lambda: clock.mono, time_ns=time.time_ns))
    store = LocalStore(tmp_path / "lake")
    spool = SpoolWriter(store, started_ns=MINUTE * 1_000_000, pid=5)
    core = LiveCore(["BTCUSDT"], spool=spool)
    handed: list[tuple[dict[str, Any], list[str]]] = []
    day = dt.date(2024, 8, 8)

    def offload(fn: Any, rows: dict[str, Any]) -> None:
        handed.append((rows, _on_disk(store, day)[0]))  # what a kill at the commit would leave

    commits = LiveCommits(Lake.at(tmp_path / "lake"), Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}"))
    handler = ShardHandler(core, commits, request_snapshot=lambda s: True, offload=offload, spool=spool)
    return SimpleNamespace(clock=clock, store=store, core=core, handler=handler, handed=handed, day=day)


def test_the_spool_is_on_disk_before_a_closed_minute_is_handed_to_its_commit(parts: Any) -> None:
    # Local receive times as the exchange's (offset 0), so the core takes the events.
    first = _trade(1, MINUTE + 5_000)
    parts.handler.on_frame(Family.MARKET, first, (MINUTE + 5_010) * 1_000_000)
    parts.handler.on_tick(MINUTE + 30_000)  # nothing closed, under a second: nothing written out
    assert parts.handed == []
    assert _on_disk(parts.store, parts.day)[0] == []
    parts.handler.on_frame(Family.MARKET, _trade(2, MINUTE + 61_000), (MINUTE + 61_010) * 1_000_000)
    parts.handler.on_tick(MINUTE + 62_500)  # the grace is over: 23:54 closes
    [(rows, spooled)] = parts.handed
    assert [r["agg_trade_events"] for r in rows["BTCUSDT"]] == [1]
    assert first in spooled and _trade(2, MINUTE + 61_000) in spooled


def test_the_spool_is_written_out_every_second_without_a_commit(parts: Any) -> None:
    text = _trade(1, MINUTE + 5_000)
    parts.handler.on_frame(Family.MARKET, text, (MINUTE + 5_010) * 1_000_000)
    parts.handler.on_tick(MINUTE + 5_100)
    assert _on_disk(parts.store, parts.day)[0] == []
    parts.clock.mono += 1.0
    parts.handler.on_tick(MINUTE + 6_100)
    spooled, report = _on_disk(parts.store, parts.day)
    assert text in spooled and report.truncated is None and parts.handed == []


def _row(minute: int, **values: object) -> dict[str, object]:
    row: dict[str, object] = dict.fromkeys(LIVE_1M.column_names)
    row.update({"timestamp": minute, "public_covered": False, "market_covered": False, "book_synced": False})
    for c in LIVE_1M.columns:
        if c.name.endswith("_events") or c.name in ("resyncs", "reconnects", "silent_streams"):
            row[c.name] = 0
    row.update(values)
    return row


def test_a_failed_commit_keeps_its_minutes_for_the_next_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake, ledger = Lake.at(tmp_path), Ledger(f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}")
    commits = LiveCommits(lake, ledger)
    real = sink_module.LiveSink.commit
    failures = [OSError(errno.ENOSPC, "No space left on device")]

    def flaky(self: Any, symbol: str, rows: Any) -> Any:
        if failures:
            raise failures.pop()
        return real(self, symbol, rows)

    monkeypatch.setattr(sink_module.LiveSink, "commit", flaky)
    commits.commit({"BTCUSDT": [_row(M, predicted_funding=0.0001)]})
    assert commits.errors == 1 and len(commits.pending["BTCUSDT"]) == 1
    assert ledger.get_partition(LIVE_1M, "BTCUSDT", DAY) is None  # nothing published

    commits.commit({"BTCUSDT": [_row(M + 60_000)]})
    assert commits.pending["BTCUSDT"] == []
    table = lake.read(LIVE_1M, "BTCUSDT", DAY)
    assert table.column("timestamp").cast("int64").to_pylist() == [M, M + 60_000]
    assert table.column("predicted_funding").to_pylist() == [0.0001, None]


def test_the_handler_asks_for_snapshots_and_hands_closed_minutes_to_the_writer() -> None:
    core = LiveCore(["BTCUSDT"])
    asked: list[str] = []
    offloaded: list[tuple[Any, ...]] = []
    handler = ShardHandler(
        core,
        LiveCommits.__new__(LiveCommits),  # never called here: the offload is recorded instead
        request_snapshot=lambda symbol: asked.append(symbol) or True,
        offload=lambda fn, *args: offloaded.append(args),
    )
    handler.on_connection(_event(ConnectionEventKind.CONNECTED, Family.MARKET, 1))
    mark = (
        '{"stream":"btcusdt@markPrice@1s","data":{"e":"markPriceUpdate","E":%d,"s":"BTCUSDT",'
        '"p":"60000.5","P":"60010.0","i":"59990.2","r":"0.00010000","T":1723190400000}}'
    )
    for E in (M - 1_000, M + 30_000, M + 61_000):  # before, inside and after 23:55
        handler.on_frame(Family.MARKET, mark % E, E * 1_000_000)
    handler.on_tick(M + 63_000)
    # The book has no snapshot yet: the handler asks the process for one.
    assert asked == ["BTCUSDT"]
    # The tick at 23:56:03 closes 23:55 (its end plus the grace): its row goes to the writer, once;
    # the market family saw it from before to after, so its market column is there.
    [(rows,)] = offloaded
    [row] = [r for r in rows["BTCUSDT"] if r["timestamp"] == M]
    assert row["mark_price_events"] == 1 and row["predicted_funding"] == 0.0001
    assert core.rows["BTCUSDT"] == []
    handler.on_tick(M + 64_000)
    assert len(offloaded) == 1  # nothing new closed


def _event(kind: ConnectionEventKind, family: Family, connection_id: int) -> ConnectionEvent:
    return ConnectionEvent(kind, family, 0, ("BTCUSDT",), connection_id, M * 1_000_000, "ws://x")
