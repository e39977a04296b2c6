"""The cost of committing one partition: the S3 lake (moto + PostgreSQL) against the local one.

The same 1440-row minute-view table (one day of minutes, every column filled) is committed
with ``commit_table`` to:

- ``local``: a ``LocalStore`` folder with ``flock`` locks and the SQLite ledger inside it;
- ``s3``: an ``S3Store`` on moto's S3 server on 127.0.0.1 with advisory locks and the ledger
  in a PostgreSQL server on 127.0.0.1 (both started here through their context managers,
  or ``--postgres-url`` for a scratch database of your own).

Three kinds of commit, ``--commits`` each (median and 90th percentile, wall and CPU of this
process): a ``new`` partition (one per day: put-if-absent, ledger insert), a ``replace`` of
one partition (another value each time, ``based_on`` the previous hash: put-if-match, ledger
CAS) and a ``same`` re-commit of unchanged bytes (no write; the object is downloaded and
hashed to prove it). ``validate`` is a no-op: this measures the storage path, not the rules.

    .venv/bin/python bench/commit_cost.py               # 20 commits of each kind
    .venv/bin/python bench/commit_cost.py --commits 50

moto keeps objects in memory and answers on loopback: the S3 numbers are the protocol's
cost (requests, hashing, the lock's connection), not a real network's. Not part of the
test suite; prints its table only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import sqlalchemy as sa

from bml_assets.cluster.moto import moto_server
from bml_assets.cluster.postgres import postgres_server
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.lake.commit import commit_table
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger, metadata

REPO = Path(__file__).resolve().parent.parent

SYMBOL = "BTCUSDT"
FIRST_DAY = dt.date(2024, 3, 1)
# moto checks no signature; boto3 and pyarrow want some credentials.
MOTO_ENV = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}


def minute_view_day(day: dt.date, value: float) -> pa.Table:
    """A full day of minutes; floats ``value`` (capped by a column's domain), ints 1."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)
    arrays = []
    for c in MINUTE_VIEW.columns:
        if c.name == MINUTE_VIEW.time_column:
            arrays.append(pa.array([start + 60_000 * m for m in range(1440)], c.type))
        elif pa.types.is_integer(c.type):
            arrays.append(pa.array([max(1, int(c.domain.low))] * 1440, c.type))
        else:
            arrays.append(pa.array([min(value, c.domain.high)] * 1440, c.type))
    return pa.Table.from_arrays(arrays, schema=MINUTE_VIEW.arrow_schema)


def timed(run: Callable[[], str]) -> tuple[float, float, str]:
    """(wall s, CPU s of this process, what ``run`` returned)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def measure(lake: Lake, ledger: Ledger, commits: int) -> dict[str, list[tuple[float, float]]]:
    def commit(table: pa.Table, day: dt.date, based_on: str | None = None) -> str:
        options = {} if based_on is None else {"based_on": based_on}
        return commit_table(
            table,
            lake=lake,
            ledger=ledger,
            dataset=MINUTE_VIEW,
            symbol=SYMBOL,
            day=day,
            validate=lambda t: None,
            provenance={"bench": "commit_cost"},
            **options,
        ).content_hash

    commit(minute_view_day(FIRST_DAY - dt.timedelta(days=1), 50.0), FIRST_DAY - dt.timedelta(days=1))  # warm-up
    out: dict[str, list[tuple[float, float]]] = {"new": [], "replace": [], "same": []}

    def record(kind: str, run: Callable[[], str]) -> str:
        wall, cpu, result = timed(run)
        out[kind].append((wall, cpu))
        return result

    days = [FIRST_DAY + dt.timedelta(days=i) for i in range(commits)]
    tables = {day: minute_view_day(day, 100.0) for day in days}
    for day in days:
        record("new", lambda day=day: commit(tables[day], day))
    current = ledger.get_partition(MINUTE_VIEW, SYMBOL, FIRST_DAY)
    assert current is not None and current.content_hash is not None
    base = current.content_hash
    replacements = [minute_view_day(FIRST_DAY, 100.0 - (i + 1) / 64) for i in range(commits)]
    for table in replacements:
        base = record("replace", lambda table=table, base=base: commit(table, FIRST_DAY, base))
    last = replacements[-1]
    for _ in range(commits):
        record("same", lambda: commit(last, FIRST_DAY))
    return out


@contextmanager
def local_lake() -> Iterator[tuple[Lake, Ledger]]:
    with tempfile.TemporaryDirectory(prefix="bml_commit_cost_") as work:
        root = Path(work) / "lake"
        ledger = Ledger(f"sqlite:///{root / '_state' / 'ledger.sqlite'}")
        ledger.init()
        try:
            yield Lake.at(root), ledger
        finally:
            ledger.close()


@contextmanager
def s3_lake(postgres_url: str | None) -> Iterator[tuple[Lake, Ledger]]:
    import boto3

    os.environ.update(MOTO_ENV)
    with moto_server() as endpoint, postgres_server() if postgres_url is None else _given(postgres_url) as url:
        bucket = f"bml-bench-{uuid.uuid4().hex[:12]}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
        engine = sa.create_engine(url)
        metadata.drop_all(engine)
        engine.dispose()
        ledger = Ledger(url)
        ledger.init()
        lake = Lake.at(f"s3://{bucket}/lake", state_url=url, s3_endpoint_url=endpoint)
        lake.store.ensure_writable()
        try:
            yield lake, ledger
        finally:
            ledger.close()


@contextmanager
def _given(url: str) -> Iterator[str]:
    yield url


def ms(values: list[float], q: float) -> str:
    ordered = sorted(values)
    return f"{1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))]:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20, help="commits of each kind per lake")
    parser.add_argument("--postgres-url", default=None, help="a scratch PostgreSQL database (default: start one)")
    args = parser.parse_args()

    results: dict[str, dict[str, list[tuple[float, float]]]] = {}
    with local_lake() as (lake, ledger):
        results["local"] = measure(lake, ledger, args.commits)
        size = lake.stat(MINUTE_VIEW, SYMBOL, FIRST_DAY)
    with s3_lake(args.postgres_url) as (lake, ledger):
        results["s3"] = measure(lake, ledger, args.commits)

    print(f"commit of one {MINUTE_VIEW.name} partition: 1440 rows, {size.size if size else '?'} bytes of parquet;")
    print(f"{args.commits} commits of each kind; ms per commit (wall median / p90, CPU median of this process)")
    print()
    print("| commit | local wall | local p90 | local CPU | s3 wall | s3 p90 | s3 CPU | s3 ÷ local |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind in ("new", "replace", "same"):
        cells = []
        for lake_kind in ("local", "s3"):
            wall = [w for w, _ in results[lake_kind][kind]]
            cpu = [c for _, c in results[lake_kind][kind]]
            cells += [ms(wall, 0.5), ms(wall, 0.9), f"{1000 * statistics.median(cpu):.1f}"]
        ratio = statistics.median(w for w, _ in results["s3"][kind]) / statistics.median(
            w for w, _ in results["local"][kind]
        )
        print(f"| {kind} | {' | '.join(cells)} | {ratio:.1f} × |")


if __name__ == "__main__":
    main()
