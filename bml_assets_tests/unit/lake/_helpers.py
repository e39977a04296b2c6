"""Shared builders for the lake tests, and the bodies of the spawned worker processes.

Workers live in an importable module (not in a test file) because the ``spawn``
start method re-imports the target function by name in a fresh interpreter.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa

from bml_assets.domain.schema import MINUTE_VIEW, Dataset

DAY = date(2024, 3, 5)
DAY_START_MS = int(datetime(2024, 3, 5, tzinfo=UTC).timestamp() * 1000)  # 1709596800000
COMMITTED_AT = datetime(2024, 3, 6, 1, 2, 3, tzinfo=UTC)


def make_table(dataset: Dataset, rows: int = 3, base: float = 100.0) -> pa.Table:
    """``rows`` minutes from 2024-03-05 00:00 UTC; floats ``base + i``, ints ``i``."""
    arrays = []
    for name, dtype in ((c.name, c.type) for c in dataset.columns):
        if name == dataset.time_column:
            arrays.append(pa.array([DAY_START_MS + 60_000 * i for i in range(rows)], dtype))
        elif pa.types.is_integer(dtype):
            arrays.append(pa.array(list(range(rows)), dtype))
        elif pa.types.is_boolean(dtype):  # the live table's coverage flags
            arrays.append(pa.array([i % 2 == 0 for i in range(rows)], dtype))
        else:
            arrays.append(pa.array([base + i for i in range(rows)], dtype))
    return pa.Table.from_arrays(arrays, schema=dataset.arrow_schema)


def minute_ms(day: date, minute: int) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp() * 1000) + 60_000 * minute


def minute_table(day: date, minutes: Sequence[int] = range(1440)) -> pa.Table:
    """A valid minute-view table: floats 100.0 (so OHLC holds; a fraction or rate its
    domain's upper bound), ints 1 (an epoch-ms column its domain's lower bound), the
    given minutes of ``day``."""
    n = len(minutes)
    arrays = []
    for c in MINUTE_VIEW.columns:
        if c.name == MINUTE_VIEW.time_column:
            arrays.append(pa.array([minute_ms(day, m) for m in minutes], c.type))
        elif pa.types.is_integer(c.type):
            arrays.append(pa.array([max(1, int(c.domain.low))] * n, c.type))
        else:
            arrays.append(pa.array([min(100.0, c.domain.high)] * n, c.type))
    return pa.Table.from_arrays(arrays, schema=MINUTE_VIEW.arrow_schema)


def no_validation(table: pa.Table) -> None:
    return None


def commit_worker(lake_root: str, url: str, worker: int, commits: int, start: Any, log: str, out: Any) -> None:
    """Commit ``commits`` distinct tables to one partition, logging the time spent inside the lock."""
    from bml_assets.domain.schema import KLINES
    from bml_assets.lake.commit import commit_table
    from bml_assets.lake.lake import Lake
    from bml_assets.lake.ledger import Ledger

    def timed_validate(table: pa.Table) -> None:
        # validate runs under the partition lock: the intervals logged by the
        # two workers must never overlap if the lock serialises them.
        begin = time.monotonic_ns()
        time.sleep(0.03)
        end = time.monotonic_ns()
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{worker} {begin} {end}\n".encode())
        finally:
            os.close(fd)

    ledger = Ledger(url)
    start.wait(30)
    results = []
    try:
        for i in range(commits):
            table = make_table(KLINES, rows=5, base=1000.0 * worker + i)
            r = commit_table(
                table,
                lake=Lake.at(lake_root),
                ledger=ledger,
                dataset=KLINES,
                symbol="BTCUSDT",
                day=DAY,
                validate=timed_validate,
                provenance={"worker": worker, "i": i},
            )
            results.append(("ok", r.content_hash))
    except Exception as exc:  # reported to the parent, which fails the test
        results.append(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        ledger.close()
    out.put((worker, results))


def cas_worker(url: str, worker: int, expected: str, start: Any, out: Any) -> None:
    """One compare-and-swap from ``expected`` to a hash of this worker's own."""
    from bml_assets.lake.ledger import CommitConflict, Ledger, PartitionRecord

    ledger = Ledger(url)
    record = PartitionRecord(
        dataset="klines_1m",
        symbol="BTCUSDT",
        day=DAY,
        status="committed",
        committed_at=COMMITTED_AT,
        path="p",
        row_count=1,
        content_hash=f"{worker:064x}",
    )
    start.wait(30)
    try:
        ledger.commit_partition(record, expected_content_hash=expected)
        out.put((worker, "won"))
    except CommitConflict as exc:
        out.put((worker, f"conflict: {exc}"))
    except Exception as exc:
        out.put((worker, f"error: {type(exc).__name__}: {exc}"))
    finally:
        ledger.close()


def upgrade_worker(url: str, start: Any, out: Any) -> None:
    """Open the ledger (``init()`` migrates it) and report (revision before, after)."""
    from bml_assets.lake.ledger import Ledger

    start.wait(30)
    try:
        with Ledger(url) as ledger:
            done = ledger.upgrade()
        out.put((str(done.before), done.after))
    except Exception as exc:
        out.put(("error", f"{type(exc).__name__}: {exc}"))
