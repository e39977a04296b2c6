"""The same backfill on one machine in-process and on the local cluster's two Celery workers (issue 12).

Starts a ``ReplayServer`` on loopback (synthetic market, fixed clock; render cache warmed
first, as ``bench/backfill.py`` does), then times the whole ``bml backfill-range`` process,
paired and interleaved, ``--reps`` times per mode:

- ``one machine``: local lake + SQLite ledger + the persistent SQLite instance, runs in-process
  (``--workers`` = cores): the default deployment;
- ``cluster, in-process``: the local cluster's S3 lake (moto) + PostgreSQL ledger and Dagster
  storage, steps still in the backfill's processes (``BML_CELERY_BROKER_URL`` empty): what the
  shared parts cost by themselves;
- ``cluster, 2 Celery workers``: the same, steps on the cluster's two Celery workers.

Each cluster run gets a fresh cluster (``bml_assets.cluster.local``; its start is not timed),
each one-machine run a fresh lake. All on this one machine: the workers share its cores.

    .venv/bin/python bench/scale_out.py                  # 2 symbols × 10 days × 100 000 trades, 3 pairs
    .venv/bin/python bench/scale_out.py --days 3 --reps 1 --no-append
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from backfill import BML, CLOCK_AT, FIRST_DAY, SYMBOLS, urls_to_warm, warm
from day_build import load_text, machine_description

from bml_assets.cluster.local import local_cluster
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

MODES = ("one machine", "cluster, in-process", "cluster, 2 Celery workers")


def base_env(base_url: str, symbols: tuple[str, ...], first: dt.date) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BML_", "AWS_")) and k != "DAGSTER_HOME"}
    env.update(
        BML_SYMBOLS=",".join(symbols),
        BML_START_DATE=first.isoformat(),
        BML_VISION_BASE_URL=base_url,
        BML_REST_BASE_URL=base_url,
        PYTHONWARNINGS="ignore",
    )
    return env


def timed(env: dict[str, str], cwd: Path, days: list[dt.date], n: int) -> dict[str, Any]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [*BML, "backfill-range", "--start", days[0].isoformat(), "--end", days[-1].isoformat()],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
    built = f"built {n} of {n} partition(s)" in proc.stdout and "final scan: clean" in proc.stdout
    return {
        "wall": wall,
        "partitions_per_min": n / wall * 60,
        "cpu_command": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
        "exit": proc.returncode,
        "clean": built,
    }


def run_mode(mode: str, env: dict[str, str], days: list[dt.date], n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bml-scale-") as tmp:
        folder = Path(tmp)
        if mode == "one machine":
            return timed(env | {"BML_LAKE_ROOT": str(folder / "lake")}, folder, days, n)
        with local_cluster(folder / "cluster", worker_count=2, base_env=env) as cluster:
            run_env = env | cluster.env
            if mode == "cluster, in-process":
                run_env = run_env | {"BML_CELERY_BROKER_URL": "", "BML_CELERY_BACKEND_URL": ""}
            return timed(run_env, folder, days, n)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default=",".join(SYMBOLS))
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--trades", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-append", action="store_true")
    args = parser.parse_args(argv)
    symbols = tuple(args.symbols.split(","))
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    n = len(symbols) * len(days)
    began = time.perf_counter()
    market = SyntheticMarket(MarketConfig(seed=3, trades_per_day=args.trades))
    with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT)) as server:
        warm_s, warm_bytes = warm(server.base_url, urls_to_warm(server.base_url, symbols, days))
        env = base_env(server.base_url, symbols, days[0])
        results: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
        loads: list[float] = []
        for rep in range(args.reps):
            for mode in MODES:
                loads.append(os.getloadavg()[0])
                r = run_mode(mode, env, days, n)
                results[mode].append(r)
                print(
                    f"rep {rep + 1} {mode}: {r['wall']:.1f} s, {r['partitions_per_min']:.1f} partitions/min, "
                    f"exit {r['exit']}, clean {r['clean']}",
                    file=sys.stderr,
                )
    lines = [
        f"## Scale-out: one machine vs the local cluster — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_description()}. Load during the runs: {load_text(loads)}.",
        "",
        f"The whole `bml backfill-range` process, {len(symbols)} symbols × {args.days} days from {FIRST_DAY} = {n} "
        f"partitions, {args.trades:,} aggTrades per day, against a `ReplayServer` on 127.0.0.1 (render cache "
        f"warmed: {warm_bytes / 2**20:.0f} MB in {warm_s:.1f} s, not timed). Modes paired and interleaved; each "
        "cluster run on a fresh cluster (PostgreSQL, Redis, moto's S3, 2 Celery workers; start not timed). CPU of "
        "the command = user + sys of the backfill and its processes (the Celery workers' CPU is not in it).",
        "",
        "| mode | run | wall s | partitions / min | command CPU s | exit | clean |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for mode, runs in results.items():
        for i, r in enumerate(runs):
            lines.append(
                f"| {mode} | {i + 1} | {r['wall']:.1f} | {r['partitions_per_min']:.1f} | {r['cpu_command']:.1f} | "
                f"{r['exit']} | {r['clean']} |"
            )
    for mode, runs in results.items():
        wall = statistics.median(r["wall"] for r in runs)
        lines.append(f"| **{mode}, median of {len(runs)}** | | **{wall:.1f}** | **{n / wall * 60:.1f}** | | | |")
    lines += ["", f"Benchmark wall time: {time.perf_counter() - began:.0f} s."]
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_append:
        with open(Path(__file__).with_name("results.md"), "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
