"""The live collector over a run: its CPU and memory, the delay from a minute's close to its
``live_1m`` commit, and the events it received per second.

Starts the replay server (synthetic market, a live market clock at real speed, its WebSocket
side) in this process and ``bml live-collect --duration N`` as a subprocess with ``BML_*``
pointing at it, then reports:

1. the collector process's CPU seconds (user + system) and peak RSS over the whole run, from
   the kernel's accounting of the ended child (``os.wait4``: ``ru_utime``, ``ru_stime``,
   ``ru_maxrss``), and its CPU share over the steady part (from its first commit to the
   last poll before the end, read from ``/proc/PID/stat``);
2. for every minute committed while the collector ran, the delay from the minute's end (on
   the exchange clock: the market clock this process runs, so no offset is estimated) to
   its commit: the ledger's ``live_1m`` rows are polled every ``--poll`` seconds, and a
   minute's commit time is the ``committed_at`` of the first ledger row whose ``max_ts``
   reaches it (a row is overwritten by the next commit of its partition, a minute later, so
   a 0.1 s poll sees each one); ``committed_at`` is taken on the local clock, turned into
   exchange time by the market clock's known offset. Minutes the final flush wrote (it
   closes what is still open) are left out. Median, p95 (nearest rank) and max;
3. events per second: the frames of the summary (every frame is one event) over the run.

    .venv/bin/python bench/live_collector_run.py --duration 600 --symbols 2
    .venv/bin/python bench/live_collector_run.py --duration 180 --symbols 20

The replay server shares the machine with the collector: its CPU is not counted, but it
competes for the cores. Prints one block; not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

REPO = Path(__file__).resolve().parent.parent
UNIVERSE = (
    "BTCUSDT",
    "ETHUSDT",
    "BNBUSDT",
    "SOLUSDT",
    "XRPUSDT",
    "DOGEUSDT",
    "ADAUSDT",
    "AVAXUSDT",
    "LINKUSDT",
    "DOTUSDT",
    "LTCUSDT",
    "TRXUSDT",
    "BCHUSDT",
    "NEARUSDT",
    "UNIUSDT",
    "ATOMUSDT",
    "ETCUSDT",
    "FILUSDT",
    "APTUSDT",
    "ARBUSDT",
)
GRACE_MS = 2_000  # the core's grace: a minute ending this close to the stop may be the flush's
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _bml() -> list[str]:
    script = Path(sys.executable).with_name("bml")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "bml_assets.cli"]


def _proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a running process (threads included), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[(95 * len(ordered) + 99) // 100 - 1]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of collection")
    parser.add_argument("--symbols", type=int, default=2, help=f"how many symbols (at most {len(UNIVERSE)})")
    parser.add_argument("--trades-per-day", type=int, default=200_000)
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between reads of the ledger")
    parser.add_argument("--keep", action="store_true", help="keep the lake (its path is printed)")
    args = parser.parse_args()
    if not 1 <= args.symbols <= len(UNIVERSE):
        parser.error(f"--symbols must be 1..{len(UNIVERSE)}")
    symbols = UNIVERSE[: args.symbols]

    work = Path(tempfile.mkdtemp(prefix="bml_live_run_"))
    lake_root = work / "lake"
    market = SyntheticMarket(MarketConfig(seed=7, trades_per_day=args.trades_per_day, symbols=symbols))
    clock = MarketClock.live(time.time_ns() // 1_000_000)
    offset_ms = clock.now_ms() - time.time_ns() // 1_000_000  # exchange − local: ~0 here, measured anyway
    state_url = f"sqlite:///{(lake_root / '_state' / 'ledger.sqlite').as_posix()}"
    with ReplayServer(market=market, clock=clock) as replay:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BML_")}
        env.update(
            BML_SYMBOLS=",".join(symbols),
            BML_LAKE_ROOT=str(lake_root),
            BML_REST_BASE_URL=replay.base_url,
            BML_VISION_BASE_URL=replay.base_url,
            BML_WS_BASE_URL=replay.ws_base_url,
            PYTHONWARNINGS="ignore",
        )
        log_path = work / "collector.log"
        with open(log_path, "w") as log_file:
            proc = subprocess.Popen(
                [*_bml(), "live-collect", "--duration", str(args.duration)],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
            )
            stdout: list[str] = []
            reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
            reader.start()
            started = time.monotonic()
            stop_market_ms = clock.now_ms() + round(args.duration * 1000)
            seen: dict[tuple[str, dt.date], int] = {}  # max_ts seen per partition
            commit_at: dict[tuple[str, int], int] = {}  # (symbol, minute) -> commit, exchange ms
            first_commit_cpu: tuple[float, float] | None = None
            last_cpu: tuple[float, float] | None = None
            ledger: Ledger | None = None
            rusage = None
            while rusage is None:
                time.sleep(args.poll)
                done, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if done:
                    rusage = usage
                    proc.returncode = os.waitstatus_to_exitcode(status)
                else:
                    cpu = _proc_cpu_s(proc.pid)
                    if cpu is not None:
                        last_cpu = (time.monotonic(), cpu)
                if ledger is None:
                    if not (lake_root / "_state" / "ledger.sqlite").exists():
                        continue
                    ledger = Ledger(state_url)
                try:
                    records = ledger.partitions(LIVE_1M)
                except Exception:  # the writer holds the database for a moment: read again next poll
                    continue
                for r in records:
                    key = (r.symbol, r.day)
                    if r.max_ts is None or seen.get(key) == r.max_ts:
                        continue
                    commit_ms = round(r.committed_at.timestamp() * 1000) + offset_ms
                    first = seen.get(key, r.min_ts - MINUTE_MS if r.min_ts is not None else r.max_ts - MINUTE_MS)
                    for minute in range(first + MINUTE_MS, r.max_ts + 1, MINUTE_MS):
                        commit_at.setdefault((r.symbol, minute), commit_ms)
                    seen[key] = r.max_ts
                    if first_commit_cpu is None and last_cpu is not None:
                        first_commit_cpu = last_cpu
            wall_s = time.monotonic() - started
            reader.join(30)
            if ledger is not None:
                ledger.close()

    summary = "".join(stdout)
    frames = sum(int(n) for n in re.findall(r"(?:public|market) (\d+)", summary.split("\n")[1]))
    duration_match = re.search(r"after ([\d.]+) s", summary)
    ran_s = float(duration_match.group(1)) if duration_match else wall_s
    delays = [
        (at - (minute + MINUTE_MS)) / 1000
        for (symbol, minute), at in commit_at.items()
        if minute + MINUTE_MS + GRACE_MS < stop_market_ms
    ]
    cpu_s = rusage.ru_utime + rusage.ru_stime
    print(f"live collector run: {len(symbols)} symbol(s), --duration {args.duration:g} s, {platform.python_version()}")
    print(f"  exit code {proc.returncode}; summary:\n    " + "\n    ".join(summary.strip().splitlines()))
    print(
        f"  CPU {cpu_s:.1f} s (user {rusage.ru_utime:.1f}, system {rusage.ru_stime:.1f}) over {ran_s:.0f} s "
        f"= {100 * cpu_s / ran_s:.1f} % of one core; peak RSS {rusage.ru_maxrss / 1024:.0f} MiB"
    )
    if first_commit_cpu is not None and last_cpu is not None and last_cpu[0] > first_commit_cpu[0]:
        share = (last_cpu[1] - first_commit_cpu[1]) / (last_cpu[0] - first_commit_cpu[0])
        print(f"  steady CPU (first commit to the end): {100 * share:.1f} % of one core")
    if delays:
        print(
            f"  close → commit delay over {len(delays)} minute(s): median {_median(delays):.2f} s, "
            f"p95 {_p95(delays):.2f} s, max {max(delays):.2f} s (min {min(delays):.2f} s)"
        )
    else:
        print("  close → commit delay: no minute committed before the end")
    print(
        f"  events received: {frames} in {ran_s:.0f} s = {frames / ran_s:.0f}/s ({frames / ran_s / len(symbols):.0f}/s per symbol)"
    )
    if args.keep:
        print(f"  lake kept at {lake_root}; collector log {log_path}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    sys.exit(0 if proc.returncode == 0 else 1)


if __name__ == "__main__":
    main()
