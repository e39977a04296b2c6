"""The replay's WebSocket server: combined streams on a port of their own.

What belongs here: ``WsOptions`` (port, recording, pings, buffer limit, lifetime),
``StreamCatalog`` (which source serves a stream), ``WsService`` (a ``websockets`` server on its own thread and event loop, started
and stopped by ``ReplayServer``), the sessions it serves, carrying out the
WebSocket fault rules, and ``WsLogEntry``, its log of what happened to every
connection.

Per connection: the path picks the family (``/public/stream``,
``/market/stream``; any other path is a 404 at the handshake), ``streams=`` the
streams. From the moment of the handshake (market time), every frame of every
stream the connection asked for is sent when the market clock reaches its time,
in time order (``streams.Frame.order``; a frame timed at the opening instant
included), polled every ``poll_s`` of wall time, so
a fixed clock sends nothing until a test moves it, and a jump sends everything
in between. A stream on the wrong path, of an unknown symbol or kind, or of a
symbol the recording replays but lacks: accepted, then silent, as the exchange
does. A clock set back restarts the connection's stream from the new now.

The server pings every ``ping_interval_s`` and drops a client that has not
answered within ``ping_timeout_s`` (Binance: 3 and 10 minutes); it answers the
client's pings (``websockets`` does) unless a ``ws_no_pong`` rule says otherwise.
A connection lives ``max_lifetime_ms`` of market time (Binance cuts at 24 h): the
frames before its end are sent, then it is closed (1001). A client that does not read fills the server's write buffer;
past ``write_buffer_limit`` unsent bytes (or a ``ws_slow_consumer`` rule's limit)
the server drops the connection without a close frame, as the exchange drops slow
consumers. Client messages ``SUBSCRIBE``/``UNSUBSCRIBE``/``LIST_SUBSCRIPTIONS``
are answered as Binance does (``{"result": …, "id": …}``), anything else with
``{"error": {"code": 2, "msg": …}}``.

It guards itself as the HTTP side does: loopback only unless ``allow_public``, a
``Host`` header naming a loopback host or its own (421 otherwise), and no browser
``Origin`` (403): a web page cannot open it.

What stays out: what the streams carry (``synthetic.py``, ``recording.py``),
stream names (``streams.py``), the fault rules (``faults.py``), the HTTP side
(``server.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any, Protocol

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame as WireFrame
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.protocol import State

from bml_assets.domain.minutes import DAY_MS
from bml_assets.replay.faults import DEFAULT_SLOW_CONSUMER_BYTES, FaultKind, FaultSet
from bml_assets.replay.hosts import host_allowed
from bml_assets.replay.ws.recording import RecordingReplay
from bml_assets.replay.ws.streams import PATHS, Family, Frame, StreamName, parse_stream, requested_streams
from bml_assets.replay.ws.synthetic import SyntheticStreams

log = logging.getLogger(__name__)

_STEP_MS = 1000  # market time sent per batch before yielding to other connections
_SLOW_CONSUMER_SNDBUF = 4096


class FrameSource(Protocol):
    def frames(self, stream: StreamName, after_ms: int, until_ms: int) -> list[Frame]: ...


class StreamCatalog:
    """Which source serves a stream: the recording its own streams (a symbol it
    replays gets nothing else: no synthetic frames mixed into real ones), else the
    synthetic market the kinds it synthesises for its universe; None: silent."""

    def __init__(self, synthetic: SyntheticStreams | None, recording: RecordingReplay | None) -> None:
        self.synthetic = synthetic
        self.recording = recording

    def __call__(self, stream: StreamName) -> FrameSource | None:
        if self.recording is not None:
            if self.recording.serves(stream):
                return self.recording
            if stream.symbol in self.recording.symbols:
                return None
        if self.synthetic is not None and self.synthetic.serves(stream):
            return self.synthetic
        return None


@dataclass(frozen=True)
class WsOptions:
    """How the WebSocket side runs. ``port`` 0 picks a free one. ``recording``: a
    ``<local_ns> <json>`` file replayed from ``recording_origin`` (a datetime or ms;
    default: the market clock's now when the server starts)."""

    port: int = 0
    recording: Path | None = None
    recording_origin: datetime | int | None = None
    ping_interval_s: float | None = 180.0
    ping_timeout_s: float | None = 600.0
    write_buffer_limit: int = 16 << 20
    max_lifetime_ms: int = DAY_MS
    poll_s: float = 0.01

    def __post_init__(self) -> None:
        if self.write_buffer_limit < 1 or self.max_lifetime_ms < 1 or not self.poll_s > 0:
            raise ValueError("write_buffer_limit and max_lifetime_ms must be ≥ 1 and poll_s > 0")


@dataclass(frozen=True)
class WsLogEntry:
    """One thing that happened to a connection: ``open``, ``closed`` (detail: the
    close code), ``dropped_depth`` (detail: the event's stream, U and u),
    ``silenced`` (first silenced frame of a stream), ``fault_close``,
    ``fault_reset``, ``pong_withheld``, ``slow_consumer`` (detail: unsent bytes),
    ``lifetime``, ``request`` (a client message)."""

    wall: float
    connection: int
    path: str
    event: str
    detail: str = ""


@dataclass
class _Session:
    """One connection's state; created in the handshake so its start is the moment
    the client's connect returns."""

    number: int
    target: str  # request path with its query
    family: Family
    opened_ms: int
    opened_after: int  # rules added before it opened
    names: list[str] = field(default_factory=list)
    silenced: set[str] = field(default_factory=set)
    slow_limit: int | None = None


class _Connection(ServerConnection):
    """A server connection that can hold back its pongs (``ws_no_pong``)."""

    session: _Session | None = None
    withhold_pong: Callable[[_Session], bool] | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        send_frame = self.protocol.send_frame

        def send_frame_unless_withheld(frame: WireFrame) -> None:
            # The Sans-I/O protocol answers a ping inside its frame parser; the
            # pong is dropped here, before it reaches the wire.
            withhold = self.withhold_pong
            if frame.opcode is Opcode.PONG and self.session is not None and withhold and withhold(self.session):
                return
            send_frame(frame)

        self.protocol.send_frame = send_frame_unless_withheld  # type: ignore[method-assign]


class WsService:
    """The combined-stream endpoints over ``resolve``'s sources (see the module docstring)."""

    def __init__(
        self,
        resolve: Callable[[StreamName], FrameSource | None],
        now_ms: Callable[[], int],
        faults: FaultSet,
        options: WsOptions,
        *,
        host: str = "127.0.0.1",
        allow_public: bool = False,
    ) -> None:
        self.resolve = resolve
        self.now_ms = now_ms
        self.faults = faults
        self.options = options
        self.host = host
        self.allow_public = allow_public
        self._numbers = itertools.count(1)
        self._log: list[WsLogEntry] = []
        self._log_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._server: Server | None = None
        self._port: int | None = None

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._main(ready))
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="bml-replay-ws", daemon=True)
        self._thread.start()
        ready.wait(timeout=30)
        if failure or self._port is None:
            self._thread.join(timeout=5)
            self._thread = None
            if failure and isinstance(failure[0], OSError):
                raise failure[0]  # the port is taken, the host unknown: as the HTTP side says it
            raise RuntimeError(f"the replay WebSocket server did not start: {failure[0] if failure else 'timeout'}")

    async def _main(self, ready: threading.Event) -> None:
        self._stop = asyncio.Event()
        # websockets waits for the buffer to drain above its high-water mark; ours
        # sits above the drop limit, so a stuck client is dropped, never waited for.
        high_water = self.options.write_buffer_limit * 2
        async with serve(
            self._handle,
            self.host,
            self.options.port,
            process_request=self._process_request,
            create_connection=_Connection,
            origins=[None],
            ping_interval=self.options.ping_interval_s,
            ping_timeout=self.options.ping_timeout_s,
            write_limit=high_water,
            max_queue=64,
            close_timeout=2,
        ) as server:
            self._server = server
            self._port = int(next(iter(server.sockets)).getsockname()[1])
            ready.set()
            await self._stop.wait()

    def stop(self) -> None:
        thread, loop, stop = self._thread, self._loop, self._stop
        self._thread = None
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)
        self._port = None

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the replay WebSocket server is not started")
        return self._port

    @property
    def log(self) -> list[WsLogEntry]:
        with self._log_lock:
            return list(self._log)

    def clear_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    def _record(self, session: _Session, event: str, detail: str = "") -> None:
        with self._log_lock:
            self._log.append(WsLogEntry(time.time(), session.number, session.target, event, detail))

    # --- handshake ----------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if not host_allowed(request.headers.get("Host"), self.host, allow_public=self.allow_public):
            return connection.respond(
                HTTPStatus.MISDIRECTED_REQUEST, "this replay server answers loopback host names only\n"
            )
        path, _, query = request.path.partition("?")
        family = PATHS.get(path)
        if family is None:
            return connection.respond(
                HTTPStatus.NOT_FOUND, "no such stream path: use /public/stream or /market/stream\n"
            )
        assert isinstance(connection, _Connection)
        connection.session = _Session(
            number=next(self._numbers),
            target=request.path,
            family=family,
            opened_ms=self.now_ms(),
            opened_after=self.faults.sequence,
            names=requested_streams(query),
        )
        connection.withhold_pong = self._withhold_pong
        return None

    def _withhold_pong(self, session: _Session) -> bool:
        rule = self.faults.ws_connection(
            FaultKind.WS_NO_PONG,
            session.target,
            self.now_ms(),
            opened_ms=session.opened_ms,
            opened_after=session.opened_after,
        )
        if rule is not None:
            self._record(session, "pong_withheld")
        return rule is not None

    # --- a connection ---------------------------------------------------------------------------

    async def _handle(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _Connection) and connection.session is not None
        session = connection.session
        self._record(session, "open", ",".join(session.names))
        reader = asyncio.create_task(self._read(connection, session))
        try:
            await self._pump(connection, session)
        except ConnectionClosed:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader
            self._record(session, "closed", str(connection.close_code))

    def _sources(self, session: _Session) -> list[tuple[StreamName, FrameSource]]:
        out = []
        for name in session.names:
            stream = parse_stream(name)
            if stream is None or stream.family is not session.family:
                continue
            source = self.resolve(stream)
            if source is not None:
                out.append((stream, source))
        return out

    async def _pump(self, connection: _Connection, session: _Session) -> None:
        cursor = session.opened_ms - 1  # frames from the opening instant on
        lifetime_end = session.opened_ms + self.options.max_lifetime_ms
        while True:
            if connection.state is not State.OPEN:  # closed by the client: nothing to send may ever tell
                return
            now = self.now_ms()
            if now < cursor:
                cursor = now
            close_at = self.faults.ws_close_at(
                session.target, opened_ms=session.opened_ms, opened_after=session.opened_after
            )
            # Frames before a close instant or the lifetime's end go out first.
            until = min(now, lifetime_end - 1, (close_at if close_at is not None else now + 1) - 1)
            while cursor < until:
                step = min(until, cursor + _STEP_MS)
                if not await self._send_range(connection, session, cursor, step):
                    return
                cursor = step
                await asyncio.sleep(0)
            if await self._fault_close(connection, session, now):
                return
            if now >= lifetime_end:
                self._record(session, "lifetime")
                await connection.close(1001, "connection lifetime reached")
                return
            await asyncio.sleep(self.options.poll_s)

    async def _send_range(self, connection: _Connection, session: _Session, after: int, until: int) -> bool:
        """Send the frames in ``(after, until]``; False when the connection was dropped."""
        frames: list[Frame] = []
        for stream, source in self._sources(session):
            frames.extend(source.frames(stream, after, until))
        if not frames:
            return True
        frames.sort(key=lambda f: f.order)
        check_faults = self.faults.has_ws_rules()
        limit = self._write_limit(connection, session, until) if check_faults else self.options.write_buffer_limit
        for frame in frames:
            if check_faults and self._held_back(session, frame):
                continue
            await connection.send(frame.text)
            unsent = connection.transport.get_write_buffer_size()
            if unsent > limit:
                self._record(session, "slow_consumer", str(unsent))
                connection.transport.abort()
                return False
        return True

    def _held_back(self, session: _Session, frame: Frame) -> bool:
        ids = (frame.first_id, frame.last_id) if frame.first_id is not None and frame.last_id is not None else None
        rule = self.faults.ws_frame(frame.stream, frame.event_ms, ids)
        if rule is None:
            return False
        if rule.kind is FaultKind.WS_DROP_DEPTH:
            self._record(session, "dropped_depth", f"{frame.stream} U={frame.first_id} u={frame.last_id}")
        elif frame.stream not in session.silenced:
            session.silenced.add(frame.stream)
            self._record(session, "silenced", frame.stream)
        return True

    def _write_limit(self, connection: _Connection, session: _Session, now: int) -> int:
        rule = self.faults.ws_connection(
            FaultKind.WS_SLOW_CONSUMER,
            session.target,
            now,
            opened_ms=session.opened_ms,
            opened_after=session.opened_after,
        )
        if rule is None:
            return self.options.write_buffer_limit
        limit = rule.limit_bytes if rule.limit_bytes is not None else DEFAULT_SLOW_CONSUMER_BYTES
        if session.slow_limit is None:
            # A small kernel buffer too, so the bytes a client leaves unread pile up
            # in the server's buffer instead of the socket's.
            sock = connection.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SLOW_CONSUMER_SNDBUF)
        session.slow_limit = limit
        return min(limit, self.options.write_buffer_limit)

    async def _fault_close(self, connection: _Connection, session: _Session, now: int) -> bool:
        for kind in (FaultKind.WS_CLOSE, FaultKind.WS_RESET):
            rule = self.faults.ws_connection(
                kind, session.target, now, opened_ms=session.opened_ms, opened_after=session.opened_after
            )
            if rule is None:
                continue
            if kind is FaultKind.WS_CLOSE:
                self._record(session, "fault_close")
                await connection.close(1001, "replay fault: connection closed")
            else:
                self._record(session, "fault_reset")
                connection.transport.abort()
            return True
        return False

    # --- client messages ---------------------------------------------------------------------------

    async def _read(self, connection: _Connection, session: _Session) -> None:
        async for message in connection:
            reply = self._answer(session, message)
            await connection.send(json.dumps(reply, separators=(",", ":")))

    def _answer(self, session: _Session, message: str | bytes) -> dict[str, Any]:
        try:
            request = json.loads(message)
        except (ValueError, UnicodeDecodeError) as exc:
            return {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}}
        if not isinstance(request, dict):
            return {"error": {"code": 2, "msg": "Invalid request: expected an object"}}
        request_id = request.get("id")
        method, params = request.get("method"), request.get("params", [])
        self._record(session, "request", str(method))
        if method == "LIST_SUBSCRIPTIONS":
            return {"result": list(session.names), "id": request_id}
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                return {
                    "error": {"code": 1, "msg": "Invalid value type: params must be a list of strings"},
                    "id": request_id,
                }
            for name in params:
                if method == "SUBSCRIBE" and name not in session.names:
                    session.names.append(name)
                elif method == "UNSUBSCRIBE" and name in session.names:
                    session.names.remove(name)
            return {"result": None, "id": request_id}
        return {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"}, "id": request_id}
