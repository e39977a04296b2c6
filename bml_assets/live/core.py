"""``LiveCore``: the live collector's handler, without any networking (see ``live/__init__.py``).

What belongs here: the one object the collector process feeds — frames, snapshots,
connection and silence events, clock ticks — which spools each of them, parses, keeps the
books, aggregates per minute, decides when a minute closes and hands the closed rows to
the sink; and which says which symbols need a REST snapshot now. What stays out: sockets,
REST calls, clocks and timers (the process), formulas (``aggregate.py``), the book
procedure (``book.py``), files (``spool.py``, ``sink.py``).

Closing a minute (SPEC §9: by exchange time, never the raw local clock): minute m of every
symbol closes when each subscribed family that has an open connection has delivered a
frame with E ≥ m's end + ``reorder_ms`` (streams of one connection interleave with E up
to a few tens of ms out of order; the recording shows 31 ms at most), or when a tick's
exchange clock (the process's local clock corrected by the measured offset) passes m's
end + ``grace_ms``, or at ``flush``. An event whose minute has already closed is late: it
still goes to the book, but not into a row; it is counted in the symbol's oldest open
minute (``late_events``).

Errors never stop the core: a bad frame, an unknown stream, an unsubscribed symbol, a
broken pu chain, a refused snapshot or a spool failure is logged with the stream and the
event's ids, counted in ``stats``, and the affected minute is marked lost for its family
(its columns NULL); other minutes and symbols go on.

Not thread-safe: call every method from one thread (the process's event loop), or
serialise the calls.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.settings import validate_symbol
from bml_assets.live.aggregate import (
    KIND_FAMILY,
    SILENCE_BLANKS,
    Coverage,
    MinuteAcc,
    MinuteContext,
    Ticker,
    close_minute,
)
from bml_assets.live.book import DepthOutcome, OrderBook, SnapshotOutcome
from bml_assets.live.frames import (
    FAMILIES,
    STREAM_KINDS,
    BadEvent,
    DepthUpdate,
    Event,
    Family,
    FrameError,
    FrameParser,
    parse_snapshot,
)
from bml_assets.live.spool import UNROUTED, SpoolError, SpoolWriter

log = logging.getLogger("bml.live")

REORDER_MS: Final = 1_000
GRACE_MS: Final = 2_000
SNAPSHOT_RETRY_NS: Final = 10 * 1_000_000_000
"""A snapshot asked for and not received is offered again after this long (local clock)."""
REFRESH_EVERY_MS: Final = 30 * MINUTE_MS
"""A synced book asks for a fresh snapshot this often, so a rebuild from the spool finds one
within the hour before any minute (``rebuild.LOOKBACK_NS``)."""
MAX_CLOCK_SKEW_MS: Final = 10 * MINUTE_MS
"""An event whose E is further than this from its arrival (corrected by the offset) is refused:
a garbage time would otherwise open or close minutes far away."""

_EVENT_TYPE_KIND: Final = {
    "depthUpdate": "depth",
    "bookTicker": "book_ticker",
    "aggTrade": "agg_trade",
    "trade": "trade",
    "markPriceUpdate": "mark_price",
    "forceOrder": "force_order",
}
ConnectionState = Literal["connected", "dropped"]


def _event_id(event: Event) -> tuple[int, int]:
    """A key that only grows along a stream: a repeat (an overlapping connection) is ≤ the last."""
    kind = event.kind
    if kind in ("depth", "book_ticker"):
        return (event.u, 0)  # type: ignore[union-attr]
    if kind == "agg_trade":
        return (event.agg_id, 0)  # type: ignore[union-attr]
    if kind == "trade":
        return (event.trade_id, 0)  # type: ignore[union-attr]
    if kind == "force_order":
        return (event.E, event.T)  # type: ignore[union-attr]
    return (event.E, 0)


@dataclass
class _Symbol:
    symbol: str
    book: OrderBook
    open: dict[int, MinuteAcc] = field(default_factory=dict)
    next_minute: int | None = None  # the oldest minute not closed yet (None: nothing seen)
    last_ids: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_ticker: Ticker | None = None  # the last bookTicker of the closed minutes
    impact_minute: int | None = None  # minute of the last depth event; its impact not taken yet
    impact_valid: bool = False  # that event was applied to a synced book
    silent: dict[str, list[list[Any]]] = field(default_factory=dict)  # stream -> [[kind, start, stop]]
    snapshot_asked_ns: int | None = None


@dataclass
class CoreStats:
    """Counts for the log and the collector's health."""

    frames: int = 0
    events: int = 0
    bad_frames: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    late: int = 0
    breaks: int = 0
    refused_snapshots: int = 0
    spool_errors: int = 0
    rows: int = 0
    commits: int = 0
    commit_errors: int = 0


