"""How soon after close + safety lag each minute is committed by `dagster dev` (the hot band).

Starts the replay server with a live market clock (real speed) listing ``--symbols``
synthetic symbols, starts `dagster dev` on the project's workspace with BML_* pointing
at it and DAGSTER_HOME a persistent instance with the project's dagster.yaml (the hot
poll sensor and the repair sensor are on by default; BML_START_DATE a month back, so
the repair sensor has a month of every symbol to build meanwhile), and with
``--backfill`` a `bml backfill-range` of its own in the same instance and lake, run
again and again while it watches. It watches the ledger's watermarks: for each
minute M, the first moment the symbol's watermark covers M minus the instant M
became committable (M + 60 s + BML_SAFETY_LAG_MINUTES), in wall seconds. The REST
weight per minute is the replay server's log (every process, hot or not).

    .venv/bin/python bench/hot_latency.py --symbols 50 --minutes 5 --backfill

Appends its table to bench/results.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

REPO = Path(__file__).resolve().parent.parent
LAG_MINUTES = 1
START_DATE = "2024-05-01"
SYMBOLS: tuple[str, ...] = ()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long to watch after the first commit")
    parser.add_argument("--origin", default="2024-06-03T00:01:30", help="market time at start (UTC)")
    parser.add_argument("--trades-per-day", type=int, default=100_000)
    parser.add_argument("--symbols", type=int, default=50, help="how many synthetic symbols")
    parser.add_argument("--backfill", action="store_true", help="run `bml backfill-range` meanwhile")
    args = parser.parse_args()
    global SYMBOLS
    SYMBOLS = tuple(f"S{i:02d}USDT" for i in range(args.symbols))

    work = Path(tempfile.mkdtemp(prefix="bml_hot_"))
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    lake = work / "lake"
    origin = dt.datetime.fromisoformat(args.origin).replace(tzinfo=dt.UTC)
    clock = MarketClock.live(origin, speed=1.0)
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades_per_day, symbols=SYMBOLS))
    with ReplayServer(market=market, clock=clock) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "BML_SYMBOLS": ",".join(SYMBOLS),
            "BML_START_DATE": START_DATE,
            "BML_LAKE_ROOT": str(lake),
            "BML_VISION_BASE_URL": server.base_url,
            "BML_REST_BASE_URL": server.base_url,
            "BML_SAFETY_LAG_MINUTES": str(LAG_MINUTES),
        }
        dagster = str(Path(sys.executable).parent / "dagster")
        log = open(work / "dagster_dev.log", "w")
        dev = subprocess.Popen(
            [dagster, "dev", "-w", str(REPO / "workspace.yaml"), "-p", "3077"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        backfill = Backfill(env, work) if args.backfill else None
        try:
            hot_day_start = origin.replace(hour=0, minute=0, second=0, microsecond=0)
            latencies = watch(server.base_url, lake, args.minutes, backfill, hot_day_start)
            weights = weight_per_minute(server.rest_log)
        finally:
            if backfill is not None:
                backfill.stop()
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
            log.close()
    report(latencies, weights, backfill, args)
    print(f"work dir (logs, lake): {work}")


class Backfill:
    """`bml backfill-range` over two symbols × 14 days, started again whenever it ends."""

    def __init__(self, env: dict[str, str], work: Path) -> None:
        self.env = env
        self.log = open(work / "backfill.log", "w")
        self.runs = 0
        self.proc: subprocess.Popen | None = None
        self.bml = str(Path(sys.executable).parent / "bml")

    def keep_going(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.runs += 1
        self.proc = subprocess.Popen(
            [
                self.bml,
                "backfill-range",
                "--start",
                "2024-05-01",
                "--end",
                "2024-05-14",
                "--symbols",
                ",".join(SYMBOLS[:2]),
            ],
            cwd=REPO,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()


def weight_per_minute(log: list) -> list[int]:
    """REST weight charged per wall minute, the first and last (partial) minutes left out."""
    if not log:
        return []
    start = log[0].wall_time_s
    per: dict[int, int] = {}
    for entry in log:
        per[int((entry.wall_time_s - start) // 60)] = per.get(int((entry.wall_time_s - start) // 60), 0) + entry.weight
    return [per.get(m, 0) for m in range(1, max(per))]


def watch(
    base_url: str, lake: Path, minutes: float, backfill: Backfill | None, hot_day_start: dt.datetime
) -> dict[str, list[tuple[dt.datetime, float]]]:
    """Poll the watermarks; per symbol, (minute, seconds after it became committable)."""
    ledger_path = lake / "_state" / "ledger.sqlite"
    seen: dict[str, dt.datetime | None] = dict.fromkeys(SYMBOLS)
    latencies: dict[str, list[tuple[dt.datetime, float]]] = {s: [] for s in SYMBOLS}
    first_commit: float | None = None
    deadline = time.time() + 600  # the first commit must come within 10 minutes
    while time.time() < deadline:
        wall = time.time()
        market_ms = requests.get(f"{base_url}/fapi/v1/time", timeout=5).json()["serverTime"]
        offset_s = market_ms / 1000 - wall  # market = wall + offset (speed 1)
        if ledger_path.exists():
            ledger = Ledger(f"sqlite:///{ledger_path}")
            for symbol in SYMBOLS:
                mark = ledger.get_watermark(symbol)
                if mark is not None and mark < hot_day_start:
                    mark = None  # a past day the repair sensor or the backfill built: not the hot band
                if mark is None or mark == seen[symbol]:
                    continue
                if seen[symbol] is not None:
                    # every minute newly covered by this advance
                    m = seen[symbol] + dt.timedelta(minutes=1)
                    while m <= mark:
                        committable = m.timestamp() + 60 + LAG_MINUTES * 60 - offset_s
                        latencies[symbol].append((m, wall - committable))
                        m += dt.timedelta(minutes=1)
                elif first_commit is None:
                    first_commit = wall
                seen[symbol] = mark
            ledger.close()
        if first_commit is not None:
            deadline = min(deadline, first_commit + minutes * 60)
        if backfill is not None and first_commit is not None:
            # Only once `dagster dev` is up: two processes creating the instance's storage at
            # once break its schema migration.
            backfill.keep_going()
        time.sleep(0.25)
    return latencies


def report(
    latencies: dict[str, list[tuple[dt.datetime, float]]],
    weights: list[int],
    backfill: Backfill | None,
    args: argparse.Namespace,
) -> None:
    load = os.getloadavg()
    lines = [
        f"## Hot band at {len(SYMBOLS)} symbols — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"1/5/15-min load at the end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}. `dagster dev` with a persistent "
        f"DAGSTER_HOME (the project's dagster.yaml), hot poll sensor every 5 s, repair sensor on from "
        f"{START_DATE}"
        + (f", `bml backfill-range` running meanwhile ({backfill.runs} start(s))" if backfill else ", no backfill")
        + f". {len(SYMBOLS)} symbols, {args.trades_per_day} trades/day, safety lag {LAG_MINUTES} min. "
        "Delay = first moment the watermark covers minute M − (M + 60 s + lag).",
        "",
        "| minute | symbols | median s | p95 s | max s | ≤ 10 s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    by_minute: dict[dt.datetime, list[float]] = {}
    for rows in latencies.values():
        for m, v in rows:
            by_minute.setdefault(m, []).append(v)
    for m in sorted(by_minute):
        lines.append(_row(f"{m:%H:%M}", sorted(by_minute[m])))
    every = sorted(v for values in by_minute.values() for v in values)
    if every:
        lines.append(_row("**all**", every))
    lines.append("")
    lines.append(
        "REST weight per whole minute (every request the replay server saw): "
        + (", ".join(map(str, weights)) if weights else "none")
        + (f"; median {statistics.median(weights):.0f}" if weights else "")
    )
    text = "\n".join(lines) + "\n"
    print(text)
    results = REPO / "bench" / "results.md"
    if not results.exists():
        results.write_text("# bml benchmark results\n\n")
    with results.open("a") as fh:
        fh.write("\n" + text)


def _row(label: str, values: list[float]) -> str:
    p95 = values[min(len(values) - 1, int(0.95 * len(values)))]
    within = sum(v <= 10 for v in values)
    return (
        f"| {label} | {len(values)} | {statistics.median(values):.1f} | {p95:.1f} | "
        f"{values[-1]:.1f} | {within}/{len(values)} |"
    )


if __name__ == "__main__":
    main()
