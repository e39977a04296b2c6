"""The live collector's process (``live/process.py``) in this process: shards and their
connections, the tick by the corrected clock, the snapshot requests of the handler, and the
end (connections closed, then the handler's flush, then its offloaded work done).

The WebSocket side is the small server of ``live_ws.py``; REST (the clock) is the replay
server with a market clock 5 s ahead of ours, so a tick by the raw local clock would show.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.settings import Settings
from bml_assets.live.clock import ClockReading
from bml_assets.live.connection import ConnectionEvent, Family, SilenceEvent
from bml_assets.live.process import CollectorContext, collect, shards
from bml_assets.live.snapshots import DepthSnapshot, SnapshotError
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .live_ws import StreamServer, frame

log = logging.getLogger(__name__)

SKEW_MS = 5_000


def test_symbols_are_cut_into_shards_in_order() -> None:
    assert shards(("A1", "B2", "C3", "D4", "E5"), 2) == (("A1", "B2"), ("C3", "D4"), ("E5",))
    assert shards(("A1",), 50) == (("A1",),)
    with pytest.raises(ValueError, match="at least 1"):
        shards(("A1",), 0)


COUNTS_GRACE_MS = 2_000  # MinuteCounts: a minute's counts are logged this long after it closed


class MinuteCounts:
    """A stand-in handler that only counts frames per stream per minute of their event time ``E`` and
    logs each minute's counts once it is ``COUNTS_GRACE_MS`` past its end (or at ``flush``)."""

    def __init__(self, symbols: Sequence[str]) -> None:
        self.symbols = tuple(symbols)
        self.counts: dict[int, Counter[str]] = defaultdict(Counter)
        self.unparsed = 0
        self.logged: list[tuple[int, dict[str, int]]] = []

    def on_frame(self, family: Family, text: str, local_ns: int) -> None:
        try:
            frame = json.loads(text)
            stream, event_ms = frame["stream"], frame["data"]["E"]
        except (ValueError, TypeError, KeyError):
            self.unparsed += 1
            return
        if isinstance(event_ms, int) and isinstance(stream, str):
            self.counts[event_ms - event_ms % MINUTE_MS][stream] += 1
        else:
            self.unparsed += 1

    def on_connection(self, event: ConnectionEvent) -> None:
        pass  # the connection logs its own events

    def on_silence(self, event: SilenceEvent) -> None:
        pass

    def on_clock(self, reading: ClockReading) -> None:
        pass

    def on_snapshot(self, snapshot: DepthSnapshot) -> None:
        pass

    def on_snapshot_error(self, error: SnapshotError) -> None:
        pass

    def on_tick(self, now_exchange_ms: int) -> None:
        for minute in sorted(m for m in self.counts if m + MINUTE_MS + COUNTS_GRACE_MS <= now_exchange_ms):
            self._log(minute)

    def flush(self) -> None:
        for minute in sorted(self.counts):
            self._log(minute)
        if self.unparsed:
            log.warning("%d frame(s) without a stream and an event time E", self.unparsed)

    def _log(self, minute: int) -> None:
        counts = dict(sorted(self.counts.pop(minute).items()))
        self.logged.append((minute, counts))
        stamp = time.strftime("%Y-%m-%d %H:%M", time.gmtime(minute / 1000))
        log.info("minute %s UTC: %s", stamp, ", ".join(f"{s} {n}" for s, n in counts.items()))


