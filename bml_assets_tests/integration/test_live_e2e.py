"""Issue 10's end-to-end tests: ``bml live-collect`` in subprocesses, as users run it, against
the replay server's synthetic market and its WebSocket side, broken by the replay's fault
switches; then ``bml live-rebuild`` over the spool.

Time. The collector closes minutes by the exchange's clock, which it measures against
``/fapi/v1/time``, so the market clock runs at real speed (a faster one would drift from the
measured offset within the minute). Its origin is shifted (by less than a minute) so that a
market minute starts a few seconds after the collectors are launched: ``M0``, the first
minute every connection saw whole. Every scenario then shares the same three minutes, in one
module-scoped run of about three and a half minutes of wall time:

- ``M0``: nothing broken (the minute before);
- ``M1``: the faults, each on a shard of its own (``BML_LIVE_SHARD_SIZE=2``), so none hides
  another: a depth event of ETHUSDT dropped (shard 0, BTCUSDT beside it untouched); SOLUSDT's
  bookTicker silent for 35 s (shard 1, XRPUSDT beside it); BNBUSDT's public connection closed
  (1001) and its market connection reset without a close frame (shard 2);
- ``M2``: nothing broken (the minute after): the collector is then stopped with SIGTERM.

Beside it a second collector with a lake of its own and other symbols (ADAUSDT, LTCUSDT) is
killed with SIGKILL once ``M0`` is committed and started again at once; it is stopped once
``M2`` is committed, and its lake rebuilt from the spool of both processes.

Waits poll the lake and the pipes with generous upper bounds; no assertion depends on how
fast anything ran, beyond the faults' margins within a minute (a reconnect has 25 s to
happen before ``M2``, a resync 40 s).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.schema import LIVE_1M
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger, PartitionRecord
from bml_assets.live.spool import SPOOL_PREFIX
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultKind, FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets.replay.ws.service import WsLogEntry

from .test_live_collect_cli import BML, Lines

FAULTED = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT", "BNBUSDT")  # shards (BTC, ETH), (SOL, XRP), (BNB)
KILLED = ("ADAUSDT", "LTCUSDT")
LEAD_MS = 8_000  # market time from the launch to M0's start; the collectors connect within ~2 s
WAIT_S = 180.0  # an upper bound on any one wait beyond the market time it needs

# Columns 1, 3-7, 14, 32-43 and 57 of the minute view, as live_1m holds them.
EVERY_FAMILY = ("event_time", "arrival_time", "latency_engine", "latency_network")
BOOK = ("update_id_start", "update_id_end", "price_impact_100k")
BOOK_TICKER = (
    "micro_price_close",
    "avg_spread_usdt",
    "bid_ask_imbalance",
    "avg_bid_depth",
    "avg_ask_depth",
    "spread_pct",
)
LIQUIDATIONS = ("liq_long_vol_usdt", "liq_short_vol_usdt", "liq_long_count", "liq_short_count")
LIQUIDATION_RATIOS = ("liq_avg_fill_price", "liq_unfilled_ratio")  # NULL in a minute without one
LIVE_VALUES = EVERY_FAMILY + BOOK + BOOK_TICKER + LIQUIDATIONS + LIQUIDATION_RATIOS + ("predicted_funding",)
ALWAYS_SET = EVERY_FAMILY + BOOK + BOOK_TICKER + LIQUIDATIONS + ("predicted_funding",)

Rows = dict[int, dict[str, Any]]  # minute (epoch ms) -> live_1m row


def _env(lake_root: Path, replay: ReplayServer, symbols: tuple[str, ...]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BML_")}
    env.update(
        BML_SYMBOLS=",".join(symbols),
        BML_LAKE_ROOT=str(lake_root),
        BML_REST_BASE_URL=replay.base_url,
        BML_VISION_BASE_URL=replay.base_url,
        BML_WS_BASE_URL=replay.ws_base_url,
        BML_LIVE_SHARD_SIZE="2",
        PYTHONWARNINGS="ignore",
    )
    return env


@dataclass
class Collector:
    """One ``bml live-collect`` subprocess and its two pipes, read as they come."""

    proc: subprocess.Popen[str]
    stdout: Lines
    stderr: Lines

    @classmethod
    def start(cls, env: Mapping[str, str], cwd: Path) -> Collector:
        proc = subprocess.Popen(
            [*BML, "live-collect"], cwd=cwd, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return cls(proc, Lines(proc.stdout), Lines(proc.stderr))

    def stop(self, sig: signal.Signals) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=WAIT_S)

    def ensure_dead(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _days(lake_root: Path, symbol: str) -> list[dt.date]:
    folder = lake_root / "futures" / "um" / "live_1m" / f"symbol={symbol}"
    return sorted(dt.date.fromisoformat(p.name.removeprefix("date=")) for p in folder.glob("date=*"))


def _rows(lake_root: Path, symbol: str) -> tuple[Rows, int]:
    """The committed rows of every day of ``symbol`` by minute, and how many rows there were."""
    lake = Lake.at(lake_root)
    out: Rows = {}
    count = 0
    for day in _days(lake_root, symbol):
        for row in lake.read(LIVE_1M, symbol, day).to_pylist():
            count += 1
            out[int(row["timestamp"].timestamp() * 1000)] = row
    return out, count


def _ledger(lake_root: Path, symbol: str) -> dict[dt.date, PartitionRecord]:
    ledger = Ledger(Settings(symbols=(symbol,), lake_root=lake_root).state_url)
    try:
        return {day: r for day in _days(lake_root, symbol) if (r := ledger.get_partition(LIVE_1M, symbol, day))}
    finally:
        ledger.close()


def _file_hashes(lake_root: Path, records: Mapping[dt.date, PartitionRecord]) -> dict[dt.date, str]:
    """sha256 of the file each ledger row names (the lake's content hash)."""
    return {day: hashlib.sha256((lake_root / r.path).read_bytes()).hexdigest() for day, r in records.items() if r.path}


def _wait_for_minute(lake_root: Path, symbols: tuple[str, ...], minute: int, clock: MarketClock) -> None:
    """Until every symbol has ``minute`` committed (bounded by the market time it needs + WAIT_S)."""
    deadline = time.monotonic() + max(0, minute + MINUTE_MS - clock.now_ms()) / 1000 + WAIT_S
    missing = list(symbols)
    while time.monotonic() < deadline:
        missing = [s for s in symbols if minute not in _rows(lake_root, s)[0]]
        if not missing:
            return
        time.sleep(0.5)
    raise AssertionError(f"minute {minute} of {missing} not committed in time")


def _spool_files(lake_root: Path, symbol: str) -> list[Path]:
    return sorted((lake_root / SPOOL_PREFIX / symbol).glob("*/*.gz"))


def _rebuild(lake_root: Path, env: Mapping[str, str], cwd: Path, symbol: str) -> list[str]:
    outputs = []
    for day in _days(lake_root, symbol):
        result = subprocess.run(
            [*BML, "live-rebuild", "--symbol", symbol, "--date", day.isoformat()],
            cwd=cwd,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=WAIT_S,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        outputs.append(result.stdout)
    return outputs


@dataclass
class Scenario:
    m0: int  # the first minute every connection saw whole (epoch ms)
    faulted: dict[str, Rows] = field(default_factory=dict)
    faulted_stdout: str = ""
    faulted_log: str = ""
    faulted_rc: int | None = None
    ws_log: list[WsLogEntry] = field(default_factory=list)
    snapshots: dict[str, int] = field(default_factory=dict)  # /fapi/v1/depth requests per symbol
    before_kill: dict[str, Rows] = field(default_factory=dict)
    before_kill_ledger: dict[str, dict[dt.date, PartitionRecord]] = field(default_factory=dict)
    before_kill_hashes: dict[str, dict[dt.date, str]] = field(default_factory=dict)
    after_restart: dict[str, Rows] = field(default_factory=dict)
    after_restart_counts: dict[str, int] = field(default_factory=dict)
    after_restart_ledger: dict[str, dict[dt.date, PartitionRecord]] = field(default_factory=dict)
    after_restart_hashes: dict[str, dict[dt.date, str]] = field(default_factory=dict)
    pids: tuple[int, int] = (0, 0)
    restarted_stdout: str = ""
    restarted_rc: int | None = None
    spool: dict[str, list[Path]] = field(default_factory=dict)
    rebuilt: dict[str, Rows] = field(default_factory=dict)
    rebuild_output: dict[str, list[str]] = field(default_factory=dict)

    @property
    def m1(self) -> int:
        return self.m0 + MINUTE_MS

    @property
    def m2(self) -> int:
        return self.m0 + 2 * MINUTE_MS


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    tmp = tmp_path_factory.mktemp("live_e2e")
    market = SyntheticMarket(MarketConfig(seed=29, trades_per_day=20_000, symbols=FAULTED + KILLED))
    # Market time runs at real speed, up to a minute ahead of ours, with a minute starting
    # LEAD_MS after the launch.
    wall = time.time_ns() // 1_000_000
    boundary = wall + LEAD_MS + (-(wall + LEAD_MS)) % MINUTE_MS
    clock = MarketClock.live(boundary - LEAD_MS)
    faulted_lake, killed_lake = tmp / "faulted", tmp / "killed"
    collectors: list[Collector] = []
    with ReplayServer(market=market, clock=clock) as replay:
        faulted_env = _env(faulted_lake, replay, FAULTED)
        killed_env = _env(killed_lake, replay, KILLED)
        try:
            faulted = Collector.start(faulted_env, tmp)
            killed = Collector.start(killed_env, tmp)
            collectors += [faulted, killed]
            # 3 shards × 2 connections, and 1 × 2.
            deadline = time.monotonic() + WAIT_S
            while sum(e.event == "open" for e in replay.ws_log) < 8:
                assert time.monotonic() < deadline, "the collectors did not connect:\n" + faulted.stderr.text()
                time.sleep(0.05)
            # Every connection delivered a markPrice (1 s) before M0.
            now = clock.now_ms() + 2_000
            run = Scenario(m0=now + (-now) % MINUTE_MS)
            m1 = run.m1
            for rule in (
                FaultRule(FaultKind.WS_DROP_DEPTH, "ethusdt@depth", times=1, at_ms=m1 + 20_000),
                FaultRule(FaultKind.WS_SILENCE, "solusdt@bookTicker", at_ms=m1 + 5_000, until_ms=m1 + 40_000),
                FaultRule(FaultKind.WS_CLOSE, "/public/stream?streams=bnbusdt@", times=1, at_ms=m1 + 25_000),
                FaultRule(FaultKind.WS_RESET, "/market/stream?streams=bnbusdt@", times=1, at_ms=m1 + 35_000),
            ):
                replay.faults.add(rule)

            # The kill: once M0 is committed, SIGKILL, read what was committed, start again.
            _wait_for_minute(killed_lake, KILLED, run.m0, clock)
            killed.proc.kill()
            killed.proc.wait(timeout=WAIT_S)
            for symbol in KILLED:
                run.before_kill[symbol] = _rows(killed_lake, symbol)[0]
                run.before_kill_ledger[symbol] = _ledger(killed_lake, symbol)
                run.before_kill_hashes[symbol] = _file_hashes(killed_lake, run.before_kill_ledger[symbol])
            restarted = Collector.start(killed_env, tmp)
            collectors.append(restarted)
            run.pids = (killed.proc.pid, restarted.proc.pid)

            _wait_for_minute(faulted_lake, FAULTED, run.m2, clock)
            run.faulted_rc = faulted.stop(signal.SIGTERM)
            run.faulted_stdout, run.faulted_log = faulted.stdout.text(), faulted.stderr.text()
            _wait_for_minute(killed_lake, KILLED, run.m2, clock)
            run.restarted_rc = restarted.stop(signal.SIGTERM)
            run.restarted_stdout = restarted.stdout.text()
            assert run.restarted_rc == 0, run.restarted_stdout + restarted.stderr.text()
        finally:
            for collector in collectors:
                collector.ensure_dead()
        run.ws_log = replay.ws_log
        for entry in replay.rest_log:
            if entry.path == "/fapi/v1/depth":
                run.snapshots[entry.params["symbol"]] = run.snapshots.get(entry.params["symbol"], 0) + 1
    for symbol in FAULTED:
        run.faulted[symbol] = _rows(faulted_lake, symbol)[0]
    for symbol in KILLED:
        run.after_restart[symbol], run.after_restart_counts[symbol] = _rows(killed_lake, symbol)
        run.after_restart_ledger[symbol] = _ledger(killed_lake, symbol)
        run.after_restart_hashes[symbol] = _file_hashes(killed_lake, run.after_restart_ledger[symbol])
        run.spool[symbol] = _spool_files(killed_lake, symbol)
        run.rebuild_output[symbol] = _rebuild(killed_lake, killed_env, tmp, symbol)
        run.rebuilt[symbol] = _rows(killed_lake, symbol)[0]
    yield run


def _nulls(row: Mapping[str, Any], columns: tuple[str, ...]) -> list[str]:
    return [c for c in columns if row[c] is None]


# --- a dropped depth event ------------------------------------------------------------------


def test_a_dropped_depth_event_resyncs_that_symbol_only_and_blanks_its_book_columns_of_that_minute(
    scenario: Scenario,
) -> None:
    run = scenario
    eth, btc = run.faulted["ETHUSDT"], run.faulted["BTCUSDT"]
    dropped = [e for e in run.ws_log if e.event == "dropped_depth"]
    assert len(dropped) == 1 and dropped[0].detail.startswith("ethusdt@depth@100ms U=")
    # That minute of ETHUSDT: a resync, its book columns NULL, the rest covered.
    row = eth[run.m1]
    assert row["resyncs"] >= 1 and row["book_synced"] is False
    assert _nulls(row, BOOK) == list(BOOK)
    assert row["public_covered"] is True and row["market_covered"] is True
    assert _nulls(row, EVERY_FAMILY + BOOK_TICKER + LIQUIDATIONS + ("predicted_funding",)) == []
    # A new snapshot for ETHUSDT: one at the start and one for the resync. (A snapshot older
    # than the buffered events is refused and asked again, which a loaded machine makes
    # likelier: counts are lower bounds; the syncs below are exact.)
    assert run.snapshots["ETHUSDT"] >= 2
    assert all(run.snapshots[s] >= 1 for s in ("BTCUSDT", "SOLUSDT", "XRPUSDT"))
    assert "ETHUSDT: order book unsynced, resyncing" in run.faulted_log
    assert "BTCUSDT: order book unsynced" not in run.faulted_log
    # Synced at the start and again after the resync; BTCUSDT once.
    synced = [x for x in run.faulted_log.splitlines() if ": order book synced" in x]
    assert sum("ETHUSDT: order book synced" in x for x in synced) == 2
    assert sum("BTCUSDT: order book synced" in x for x in synced) == 1
    # The minutes before and after, and BTCUSDT's same minute: fully covered.
    for rows, minute in ((eth, run.m0), (eth, run.m2), (btc, run.m0), (btc, run.m1), (btc, run.m2)):
        row = rows[minute]
        assert (row["public_covered"], row["market_covered"], row["book_synced"]) == (True, True, True), minute
        assert _nulls(row, ALWAYS_SET) == [], minute
        assert row["resyncs"] == 0 and row["silent_streams"] == 0 and row["reconnects"] == 0
        assert row["update_id_start"] <= row["update_id_end"]
    # The ids run on across the resync: M2 starts after M1's last delivered update.
    assert eth[run.m0]["update_id_end"] < eth[run.m2]["update_id_start"]


# --- a closed and a reset connection --------------------------------------------------------


def test_a_closed_and_a_reset_connection_are_reconnected_and_only_the_minute_they_spanned_is_uncovered(
    scenario: Scenario,
) -> None:
    run = scenario
    bnb = run.faulted["BNBUSDT"]
    faults = [(e.event, e.path.split("?")[0]) for e in run.ws_log if e.event in ("fault_close", "fault_reset")]
    assert faults == [("fault_close", "/public/stream"), ("fault_reset", "/market/stream")]
    row = bnb[run.m1]
    assert (row["public_covered"], row["market_covered"], row["book_synced"]) == (False, False, False)
    assert _nulls(row, LIVE_VALUES) == list(LIVE_VALUES)  # NULL, never a partial value
    assert row["reconnects"] == 2
    assert row["depth_events"] > 0 and row["mark_price_events"] > 0  # it saw the minute, in parts
    for minute in (run.m0, run.m2):
        row = bnb[minute]
        assert (row["public_covered"], row["market_covered"], row["book_synced"]) == (True, True, True), minute
        assert _nulls(row, ALWAYS_SET) == [] and row["reconnects"] == 0
    # The new public connection needed a new snapshot (a lower bound, see above); the other
    # shards were not touched.
    assert run.snapshots["BNBUSDT"] >= 2
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"):
        assert run.faulted[symbol][run.m1]["reconnects"] == 0
        assert run.faulted[symbol][run.m1]["market_covered"] is True
    log = run.faulted_log
    assert "public shard 2 #1 dropped: the server closed the connection" in log
    assert "market shard 2 #1 dropped: the connection was lost" in log
    assert "public shard 2 #2 connected" in log and "s after #1 dropped" in log
    assert "market shard 2 #2 connected" in log
    assert "shard 0 #2" not in log and "shard 1 #2" not in log
    assert run.faulted_rc == 0, run.faulted_stdout
    assert "connections: 2 drop(s), 0 rotation(s)" in run.faulted_stdout
    assert "stopped by SIGTERM" in run.faulted_stdout


# --- a silent stream --------------------------------------------------------------------------


def test_a_silent_stream_is_reported_and_its_columns_are_null_for_the_minutes_it_was_silent(
    scenario: Scenario,
) -> None:
    run = scenario
    sol, xrp = run.faulted["SOLUSDT"], run.faulted["XRPUSDT"]
    assert [e.detail for e in run.ws_log if e.event == "silenced"] == ["solusdt@bookTicker"]
    assert "solusdt@bookTicker silent for more than 10 s" in run.faulted_log
    assert "solusdt@bookTicker delivers again" in run.faulted_log
    assert "SOLUSDT: stream solusdt@bookTicker is silent" in run.faulted_log
    assert "silent streams: 1" in run.faulted_stdout
    row = sol[run.m1]
    assert row["silent_streams"] == 1
    assert _nulls(row, BOOK_TICKER) == list(BOOK_TICKER)
    # Only what the stream feeds: the book, the other family and the other symbol are there.
    assert (row["public_covered"], row["market_covered"], row["book_synced"]) == (True, True, True)
    assert _nulls(row, EVERY_FAMILY + BOOK + LIQUIDATIONS + ("predicted_funding",)) == []
    assert row["book_ticker_events"] > 0  # the 5 s before the silence, and after it
    for rows, minute in ((sol, run.m0), (sol, run.m2), (xrp, run.m0), (xrp, run.m1), (xrp, run.m2)):
        assert rows[minute]["silent_streams"] == 0, minute
        assert _nulls(rows[minute], BOOK_TICKER) == [], minute


# --- kill -9 and a restart ---------------------------------------------------------------------


def test_a_kill_9_and_a_restart_lose_no_committed_minute_and_double_none(scenario: Scenario) -> None:
    run = scenario
    for symbol in KILLED:
        before, after = run.before_kill[symbol], run.after_restart[symbol]
        assert run.m0 in before and run.m1 not in before  # killed between M0's and M1's commits
        assert before[run.m0]["public_covered"] is True and before[run.m0]["market_covered"] is True
        # Every minute committed before the kill is there, with the same values; none twice.
        assert {m: after[m] for m in before} == before
        assert run.after_restart_counts[symbol] == len(after)
        # The restarted process went on: M1 (it saw its end only) and M2 (whole).
        assert after[run.m1]["public_covered"] is False and after[run.m1]["market_covered"] is False
        assert after[run.m2]["public_covered"] is True and after[run.m2]["market_covered"] is True
        assert _nulls(after[run.m2], ALWAYS_SET) == []
        # The ledger: the partitions of before (and a new day's, had midnight passed), each
        # naming the file now there, with all its rows.
        assert run.before_kill_ledger[symbol].keys() <= run.after_restart_ledger[symbol].keys()
        for day, record in run.before_kill_ledger[symbol].items():  # the kill left them consistent
            assert record.status == "committed" and record.content_hash == run.before_kill_hashes[symbol][day]
        for day, record in run.after_restart_ledger[symbol].items():
            assert record.status == "committed"
            assert record.content_hash == run.after_restart_hashes[symbol][day]
            assert record.row_count == sum(
                1 for m in after if dt.datetime.fromtimestamp(m / 1000, dt.UTC).date() == day
            )
    # The restart got a summary, the killed process none.
    assert run.restarted_rc == 0 and "stopped by SIGTERM" in run.restarted_stdout


def test_the_spool_holds_a_file_per_process_and_hour_and_rebuilds_the_committed_minutes(
    scenario: Scenario,
) -> None:
    run = scenario
    for symbol in KILLED:
        files = run.spool[symbol]
        # Named …_{start}_{pid}.gz: one file per process and hour, never reopened.
        by_process: dict[int, list[str]] = {}
        for path in files:
            hour, _, pid = path.stem.split("_")
            by_process.setdefault(int(pid), []).append(hour)
        assert sorted(by_process) == sorted(run.pids)
        assert all(len(hours) == len(set(hours)) for hours in by_process.values())
        assert "2 process(es)" in "".join(run.rebuild_output[symbol])
        rebuilt, committed = run.rebuilt[symbol], run.after_restart[symbol]
        # Every minute one process saw alone is rebuilt as it was committed; M1, which both
        # saw a part of, is uncovered either way.
        assert rebuilt.keys() == committed.keys()
        for minute, row in committed.items():
            if minute == run.m1:
                got = rebuilt[minute]
                assert (got["public_covered"], got["market_covered"]) == (False, False)
                assert _nulls(got, LIVE_VALUES) == list(LIVE_VALUES)
            else:
                assert rebuilt[minute] == row, minute
