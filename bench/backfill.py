"""A backfill through Dagster: symbols × days from an empty lake, against the replay server.

Starts a ``ReplayServer`` on loopback with a synthetic market (``--trades`` aggTrades
per day) and a fixed ``MarketClock`` well after the days, warms its render cache with
every zip (and CHECKSUM) the backfill will ask for (the synthetic generator is not the
product), then materializes ``minute_view_job`` of the real definitions
(``build_definitions`` from ``BML_*``, as ``dagster dev`` would load them) for every
partition, one ``execute_in_process`` run per partition like ``bml_assets/demo.py``,
into an empty lake. Repeated ``--reps`` times (a fresh lake each time); the median is
reported. Then, once, a few partitions through the multiprocess executor
(``execute_job`` of a reconstructable job on a temporary persistent instance).

Reported: wall time, partitions per minute, and the share of wall time not spent
inside asset computations: 1 − Σ STEP_SUCCESS durations ÷ wall. Everything outside
the steps is orchestration (process start-up, resource set-up, event storage, run
launching).

    .venv/bin/python bench/backfill.py                  # 2 symbols × 15 days × 500 000 trades, 3 reps
    .venv/bin/python bench/backfill.py --days 3 --reps 1 --mp-partitions 0 --no-append

Appends its table to bench/results.md (unless ``--no-append``). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, JobDefinition, execute_job, reconstructable

from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
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
# Errors only: every post-2024-03-30 day warns that bookTicker and hot snapshots are not published.
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def bench_job() -> JobDefinition:
    """The real ``minute_view_job``, built from ``BML_*`` as the code location loads it.
    Module level, so the multiprocess executor's step processes can reconstruct it."""
    return build_definitions(Settings.from_env()).resolve_job_def(MINUTE_VIEW_JOB)


def _env(lake: Path, base_url: str, symbols: tuple[str, ...], start: dt.date) -> None:
    os.environ.update(
        {
            "BML_SYMBOLS": ",".join(symbols),
            "BML_START_DATE": start.isoformat(),
            "BML_LAKE_ROOT": str(lake),
            "BML_STATE_URL": f"sqlite:///{lake}/_state/ledger.sqlite",
            "BML_VISION_BASE_URL": base_url,
            "BML_REST_BASE_URL": base_url,
        }
    )


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


def step_durations(events: list[Any]) -> dict[str, float]:
    """Seconds per step key, from the run's STEP_SUCCESS events."""
    out: dict[str, float] = {}
    for event in events:
        if event.event_type_value == "STEP_SUCCESS":
            out[event.step_key] = event.event_specific_data.duration_ms / 1000
    return out


def run_in_process(keys: list[str]) -> dict[str, Any]:
    """One execute_in_process run per partition key; wall and step seconds."""
    job = bench_job()
    per_step: dict[str, float] = defaultdict(float)
    walls: list[float] = []
    failed: list[str] = []
    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        for key in keys:
            t = time.perf_counter()
            result = job.execute_in_process(
                partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET
            )
            walls.append(time.perf_counter() - t)
            if not result.success:
                failed.append(key)
            for step, seconds in step_durations(result.all_events).items():
                per_step[step] += seconds
        wall = time.perf_counter() - started
    return _summary(keys, wall, walls, dict(per_step), failed)


def run_multiprocess(keys: list[str], home: Path) -> dict[str, Any]:
    """The same partitions through the multiprocess executor (one process per step)."""
    recon = reconstructable(bench_job)
    partitions_def = bench_job().partitions_def
    assert partitions_def is not None
    per_step: dict[str, float] = defaultdict(float)
    walls: list[float] = []
    failed: list[str] = []
    home.mkdir(parents=True, exist_ok=True)
    os.environ["PYTHONWARNINGS"] = "ignore"  # the step processes' Beta/Preview warnings
    with DagsterInstance.local_temp(str(home)) as instance:
        started = time.perf_counter()
        for key in keys:
            t = time.perf_counter()
            with execute_job(
                recon, instance=instance, tags=partitions_def.get_tags_for_partition_key(key), run_config=QUIET
            ) as result:
                walls.append(time.perf_counter() - t)
                if not result.success:
                    failed.append(key)
                for step, seconds in step_durations(result.all_events).items():
                    per_step[step] += seconds
        wall = time.perf_counter() - started
    return _summary(keys, wall, walls, dict(per_step), failed)


