"""``bml backfill-range`` itself, the whole process, with the persistent Dagster instance.

Starts a ``ReplayServer`` on loopback with a synthetic market (``--trades`` aggTrades
per day) and a fixed ``MarketClock`` well after the days, warms its render cache with
every zip (and CHECKSUM) the backfill will ask for (the synthetic generator is not the
product), then runs the ``bml backfill-range`` command in a subprocess over an empty
lake (a fresh one per run), with the instance the CLI uses by default
(``{BML_LAKE_ROOT}/_dagster``, the one ``bml run-daemon`` serves), in two modes,
paired and interleaved, ``--reps`` times each:

- ``ranged``: the default (ranged runs of one symbol's days, ``--workers`` = cores);
- ``per-partition``: ``--workers 1 --partitions-per-run 1``, the old behaviour (one run
  per partition, one after the other).

Reported: wall time of the whole command (imports, scans, runs, Dagster's storage, the
final scan), partitions per minute, CPU of the command and its workers.

    .venv/bin/python bench/backfill.py                  # 2 symbols × 10 days × 500 000 trades, 3 pairs
    .venv/bin/python bench/backfill.py --days 3 --reps 1 --no-append

Appends its table to bench/results.md (unless ``--no-append``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.streams import Stream
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import KLINE_STREAMS, MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets.sources.vision import daily_url, monthly_url

REPO = Path(__file__).resolve().parent.parent
SYMBOLS = ("BTCUSDT", "ETHUSDT")
FIRST_DAY = dt.date(2024, 6, 1)
CLOCK_AT = dt.datetime(2024, 9, 1, 12, tzinfo=dt.UTC)  # well after the days: Vision has them all
_SCRIPT = Path(sys.executable).with_name("bml")
BML = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "bml_assets.cli"]
MODES = {"ranged": [], "per-partition": ["--workers", "1", "--partitions-per-run", "1"]}


def urls_to_warm(base_url: str, symbols: tuple[str, ...], days: list[dt.date]) -> list[str]:
    """Every zip a Vision-built day asks for: its daily files, the previous day's
    metrics (seed), the month's fundingRate (and the previous month's on the 1st)."""
    urls: set[str] = set()
    for symbol in symbols:
        for day in days:
            urls.add(daily_url(base_url, Stream.AGG_TRADES, symbol, day))
            urls.update(daily_url(base_url, s, symbol, day) for s in KLINE_STREAMS)
            urls.add(daily_url(base_url, Stream.METRICS, symbol, day))
            urls.add(daily_url(base_url, Stream.METRICS, symbol, day - dt.timedelta(days=1)))
            months = {day.replace(day=1)} | ({(day - dt.timedelta(days=1)).replace(day=1)} if day.day == 1 else set())
            urls.update(monthly_url(base_url, Stream.FUNDING_RATE, symbol, m.year, m.month) for m in months)
    return sorted(urls)


def warm(base_url: str, urls: list[str]) -> tuple[float, int]:
    """GET every zip and its CHECKSUM once, so the server renders them before timing."""
    import requests

    started, size = time.perf_counter(), 0
    with requests.Session() as http:
        for url in urls:
            for u in (url, url + ".CHECKSUM"):
                r = http.get(u, timeout=300)
                r.raise_for_status()
                size += len(r.content)
    return time.perf_counter() - started, size


def run_cli(
    lake: Path, base_url: str, symbols: tuple[str, ...], days: list[dt.date], extra: list[str]
) -> dict[str, Any]:
    """``bml backfill-range`` over ``days`` into the empty ``lake``; wall, CPU (children), exit code."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BML_") and k != "DAGSTER_HOME"}
    env.update(
        BML_SYMBOLS=",".join(symbols),
        BML_START_DATE=days[0].isoformat(),
        BML_LAKE_ROOT=str(lake),
        BML_VISION_BASE_URL=base_url,
        BML_REST_BASE_URL=base_url,
        PYTHONWARNINGS="ignore",
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run(
        [*BML, "backfill-range", "--start", days[0].isoformat(), "--end", days[-1].isoformat(), *extra],
        env=env,
        capture_output=True,
        text=True,
        cwd=lake.parent,
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    n = len(symbols) * len(days)
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
    return {
        "partitions": n,
        "wall": wall,
        "cpu": cpu,
        "partitions_per_min": n / wall * 60,
        "exit": proc.returncode,
        "committed": committed(lake, symbols, days),
        "instance_runs": len(list((lake / "_dagster" / "history" / "runs").glob("*.db"))),
    }


def committed(lake: Path, symbols: tuple[str, ...], days: list[dt.date]) -> int:
    ledger = Ledger(f"sqlite:///{lake}/_state/ledger.sqlite")
    try:
        return sum(
            1
            for s in symbols
            for d in days
            if (r := ledger.get_partition(MINUTE_VIEW.name, s, d)) is not None and r.status == "committed"
        )
    finally:
        ledger.close()


def format_report(
    args: argparse.Namespace,
    reps: dict[str, list[dict[str, Any]]],
    warm_s: float,
    warm_bytes: int,
    loads: list[float],
    seconds: float,
) -> str:
    from day_build import load_text, machine_description

    n = reps["ranged"][0]["partitions"]
    lines = [
        f"## Backfill: `bml backfill-range` with the persistent instance — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_description()}. Load during the runs: {load_text(loads)}.",
        "",
        f"The whole `bml backfill-range` process (a subprocess; imports, scans, runs, Dagster's storage in "
        f"`{{BML_LAKE_ROOT}}/_dagster`, the final scan), {len(args.symbols)} symbols ({', '.join(args.symbols)}) × "
        f"{args.days} days from {FIRST_DAY} = {n} partitions, {args.trades:,} aggTrades per day, from an empty lake "
        f"(a fresh one per run), against a `ReplayServer` on 127.0.0.1 with a fixed `MarketClock` at "
        f"{CLOCK_AT:%Y-%m-%d %H:%M} UTC. Render cache warmed first: {warm_bytes / 2**20:.0f} MB of zips + CHECKSUMs "
        f"in {warm_s:.1f} s (not timed). Modes paired and interleaved: `ranged` is the default (runs of one "
        f"symbol's consecutive days, `--workers` = {os.cpu_count()} cores); `per-partition` is "
        "`--workers 1 --partitions-per-run 1` (the old behaviour: one run per partition). CPU = user + sys of the "
        "command and its worker processes.",
        "",
        "| mode | run | wall s | partitions / min | CPU s | Dagster runs | exit | committed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for mode, runs in reps.items():
        for i, r in enumerate(runs):
            lines.append(
                f"| {mode} | {i + 1} | {r['wall']:.1f} | {r['partitions_per_min']:.1f} | {r['cpu']:.1f} | "
                f"{r['instance_runs']} | {r['exit']} | {r['committed']}/{n} |"
            )
    med = {
        m: {k: statistics.median(r[k] for r in runs) for k in ("wall", "partitions_per_min", "cpu")}
        for m, runs in reps.items()
    }
    for mode, m in med.items():
        lines.append(
            f"| **{mode}, median of {len(reps[mode])}** | | **{m['wall']:.1f}** | **{m['partitions_per_min']:.1f}** | "
            f"{m['cpu']:.1f} | | | |"
        )
    speedup = med["per-partition"]["wall"] / med["ranged"]["wall"] if len(med) == 2 else float("nan")
    lines += [
        "",
        f"Ranged ÷ per-partition: {speedup:.2f}× faster (wall). Benchmark wall time (warm-up included): {seconds:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default=",".join(SYMBOLS))
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--trades", type=int, default=500_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: ranged, per-partition")
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/results.md alone")
    parser.add_argument("--json", type=Path, help="also write the summary here (for run_all.py)")
    args = parser.parse_args(argv)
    args.symbols = tuple(args.symbols.split(","))
    modes = args.modes.split(",")
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # day_build, for the machine line

    started = time.perf_counter()
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    work = Path(tempfile.mkdtemp(prefix="bml_backfill_"))
    loads: list[float] = []
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades, symbols=args.symbols))
    try:
        with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT), cache_bytes=4 << 30) as server:
            urls = urls_to_warm(server.base_url, args.symbols, days)
            warm_s, warm_bytes = warm(server.base_url, urls)
            print(f"warmed {len(urls)} zips in {warm_s:.1f} s", flush=True)
            reps: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
            for rep in range(args.reps):
                for mode in modes if rep % 2 == 0 else reversed(modes):  # interleaved, order alternating
                    lake = work / f"{mode}_{rep}" / "lake"
                    lake.parent.mkdir(parents=True)
                    loads.append(os.getloadavg()[0])
                    r = run_cli(lake, server.base_url, args.symbols, days, MODES[mode])
                    loads.append(os.getloadavg()[0])
                    reps[mode].append(r)
                    print(
                        f"{mode} run {rep + 1}/{args.reps}: {r['wall']:.1f} s, {r['partitions_per_min']:.1f} "
                        f"partitions/min, CPU {r['cpu']:.1f} s, exit {r['exit']}, committed {r['committed']}",
                        flush=True,
                    )
                    shutil.rmtree(lake.parent, ignore_errors=True)
        text = format_report(args, reps, warm_s, warm_bytes, loads, time.perf_counter() - started)
        print(text, flush=True)
        if not args.no_append:
            from day_build import append_results

            append_results(text)
        ranged = reps.get("ranged") or next(iter(reps.values()))
        summary = {
            "modes": reps,
            "partitions_per_min": statistics.median(r["partitions_per_min"] for r in ranged),
            "wall": statistics.median(r["wall"] for r in ranged),
            "partitions": ranged[0]["partitions"],
            "loads": loads,
            "seconds": time.perf_counter() - started,
        }
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1, default=str))
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
