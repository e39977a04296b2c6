"""One family's combined-stream connection for a shard of symbols, kept alive (SPEC §9).

What belongs here: the stream names and URL of a family (``/public``: depth@100ms and
bookTicker; ``/market``: aggTrade, markPrice@1s and forceOrder), and ``StreamConnection``,
which holds one logical connection open for as long as it runs: frames handed to a
``StreamHandler`` as received text with the local receive time, our pings (a server that
stops answering them is dropped), reconnection with jittered backoff after any drop, the
rotation before the exchange's 24-hour cut, a silence watchdog per subscribed stream, and a
typed report of each of these (``ConnectionEvent``, ``SilenceEvent``).

What stays out: the meaning of a frame (``frames.py`` parses it; here only its stream name
is read, and, while two connections overlap in a rotation, the event's id), the book, the
minutes, the spool, and the process that runs the shards (``process.py``).

Delivery contract. Frames of one ``StreamConnection`` reach ``on_frame`` in the order the
connection received them, each exactly once, from one socket at a time, with two
exceptions, both reported: between a ``DROPPED`` event and the next ``CONNECTED`` event of
the connection frames may have been lost (the gap); a ``ROTATED`` event whose
``unproven`` is not empty names streams on which the handover could not show that nothing
was lost. A rotation opens the successor first; while both are open every frame is
de-duplicated per stream by the event's own id (depth and bookTicker ``u``, aggTrade ``a``,
markPrice and forceOrder ``E``: each grows along its stream), so the handler sees a single
continuous stream and never a duplicate. The old socket is closed once the successor has
overlapped it on every stream the old one delivered during the overlap, plus a short drain
for the quiet streams, or after ``overlap_max_s`` at the latest.

Silence thresholds (seconds without a frame on a stream while its connection is open; the
end of a silence is reported with the first frame after it):

- ``markPrice@1s``: 5. It is pushed every second whatever the market does, so five missed
  pushes cannot be a quiet market; it also vouches for its connection, which carries the
  quiet streams below.
- ``depth@100ms`` and ``bookTicker``: 10. Market makers move the book of every listed
  perpetual many times a second; ten seconds without a change is an outage, not calm.
- ``aggTrade``: 300. A thin perpetual can go a minute or two without a trade; five
  minutes without one is rare enough to be worth a report (a stream on the wrong path is
  silent from its start and is reported after five minutes).
- ``forceOrder``: 21600 (6 h). Liquidations of one symbol can be hours apart on a calm
  day, so no short threshold can tell a wrong path from a calm market; its connection's
  markPrice@1s vouches for the connection within 5 s, and a six-hour report catches a
  stream that is silent for its own reason over a day.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import validate_symbol

log = logging.getLogger(__name__)


class Family(StrEnum):
    """The two connection families of SPEC §9, named as their URL path."""

    PUBLIC = "public"
    MARKET = "market"


# The stream kinds of each family, in URL order: ``{symbol}@{kind}``.
FAMILY_STREAMS: Final[Mapping[Family, tuple[str, ...]]] = {
    Family.PUBLIC: ("depth@100ms", "bookTicker"),
    Family.MARKET: ("aggTrade", "markPrice@1s", "forceOrder"),
}
SILENCE_THRESHOLDS_S: Final[Mapping[str, float]] = {
    "depth@100ms": 10.0,
    "bookTicker": 10.0,
    "markPrice@1s": 5.0,
    "aggTrade": 300.0,
    "forceOrder": 6 * 3600.0,
}
# The field of each stream's event that grows along the stream (the rotation's de-duplication key).
_EVENT_ID_FIELD: Final[Mapping[str, str]] = {
    "depth": "u",
    "bookTicker": "u",
    "aggTrade": "a",
    "markPrice": "E",
    "forceOrder": "E",
}

DEFAULT_ROTATE_AFTER_S: Final = 23 * 3600 + 50 * 60
# Our pings: a server that answers none for PING_INTERVAL + PING_TIMEOUT seconds is dropped.
DEFAULT_PING_INTERVAL_S: Final = 10.0
DEFAULT_PING_TIMEOUT_S: Final = 10.0
DEFAULT_OPEN_TIMEOUT_S: Final = 10.0
DEFAULT_CLOSE_TIMEOUT_S: Final = 2.0
BACKOFF_MIN_S: Final = 0.5
BACKOFF_MAX_S: Final = 5.0
DEFAULT_OVERLAP_DRAIN_S: Final = 1.0
DEFAULT_OVERLAP_MAX_S: Final = 30.0
_STREAM_PREFIX: Final = '{"stream":"'


def stream_names(family: Family, symbols: Iterable[str]) -> tuple[str, ...]:
    """The combined-stream names of ``family`` for ``symbols`` (lowercase symbol, SPEC §9)."""
    return tuple(f"{validate_symbol(s).lower()}@{kind}" for s in symbols for kind in FAMILY_STREAMS[Family(family)])


def stream_url(ws_base_url: str, family: Family, symbols: Iterable[str]) -> str:
    """``{ws_base_url}/{family}/stream?streams=a/b/c``."""
    parts = urlsplit(ws_base_url)
    if parts.scheme not in ("ws", "wss") or not parts.netloc:
        raise ValueError(f"WebSocket base URL {redact_url(ws_base_url)!r} is not a ws:// or wss:// URL")
    names = stream_names(family, symbols)
    if not names:
        raise ValueError("a connection needs at least one symbol")
    return f"{ws_base_url.rstrip('/')}/{Family(family).value}/stream?streams={'/'.join(names)}"


def stream_of(text: str) -> str | None:
    """The ``stream`` of a combined-stream frame, read without parsing the rest of it
    (the exchange writes it first); None when the frame names none."""
    if text.startswith(_STREAM_PREFIX):
        end = text.find('"', len(_STREAM_PREFIX))
        return text[len(_STREAM_PREFIX) : end] if end > 0 else None
    try:  # another server's spacing or key order
        name = json.loads(text).get("stream")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def event_id(stream: str, text: str) -> int | None:
    """The growing id of a frame's event on ``stream`` (see ``_EVENT_ID_FIELD``); None when the
    frame is not JSON or lacks it. Only parsed while two connections overlap."""
    kind = stream.partition("@")[2].partition("@")[0]
    key = _EVENT_ID_FIELD.get(kind)
    if key is None:
        return None
    try:
        value = json.loads(text)["data"][key]
    except (ValueError, TypeError, KeyError):
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# --- what is reported ---------------------------------------------------------------------------


class ConnectionEventKind(StrEnum):
    CONNECTED = "connected"  # open; after a DROPPED it ends the gap
    CONNECT_FAILED = "connect_failed"  # an attempt failed; the next one in retry_in_s
    DROPPED = "dropped"  # the connection ended unasked: frames may be lost until CONNECTED
    ROTATION_STARTED = "rotation_started"  # the successor is open; both deliver, de-duplicated
    ROTATED = "rotated"  # the predecessor is closed; the successor carries on
    ROTATION_FAILED = "rotation_failed"  # the successor could not take over; the old one carries on
    CLOSED = "closed"  # closed because the process stops


@dataclass(frozen=True)
class ConnectionEvent:
    """What happened to the connection of ``family`` for ``symbols`` (shard ``shard``).

    ``connection_id`` counts the sockets this ``StreamConnection`` opened (1, 2, …); ``url``
    is redacted. ``retry_in_s``: the backoff before the next attempt (CONNECT_FAILED, DROPPED,
    ROTATION_FAILED). ``attempt``: failed attempts in a row so far. ``duplicates``: frames
    dropped as duplicates during a rotation's overlap; ``unproven``: streams whose handover
    could not be shown lossless (ROTATED)."""

    kind: ConnectionEventKind
    family: Family
    shard: int
    symbols: tuple[str, ...]
    connection_id: int
    local_ns: int
    url: str
    reason: str = ""
    retry_in_s: float | None = None
    attempt: int = 0
    duplicates: int = 0
    unproven: tuple[str, ...] = ()


@dataclass(frozen=True)
class SilenceEvent:
    """A subscribed stream went silent (``silent``) or spoke again (not ``silent``).

    ``last_frame_ns``: local time of the stream's last frame before the silence (None: none
    since the process started); ``local_ns``: when the silence was noticed, or the receive
    time of the frame that ended it."""

    family: Family
    shard: int
    stream: str
    symbol: str
    silent: bool
    threshold_s: float
    last_frame_ns: int | None
    local_ns: int


class StreamHandler(Protocol):
    """Receives what a ``StreamConnection`` delivers; called on the event loop's thread, so it
    must be quick (no I/O that waits) and needs no lock."""

    def on_frame(self, family: Family, text: str, local_ns: int) -> None: ...

    def on_connection(self, event: ConnectionEvent) -> None: ...

    def on_silence(self, event: SilenceEvent) -> None: ...


# --- the connection -----------------------------------------------------------------------------


@dataclass
class _StreamState:
    name: str
    symbol: str
    threshold_ns: int
    threshold_s: float
    last_ns: int | None = None  # wall clock of the last frame (reported)
    last_mono_ns: int | None = None  # monotonic clock of the last frame (measured)
    silent: bool = False


@dataclass(eq=False)
class _Socket:
    ws: ClientConnection
    connection_id: int
    opened_mono: float  # loop time
    reader: asyncio.Task[None] | None = None
    frames: int = 0
    closed_because: str = ""  # set when its reader ends


@dataclass
class _Handover:
    """The overlap of a rotation: per stream, the last id delivered (either socket), the
    highest id the old socket delivered and the lowest the new one did."""

    old: _Socket
    new: _Socket | None = None  # None while it is being opened: the old socket's ids are tracked already
    last: dict[str, int] = field(default_factory=dict)
    old_max: dict[str, int] = field(default_factory=dict)
    new_min: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    joined: asyncio.Event = field(default_factory=asyncio.Event)

    def admit(self, sock: _Socket, stream: str | None, text: str) -> bool:
        """Whether to deliver the frame; records the overlap."""
        key = None if stream is None else event_id(stream, text)
        if key is None or stream is None:
            return True  # nothing to compare: delivered (a bad frame is the parser's to report)
        if sock is self.old:
            if key > self.old_max.get(stream, key - 1):
                self.old_max[stream] = key
        elif sock is self.new and stream not in self.new_min:
            self.new_min[stream] = key
        last = self.last.get(stream)
        if last is not None and key <= last:
            self.duplicates += 1
            admitted = False
        else:
            self.last[stream] = key
            admitted = True
        if self.is_joined():
            self.joined.set()
        return admitted

    def is_joined(self) -> bool:
        """The new socket delivers, and has overlapped the old one on every stream the old one
        delivered during the overlap."""
        return self.new is not None and self.new.frames > 0 and not self.unproven()

    def unproven(self) -> tuple[str, ...]:
        """Streams the old socket delivered during the overlap that the new one has not yet
        overlapped (its first id above the old one's last)."""
        return tuple(s for s, old_max in self.old_max.items() if s not in self.new_min or self.new_min[s] > old_max)


class StreamConnection:
    """The connection of one family for one shard of symbols, kept open by ``run()`` until it
    is cancelled (see the module docstring for what it guarantees and reports).

    ``rotate_after_s``: the age at which a connection is replaced (``BML_LIVE_ROTATE_SECONDS``).
    ``silence_thresholds``: seconds by stream kind, default ``SILENCE_THRESHOLDS_S``.
    ``rng`` draws the backoff jitter. The other knobs are for tests."""

    def __init__(
        self,
        ws_base_url: str,
        family: Family,
        symbols: Sequence[str],
        handler: StreamHandler,
        *,
        shard: int = 0,
        rotate_after_s: float = DEFAULT_ROTATE_AFTER_S,
        ping_interval_s: float = DEFAULT_PING_INTERVAL_S,
        ping_timeout_s: float = DEFAULT_PING_TIMEOUT_S,
        open_timeout_s: float = DEFAULT_OPEN_TIMEOUT_S,
        close_timeout_s: float = DEFAULT_CLOSE_TIMEOUT_S,
        silence_thresholds: Mapping[str, float] | None = None,
        overlap_drain_s: float = DEFAULT_OVERLAP_DRAIN_S,
        overlap_max_s: float = DEFAULT_OVERLAP_MAX_S,
        rng: random.Random | None = None,
    ) -> None:
        if rotate_after_s <= 0:
            raise ValueError(f"rotate_after_s must be > 0, got {rotate_after_s}")
        self.family = Family(family)
        self.symbols = tuple(symbols)
        self.shard = shard
        self.handler = handler
        self._url = stream_url(ws_base_url, self.family, self.symbols)
        self.url = redact_url(self._url)
        self.rotate_after_s = float(rotate_after_s)
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self.open_timeout_s = open_timeout_s
        self.close_timeout_s = close_timeout_s
        self.overlap_drain_s = overlap_drain_s
        self.overlap_max_s = overlap_max_s
        self._rng = rng if rng is not None else random.Random()
        thresholds = {**SILENCE_THRESHOLDS_S, **(silence_thresholds or {})}
        self._streams: dict[str, _StreamState] = {}
        for symbol in self.symbols:
            for kind in FAMILY_STREAMS[self.family]:
                name = f"{symbol.lower()}@{kind}"
                seconds = float(thresholds[kind])
                self._streams[name] = _StreamState(name, symbol, round(seconds * 1e9), seconds)
        self._watch_every_s = min(1.0, max(0.02, min(s.threshold_s for s in self._streams.values()) / 5))
        self._current: _Socket | None = None
        self._handover: _Handover | None = None
        self._connected_mono_ns: int | None = None  # None while no socket is open
        self._opened = 0
        # Counters for the process's summary.
        self.frames = 0
        self.duplicates = 0
        self.drops = 0
        self.rotations = 0
        self.silences = 0

    @property
    def streams(self) -> tuple[str, ...]:
        return tuple(self._streams)

    def backoff_s(self, failures: int) -> float:
        """Jittered exponential backoff within [0.5, 5] s (SPEC §9): uniform between 0.5 s and
        min(5, 0.5 · 2^(failures+1)) s; the jitter spreads the reconnects of many shards."""
        ceiling = min(BACKOFF_MAX_S, BACKOFF_MIN_S * 2 ** (failures + 1))
        return self._rng.uniform(BACKOFF_MIN_S, ceiling)

    # ---- reporting

    def _report(self, kind: ConnectionEventKind, connection_id: int, **kw: Any) -> None:
        event = ConnectionEvent(
            kind, self.family, self.shard, self.symbols, connection_id, time.time_ns(), self.url, **kw
        )
        log.log(_LOG_LEVELS.get(kind, logging.INFO), "%s", describe_connection_event(event))
        try:
            self.handler.on_connection(event)
        except Exception:  # a handler's bug must not take the connection down
            log.exception("the handler failed on %s", event)

    # ---- running

    async def run(self) -> None:
        """Hold the connection until cancelled; then close it and report CLOSED."""
        watchdog = asyncio.create_task(self._watch(), name=f"silence watchdog {self.family} shard {self.shard}")
        try:
            await self._supervise()
        finally:
            watchdog.cancel()
            open_sockets = [self._current, None if self._handover is None else self._handover.new]
            self._handover = None
            self._current = None
            self._connected_mono_ns = None
            for sock in open_sockets:
                if sock is not None:
                    await self._close(sock)
                    self._report(ConnectionEventKind.CLOSED, sock.connection_id, reason="the collector stops")
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _supervise(self) -> None:
        """Connect, serve until a drop, back off, connect again: forever."""
        failures = 0  # failed attempts in a row
        delay = 0.0
        dropped: tuple[int, int] | None = None  # (connection id, local ns) of the last drop
        while True:
            if delay:
                await asyncio.sleep(delay)
            try:
                sock = await self._open()
            except Exception as exc:
                failures += 1
                delay = self.backoff_s(failures - 1)
                self._report(
                    ConnectionEventKind.CONNECT_FAILED,
                    self._opened,
                    reason=_describe(exc),
                    retry_in_s=delay,
                    attempt=failures,
                )
                continue
            failures = 0
            self._connected_mono_ns = time.monotonic_ns()
            again = (
                "" if dropped is None else f"{(time.time_ns() - dropped[1]) / 1e9:.2f} s after #{dropped[0]} dropped"
            )
            self._report(ConnectionEventKind.CONNECTED, sock.connection_id, reason=again)
            last, reason = await self._serve(sock)
            self._current = None
            self._connected_mono_ns = None
            self.drops += 1
            delay = self.backoff_s(0)
            dropped = (last.connection_id, time.time_ns())
            self._report(ConnectionEventKind.DROPPED, last.connection_id, reason=reason, retry_in_s=delay)

    async def _open(self) -> _Socket:
        self._opened += 1
        connection_id = self._opened
        ws = await connect(
            self._url,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_timeout_s,
            open_timeout=self.open_timeout_s,
            close_timeout=self.close_timeout_s,
        )
        return _Socket(ws, connection_id, asyncio.get_running_loop().time())

    async def _serve(self, sock: _Socket) -> tuple[_Socket, str]:
        """Deliver the frames of ``sock`` and of its successors (rotations) until one drops:
        that socket, and why it dropped."""
        self._current = sock
        sock.reader = asyncio.create_task(self._read(sock), name=f"read {self.family} #{sock.connection_id}")
        loop = asyncio.get_running_loop()
        rotate_at = sock.opened_mono + self.rotate_after_s
        rotation_failures = 0
        current = sock
        while True:
            assert current.reader is not None
            done, _ = await asyncio.wait({current.reader}, timeout=max(0.0, rotate_at - loop.time()))
            if current.reader in done:
                return current, current.closed_because or "the connection ended"
            successor = await self._rotate(current)
            if successor is None:
                rotation_failures += 1
                rotate_at = loop.time() + self.backoff_s(rotation_failures - 1)
            else:
                rotation_failures = 0
                current = successor
                rotate_at = current.opened_mono + self.rotate_after_s

    async def _rotate(self, old: _Socket) -> _Socket | None:
        """Open a successor, overlap, hand over, close ``old``; the successor, or None when it
        could not take over (reported; ``old`` carries on)."""
        # Tracked from before the successor subscribes: a frame the old socket delivers from
        # then on may come again on the new one.
        handover = _Handover(old)
        self._handover = handover
        try:
            new = await self._open()
        except Exception as exc:
            self._handover = None
            self._report(ConnectionEventKind.ROTATION_FAILED, self._opened, reason=_describe(exc))
            return None
        assert old.reader is not None
        if old.reader.done():  # nothing overlapped: a gap, reported as the old socket's drop
            self._handover = None
            await self._close(new)
            self._report(
                ConnectionEventKind.ROTATION_FAILED, new.connection_id, reason=f"#{old.connection_id} dropped first"
            )
            return None
        handover.new = new
        self._report(ConnectionEventKind.ROTATION_STARTED, new.connection_id, reason=f"replacing #{old.connection_id}")
        new.reader = asyncio.create_task(self._read(new), name=f"read {self.family} #{new.connection_id}")
        try:
            reason = await self._overlap(handover)
        finally:
            self._handover = None
        if new.reader.done():
            await self._close(new)
            reason = f"#{new.connection_id} dropped during the overlap: {new.closed_because}"
            self._report(ConnectionEventKind.ROTATION_FAILED, new.connection_id, reason=reason)
            return None
        self._current = new
        await self._close(old)
        self.rotations += 1
        self.duplicates += handover.duplicates
        self._report(
            ConnectionEventKind.ROTATED,
            new.connection_id,
            reason=reason,
            duplicates=handover.duplicates,
            unproven=handover.unproven(),
        )
        return new

    async def _overlap(self, handover: _Handover) -> str:
        """Wait until the new socket has joined the old one and the drain has passed, or the
        overlap's limit, or either socket drops; says which."""
        old, new = handover.old, handover.new
        assert new is not None and old.reader is not None and new.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.overlap_max_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return f"the overlap reached its limit of {self.overlap_max_s:g} s"
            if handover.is_joined():
                # The quiet streams: whatever the old socket sent before the new one subscribed
                # arrives within the drain.
                done, _ = await asyncio.wait({old.reader, new.reader}, timeout=min(self.overlap_drain_s, remaining))
                if new.reader in done:
                    return ""
                if old.reader in done:
                    return f"#{old.connection_id} dropped during the overlap: {old.closed_because}"
                if handover.is_joined():
                    return f"#{new.connection_id} overlapped #{old.connection_id} on every stream"
                continue
            handover.joined.clear()
            joined = asyncio.create_task(handover.joined.wait())
            try:
                done, _ = await asyncio.wait(
                    {joined, old.reader, new.reader}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                joined.cancel()
            if new.reader in done:
                return ""
            if old.reader in done:
                return f"#{old.connection_id} dropped during the overlap: {old.closed_because}"

    async def _read(self, sock: _Socket) -> None:
        """Hand every frame of ``sock`` over until it closes."""
        ws = sock.ws
        try:
            while True:
                message = await ws.recv()
                local_ns = time.time_ns()  # first thing after the frame is ours
                self._on_message(sock, message, local_ns)
        except ConnectionClosed as exc:
            sock.closed_because = _closed_because(exc)
        except Exception as exc:
            sock.closed_because = _describe(exc)

    def _on_message(self, sock: _Socket, message: str | bytes, local_ns: int) -> None:
        text = message if isinstance(message, str) else message.decode("utf-8", errors="replace")
        sock.frames += 1
        name = stream_of(text)
        state = self._streams.get(name) if name is not None else None
        if state is not None:
            if state.silent:
                state.silent = False
                self._report_silence(state, silent=False, local_ns=local_ns)
            state.last_ns = local_ns
            state.last_mono_ns = time.monotonic_ns()
        handover = self._handover
        if handover is not None:
            if not handover.admit(sock, name, text):
                return
        elif sock is not self._current:
            return  # a closing predecessor's last frames: its successor delivers them
        self.frames += 1
        try:
            self.handler.on_frame(self.family, text, local_ns)
        except Exception:  # a handler's bug must not stop the frames of every other symbol
            log.exception("the handler failed on a %s frame of %s", name or "stream-less", self.url)

    async def _close(self, sock: _Socket) -> None:
        if sock.reader is not None and not sock.reader.done():
            sock.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sock.reader
        with contextlib.suppress(Exception):
            await sock.ws.close()

    # ---- silence

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self._watch_every_s)
            self.check_silence()

    def check_silence(self) -> None:
        """Report each stream silent past its threshold while its connection was open."""
        connected = self._connected_mono_ns
        if connected is None:
            return  # a drop is reported as such, not as silences
        now = time.monotonic_ns()
        for state in self._streams.values():
            if state.silent:
                continue
            since = connected if state.last_mono_ns is None else max(state.last_mono_ns, connected)
            if now - since > state.threshold_ns:
                state.silent = True
                self._report_silence(state, silent=True, local_ns=time.time_ns())

    def _report_silence(self, state: _StreamState, *, silent: bool, local_ns: int) -> None:
        event = SilenceEvent(
            self.family, self.shard, state.name, state.symbol, silent, state.threshold_s, state.last_ns, local_ns
        )
        if silent:
            self.silences += 1
            log.warning("%s", describe_silence_event(event))
        else:
            log.info("%s", describe_silence_event(event))
        try:
            self.handler.on_silence(event)
        except Exception:
            log.exception("the handler failed on %s", event)


_LOG_LEVELS: Final[Mapping[ConnectionEventKind, int]] = {
    ConnectionEventKind.CONNECT_FAILED: logging.WARNING,
    ConnectionEventKind.DROPPED: logging.WARNING,
    ConnectionEventKind.ROTATION_FAILED: logging.WARNING,
}


def describe_connection_event(event: ConnectionEvent) -> str:
    """One line for a log."""
    text = f"{event.family} shard {event.shard} #{event.connection_id} {event.kind.value}"
    if event.reason:
        text += f": {event.reason}"
    if event.retry_in_s is not None:
        text += f"; next attempt in {event.retry_in_s:.2f} s"
    if event.attempt:
        text += f" (failure {event.attempt} in a row)"
    if event.kind is ConnectionEventKind.ROTATED:
        text += f"; {event.duplicates} duplicate frame(s) dropped"
        if event.unproven:
            text += f"; handover not shown lossless on {', '.join(event.unproven)}"
    if event.kind in (ConnectionEventKind.CONNECTED, ConnectionEventKind.CONNECT_FAILED):
        text += f" ({event.url})"
    return text


def describe_silence_event(event: SilenceEvent) -> str:
    """One line for a log."""
    if event.silent:
        last = "no frame yet" if event.last_frame_ns is None else f"last frame {_utc(event.last_frame_ns)}"
        return f"{event.stream} silent for more than {event.threshold_s:g} s ({last})"
    since = "" if event.last_frame_ns is None else f" after {(event.local_ns - event.last_frame_ns) / 1e9:.1f} s"
    return f"{event.stream} delivers again{since}"


def _utc(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d} UTC"


def _closed_because(exc: ConnectionClosed) -> str:
    """Who closed, then websockets' own words (the close codes and reasons, or that no close
    frame came)."""
    if exc.rcvd is not None and (exc.sent is None or exc.rcvd_then_sent):
        who = "the server closed the connection"
    elif exc.sent is not None:
        who = "closed from this side"  # e.g. our keepalive ping timed out
    else:
        who = "the connection was lost"
    return redact_url(f"{who} ({exc})")


def _describe(exc: BaseException) -> str:
    return redact_url(f"{type(exc).__name__}: {exc}")
