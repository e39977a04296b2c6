"""Events per second one core sustains through the live path: parse + book + minute aggregation.

Replays the real recording ``../shared/fixtures/real/ws/btcusdt_20240808.gz`` (93 953 frames
of depth@0ms, bookTicker and trade, one REST snapshot) as fast as possible through
``LiveCore`` (no spool, no sink: the commits are once a minute and measured elsewhere),
pinned to one CPU where the OS allows it, best of ``--repeat`` runs; the lines are read
into memory first. ``--json orjson`` swaps the frame decoder (``frames._decode``) for orjson
when it is installed, to see whether it earns its place. ``--spool`` also writes the raw
spool to a temporary lake (gzip included).

    .venv/bin/python bench/live_throughput.py [--repeat 5] [--json orjson] [--spool]

Prints one line; not part of the test suite.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

from bml_assets.live import frames
from bml_assets.live.core import LiveCore
from bml_assets.live.rebuild import feed, recording_lines
from bml_assets.live.spool import SpoolWriter
from bml_assets.storage.store import LocalStore

REPO = Path(__file__).resolve().parent.parent
RECORDING = REPO.parent / "shared" / "fixtures" / "real" / "ws" / "btcusdt_20240808.gz"


def run(lines: list[tuple[int, str]], spool_root: Path | None) -> tuple[float, int]:
    spool = SpoolWriter(LocalStore(spool_root), started_ns=lines[0][0] + 1) if spool_root else None
    core = LiveCore(["BTCUSDT"], families=("public",), spool=spool)
    began = time.perf_counter()
    feed(core, lines)
    core.flush()
    if spool is not None:
        spool.close()
    elapsed = time.perf_counter() - began
    assert core.stats.breaks == 0 and core.stats.rows == 7, core.stats
    return elapsed, core.stats.events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", choices=("json", "orjson"), default="json")
    parser.add_argument("--spool", action="store_true", help="also write the gzipped raw spool")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    if args.json == "orjson":
        import orjson  # not a dependency: installed by hand for the comparison

        frames._decode = orjson.loads
    lines = list(recording_lines(RECORDING))
    best = float("inf")
    events = 0
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            elapsed, events = run(lines, Path(tmp) if args.spool else None)
        best = min(best, elapsed)
    print(
        f"live path ({args.json}{', spool' if args.spool else ''}): {events} events in {best:.3f} s "
        f"= {events / best:,.0f} events/s on one core (best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
