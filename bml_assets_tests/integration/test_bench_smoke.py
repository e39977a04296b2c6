"""The day-build benchmark still runs: ``bench/day_build.py --smoke`` on a tiny day.

A subprocess, as the benchmark itself is run: a 20 000-trade day, one repetition,
nothing appended to bench/results.md. Only checks that it works and prints its
phase rows, not how fast anything is.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "day_build.py"
RESULTS = REPO / "bench" / "results.md"
SMOKE_TRADES = "20,000"

PHASE_ROWS = (
    "| parse: aggTrades zip → Arrow",
    "| trade-flow aggregation",
    "| canonical join: other streams parsed + transformed",
    "| canonical join: `build_minute_view` (`build_day`)",
    "| validation (`enforce_blocking`)",
    "| commit (`commit_table` + ledger, minus its validation)",
    "| **day build (the 6 rows above the asset-layer rows)**",
    "| floor: `pyarrow.csv.read_csv` on the zip member",
)


def test_day_build_smoke_runs_and_prints_the_phase_rows() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for row in PHASE_ROWS:
        assert row in out, f"missing table row {row!r}:\n{out}"
    assert "| day build ÷ floor |" in out
    assert "The minute view had 1440 rows" in out
    assert "DISAGREE" not in out
    # --smoke never writes bench/results.md (other benchmarks may append to it meanwhile).
    assert f"aggTrades at {SMOKE_TRADES} trades" in out
    assert not RESULTS.exists() or f"aggTrades at {SMOKE_TRADES} trades" not in RESULTS.read_text()
