"""The live collector's process (``bml live-collect``, SPEC §9): shards of symbols, each with its
two connections, the exchange clock, the depth snapshots, a periodic tick, and a clean end.

What belongs here: cutting the symbols into shards (``BML_LIVE_SHARD_SIZE`` each, see
``shards``), running one ``StreamConnection`` per family and shard, the clock measured every
minute, the snapshots asked for by the handlers, ``handler.on_tick(now_exchange_ms)`` every
``TICK_S`` (minutes close by the corrected clock, never the raw local one), and the end: after
``duration_s``, or at SIGTERM / SIGINT, the connections are cancelled first, then each
``handler.flush()`` writes what its handler holds, then the work they handed to the writer
thread is awaited. Each shard has a handler of its own (a drop of a shard's connection
concerns its symbols only), made by the handler factory: ``shard.LiveHandlers`` (the spool,
the order books, the minutes and their commits) unless a test passes another.

What stays out: the WebSocket details (``connection.py``), the clock's measurement
(``clock.py``), the snapshot's request (``snapshots.py``), what a frame means and what is
written (the handler's modules), and printing (``cli.py``).

Shard size: 50 symbols by default. The market connection carries three streams per symbol,
so 150 streams, far from the exchange's 1024 per connection; its URL stays under 2 KB for any
symbol names, far from the 8 KB request line most servers and proxies accept; and a dropped
connection blinds one family of 50 symbols, not the whole universe. The maximum is 341
symbols (1023 streams).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import Settings, validate_symbol
from bml_assets.live.clock import ClockReading, ExchangeClock
from bml_assets.live.connection import (
    Family,
    StreamConnection,
    StreamHandler,
)
from bml_assets.live.shard import LiveHandlers
from bml_assets.live.snapshots import DepthSnapshot, SnapshotError, SnapshotRequests
from bml_assets.sources.rest import RestClient

log = logging.getLogger(__name__)

TICK_S: Final = 0.25
SNAPSHOT_WORKERS: Final = 2  # concurrent depth snapshots (each weight 20 of the shared budget)


def shards(symbols: Sequence[str], size: int) -> tuple[tuple[str, ...], ...]:
    """``symbols`` in order, cut into groups of at most ``size``."""
    if size < 1:
        raise ValueError(f"shard size must be at least 1, got {size}")
    return tuple(tuple(symbols[i : i + size]) for i in range(0, len(symbols), size))


class CollectorHandler(StreamHandler, Protocol):
    """Everything the process hands on about one shard, all called on the event loop's thread
    (quick, no waiting I/O: blocking work goes to ``CollectorContext.offload``).

    The frames and connection events of the shard's two connections (``StreamHandler``);
    every clock reading; the snapshots (and failures) of its symbols; ``on_tick`` every
    ``TICK_S`` once the clock offset is known, with the exchange's time by the corrected local
    clock; ``flush`` once at the end, after the connections are closed, for the handler to
    write everything it still holds."""

    def on_clock(self, reading: ClockReading) -> None: ...

    def on_snapshot(self, snapshot: DepthSnapshot) -> None: ...

    def on_snapshot_error(self, error: SnapshotError) -> None: ...

    def on_tick(self, now_exchange_ms: int) -> None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class CollectorContext:
    """What a shard's handler may use: the settings, its shard and symbols,
    ``request_snapshot(symbol)`` (False when one is already on its way; the answer comes to
    ``on_snapshot``), the corrected clock, and ``offload(fn, *args)``, which runs blocking work
    (a commit to the lake) on the one writer thread shared by every shard, in order; the
    process waits for it before it ends."""

    settings: Settings
    shard: int
    symbols: tuple[str, ...]
    request_snapshot: Callable[[str], bool]
    now_exchange_ms: Callable[[], int | None]
    offload: Callable[..., Future[Any]]


HandlerFactory = Callable[[CollectorContext], CollectorHandler]


@dataclass
class CollectorSummary:
    """What a run of the collector did (for the command line)."""

    symbols: tuple[str, ...]
    shards: int
    duration_s: float = 0.0
    stopped_by: str = ""  # "duration", "SIGTERM", "SIGINT"
    frames: dict[str, int] = field(default_factory=dict)  # per family
    duplicates: int = 0
    drops: int = 0
    rotations: int = 0
    silences: int = 0
    clock: ClockReading | None = None
    clock_failures: int = 0
    snapshots: int = 0
    snapshot_failures: int = 0
    errors: list[str] = field(default_factory=list)  # a part of the process that failed

    @property
    def ok(self) -> bool:
        return not self.errors


class _Reports:
    """Logs and counts what the clock and the snapshots report, then hands it to the handlers
    (a snapshot to its symbol's)."""

    def __init__(self, summary: CollectorSummary) -> None:
        self.summary = summary
        self.by_symbol: dict[str, CollectorHandler] = {}  # filled once made: they need the snapshots first

    def on_clock(self, reading: ClockReading) -> None:
        self.summary.clock = reading
        if reading.ok:
            log.debug("clock offset %.1f ms (round trip %.1f ms)", reading.offset_ms, reading.round_trip_ms)
        else:
            self.summary.clock_failures += 1
            kept = "none yet" if reading.offset_ms is None else f"{reading.offset_ms:.1f} ms kept"
            log.warning("clock offset not measured (%s): %s", kept, reading.error)
        for handler in dict.fromkeys(self.by_symbol.values()):
            handler.on_clock(reading)

    def on_snapshot(self, snapshot: DepthSnapshot) -> None:
        log.debug("depth snapshot of %s: lastUpdateId %d", snapshot.symbol, snapshot.last_update_id)
        handler = self.by_symbol.get(snapshot.symbol)
        if handler is not None:
            handler.on_snapshot(snapshot)

    def on_snapshot_error(self, error: SnapshotError) -> None:
        again = "not again" if error.retry_in_s is None else f"again in {error.retry_in_s:.1f} s"
        log.warning("depth snapshot of %s failed (asked %s): %s", error.symbol, again, error)
        handler = self.by_symbol.get(error.symbol)
        if handler is not None:
            handler.on_snapshot_error(error)


def _rest_client(settings: Settings) -> RestClient:
    return RestClient.from_settings(settings)


async def collect(
    settings: Settings,
    symbols: Sequence[str] | None = None,
    *,
    duration_s: float | None = None,
    handler_factory: HandlerFactory | None = None,
    stop: asyncio.Event | None = None,
    connection_options: Mapping[str, Any] | None = None,
    tick_s: float = TICK_S,
    clock_every_s: float = 60.0,
) -> CollectorSummary:
    """Run the collector for ``symbols`` (default ``BML_SYMBOLS``) until ``duration_s`` has
    passed or ``stop`` is set, then end cleanly (see the module docstring).
    ``connection_options``: more ``StreamConnection`` arguments (tests). ``handler_factory``:
    the shards' handlers (default ``LiveHandlers``; a factory with a ``close`` method is
    closed at the very end)."""
    if handler_factory is None:
        handler_factory = LiveHandlers(settings)
    chosen = tuple(validate_symbol(s) for s in (symbols or settings.symbols))
    groups = shards(chosen, settings.live_shard_size)
    summary = CollectorSummary(chosen, len(groups))
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    started = loop.time()
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bml-live-writer")

    def offloaded_done(future: Future[Any]) -> None:
        # The handler catches what it expects (a full disk: minutes marked uncovered); what
        # escapes is a failure of the process, reported now and in the exit code.
        exc = None if future.cancelled() else future.exception()
        if exc is not None:
            summary.errors.append(f"offloaded work failed: {type(exc).__name__}: {exc}")
            log.error("offloaded work failed", exc_info=exc)

    def offload(fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future = writer.submit(fn, *args)
        future.add_done_callback(offloaded_done)
        return future

    clock_client = _rest_client(settings)
    snapshot_clients = [_rest_client(settings) for _ in range(SNAPSHOT_WORKERS)]
    clock = ExchangeClock(clock_client)
    reports = _Reports(summary)
    snapshots = SnapshotRequests(snapshot_clients, reports.on_snapshot, reports.on_snapshot_error)
    handlers: list[CollectorHandler] = []
    connections: list[StreamConnection] = []
    for i, group in enumerate(groups):
        context = CollectorContext(settings, i, group, snapshots.request, clock.now_exchange_ms, offload)
        handler = handler_factory(context)
        handlers.append(handler)
        reports.by_symbol.update(dict.fromkeys(group, handler))
        connections += [
            StreamConnection(
                settings.ws_base_url,
                family,
                group,
                handler,
                shard=i,
                rotate_after_s=settings.live_rotate_seconds,
                **(connection_options or {}),
            )
            for family in Family
        ]
    log.info(
        "live collector: %d symbol(s) in %d shard(s), %d connection(s) to %s",
        len(chosen),
        len(groups),
        len(connections),
        redact_url(settings.ws_base_url),
    )
    tasks: dict[asyncio.Task[Any], str] = {}
    for c in connections:
        tasks[asyncio.create_task(c.run(), name=f"{c.family} shard {c.shard}")] = f"the {c.family} connection"
    tasks[asyncio.create_task(clock.keep_measuring(reports.on_clock, clock_every_s), name="clock")] = "the clock"
    tasks[asyncio.create_task(_tick(clock, handlers, tick_s), name="tick")] = "the tick"
    stopper = asyncio.create_task(stop.wait(), name="stop")
    try:
        done, _ = await asyncio.wait({stopper, *tasks}, timeout=duration_s, return_when=asyncio.FIRST_COMPLETED)
        if not summary.stopped_by:
            summary.stopped_by = "stop" if stopper in done else "duration"
        for task in done:
            if task is not stopper and not task.cancelled() and task.exception() is not None:
                exc = task.exception()
                summary.errors.append(f"{tasks[task]} failed: {type(exc).__name__}: {exc}")
                log.error("%s failed", tasks[task], exc_info=exc)
    finally:
        # The order matters: no frame after the connections close, then the handler's last
        # writes, then the writer thread has done them all.
        stopper.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(stopper, *tasks, return_exceptions=True)
        await snapshots.aclose()
        for i, handler in enumerate(handlers):
            try:
                handler.flush()
            except Exception as exc:
                summary.errors.append(f"the final flush of shard {i} failed: {type(exc).__name__}: {exc}")
                log.exception("the final flush of shard %d failed", i)
        await asyncio.to_thread(writer.shutdown, wait=True)
        for client in (clock_client, *snapshot_clients):
            client.close()
        close = getattr(handler_factory, "close", None)
        if close is not None:
            close()
    summary.duration_s = loop.time() - started
    for c in connections:
        summary.frames[c.family.value] = summary.frames.get(c.family.value, 0) + c.frames
        summary.duplicates += c.duplicates
        summary.drops += c.drops
        summary.rotations += c.rotations
        summary.silences += c.silences
    summary.snapshots, summary.snapshot_failures = snapshots.fetched, snapshots.failed
    return summary


async def _tick(clock: ExchangeClock, handlers: Sequence[CollectorHandler], every_s: float) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        now = clock.now_exchange_ms()
        if now is not None:
            for handler in handlers:
                try:
                    handler.on_tick(now)
                except Exception:  # one bad minute must not stop the closing of every later one
                    log.exception("the handler failed on the tick at %d", now)
        next_at += every_s
        await asyncio.sleep(max(0.0, next_at - loop.time()))


def run_collector(
    settings: Settings,
    symbols: Sequence[str] | None = None,
    *,
    duration_s: float | None = None,
    handler_factory: HandlerFactory | None = None,
) -> CollectorSummary:
    """``collect`` in its own event loop; SIGTERM and SIGINT end it as cleanly as the duration."""

    async def main() -> CollectorSummary:
        stop = asyncio.Event()
        received: list[str] = []
        loop = asyncio.get_running_loop()
        installed = []
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):

                def on_signal(sig: signal.Signals = sig) -> None:
                    if not received:
                        log.info("%s received: stopping", sig.name)
                    received.append(sig.name)
                    stop.set()

                loop.add_signal_handler(sig, on_signal)
                installed.append(sig)
        try:
            summary = await collect(
                settings, symbols, duration_s=duration_s, handler_factory=handler_factory, stop=stop
            )
        finally:
            for sig in installed:
                with contextlib.suppress(Exception):
                    loop.remove_signal_handler(sig)
        if received:
            summary.stopped_by = received[0]
        return summary

    return asyncio.run(main())
