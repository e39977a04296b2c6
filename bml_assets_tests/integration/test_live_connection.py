"""The live collector's connection (``live/connection.py``) against a small WebSocket server on
127.0.0.1: frames with their local receive times, reconnection after a server close, a
server that stops answering pings, silent streams, and rotation without loss.

Every wait has a generous upper bound and asserts nothing about speed; the lower bounds
asserted (a backoff slept at least as long as it said) hold on any machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import socket
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from bml_assets.live.connection import (
    BACKOFF_MAX_S,
    BACKOFF_MIN_S,
    ConnectionEventKind,
    Family,
    StreamConnection,
    event_id,
    stream_names,
    stream_of,
    stream_url,
)

from .live_ws import Recorder, StreamServer, frame, now_ns

K = ConnectionEventKind


@contextlib.asynccontextmanager
async def running(
    base_url: str, family: Family, symbols: tuple[str, ...], recorder: Recorder, **options: Any
) -> AsyncIterator[StreamConnection]:
    connection = StreamConnection(base_url, family, symbols, recorder, **options)
    task = asyncio.create_task(connection.run())
    try:
        yield connection
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def ids(recorder: Recorder, stream: str, key: str) -> list[int]:
    out = []
    for _family, text, _ns in recorder.frames:
        message = json.loads(text)
        if message["stream"] == stream:
            out.append(message["data"][key])
    return out


# --- names and URLs --------------------------------------------------------------------------


def test_the_urls_name_every_stream_of_the_family_with_lowercase_symbols() -> None:
    assert stream_url("wss://fstream.binance.com", Family.PUBLIC, ["BTCUSDT", "ETHUSDT"]) == (
        "wss://fstream.binance.com/public/stream?streams="
        "btcusdt@depth@100ms/btcusdt@bookTicker/ethusdt@depth@100ms/ethusdt@bookTicker"
    )
    assert stream_url("ws://127.0.0.1:9/", Family.MARKET, ["BTCUSDT"]) == (
        "ws://127.0.0.1:9/market/stream?streams=btcusdt@aggTrade/btcusdt@markPrice@1s/btcusdt@forceOrder"
    )
    assert len(stream_names(Family.MARKET, ["BTCUSDT", "ETHUSDT"])) == 6
    with pytest.raises(ValueError, match="not a ws:// or wss:// URL") as err:
        stream_url("https://user:secret@host", Family.PUBLIC, ["BTCUSDT"])
    assert "secret" not in str(err.value) and "https://***@host" in str(err.value)


def test_a_frame_names_its_stream_and_event_id() -> None:
    depth = '{"stream":"btcusdt@depth@100ms","data":{"e":"depthUpdate","E":5,"U":10,"u":12,"pu":9}}'
    assert stream_of(depth) == "btcusdt@depth@100ms"
    assert event_id("btcusdt@depth@100ms", depth) == 12
    spaced = '{"data": {"e": "aggTrade", "a": 77, "E": 3}, "stream": "btcusdt@aggTrade"}'
    assert stream_of(spaced) == "btcusdt@aggTrade"
    assert event_id("btcusdt@aggTrade", spaced) == 77
    mark = frame("btcusdt@markPrice@1s", e="markPriceUpdate", E=1_000, T=9_999)
    assert event_id("btcusdt@markPrice@1s", mark) == 1_000  # E, not the funding time T
    assert stream_of("not json") is None
    assert event_id("btcusdt@depth@100ms", "not json") is None


def test_backoff_stays_between_half_a_second_and_five_seconds() -> None:
    connection = StreamConnection("ws://127.0.0.1:9", Family.PUBLIC, ["BTCUSDT"], Recorder(), rng=random.Random(3))
    for failures in range(12):
        delays = [connection.backoff_s(failures) for _ in range(300)]
        assert min(delays) >= BACKOFF_MIN_S == 0.5
        assert max(delays) <= min(BACKOFF_MAX_S, 0.5 * 2 ** (failures + 1))
    assert max(connection.backoff_s(0) for _ in range(300)) <= 1.0  # the first retry comes soon
    assert max(connection.backoff_s(8) for _ in range(300)) > 4.0  # later ones spread up to 5 s
    assert BACKOFF_MAX_S == 5.0


# --- against the server ------------------------------------------------------------------------


def test_frames_arrive_in_order_with_their_local_receive_times() -> None:
    async def scenario() -> None:
        async with StreamServer() as server:
            recorder = Recorder()
            async with running(server.base_url, Family.PUBLIC, ("BTCUSDT", "ETHUSDT"), recorder):
                peer = await server.wait_for_peers(1)
                assert peer.path == "/public/stream"
                assert peer.streams == (
                    "btcusdt@depth@100ms",
                    "btcusdt@bookTicker",
                    "ethusdt@depth@100ms",
                    "ethusdt@bookTicker",
                )
                texts = [
                    frame("btcusdt@depth@100ms", e="depthUpdate", E=1, U=1, u=2, pu=0),
                    frame("ethusdt@bookTicker", e="bookTicker", E=2, u=7, b="1", B="2", a="3", A="4"),
                    frame("btcusdt@depth@100ms", e="depthUpdate", E=3, U=3, u=4, pu=2),
                ]
                before = now_ns()
                for text in texts:
                    assert await server.send(stream_of(text), text) == 1
                await recorder.wait(lambda: len(recorder.frames) == 3)
                after = now_ns()
            assert [t for _f, t, _ns in recorder.frames] == texts  # the text as sent, untouched
            assert {f for f, _t, _ns in recorder.frames} == {Family.PUBLIC}
            times = [ns for _f, _t, ns in recorder.frames]
            assert before <= times[0] <= times[1] <= times[2] <= after
            assert recorder.kinds() == [K.CONNECTED, K.CLOSED]
            assert recorder.connection_events[0].symbols == ("BTCUSDT", "ETHUSDT")

    asyncio.run(scenario())


def test_a_server_side_close_is_reported_and_reconnected_after_the_backoff() -> None:
    async def scenario() -> None:
        async with StreamServer() as server:
            recorder = Recorder()
            async with running(server.base_url, Family.MARKET, ("BTCUSDT",), recorder):
                first = await server.wait_for_peers(1)
                await first.ws.close(code=1001, reason="going away")
                second = await server.wait_for_peers(2)
                await recorder.wait(lambda: recorder.kinds().count(K.CONNECTED) == 2)
                text = frame("btcusdt@aggTrade", e="aggTrade", E=5, a=1, p="1", q="1", T=5, m=True)
                await server.send("btcusdt@aggTrade", text)
                await recorder.wait(lambda: len(recorder.frames) == 1)
                assert second.streams == first.streams
            connected, dropped, reconnected = recorder.connection_events[:3]
            assert [connected.kind, dropped.kind, reconnected.kind] == [K.CONNECTED, K.DROPPED, K.CONNECTED]
            assert (connected.connection_id, dropped.connection_id, reconnected.connection_id) == (1, 1, 2)
            assert "the server closed the connection" in dropped.reason and "1001" in dropped.reason
            assert "going away" in dropped.reason
            assert dropped.retry_in_s is not None and 0.5 <= dropped.retry_in_s <= 1.0
            # It waited at least the backoff it announced (the event loop may wake a hair early).
            assert reconnected.local_ns - dropped.local_ns >= (dropped.retry_in_s - 0.01) * 1e9
            assert recorder.frames[0][1] == text
            assert connected.reason == "" and reconnected.reason.endswith("s after #1 dropped")

    asyncio.run(scenario())


def test_a_refused_connection_is_retried_until_the_server_is_there() -> None:
    async def scenario() -> None:
        with socket.socket() as s:  # a port nothing listens on, for now
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        recorder = Recorder()
        async with running(f"ws://127.0.0.1:{port}", Family.PUBLIC, ("BTCUSDT",), recorder):
            await recorder.wait(lambda: recorder.kinds().count(K.CONNECT_FAILED) >= 2)
            failures = [e for e in recorder.connection_events if e.kind is K.CONNECT_FAILED]
            assert [e.attempt for e in failures[:2]] == [1, 2]
            assert all(0.5 <= e.retry_in_s <= 5.0 for e in failures)
            assert "ConnectionRefusedError" in failures[0].reason or "Errno" in failures[0].reason
            assert failures[0].url.endswith("/public/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker")
            from websockets.asyncio.server import serve

            async def accept(ws: Any) -> None:
                await ws.wait_closed()

            async with serve(accept, "127.0.0.1", port):
                await recorder.wait(lambda: K.CONNECTED in recorder.kinds())

    asyncio.run(scenario())


def test_a_server_that_stops_answering_pings_is_dropped_and_reconnected() -> None:
    async def scenario() -> None:
        async with StreamServer() as server:
            recorder = Recorder()
            options = {"ping_interval_s": 0.2, "ping_timeout_s": 0.3, "close_timeout_s": 0.3}
            async with running(server.base_url, Family.PUBLIC, ("BTCUSDT",), recorder, **options):
                first = await server.wait_for_peers(1)
                await recorder.wait(lambda: K.CONNECTED in recorder.kinds())
                first.ws.transport.pause_reading()  # our pings are never read, so never answered
                await server.wait_for_peers(2)
                await recorder.wait(lambda: recorder.kinds().count(K.CONNECTED) == 2)
                first.ws.transport.resume_reading()
            dropped = next(e for e in recorder.connection_events if e.kind is K.DROPPED)
            assert dropped.connection_id == 1
            assert "keepalive ping timeout" in dropped.reason
            assert "closed from this side" in dropped.reason

    asyncio.run(scenario())


def test_a_silent_stream_is_reported_and_so_is_the_end_of_its_silence() -> None:
    async def scenario() -> None:
        async with StreamServer() as server:
            recorder = Recorder()
            thresholds = {"forceOrder": 0.3, "aggTrade": 60.0, "markPrice@1s": 60.0}
            async with running(
                server.base_url, Family.MARKET, ("BTCUSDT",), recorder, silence_thresholds=thresholds
            ) as connection:
                await server.wait_for_peers(1)
                async with server.feed({"btcusdt@aggTrade": "a", "btcusdt@markPrice@1s": "E"}, every_s=0.02):
                    await recorder.wait(lambda: len(recorder.silence_events) == 1)
                    silent = recorder.silence_events[0]
                    text = frame("btcusdt@forceOrder", e="forceOrder", E=1_700_000_000_500, o={"s": "BTCUSDT"})
                    await server.send("btcusdt@forceOrder", text)
                    await recorder.wait(lambda: len(recorder.silence_events) == 2)
                resumed = recorder.silence_events[1]
                assert connection.silences == 1
            connected = recorder.connection_events[0]
            assert (silent.stream, silent.symbol, silent.silent, silent.last_frame_ns) == (
                "btcusdt@forceOrder",
                "BTCUSDT",
                True,
                None,
            )
            assert silent.threshold_s == 0.3
            assert silent.local_ns - connected.local_ns >= 0.3e9  # not before its threshold
            assert (resumed.stream, resumed.silent) == ("btcusdt@forceOrder", False)
            forced = next(ns for _f, t, ns in recorder.frames if t == text)
            assert resumed.local_ns == forced  # ended by that very frame
            # The streams that delivered were never called silent.
            assert {e.stream for e in recorder.silence_events} == {"btcusdt@forceOrder"}

    asyncio.run(scenario())


def _rotation_run(
    streams: Mapping[str, str], rotations: int, refuse: int = 0, **options: Any
) -> tuple[Recorder, StreamServer, dict[str, int]]:
    async def scenario() -> tuple[Recorder, StreamServer, dict[str, int]]:
        async with StreamServer() as server:
            recorder = Recorder()
            async with running(server.base_url, Family.PUBLIC, ("BTCUSDT",), recorder, **options):
                await server.wait_for_peers(1)
                server.refuse = refuse  # the successors' first handshakes
                async with server.feed(dict(streams), every_s=0.005) as sent:
                    # Upper bounds only: a loaded machine (CI at load 11) took longer than 60 s.
                    await recorder.wait(lambda: recorder.kinds().count(K.ROTATED) >= rotations, timeout=180)
                final = dict(sent)
                # Everything sent arrives: nothing lost at the last handover either.
                await recorder.wait(
                    lambda: all((got := ids(recorder, s, k)) and got[-1] == final[s] for s, k in streams.items()),
                    timeout=90,
                )
            return recorder, server, final

    return asyncio.run(scenario())


def test_rotation_opens_the_successor_first_and_loses_or_doubles_no_frame() -> None:
    streams = {"btcusdt@depth@100ms": "u", "btcusdt@bookTicker": "u"}
    recorder, server, sent = _rotation_run(
        streams, rotations=2, rotate_after_s=0.6, overlap_drain_s=0.2, silence_thresholds={"depth@100ms": 60.0}
    )
    # The server saw each successor open before its predecessor closed.
    first, second, third = server.peers[:3]
    assert second.opened_seq < first.closed_seq
    assert third.opened_seq < second.closed_seq
    for stream, key in streams.items():
        assert ids(recorder, stream, key) == list(range(1, sent[stream] + 1)), stream
    rotated = [e for e in recorder.connection_events if e.kind is K.ROTATED][:2]
    assert [e.connection_id for e in rotated] == [2, 3]
    assert all(e.unproven == () for e in rotated)
    assert all(e.duplicates > 0 for e in rotated)  # both sockets carried the overlap: one copy went
    assert "overlapped #1 on every stream" in rotated[0].reason
    assert K.DROPPED not in recorder.kinds()
    started = [e for e in recorder.connection_events if e.kind is K.ROTATION_STARTED]
    assert started[0].reason == "replacing #1"


def test_a_successor_that_cannot_open_leaves_the_old_connection_serving_and_is_tried_again() -> None:
    streams = {"btcusdt@depth@100ms": "u", "btcusdt@bookTicker": "u"}
    recorder, server, sent = _rotation_run(
        streams,
        rotations=1,
        refuse=1,
        rotate_after_s=0.6,
        overlap_drain_s=0.2,
        silence_thresholds={"depth@100ms": 60.0},
    )
    assert server.refused == 1
    kinds = recorder.kinds()
    assert kinds[:4] == [K.CONNECTED, K.ROTATION_FAILED, K.ROTATION_STARTED, K.ROTATED]
    failed = recorder.connection_events[1]
    assert "503" in failed.reason and failed.connection_id == 2
    assert recorder.connection_events[3].connection_id == 3  # the next attempt took over
    for stream, key in streams.items():  # the old one served throughout: nothing lost or doubled
        assert ids(recorder, stream, key) == list(range(1, sent[stream] + 1)), stream
