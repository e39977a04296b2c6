"""Every benchmark of the harness in one command, and the targets they are judged against.

    .venv/bin/python bench/run_all.py

Runs, each in its own process (each appends its own table to bench/results.md):

1. ``bench/day_build.py``: one day from local Vision zips at 1 M, 3 M and 7 M aggTrades,
   phase by phase, against the pyarrow floor and DuckDB;
2. ``bench/day_process.py``: one 3 M-trade day, the whole ``dagster asset materialize`` and
   ``bml backfill-range`` processes and in-process runs with the persistent instance, against
   DuckDB and Polars computing the trade-flow columns from the same zip;
3. ``bench/backfill.py --days 30 --modes ranged``: ``bml backfill-range`` itself with the
   persistent instance, 2 symbols × 30 days of 500 k trades (the issue's measurement; the
   one-run-per-partition comparison is ``bench/backfill.py``'s default, left out here for time);
4. ``bench/rest_day_weight.py --trades-per-day 100000``: the REST weight of one past day.

Then prints the targets table and appends it too, with the machine description and
the load seen. Takes under 10 minutes on a 2-core machine.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from day_build import append_results, load_text, machine_description  # noqa: E402

RSS_TARGET_MB = 1024
RATIO_FLOOR_TARGET = 2.0
RATIO_DUCKDB_TARGET = 1.0
WHOLE_PROCESS_DUCKDB_TARGET = 1.5  # issue 11: dagster asset materialize of a 3 M day ÷ DuckDB's whole process
IN_PROCESS_DUCKDB_TARGET = 1.0  # issue 11: the in-process run ÷ DuckDB's work after imports
BACKFILL_TARGET_PER_MIN = 100  # issue 11: 500 k-trade days on 2 cores, the instance the UI reads
REST_TARGET = 1.1


def run(cmd: list[str], *, capture: bool = False) -> str:
    print(f"\n$ {' '.join(Path(c).name if c == sys.executable else c for c in cmd)}", flush=True)
    started = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, text=True, capture_output=capture)
    if capture:
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-5000:], file=sys.stderr, flush=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed with exit code {proc.returncode}")
    print(f"({Path(cmd[1]).name}: {time.perf_counter() - started:.0f} s)", flush=True)
    return proc.stdout or ""


def verdict(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


def process_rows(proc: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The day-process rows: whole process and in-process, ÷ DuckDB (Polars alongside)."""
    med, rat = proc["medians"], proc["ratios"]
    n = f"{proc['trades'] / 1e6:g} M"
    whole, first = med["dagster"], med["in-process"]["first_run"]
    return [
        (
            f"day build, whole `dagster asset materialize` process ÷ DuckDB's whole process, {n}",
            f"{rat['dagster/duckdb']:.2f} ({whole['wall']:.2f} s / {med['duckdb']['wall']:.2f} s; CPU-time ratio "
            f"{rat['dagster/duckdb cpu']:.2f}; ÷ Polars {rat['dagster/polars']:.2f})",
            f"≤ {WHOLE_PROCESS_DUCKDB_TARGET}",
            verdict(rat["dagster/duckdb"] <= WHOLE_PROCESS_DUCKDB_TARGET),
        ),
        (
            f"day build, whole `bml backfill-range` process (one day) ÷ DuckDB's whole process, {n}",
            f"{rat['bml/duckdb']:.2f} ({med['bml']['wall']:.2f} s; CPU-time ratio {rat['bml/duckdb cpu']:.2f})",
            "(for information)",
            "",
        ),
        (
            f"day build, in-process run (persistent instance) ÷ DuckDB's work after imports, {n}",
            f"{rat['first_run/duckdb']:.2f} ({first['wall']:.2f} s / {med['duckdb']['work']['wall']:.2f} s; CPU-time "
            f"ratio {rat['first_run/duckdb cpu']:.2f}; ÷ Polars {rat['first_run/polars']:.2f})",
            f"≤ {IN_PROCESS_DUCKDB_TARGET}",
            verdict(rat["first_run/duckdb"] <= IN_PROCESS_DUCKDB_TARGET),
        ),
    ]