class LiveCore:
    """The collector's handler for ``symbols`` (see ``live/__init__.py`` for the protocol).

    ``sink``: where closed rows go (``LiveSink``: committed on each ``on_tick`` and at
    ``flush``); None keeps them in ``rows`` (a rebuild commits them itself). ``spool``: the
    raw spool, None when replaying a spool. ``families``: the subscribed stream families
    (both in the collector; a recording may hold one).
    """

    def __init__(
        self,
        symbols: Iterable[str],
        *,
        sink: Any | None = None,
        spool: SpoolWriter | None = None,
        families: Iterable[Family] = FAMILIES,
        reorder_ms: int = REORDER_MS,
        grace_ms: int = GRACE_MS,
        refresh_every_ms: int | None = REFRESH_EVERY_MS,
    ) -> None:
        names = [validate_symbol(s) for s in symbols]
        self.symbols = tuple(names)
        self.parser = FrameParser(names)
        self.families: frozenset[str] = frozenset(families)
        self.sink = sink
        self.spool = spool
        self.reorder_ms = reorder_ms
        self.grace_ms = grace_ms
        self.refresh_every_ms = refresh_every_ms
        self.coverage = Coverage()
        self.offset_ms = 0  # exchange − local, as last measured
        self.stats = CoreStats()
        self.rows: dict[str, list[dict[str, Any]]] = {s: [] for s in names}
        self._sym = {s: _Symbol(s, OrderBook(s)) for s in names}
        self._check_at: int | None = None  # E at which the next close pass is due
        if spool is not None:  # what was subscribed, so a rebuild from the spool covers the same
            self._note({"bml": "session", "families": sorted(self.families), "symbols": names}, spool.started_ns)

    # ------------------------------------------------------------------ inputs

    def on_frame(
        self, family: Family | None, raw: str | bytes, local_ns: int, connection: Hashable = 0
    ) -> Event | None:
        """One frame as received on ``family``'s connection (None: the stream's own family, for
        recordings). Returns the event, or None when it was refused, a repeat or bad."""
        self.stats.frames += 1
        text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
        try:
            stream, stream_family, symbol, data = self.parser.route(text)
        except FrameError as err:
            self._bad(err, local_ns, text)
            return None
        self._spool(symbol, local_ns, text, stream_family, data)
        if family is not None and family != stream_family:
            self._bad(BadEvent(f"a {stream_family} stream on the {family} connection", stream=stream), local_ns)
            return None
        try:
            event = self.parser.event(stream, symbol, data)
            self._check_clock(event, local_ns, stream)
        except FrameError as err:
            self._bad(err, local_ns)
            self._lose(symbol, stream_family, data.get("E"))
            return None
        self.coverage.saw(stream_family, connection, event.E)
        return event if self._take(self._sym[symbol], event, local_ns) else None

    def on_snapshot(self, symbol: str, raw: str | bytes, local_ns: int) -> SnapshotOutcome | None:
        """A REST ``/fapi/v1/depth`` body fetched for ``symbol`` (the body names no symbol)."""
        sym = self._sym[validate_symbol(symbol)]
        text = raw if isinstance(raw, str) else raw.decode("utf-8", errors="replace")
        self._spool(symbol, local_ns, text, None, None)
        sym.snapshot_asked_ns = None
        try:
            snapshot = parse_snapshot(text, symbol)
        except FrameError as err:
            self._bad(err, local_ns)
            return None
        book = sym.book
        outcome = book.on_snapshot(snapshot)
        if outcome is SnapshotOutcome.REFUSED:
            self.stats.refused_snapshots += 1
            log.warning("%s: depth snapshot refused, asking again: %s", symbol, book.last_break)
            acc = self._acc(sym, snapshot.E - snapshot.E % MINUTE_MS)
            if acc is not None:
                acc.resyncs += 1
        elif outcome is SnapshotOutcome.SYNCED:
            # The buffered events are applied: the book is as right after the last depth event.
            sym.impact_valid = book.synced
            log.info("%s: order book synced from snapshot lastUpdateId %d", symbol, snapshot.last_update_id)
        return outcome

    def on_connection(
        self, family: Family, state: ConnectionState, local_ns: int, *, reason: str = "", connection: Hashable = 0
    ) -> None:
        """A connection of ``family`` ``connected`` or ``dropped`` (its run of frames ends there)."""
        self._note(
            {"bml": "connection", "family": family, "state": state, "reason": reason, "connection": connection},
            local_ns,
        )
        if state == "dropped":
            had_run = self.coverage.dropped(family, connection)
            log.warning("%s connection %s dropped: %s", family, connection, reason or "no reason given")
            if had_run:
                minute = self._exchange_minute(local_ns)
                for sym in self._sym.values():
                    acc = self._acc(sym, minute, started_only=True)
                    if acc is not None:
                        acc.reconnects += 1

    def on_silence(self, stream: str, silent: bool, local_ns: int) -> None:
        """A subscribed stream (``btcusdt@bookTicker``) went silent, or spoke again."""
        symbol = stream.partition("@")[0].upper()
        sym = self._sym.get(symbol)
        kind = STREAM_KINDS.get(stream.partition("@")[2])
        if sym is None or kind is None:
            log.warning("silence reported for %r, which is not a subscribed stream", stream)
            return
        self._note({"bml": "silence", "stream": stream, "silent": silent}, local_ns, symbol)
        at = local_ns // 1_000_000 + self.offset_ms
        intervals = sym.silent.setdefault(stream, [])
        if silent:
            if not intervals or intervals[-1][2] is not None:
                intervals.append([_EVENT_TYPE_KIND[kind[0]], at, None])
                log.warning("%s: stream %s is silent", symbol, stream)
        elif intervals and intervals[-1][2] is None:
            intervals[-1][2] = at

    def on_tick(
        self,
        now_exchange_ms: int,
        clock_offset_ms: int | None = None,
        *,
        local_ns: int | None = None,
        progress: dict[str, tuple[Hashable, int]] | None = None,
    ) -> list[Any]:
        """The process's periodic tick: the exchange clock now (local clock + offset) and,
        when just measured against ``/fapi/v1/time``, the offset (exchange − local, ms).
        Closes the minutes it makes due and commits the closed rows (returns the sink's
        results). ``progress`` is for replays: the spooled families' progress at the tick."""
        if local_ns is None:
            local_ns = (now_exchange_ms - self.offset_ms) * 1_000_000
        note: dict[str, Any] = {"bml": "tick", "now": now_exchange_ms, "offset": clock_offset_ms}
        if self.spool is not None:
            note["progress"] = {f: E for f, (_, E) in self.coverage.open_progress().items()}
        self._note(note, local_ns)
        # A replay: how far the connection had got (frames of the other symbols included).
        for family, (connection, E) in (progress or {}).items():
            self.coverage.saw(family, connection, int(E))  # type: ignore[arg-type]
        if clock_offset_ms is not None:
            self.offset_ms = int(clock_offset_ms)
            minute = now_exchange_ms - now_exchange_ms % MINUTE_MS
            for sym in self._sym.values():
                acc = self._acc(sym, minute, started_only=True)
                if acc is not None:
                    acc.clock_offset_ms = int(clock_offset_ms)
        self._close(now_ms=now_exchange_ms)
        return self.commit()

    def flush(self) -> list[Any]:
        """Close every open minute (the last ones uncovered, as nothing follows them) and commit."""
        self._close(final=True)
        self.flush_spool()
        return self.commit()

    def flush_spool(self) -> None:
        """Write out the spool's open gzip members (the collector does so every second and
        before it hands closed minutes to a commit), so a killed process loses no line
        spooled before: a committed minute can always be rebuilt."""
        if self.spool is None:
            return
        try:
            self.spool.flush()
        except SpoolError as err:
            self.stats.spool_errors += 1
            log.error("%s", err)

    def snapshots_needed(self, local_ns: int) -> list[str]:
        """Symbols whose book needs a REST snapshot now (unsynced, or synced on one older than
        ``refresh_every_ms``); each is offered again only after ``SNAPSHOT_RETRY_NS``."""
        out = []
        now_ms = local_ns // 1_000_000 + self.offset_ms
        for sym in self._sym.values():
            asked = sym.snapshot_asked_ns
            if asked is not None and local_ns - asked < SNAPSHOT_RETRY_NS:
                continue
            book = sym.book
            stale = (
                self.refresh_every_ms is not None
                and book.synced
                and book.snapshot_E is not None
                and now_ms - book.snapshot_E >= self.refresh_every_ms
            )
            if book.needs_snapshot or stale:
                sym.snapshot_asked_ns = local_ns
                out.append(sym.symbol)
        return out

    def reset_books(self) -> None:
        """Forget every book and connection (a replay crossing into another process's spool)."""
        for sym in self._sym.values():
            sym.book.reset()
            sym.impact_valid = False
        self.coverage.drop_all()

    def book(self, symbol: str) -> OrderBook:
        return self._sym[symbol].book

    # ------------------------------------------------------------------ commits

    def commit(self) -> list[Any]:
        """Hand the closed rows to the sink (kept, and retried next time, when it fails)."""
        if self.sink is None:
            return []
        results = []
        for symbol, rows in self.rows.items():
            if not rows:
                continue
            try:
                results.extend(self.sink.commit(symbol, rows))
            except Exception as exc:  # the lake's disk full, a lock: keep the rows, go on
                self.stats.commit_errors += 1
                log.error("%s: %d closed minute(s) not committed yet: %s", symbol, len(rows), exc)
                continue
            self.stats.commits += 1
            self.rows[symbol] = []
        return results

    # ------------------------------------------------------------------ internals

    def _bad(self, err: FrameError, local_ns: int, text: str | None = None) -> None:
        self.stats.bad_frames[type(err).__name__] += 1
        log.warning("refused: %s", err)
        if text is not None:  # not spooled under a symbol yet
            self._spool(err.symbol or UNROUTED, local_ns, text, None, None)

    def _spool(self, folder: str, local_ns: int, text: str, family: Family | None, data: Any) -> None:
        if self.spool is None:
            return
        try:
            self.spool.write(folder, local_ns, text)
        except (SpoolError, ValueError) as err:
            self.stats.spool_errors += 1
            log.error("%s", err)
            if family is not None and folder in self._sym:
                self._lose(folder, family, data.get("E") if isinstance(data, dict) else None)

    def _note(self, note: dict[str, Any], local_ns: int, symbol: str | None = None) -> None:
        """A line of the collector's own in the spool of ``symbol`` (every symbol when None)."""
        if self.spool is None:
            return
        text = json.dumps(note, separators=(",", ":"), default=str)
        for s in (symbol,) if symbol else self.symbols:
            try:
                self.spool.write(s, local_ns, text)
            except SpoolError as err:
                self.stats.spool_errors += 1
                log.error("%s", err)

    def _lose(self, symbol: str, family: Family, E: Any) -> None:
        """Mark the minute of ``E`` lost for ``family`` (no E: the oldest open minute)."""
        sym = self._sym[symbol]
        if isinstance(E, int) and not isinstance(E, bool):
            acc = self._acc(sym, E - E % MINUTE_MS)
        else:
            acc = self._acc(sym, sym.next_minute, started_only=True) if sym.next_minute is not None else None
        if acc is not None:
            acc.lost.add(family)

    def _check_clock(self, event: Event, local_ns: int, stream: str) -> None:
        expected = local_ns // 1_000_000 + self.offset_ms
        if abs(event.E - expected) > MAX_CLOCK_SKEW_MS:
            raise BadEvent(
                f"event time E={event.E} is {event.E - expected} ms from the exchange clock at arrival",
                stream=stream,
                symbol=event.symbol,
                ids=f"E={event.E}",
            )

    def _exchange_minute(self, local_ns: int) -> int:
        now = local_ns // 1_000_000 + self.offset_ms
        return now - now % MINUTE_MS

    def _acc(self, sym: _Symbol, minute: int, *, started_only: bool = False) -> MinuteAcc | None:
        """The open accumulator of ``minute``; a closed minute's bookkeeping goes to the oldest
        open one; None for a symbol not started (when ``started_only``)."""
        if sym.next_minute is None:
            if started_only:
                return None
            sym.next_minute = minute
        elif minute < sym.next_minute:
            minute = sym.next_minute
        acc = sym.open.get(minute)
        if acc is None:
            acc = sym.open[minute] = MinuteAcc(minute)
        return acc

    def _take(self, sym: _Symbol, event: Event, local_ns: int) -> bool:
        kind = event.kind
        key = _event_id(event)
        last = sym.last_ids.get(kind)
        E = event.E
        minute = E - E % MINUTE_MS
        if last is not None and key <= last:
            self.stats.duplicates += 1
            acc = self._acc(sym, minute)
            if acc is not None:
                acc.duplicates += 1
            return False
        sym.last_ids[kind] = key
        self.stats.events += 1
        if isinstance(event, DepthUpdate):
            self._depth(sym, event, minute)
        late = sym.next_minute is not None and minute < sym.next_minute
        acc = self._acc(sym, minute)
        assert acc is not None
        if late:
            acc.late += 1
            self.stats.late += 1
        else:
            acc.add(event, local_ns // 1_000_000)
        family = KIND_FAMILY[kind]
        check_at = self._check_at
        if check_at is None:
            self._check_at = minute + MINUTE_MS + self.reorder_ms
        elif E >= check_at and family in self.families:
            self._close()
        return True

    def _depth(self, sym: _Symbol, event: DepthUpdate, minute: int) -> None:
        if sym.impact_minute is not None and minute > sym.impact_minute:
            self._take_impact(sym)
        book = sym.book
        was_synced = book.synced
        outcome = book.on_depth(event)
        if book.synced and not was_synced:  # a waiting snapshot bridged by this event
            log.info("%s: order book synced at depth event U=%d u=%d", sym.symbol, event.U, event.u)
        if outcome is DepthOutcome.BROKE:
            self.stats.breaks += 1
            log.warning("%s: order book unsynced, resyncing: %s", sym.symbol, book.last_break)
            acc = self._acc(sym, minute)
            if acc is not None:
                acc.resyncs += 1
        sym.impact_minute = minute
        sym.impact_valid = outcome is DepthOutcome.APPLIED

    def _take_impact(self, sym: _Symbol) -> None:
        """The impact on the book right after the last depth event of ``sym.impact_minute``."""
        minute = sym.impact_minute
        sym.impact_minute = None
        acc = sym.open.get(minute) if minute is not None else None
        if acc is None or acc.impact_taken:
            return
        acc.impact = sym.book.impact_buy() if sym.impact_valid and sym.book.synced else None
        acc.impact_taken = True

    def _due(self, end: int, now_ms: int | None, final: bool) -> bool:
        if final or (now_ms is not None and now_ms >= end + self.grace_ms):
            return True
        progress = [self.coverage.progress(f) for f in self.families]  # type: ignore[arg-type]
        open_ = [p for p in progress if p is not None]
        return bool(open_) and all(p >= end + self.reorder_ms for p in open_)

    def _close(self, *, now_ms: int | None = None, final: bool = False) -> None:
        """Close every minute that is due, symbol by symbol, in order."""
        oldest = None
        for sym in self._sym.values():
            last_open = max(sym.open) if sym.open else None
            while sym.next_minute is not None:
                minute = sym.next_minute
                if final and (last_open is None or minute > last_open):
                    break
                if not self._due(minute + MINUTE_MS, now_ms, final):
                    break
                self._close_minute(sym, minute)
            if sym.next_minute is not None and (oldest is None or sym.next_minute < oldest):
                oldest = sym.next_minute
        if oldest is not None:
            self._check_at = oldest + MINUTE_MS + self.reorder_ms
            self.coverage.prune(oldest - MINUTE_MS)
            for sym in self._sym.values():
                sym.book.prune_periods(oldest - MINUTE_MS)

    def _close_minute(self, sym: _Symbol, minute: int) -> None:
        end = minute + MINUTE_MS
        if sym.impact_minute == minute:
            self._take_impact(sym)
        acc = sym.open.pop(minute, None) or MinuteAcc(minute)
        public_run = self.coverage.covering("public", minute)
        market_run = self.coverage.covering("market", minute)
        silent_kinds: set[str] = set()
        silent_streams = 0
        for intervals in sym.silent.values():
            overlapping = [k for k, start, stop in intervals if start < end and (stop is None or stop > minute)]
            if overlapping:
                silent_streams += 1
                silent_kinds.update(k for k in overlapping if k in SILENCE_BLANKS)
        carried = sym.last_ticker
        if carried is not None and (public_run is None or carried.E < public_run.min_E):
            carried = None  # not seen on the run that covers the minute: the book may have moved
        ctx = MinuteContext(
            public=public_run is not None and "public" in self.families,
            market=market_run is not None and "market" in self.families,
            subscribed=self.families,
            book=sym.book.synced_across(minute, end),
            silent=frozenset(silent_kinds),
            silent_streams=silent_streams,
            carried=carried,
        )
        self.rows[sym.symbol].append(close_minute(acc, ctx))
        self.stats.rows += 1
        if acc.last_ticker is not None:
            sym.last_ticker = acc.last_ticker
        sym.next_minute = end
        for stream, intervals in list(sym.silent.items()):
            sym.silent[stream] = [i for i in intervals if i[2] is None or i[2] > end]
