"""One shard of the running collector: the process's handler protocol in front of a ``LiveCore``.

What belongs here: turning what ``process.py`` reports (frames with their connection, the
connection's and the watchdog's events, clock readings, snapshots, ticks) into the
``LiveCore`` calls that ``live/__init__.py`` documents, asking the process for the depth
snapshots the core needs, writing the spool out (every ``SPOOL_FLUSH_S`` and before each
hand-over, so a SIGKILL never takes a committed minute's lines with it), and handing the
closed minutes to the writer thread, where ``LiveCommits`` commits them (a commit takes tens
of ms; the event loop, whose receive times are the arrival times, must not wait for it). What stays out: what a frame means and what a
minute holds (``core.py`` and below), the WebSocket and REST work (``connection.py``,
``snapshots.py``, ``clock.py``), and the process (``process.py``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from bml_assets.domain.settings import Settings
from bml_assets.lake.commit import CommitResult
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live.clock import ClockReading
from bml_assets.live.connection import ConnectionEvent, ConnectionEventKind, Family, SilenceEvent
from bml_assets.live.core import LiveCore
from bml_assets.live.sink import LiveSink
from bml_assets.live.snapshots import DepthSnapshot, SnapshotError
from bml_assets.live.spool import SpoolWriter, spool_store

if TYPE_CHECKING:  # process.py makes the shards through this module's factory
    from bml_assets.live.process import CollectorContext

log = logging.getLogger(__name__)

SPOOL_FLUSH_S: Final = 1.0
"""The spool's gzip members are ended this often (and before each hand-over of closed minutes)."""

Rows = Mapping[str, Sequence[Mapping[str, Any]]]


class LiveCommits:
    """Commits closed minutes to ``live_1m``, on the one writer thread (``commit`` is called
    there, in order). Rows a commit could not take (a full disk, a lock held too long) are
    kept and tried again with the next batch; a restart loses them, which the spool covers
    (``bml live-rebuild``). The sink opens on first use, on the writer thread."""

    def __init__(self, lake: Lake, ledger: Ledger) -> None:
        self._lake = lake
        self._ledger = ledger
        self._sink: LiveSink | None = None
        self.pending: dict[str, list[Mapping[str, Any]]] = {}
        self.results: list[CommitResult] = []
        self.errors = 0
        self._owner: int | None = None

    def commit(self, rows: Rows) -> None:
        # One thread only: the sink's read-append-commit is not safe against itself.
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        assert self._owner == me, "LiveCommits.commit runs on the writer thread only"
        if self._sink is None:
            self._ledger.init()
            self._sink = LiveSink(self._lake, self._ledger)
        for symbol, new in rows.items():
            self.pending.setdefault(symbol, []).extend(new)
        for symbol in list(self.pending):
            batch = self.pending[symbol]
            if not batch:
                continue
            try:
                self.results.extend(self._sink.commit(symbol, batch))
            except Exception as exc:  # the lake's disk full, a lock: keep the rows, go on
                self.errors += 1
                log.error("live_1m %s: %d closed minute(s) not committed yet: %s", symbol, len(batch), exc)
                continue
            self.pending[symbol] = []