def _summary(
    keys: list[str], wall: float, walls: list[float], per_step: dict[str, float], failed: list[str]
) -> dict[str, Any]:
    steps = sum(per_step.values())
    return {
        "partitions": len(keys),
        "wall": wall,
        "per_partition_median": statistics.median(walls) if walls else float("nan"),
        "per_partition_max": max(walls) if walls else float("nan"),
        "steps": steps,
        "per_step": per_step,
        "orchestration_share": 1 - steps / wall if wall else float("nan"),
        "partitions_per_min": len(keys) / wall * 60 if wall else float("nan"),
        "failed": failed,
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
    reps: list[dict[str, Any]],
    mp: dict[str, Any] | None,
    warm_s: float,
    warm_bytes: int,
    loads: list[float],
    committed_counts: list[int],
    seconds: float,
) -> str:
    from day_build import load_text, machine_description

    n = reps[0]["partitions"]
    med = {
        k: statistics.median(r[k] for r in reps)
        for k in ("wall", "steps", "orchestration_share", "partitions_per_min", "per_partition_median")
    }
    lines = [
        f"## Backfill through Dagster — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_description()}. Load during the runs: {load_text(loads)}.",
        "",
        f"`minute_view_job` of the real definitions (`build_definitions` from `BML_*`), {len(args.symbols)} symbols "
        f"({', '.join(args.symbols)}) × {args.days} days from {FIRST_DAY} = {n} partitions, {args.trades:,} aggTrades "
        f"per day, from an empty lake (a fresh one per repetition), against a `ReplayServer` on 127.0.0.1 with a "
        f"fixed `MarketClock` at {CLOCK_AT:%Y-%m-%d %H:%M} UTC. Render cache warmed first: {warm_bytes / 2**20:.0f} MB "
        f"of zips + CHECKSUMs in {warm_s:.1f} s (not timed below). Orchestration share = 1 − Σ STEP_SUCCESS "
        "durations ÷ wall.",
        "",
        "| executor | partitions | wall s | partitions / min | Σ step s | orchestration share | per partition s (median) | committed |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, r in enumerate(reps):
        lines.append(
            f"| in-process, run {i + 1} | {r['partitions']} | {r['wall']:.1f} | {r['partitions_per_min']:.1f} | "
            f"{r['steps']:.1f} | {r['orchestration_share']:.1%} | {r['per_partition_median']:.2f} | {committed_counts[i]}/{n} |"
        )
    lines.append(
        f"| **in-process, median of {len(reps)}** | {n} | **{med['wall']:.1f}** | **{med['partitions_per_min']:.1f}** | "
        f"{med['steps']:.1f} | **{med['orchestration_share']:.1%}** | {med['per_partition_median']:.2f} | |"
    )
    if mp is not None:
        lines.append(
            f"| multiprocess (once) | {mp['partitions']} | {mp['wall']:.1f} | {mp['partitions_per_min']:.1f} | "
            f"{mp['steps']:.1f} | {mp['orchestration_share']:.1%} | {mp['per_partition_median']:.2f} | "
            f"{mp.get('committed', '?')}/{mp['partitions']} |"
        )
    by_asset = defaultdict(list)
    for r in reps:
        for step, s in r["per_step"].items():
            by_asset[step].append(s)
    lines += [
        "",
        "Σ step seconds per asset over the backfill (in-process, median of the runs):",
        "",
        "| step | Σ s | per partition s | share of wall |",
        "| --- | ---: | ---: | ---: |",
    ]
    for step, values in sorted(by_asset.items(), key=lambda kv: -statistics.median(kv[1])):
        s = statistics.median(values)
        lines.append(f"| `{step}` | {s:.2f} | {s / n:.3f} | {s / med['wall']:.1%} |")
    failures = sorted({k for r in reps for k in r["failed"]} | set(mp["failed"] if mp else []))
    lines += [
        "",
        f"Failed runs: {', '.join(failures) if failures else 'none'}. Benchmark wall time (warm-up included): {seconds:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", default=",".join(SYMBOLS))
    parser.add_argument("--days", type=int, default=15)
    parser.add_argument("--trades", type=int, default=500_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--mp-partitions", type=int, default=2, help="partitions through the multiprocess executor (0: skip)"
    )
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/results.md alone")
    parser.add_argument("--json", type=Path, help="also write the summary here (for run_all.py)")
    args = parser.parse_args(argv)
    args.symbols = tuple(args.symbols.split(","))
    warnings.filterwarnings("ignore")
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # day_build, for the machine line

    started = time.perf_counter()
    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(args.days)]
    keys = [partition_key(s, d) for s in args.symbols for d in days]
    work = Path(tempfile.mkdtemp(prefix="bml_backfill_"))
    loads: list[float] = []
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades, symbols=args.symbols))
    try:
        with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT), cache_bytes=4 << 30) as server:
            urls = urls_to_warm(server.base_url, args.symbols, days)
            warm_s, warm_bytes = warm(server.base_url, urls)
            print(f"warmed {len(urls)} zips in {warm_s:.1f} s", flush=True)
            reps, counts = [], []
            for rep in range(args.reps):
                lake = work / f"lake_{rep}"
                _env(lake, server.base_url, args.symbols, FIRST_DAY)
                loads.append(os.getloadavg()[0])
                reps.append(run_in_process(keys))
                loads.append(os.getloadavg()[0])
                counts.append(committed(lake, args.symbols, days))
                r = reps[-1]
                print(
                    f"in-process run {rep + 1}/{args.reps}: {r['wall']:.1f} s, {r['partitions_per_min']:.1f} partitions/min, "
                    f"orchestration {r['orchestration_share']:.1%}, committed {counts[-1]}/{len(keys)}",
                    flush=True,
                )
            mp = None
            if args.mp_partitions > 0:
                lake = work / "lake_mp"
                _env(lake, server.base_url, args.symbols, FIRST_DAY)
                loads.append(os.getloadavg()[0])
                mp = run_multiprocess(keys[: args.mp_partitions], work / "dagster_home")
                loads.append(os.getloadavg()[0])
                mp["committed"] = committed(lake, args.symbols, days)
                print(
                    f"multiprocess: {mp['wall']:.1f} s for {mp['partitions']} partitions, "
                    f"orchestration {mp['orchestration_share']:.1%}",
                    flush=True,
                )
        text = format_report(args, reps, mp, warm_s, warm_bytes, loads, counts, time.perf_counter() - started)
        print(text, flush=True)
        if not args.no_append:
            from day_build import append_results

            append_results(text)
        summary = {
            "in_process": reps,
            "multiprocess": mp,
            "orchestration_share": statistics.median(r["orchestration_share"] for r in reps),
            "partitions_per_min": statistics.median(r["partitions_per_min"] for r in reps),
            "wall": statistics.median(r["wall"] for r in reps),
            "partitions": len(keys),
            "committed": counts,
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