def targets(
    day: dict[str, Any], backfill: dict[str, Any], rest: float | None, proc: dict[str, Any] | None = None
) -> list[tuple[str, str, str, str]]:
    """(what, measured, target, verdict) rows."""
    by_size = {s["size"]: s for s in day["sizes"]}
    rows = []
    if proc is not None:
        rows += process_rows(proc)
    for size in (3_000_000, 7_000_000):
        s = by_size.get(size)
        if s is not None and "ratio_floor" in s:
            r = s["ratio_floor"]
            rows.append(
                (
                    f"day build ÷ floor, {size / 1e6:g} M",
                    f"{r:.2f} ({s['total_wall']:.2f} s / {s['floor']['wall']:.2f} s; CPU-time ratio "
                    f"{s.get('ratio_floor_cpu', float('nan')):.2f})",
                    f"≤ {RATIO_FLOOR_TARGET}",
                    verdict(r <= RATIO_FLOOR_TARGET),
                )
            )
    for size, s in sorted(by_size.items()):
        if "ratio_duckdb" in s:
            r = s["ratio_duckdb"]
            rows.append(
                (
                    f"trade-flow step ÷ DuckDB, {size / 1e6:g} M",
                    f"{r:.2f} ({s['trade_flow_step_wall']:.2f} s / {s['duckdb']['wall']:.2f} s; CPU-time ratio "
                    f"{s.get('ratio_duckdb_cpu', float('nan')):.2f})",
                    f"≤ {RATIO_DUCKDB_TARGET}",
                    verdict(r <= RATIO_DUCKDB_TARGET),
                )
            )
    s = by_size.get(7_000_000)
    if s is not None:
        rows.append(
            (
                "peak RSS of the day build, 7 M",
                f"{s['peak_rss_mb']:.0f} MB",
                f"≤ {RSS_TARGET_MB} MB",
                verdict(s["peak_rss_mb"] <= RSS_TARGET_MB),
            )
        )
    per_min = backfill["partitions_per_min"]
    modes = backfill.get("modes") or {}
    old = modes.get("per-partition")
    rows.append(
        (
            f"bml backfill-range, persistent instance ({backfill['partitions']} partitions)",
            f"{per_min:.1f} partitions/min"
            + (
                f" (one run per partition: {statistics.median(r['partitions_per_min'] for r in old):.1f})"
                if old
                else ""
            ),
            f"≥ {BACKFILL_TARGET_PER_MIN} partitions/min",
            verdict(per_min >= BACKFILL_TARGET_PER_MIN),
        )
    )
    rows.append(
        (
            "REST weight ÷ minimum, one past day at 100 000 trades",
            f"{rest:.3f}" if rest is not None else "not found in the output",
            f"≤ {REST_TARGET}",
            verdict(rest is not None and rest <= REST_TARGET),
        )
    )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    started = time.perf_counter()
    loads = [os.getloadavg()[0]]
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="bml_run_all_") as tmp:
        day_json, backfill_json = Path(tmp) / "day.json", Path(tmp) / "backfill.json"
        process_json = Path(tmp) / "process.json"
        run([py, str(BENCH / "day_build.py"), "--json", str(day_json)])
        loads.append(os.getloadavg()[0])
        run([py, str(BENCH / "day_process.py"), "--json", str(process_json)])
        loads.append(os.getloadavg()[0])
        run([py, str(BENCH / "backfill.py"), "--days", "30", "--modes", "ranged", "--json", str(backfill_json)])
        loads.append(os.getloadavg()[0])
        rest_out = run([py, str(BENCH / "rest_day_weight.py"), "--trades-per-day", "100000"], capture=True)
        loads.append(os.getloadavg()[0])
        day = json.loads(day_json.read_text())
        backfill = json.loads(backfill_json.read_text())
        proc = json.loads(process_json.read_text())
    match = re.search(r"Ratio total ÷ minimum: \*\*([0-9.]+)\*\* \(weight\)", rest_out)
    rest = float(match.group(1)) if match else None
    loads += day["loads"] + backfill["loads"] + proc["loads"]
    total = time.perf_counter() - started
    lines = [
        f"## Targets — bench/run_all.py, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_description()}. Load during the run: {load_text(loads)}. "
        f"Total run time: {total:.0f} s. Day-build, day-process and backfill figures are medians of 3 runs (see "
        "their tables above); the REST weight is a count, measured once.",
        "",
        "| what | measured | target | verdict |",
        "| --- | --- | --- | --- |",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in targets(day, backfill, rest, proc)),
        "",
        f"DuckDB vs ours: {day['agree']}. Day process: {proc['agree']}; ours' parquet bytes {proc['digests']}.",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    append_results(text)


if __name__ == "__main__":
    main()
