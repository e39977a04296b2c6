"""A minimal combined-stream WebSocket server for the live collector's tests (127.0.0.1, a free
port, in the test's own event loop), and a handler that records what a connection reports.

The server accepts ``/{family}/stream?streams=a/b/c``, remembers each connection (its path,
streams, and the order in which connections opened and closed) and sends what the test asks:
one frame to every open connection subscribed to its stream, or a steady feed of numbered
events. It is deliberately small: the replay server's WebSocket side is the full double.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve

from bml_assets.live.connection import ConnectionEvent, ConnectionEventKind, Family, SilenceEvent


def frame(stream: str, **data: Any) -> str:
    """A combined-stream frame as the exchange writes it (``stream`` first, no spaces)."""
    return json.dumps({"stream": stream, "data": data}, separators=(",", ":"))


@dataclass(eq=False)
class Peer:
    """One accepted connection."""

    number: int
    path: str
    streams: tuple[str, ...]
    ws: ServerConnection
    opened_seq: int
    closed_seq: int | None = None
    close_code: int | None = None  # as received from the client (None: no close frame came)
    done: asyncio.Event = field(default_factory=asyncio.Event)


class StreamServer:
    """``async with StreamServer() as server``: ``server.base_url`` is ``ws://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self._seq = itertools.count(1)
        self._server: Any = None
        self.port = 0
        self.connected = asyncio.Condition()
        self.refuse = 0  # the next this many handshakes are answered HTTP 503
        self.refused = 0

    @property
    def base_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> StreamServer:
        self._server = await serve(self._serve, "127.0.0.1", 0, process_request=self._gate)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    def _gate(self, ws: ServerConnection, request: Any) -> Any:
        if self.refuse > 0:
            self.refuse -= 1
            self.refused += 1
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path)
        streams = tuple(parse_qs(parts.query).get("streams", [""])[0].split("/"))
        peer = Peer(len(self.peers) + 1, parts.path, streams, ws, next(self._seq))
        async with self.connected:
            self.peers.append(peer)
            self.connected.notify_all()
        try:
            await ws.wait_closed()
        finally:
            peer.closed_seq = next(self._seq)
            peer.close_code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd is not None else None
            peer.done.set()

    def open_peers(self) -> list[Peer]:
        return [p for p in self.peers if p.closed_seq is None]

    async def wait_for_peers(self, count: int, timeout: float = 30) -> Peer:
        """Until ``count`` connections have been accepted in all; the last one."""
        async with asyncio.timeout(timeout):
            async with self.connected:
                await self.connected.wait_for(lambda: len(self.peers) >= count)
        return self.peers[count - 1]

    async def send(self, stream: str, text: str) -> int:
        """``text`` to every open connection subscribed to ``stream``; how many got it."""
        sent = 0
        for peer in self.open_peers():
            if stream in peer.streams:
                with contextlib.suppress(Exception):
                    await peer.ws.send(text)
                    sent += 1
        return sent

    @contextlib.asynccontextmanager
    async def feed(self, streams: dict[str, str], every_s: float = 0.005) -> AsyncIterator[dict[str, int]]:
        """Send numbered events on ``streams`` (name → id field, e.g. ``"u"``) to every open
        subscriber, one per stream every ``every_s``; yields the last id sent per stream."""
        sent: dict[str, int] = dict.fromkeys(streams, 0)
        stop = asyncio.Event()

        async def run() -> None:
            while not stop.is_set():
                for stream, key in streams.items():
                    n = sent[stream] + 1
                    await self.send(stream, frame(stream, E=1_700_000_000_000 + n, **{key: n} if key != "E" else {}))
                    sent[stream] = n  # counted once it went to every subscriber
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)

        task = asyncio.create_task(run())
        try:
            yield sent
        finally:
            # Stopped between frames, never cancelled inside a send: a frame counted as sent
            # reached every subscriber, and none went out uncounted.
            stop.set()
            await task


class Recorder:
    """A ``StreamHandler`` keeping every frame and report, with a way to wait for one."""

    def __init__(self) -> None:
        self.frames: list[tuple[Family, str, int]] = []
        self.connection_events: list[ConnectionEvent] = []
        self.silence_events: list[SilenceEvent] = []
        self._changed = asyncio.Event()

    def on_frame(self, family: Family, text: str, local_ns: int) -> None:
        self.frames.append((family, text, local_ns))
        self._changed.set()

    def on_connection(self, event: ConnectionEvent) -> None:
        self.connection_events.append(event)
        self._changed.set()

    def on_silence(self, event: SilenceEvent) -> None:
        self.silence_events.append(event)
        self._changed.set()

    def kinds(self) -> list[ConnectionEventKind]:
        return [e.kind for e in self.connection_events]

    async def wait(self, predicate: Any, timeout: float = 30) -> None:
        """Until ``predicate()`` holds (checked on every report); ``timeout`` is only an upper bound."""
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()


def now_ns() -> int:
    return time.time_ns()


class ThreadedStreamServer:
    """A ``StreamServer`` on an event loop of its own thread, for tests that run ``bml`` in a
    subprocess: ``with ThreadedStreamServer() as server: server.call(server.ws.send(...))``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="test ws server", daemon=True)
        self.ws: StreamServer

    def call(self, coroutine: Any, timeout: float = 30) -> Any:
        """Run ``coroutine`` on the server's loop; its result (``timeout``: an upper bound)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    @property
    def base_url(self) -> str:
        return self.ws.base_url

    def __enter__(self) -> ThreadedStreamServer:
        self._thread.start()

        async def start() -> StreamServer:
            return await StreamServer().__aenter__()

        self.ws = self.call(start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.call(self.ws.__aexit__())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
        self._loop.close()