class Recording:
    """A collector handler that records the order of everything it is told."""

    def __init__(self, context: CollectorContext, exchange: MarketClock) -> None:
        self.context = context
        self.exchange = exchange
        self.order: list[str] = []
        self.frames: list[tuple[Family, str]] = []
        self.ticks: list[tuple[int, int, int]] = []  # (exchange before, tick, exchange after)
        self.clock: list[ClockReading] = []
        self.snapshot_errors: list[SnapshotError] = []
        self.snapshots: list[DepthSnapshot] = []
        self.connection_events: list[ConnectionEvent] = []
        self.offloaded: list[str] = []
        self.asked: list[bool] = []

    def on_frame(self, family: Family, text: str, local_ns: int) -> None:
        self.frames.append((family, text))
        if not self.asked:
            symbol = self.context.symbols[0]
            self.asked = [self.context.request_snapshot(symbol), self.context.request_snapshot(symbol)]

    def on_connection(self, event: ConnectionEvent) -> None:
        self.connection_events.append(event)
        self.order.append(f"{event.kind.value} {event.family.value} {event.shard}")

    def on_silence(self, event: SilenceEvent) -> None:
        pass

    def on_clock(self, reading: ClockReading) -> None:
        self.clock.append(reading)
        self.order.append("clock")

    def on_snapshot(self, snapshot: DepthSnapshot) -> None:
        self.snapshots.append(snapshot)
        self.order.append("snapshot")

    def on_snapshot_error(self, error: SnapshotError) -> None:
        self.snapshot_errors.append(error)

    def on_tick(self, now_exchange_ms: int) -> None:
        before = self.exchange.now_ms()
        after = self.exchange.now_ms()
        self.ticks.append((before, now_exchange_ms, after))
        if "tick" not in self.order:
            self.order.append("tick")

    def flush(self) -> None:
        self.order.append("flush")

        def write() -> None:
            time.sleep(0.2)  # a slow commit: the process must wait for it
            self.offloaded.append(threading.current_thread().name)

        self.context.offload(write)