class ShardHandler:
    """The handler of one shard (``process.CollectorHandler``) over a ``LiveCore`` without a
    sink: its closed rows are taken after each tick and offloaded to ``commits``."""

    def __init__(
        self,
        core: LiveCore,
        commits: LiveCommits,
        *,
        request_snapshot: Callable[[str], bool],
        offload: Callable[..., Any],
        spool: SpoolWriter | None = None,
    ) -> None:
        self.core = core
        self.commits = commits
        self.request_snapshot = request_snapshot
        self.offload = offload
        self.spool = spool
        self._connection: dict[Family, int] = {}
        self._offset_ms: int | None = None  # a new measurement, for the next tick
        self._spool_flushed = time.monotonic()

    # -- the connections (StreamHandler) ---------------------------------------------------

    def on_frame(self, family: Family, text: str, local_ns: int) -> None:
        self.core.on_frame(family.value, text, local_ns, connection=self._connection.get(family, 0))

    def on_connection(self, event: ConnectionEvent) -> None:
        family = event.family.value
        kind = event.kind
        if kind is ConnectionEventKind.CONNECTED:
            self._connection[event.family] = event.connection_id
            self.core.on_connection(family, "connected", event.local_ns, connection=event.connection_id)
        elif kind is ConnectionEventKind.DROPPED:
            self.core.on_connection(
                family, "dropped", event.local_ns, reason=event.reason, connection=event.connection_id
            )
        elif kind is ConnectionEventKind.ROTATION_STARTED:
            # Both sockets deliver, de-duplicated by the connection: the frames stay one run.
            pass
        elif kind is ConnectionEventKind.ROTATED and event.unproven:
            # A handover not shown lossless is a drop: the minutes it spans are not covered.
            reason = "rotation not shown lossless for " + ", ".join(event.unproven)
            previous = self._connection.get(event.family, 0)
            self.core.on_connection(family, "dropped", event.local_ns, reason=reason, connection=previous)
            self._connection[event.family] = event.connection_id
            self.core.on_connection(family, "connected", event.local_ns, connection=event.connection_id)

    def on_silence(self, event: SilenceEvent) -> None:
        self.core.on_silence(event.stream, event.silent, event.local_ns)

    # -- the process ------------------------------------------------------------------------

    def on_clock(self, reading: ClockReading) -> None:
        if reading.ok and reading.offset_ms is not None:
            self._offset_ms = round(reading.offset_ms)

    def on_snapshot(self, snapshot: DepthSnapshot) -> None:
        self.core.on_snapshot(snapshot.symbol, snapshot.text, snapshot.local_ns)

    def on_snapshot_error(self, error: SnapshotError) -> None:
        pass  # the core asks again after its retry interval (snapshots_needed)

    def on_tick(self, now_exchange_ms: int) -> None:
        offset, self._offset_ms = self._offset_ms, None
        self.core.on_tick(now_exchange_ms, clock_offset_ms=offset)
        # The spool is on disk before any minute it holds is committed (a kill -9 must leave
        # every committed minute rebuildable), and at least every second besides.
        now = time.monotonic()
        if any(self.core.rows.values()) or now - self._spool_flushed >= SPOOL_FLUSH_S:
            self.core.flush_spool()
            self._spool_flushed = now
        self._hand_over()
        for symbol in self.core.snapshots_needed(time.time_ns()):
            self.request_snapshot(symbol)

    def flush(self) -> None:
        self.core.flush()
        self._hand_over()
        if self.spool is not None:
            self.spool.close()

    def _hand_over(self) -> None:
        taken = {s: rows for s, rows in self.core.rows.items() if rows}
        if taken:
            for symbol in taken:
                self.core.rows[symbol] = []
            self.offload(self.commits.commit, taken)


class LiveHandlers:
    """The handler factory of ``bml live-collect`` (``process.HandlerFactory``): one lake, one
    ledger and one ``LiveCommits`` for the process, and per shard a ``LiveCore`` with a spool
    writer of its own. The shards' writers are numbered by nanoseconds after the process
    start, so their file names never meet (the symbols of two shards never do; the
    frames no symbol claims, spooled under ``_unrouted``, would). ``close`` after the
    process has flushed every shard and its writer thread is done."""

    def __init__(self, settings: Settings, *, started_ns: int | None = None) -> None:
        self.lake = Lake.from_settings(settings)
        self.ledger = Ledger(settings.state_url)
        self.commits = LiveCommits(self.lake, self.ledger)
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        self.spool_store = spool_store(self.lake.store, settings.host_dir)

    def __call__(self, context: CollectorContext) -> ShardHandler:
        spool = SpoolWriter(self.spool_store, started_ns=self.started_ns + context.shard)
        core = LiveCore(context.symbols, spool=spool)
        return ShardHandler(
            core, self.commits, request_snapshot=context.request_snapshot, offload=context.offload, spool=spool
        )

    def close(self) -> None:
        self.ledger.close()
