"""One hot poll of N symbols in process: wall and CPU of ``hot_minute_job`` per steady-state run.

Starts the replay server in this process with a fixed market clock listing ``--symbols``
synthetic symbols, builds today (2024-06-03) up to 10:28 for all of them in one run
(not timed), then moves the clock one minute at a time and runs ``hot_minute_job``
over the range of every symbol (as the hot poll sensor asks: one run per day),
``execute_in_process`` against a persistent instance (a DAGSTER_HOME with the project's
dagster.yaml). Each timed run commits one new minute per symbol. CPU is this process's
(the replay server's threads included). ``--profile`` runs one more under cProfile and
prints where the time went.

    .venv/bin/python bench/hot_inprocess.py --symbols 10 --runs 3 [--profile]

Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import os
import pstats
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

from dagster import DagsterInstance, JobDefinition

from bml_assets.definitions import HOT_JOB, build_definitions
from bml_assets.defs.assets.streams import BAND_TAG, HOT_BAND
from bml_assets.demo import QUIET
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

REPO = Path(__file__).resolve().parent.parent
DAY = dt.date(2024, 6, 3)
START = dt.datetime(2024, 6, 3, 10, 30, 20, tzinfo=dt.UTC)

# Where the profile's time goes: the cumulative time of these functions (file, name).
ENTRY_POINTS = {
    "pandera validation": ("pandera/api/pandas/container.py", "validate"),
    "Dagster event storage (store_event)": ("sqlite_event_log.py", "store_event"),
    "  of which SQLite commits": ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
    "REST requests (client side)": ("requests/sessions.py", "request"),
    "lake commits (commit_table)": ("bml_assets/lake/commit.py", "commit_table"),
    "IO manager loads (load_input)": ("bml_assets/defs/io_manager.py", "load_input"),
    "minute view build + judge": ("bml_assets/defs/assets/minute_view.py", "_build_and_judge"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3, help="timed steady-state runs")
    parser.add_argument("--trades-per-day", type=int, default=100_000)
    parser.add_argument("--every", type=float, default=0.0, help="start a timed run every this many seconds")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (lake, instance)")
    parser.add_argument("--events", action="store_true", help="print each run's events by kind")
    parser.add_argument("--profile", action="store_true", help="one more run under cProfile")
    args = parser.parse_args()
    symbols = tuple(f"S{i:02d}USDT" for i in range(args.symbols))

    work = Path(tempfile.mkdtemp(prefix="bml_hot_inproc_"))
    home = work / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    clock = MarketClock.fixed(START)
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades_per_day, symbols=symbols))
    # The server's own weight limit off: the untimed first run fetches hours of aggTrades.
    with (
        ReplayServer(market=market, clock=clock, rest_weight_limit=10**9) as server,
        DagsterInstance.from_config(str(home)) as instance,
    ):
        settings = Settings(
            symbols=symbols,
            start_date=dt.date(2024, 5, 1),
            lake_root=work / "lake",
            vision_base_url=server.base_url,
            rest_base_url=server.base_url,
            safety_lag_minutes=1,
        )
        job = build_definitions(settings).resolve_job_def(HOT_JOB)
        # The first run fetches 10.5 hours of every symbol: not paced, it is not timed.
        warm_up = build_definitions(replace(settings, rest_weight_budget=1_000_000)).resolve_job_def(HOT_JOB)

        def run(job: JobDefinition = job) -> tuple[float, float, int]:
            wall, cpu, own = time.perf_counter(), time.process_time(), time.thread_time()
            result = job.execute_in_process(
                instance=instance,
                raise_on_error=False,
                run_config=QUIET,
                tags={
                    BAND_TAG: HOT_BAND,
                    "dagster/asset_partition_range_start": partition_key(symbols[0], DAY),
                    "dagster/asset_partition_range_end": partition_key(symbols[-1], DAY),
                },
            )
            wall, cpu, own = time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - own
            # The run executes in this thread; the rest of the process's CPU is the replay server's.
            print(f"  CPU of the run's thread {own:.2f} s, of the replay server's threads {cpu - own:.2f} s")
            if not result.success:
                raise SystemExit(f"hot run failed: {result.all_events[-1]}")
            if args.events:
                kinds = Counter(
                    e.dagster_event.event_type_value if e.dagster_event else f"log {e.level}"
                    for e in instance.all_logs(result.run_id)
                )
                print("  events:", dict(kinds.most_common()))
            return wall, cpu, len(instance.all_logs(result.run_id))

        first = run(warm_up)
        print(f"first run (00:00 … 10:28 of {len(symbols)} symbols): {first[0]:.1f} s wall, {first[1]:.1f} s CPU")
        # The weight it spent stays in the budget's 60-s window: the timed runs must not wait for it.
        time.sleep(61)
        walls, cpus, events = [], [], []
        for i in range(args.runs):
            if i and args.every:
                # One run a minute, as the hot band: back to back, 50 symbols outspend the REST budget.
                time.sleep(max(0.0, args.every - walls[-1]))
            clock.set(START + dt.timedelta(minutes=i + 1))
            wall, cpu, n = run()
            walls.append(wall)
            cpus.append(cpu)
            events.append(n)
            print(f"run {i + 1}: {wall:.2f} s wall, {cpu:.2f} s CPU, {n} events")
        with Ledger(settings.state_url) as ledger:
            marks = {ledger.get_watermark(s) for s in symbols}
        expected = START + dt.timedelta(minutes=args.runs - 2) - dt.timedelta(seconds=20)
        if marks != {expected}:
            raise SystemExit(f"watermarks {marks}, expected {expected} for every symbol")
        load = os.getloadavg()
        print(
            f"{len(symbols)} symbols: median {statistics.median(walls):.2f} s wall "
            f"({statistics.median(walls) / len(symbols):.3f} s per symbol), "
            f"{statistics.median(cpus):.2f} s CPU, {statistics.median(events):.0f} events per run; "
            f"load {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f}"
        )
        if args.profile:
            clock.set(START + dt.timedelta(minutes=args.runs + 1))
            profiler = cProfile.Profile()
            profiler.enable()
            wall, _, _ = run()
            profiler.disable()
            _report_profile(profiler, wall)
    if args.keep:
        print(f"work dir (lake, instance): {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def _report_profile(profiler: cProfile.Profile, wall: float) -> None:
    stats = pstats.Stats(profiler)
    table = stats.stats  # type: ignore[attr-defined]
    print(f"profiled run: {wall:.2f} s under the profiler")
    for label, (file, name) in ENTRY_POINTS.items():
        cum = sum(v[3] for k, v in table.items() if k[0].endswith(file) and k[2] == name)
        print(f"  {label}: {cum:.2f} s ({100 * cum / wall:.0f} %)")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats("bml_assets", 40)
    print(out.getvalue())


if __name__ == "__main__":
    main()
