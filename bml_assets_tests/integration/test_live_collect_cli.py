"""``bml live-collect`` and ``bml run-daemon``'s collector, end to end in subprocesses: the
WebSocket side is the small server of ``live_ws.py`` (in a thread), REST the replay server.

What the collector logs (stderr) is read as it comes; every wait has a generous upper bound
and nothing asserts how fast anything happened.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.lake import Lake
from bml_assets.orchestration.daemon import CollectorSupervisor
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .live_ws import ThreadedStreamServer, frame

_SCRIPT = Path(sys.executable).with_name("bml")
BML = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "bml_assets.cli"]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def replay() -> Iterator[ReplayServer]:
    with ReplayServer(market=SyntheticMarket(MarketConfig(seed=3, trades_per_day=200))) as server:
        yield server


@pytest.fixture
def ws() -> Iterator[ThreadedStreamServer]:
    with ThreadedStreamServer() as server:
        yield server


def _env(tmp_path: Path, replay: ReplayServer, ws: ThreadedStreamServer, **more: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BML_")}
    env.update(
        BML_SYMBOLS="BTCUSDT,ETHUSDT",
        BML_LAKE_ROOT=str(tmp_path / "lake"),
        BML_REST_BASE_URL=replay.base_url,
        BML_VISION_BASE_URL=replay.base_url,
        BML_WS_BASE_URL=ws.base_url,
        PYTHONWARNINGS="ignore",
    )
    return {**env, **more}


class Lines:
    """The lines of a pipe, collected by a thread, with a way to wait for one."""

    def __init__(self, pipe: object) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe: object) -> None:
        for line in pipe:  # type: ignore[attr-defined]
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = TIMEOUT_S) -> str:
        with self._changed:
            found = self._changed.wait_for(lambda: next((x for x in self.lines if text in x), None), timeout)
        assert found, f"no line with {text!r} in:\n" + "\n".join(self.lines)
        return found

    def text(self) -> str:
        self._thread.join(30)
        return "\n".join(self.lines)


def test_live_collect_with_a_duration_exits_0_after_a_clean_end(
    tmp_path: Path, replay: ReplayServer, ws: ThreadedStreamServer
) -> None:
    env = _env(tmp_path, replay, ws, BML_LIVE_SHARD_SIZE="1")
    result = subprocess.run(
        [*BML, "live-collect", "--duration", "2"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 symbol(s) (BTCUSDT,ETHUSDT) in 2 shard(s), stopped by duration" in result.stdout
    assert "frames: public 0, market 0" in result.stdout
    assert "clock: offset" in result.stdout
    peers = ws.ws.peers
    assert sorted(p.path for p in peers) == ["/market/stream"] * 2 + ["/public/stream"] * 2
    assert all(p.close_code == 1000 for p in peers)  # each closed by the collector with a close frame
    assert "connected" in result.stderr and "closed: the collector stops" in result.stderr


def test_sigterm_ends_it_cleanly_and_the_open_minutes_are_flushed(
    tmp_path: Path, replay: ReplayServer, ws: ThreadedStreamServer
) -> None:
    env = _env(tmp_path, replay, ws, BML_SYMBOLS="BTCUSDT")
    proc = subprocess.Popen(
        [*BML, "live-collect"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        stderr = Lines(proc.stderr)
        ws.call(ws.ws.wait_for_peers(2, timeout=TIMEOUT_S), timeout=TIMEOUT_S + 5)
        # A minute five minutes ahead (within the collector's clock check): the clock never
        # closes it before the stop, so only the final flush can write it.
        now_ms = time.time_ns() // 1_000_000
        minute_ms = now_ms - now_ms % 60_000 + 5 * 60_000
        texts = [
            frame(
                "btcusdt@aggTrade",
                e="aggTrade",
                E=minute_ms + 1_000 + i,
                s="BTCUSDT",
                a=i,
                p="60000.1",
                q="0.002",
                f=10 * i,
                l=10 * i,
                T=minute_ms + 990 + i,
                m=False,
            )
            for i in range(4)
        ]
        texts.append(
            frame(
                "btcusdt@markPrice@1s",
                e="markPriceUpdate",
                E=minute_ms + 2_000,
                s="BTCUSDT",
                p="60000.5",
                i="59990.2",
                P="60010.0",
                r="0.00010000",
                T=minute_ms + 3_600_000,
            )
        )
        # Then a frame that is not JSON: its refusal in the log proves that every frame sent
        # before it on the same connection has been taken.
        texts.append("not json")

        async def send_all() -> None:
            for text in texts:  # all on the market connection
                assert await ws.ws.send("btcusdt@aggTrade", text) == 1

        ws.call(send_all())
        stderr.wait_for("refused:")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=TIMEOUT_S)
        stdout = proc.stdout.read()  # a few lines: the pipe never filled
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = stderr.text()
    assert proc.returncode == 0, stdout + log
    assert "stopped by SIGTERM" in stdout and "frames: public 0, market 6" in stdout
    assert "SIGTERM received: stopping" in log
    # The minute still open at the stop was written by the final flush: its counts, and
    # NULL values (nothing after it arrived, so no stream family covered it).
    day = dt.datetime.fromtimestamp(minute_ms / 1000, dt.UTC).date()
    table = Lake.at(tmp_path / "lake").read(LIVE_1M, "BTCUSDT", day)
    rows = [r for r in table.to_pylist() if int(r["timestamp"].timestamp() * 1000) == minute_ms]
    assert len(rows) == 1
    row = rows[0]
    assert (row["agg_trade_events"], row["mark_price_events"], row["depth_events"]) == (4, 1, 0)
    assert (row["market_covered"], row["predicted_funding"], row["event_time"]) == (False, None, None)
    assert [p.close_code for p in ws.ws.peers] == [1000, 1000]


def test_a_bad_symbol_is_a_usage_error(tmp_path: Path, replay: ReplayServer, ws: ThreadedStreamServer) -> None:
    result = subprocess.run(
        [*BML, "live-collect", "--symbols", "btc/usdt", "--duration", "1"],
        cwd=tmp_path,
        env=_env(tmp_path, replay, ws),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--symbols" in result.stderr and "invalid symbol" in result.stderr
    assert ws.ws.peers == []


# --- the daemon's supervisor -----------------------------------------------------------------


def test_a_collector_that_dies_is_restarted_with_backoff_and_reported() -> None:
    lines: list[str] = []
    supervisor = CollectorSupervisor(
        [sys.executable, "-c", "import sys; sys.exit(3)"], lines.append, min_s=0.2, max_s=0.8, stable_after_s=60
    )
    supervisor.start()
    deadline = time.monotonic() + TIMEOUT_S
    while len(supervisor.ends) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    supervisor.stop()
    assert supervisor.starts >= 3 and supervisor.ends[:3] == [3, 3, 3]
    ended = [x for x in lines if "ended with exit code 3" in x]
    assert len(ended) >= 2 and all("restarting in" in x for x in ended)
    delays = [float(x.split("restarting in ")[1].split(" s")[0]) for x in ended]
    # 0.2 s doubling up to 0.8 s, each drawn in its upper half (printed to 0.1 s).
    assert 0.1 <= delays[0] <= 0.2 and 0.2 <= delays[1] <= 0.4 and all(0.1 <= d <= 0.8 for d in delays)
    assert not any("stopped" in x for x in lines)  # nothing was running to stop


def test_the_supervisor_stops_a_running_collector_with_the_signal_given() -> None:
    lines: list[str] = []
    code = "import signal, sys, time\nsignal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\ntime.sleep(120)"
    supervisor = CollectorSupervisor([sys.executable, "-c", code], lines.append)
    supervisor.start()
    deadline = time.monotonic() + TIMEOUT_S
    while supervisor.starts < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # let it install its handler (a SIGTERM before that ends it with -15: also a stop)
    assert supervisor.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
    assert supervisor.starts == 1 and supervisor.ends == []
    assert lines[0].startswith("live collector started (pid ") and lines[-1].startswith("live collector stopped")
