"""The collector's shard handler: process events turned into ``LiveCore`` calls, closed
minutes handed to the writer, and a commit that fails (a full disk) kept for the next one."""

from __future__ import annotations

import datetime as dt
import errno
from pathlib import Path
from typing import Any

import pytest

from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live import sink as sink_module
from bml_assets.live.connection import ConnectionEvent, ConnectionEventKind, Family
from bml_assets.live.core import LiveCore
from bml_assets.live.shard import LiveCommits, ShardHandler

M = 1_723_161_300_000  # 2024-08-08 23:55
DAY = dt.date(2024, 8, 8)


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
