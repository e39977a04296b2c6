"""A shard's handler (``live/shard.py``) and the spool: what it spooled is on disk before a
minute it holds is handed to a commit, and at least every second, so a process killed with
SIGKILL leaves every committed minute rebuildable (``bml live-rebuild``)."""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live import shard
from bml_assets.live.connection import Family
from bml_assets.live.core import LiveCore
from bml_assets.live.shard import LiveCommits, ShardHandler
from bml_assets.live.spool import SegmentRead, SpoolWriter, read_segment, segments
from bml_assets.storage.store import LocalStore

MINUTE = 1_723_161_240_000  # 2024-08-08 23:54 UTC


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