def test_collect_runs_the_shards_ticks_by_the_exchange_clock_and_ends_in_order(tmp_path: Path) -> None:
    exchange = MarketClock.live(time.time_ns() // 1_000_000 + SKEW_MS)
    market = SyntheticMarket(MarketConfig(seed=3, trades_per_day=200))
    handlers: list[Recording] = []

    def make(context: CollectorContext) -> Recording:
        handlers.append(Recording(context, exchange))
        return handlers[-1]

    async def scenario(server: StreamServer, rest_url: str) -> Any:
        settings = Settings(
            symbols=("BTCUSDT", "ETHUSDT"),
            lake_root=tmp_path / "lake",
            rest_base_url=rest_url,
            ws_base_url=server.base_url,
            live_shard_size=1,
        )

        stop = asyncio.Event()

        async def traffic() -> None:
            await server.wait_for_peers(4)
            text = frame("ethusdt@aggTrade", e="aggTrade", E=exchange.now_ms(), a=9)
            while len(handlers) < 2 or not handlers[1].frames:
                await server.send("ethusdt@aggTrade", text)
                await asyncio.sleep(0.05)
            # Stop once every shard has ticked and the snapshot asked for has come back.
            while not (all(h.ticks for h in handlers) and (handlers[1].snapshots or handlers[1].snapshot_errors)):
                await asyncio.sleep(0.05)
            stop.set()

        sender = asyncio.create_task(traffic())
        summary = await collect(settings, handler_factory=make, duration_s=120.0, tick_s=0.05, stop=stop)
        sender.cancel()
        return summary

    async def main(rest_url: str) -> Any:
        async with StreamServer() as server:
            summary = await scenario(server, rest_url)
            return summary, server

    with ReplayServer(market=market, clock=exchange) as replay:
        summary, server = asyncio.run(main(replay.base_url))
    assert summary.ok and summary.stopped_by == "stop" and summary.shards == 2
    # A handler per shard, each told about its own shard only.
    assert [(h.context.shard, h.context.symbols) for h in handlers] == [(0, ("BTCUSDT",)), (1, ("ETHUSDT",))]
    assert handlers[0].frames == [] and {e.symbols for e in handlers[0].connection_events} == {("BTCUSDT",)}
    handler = handlers[1]
    assert {e.symbols for e in handler.connection_events} == {("ETHUSDT",)}
    assert summary.symbols == ("BTCUSDT", "ETHUSDT")
    # Two shards of one symbol, each with its public and its market connection.
    assert sorted((p.path, p.streams) for p in server.peers[:4]) == [
        ("/market/stream", ("btcusdt@aggTrade", "btcusdt@markPrice@1s", "btcusdt@forceOrder")),
        ("/market/stream", ("ethusdt@aggTrade", "ethusdt@markPrice@1s", "ethusdt@forceOrder")),
        ("/public/stream", ("btcusdt@depth@100ms", "btcusdt@bookTicker")),
        ("/public/stream", ("ethusdt@depth@100ms", "ethusdt@bookTicker")),
    ]
    assert all(p.close_code == 1000 for p in server.peers)  # closed by the collector, cleanly
    assert handler.frames[0][0] is Family.MARKET and summary.frames["market"] >= 1
    # The clock first, the ticks after it, each by the exchange's clock (5 s ahead of ours).
    assert handler.clock and handler.clock[0].ok
    assert handler.order.index("clock") < handler.order.index("tick")
    slack = handler.clock[0].round_trip_ms / 2 + 50  # the raw local clock would be 5000 ms off
    assert handler.ticks and all(b - slack <= t <= a + slack for b, t, a in handler.ticks)
    # The snapshot the handler asked for came back to it, and to it only.
    assert handler.asked == [True, False]  # the second ask found one on its way
    assert handler.snapshot_errors == [] and handlers[0].snapshots == []
    assert [(s.symbol, s.weight) for s in handler.snapshots] == [("ETHUSDT", 20)]
    assert handler.snapshots[0].last_update_id > 0 and handler.snapshots[0].text.startswith('{"lastUpdateId"')
    assert handlers[0].ticks and handlers[0].clock  # every shard ticks and hears the clock
    # The end: every connection closed, then the flushes, then their offloaded writes done.
    for h in handlers:
        assert sorted(o for o in h.order if o.startswith("closed")) == [
            f"closed market {h.context.shard}",
            f"closed public {h.context.shard}",
        ]
        assert h.order[-1] == "flush" and h.offloaded == ["bml-live-writer_0"]


def test_collect_stops_when_asked_and_closes_its_connections_cleanly(tmp_path: Path) -> None:
    market = SyntheticMarket(MarketConfig(seed=3, trades_per_day=200))

    async def main(rest_url: str) -> Any:
        async with StreamServer() as server:
            settings = Settings(
                symbols=("BTCUSDT",), lake_root=tmp_path / "lake", rest_base_url=rest_url, ws_base_url=server.base_url
            )
            stop = asyncio.Event()

            async def stopper() -> None:
                await server.wait_for_peers(2)
                stop.set()

            task = asyncio.create_task(stopper())
            summary = await collect(settings, stop=stop)
            await task
            return summary, server

    with ReplayServer(market=market) as replay:
        summary, server = asyncio.run(main(replay.base_url))
    assert summary.stopped_by == "stop" and summary.ok
    assert summary.frames == {"public": 0, "market": 0}
    assert [p.close_code for p in server.peers] == [1000, 1000]


def test_offloaded_work_that_fails_is_reported_and_fails_the_run(tmp_path: Path) -> None:
    market = SyntheticMarket(MarketConfig(seed=3, trades_per_day=200))

    class FailingWrite(MinuteCounts):
        def __init__(self, context: CollectorContext) -> None:
            super().__init__(context.symbols)
            self.context = context

        def flush(self) -> None:
            super().flush()
            self.context.offload(lambda: 1 / 0)  # a commit that raised

    async def main(rest_url: str) -> Any:
        async with StreamServer() as server:
            settings = Settings(
                symbols=("BTCUSDT",), lake_root=tmp_path / "lake", rest_base_url=rest_url, ws_base_url=server.base_url
            )
            return await collect(settings, handler_factory=FailingWrite, duration_s=0.5)

    with ReplayServer(market=market) as replay:
        summary = asyncio.run(main(replay.base_url))
    assert summary.stopped_by == "duration" and not summary.ok
    assert summary.errors == ["offloaded work failed: ZeroDivisionError: division by zero"]
