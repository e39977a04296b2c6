"""How soon after close + safety lag each minute is committed by `dagster dev` (the hot band).

Starts the replay server with a live market clock (real speed), starts `dagster dev`
on the project's workspace with BML_* pointing at it (the hot poll sensor is on by
default), then watches the ledger's watermarks. For each minute M it records the
first moment the symbol's watermark covers M and reports that moment minus the
instant M became committable (M + 60 s + BML_SAFETY_LAG_MINUTES), in wall seconds.

    .venv/bin/python bench/hot_latency.py --minutes 6

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
SYMBOLS = ("BTCUSDT", "ETHUSDT")
LAG_MINUTES = 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=6.0, help="how long to watch after the first commit")
    parser.add_argument("--origin", default="2024-06-03T10:00:30", help="market time at start (UTC)")
    parser.add_argument("--trades-per-day", type=int, default=100_000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bml_hot_"))
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    lake = work / "lake"
    origin = dt.datetime.fromisoformat(args.origin).replace(tzinfo=dt.UTC)
    clock = MarketClock.live(origin, speed=1.0)
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades_per_day))
    with ReplayServer(market=market, clock=clock) as server:
        env = {
            **os.environ,
            "DAGSTER_HOME": str(home),
            "BML_SYMBOLS": ",".join(SYMBOLS),
            "BML_START_DATE": "2024-06-01",
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
        try:
            latencies = watch(server.base_url, lake, args.minutes)
        finally:
            os.killpg(dev.pid, signal.SIGTERM)
            try:
                dev.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(dev.pid, signal.SIGKILL)
            log.close()
    report(latencies, args)
    print(f"work dir (logs, lake): {work}")


def watch(base_url: str, lake: Path, minutes: float) -> dict[str, list[tuple[dt.datetime, float]]]:
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
        time.sleep(0.25)
    return latencies


def report(latencies: dict[str, list[tuple[dt.datetime, float]]], args: argparse.Namespace) -> None:
    lines = [
        f"## Hot band latency — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"`dagster dev`, sensor interval 5 s, {len(SYMBOLS)} symbols, {args.trades_per_day} trades/day, "
        f"safety lag {LAG_MINUTES} min. Latency = first moment the watermark covers minute M − (M + 60 s + lag).",
        "",
        "| symbol | minutes | min s | median s | p90 s | max s | ≤ 10 s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    every: list[float] = []
    for symbol, rows in latencies.items():
        values = sorted(v for _, v in rows)
        every += values
        if not values:
            lines.append(f"| {symbol} | 0 | | | | | |")
            continue
        lines.append(_row(symbol, values))
    if every:
        lines.append(_row("all", sorted(every)))
    lines.append("")
    lines.append(
        "Per minute: " + "; ".join(f"{s} {m:%H:%M} {v:.1f}s" for s, rows in latencies.items() for m, v in rows)
    )
    text = "\n".join(lines) + "\n"
    print(text)
    results = REPO / "bench" / "results.md"
    if not results.exists():
        results.write_text("# bml benchmark results\n\n")
    with results.open("a") as fh:
        fh.write("\n" + text)


def _row(label: str, values: list[float]) -> str:
    p90 = values[min(len(values) - 1, int(0.9 * len(values)))]
    within = sum(v <= 10 for v in values)
    return (
        f"| {label} | {len(values)} | {values[0]:.1f} | {statistics.median(values):.1f} | {p90:.1f} | "
        f"{values[-1]:.1f} | {within}/{len(values)} |"
    )


if __name__ == "__main__":
    main()
