"""The commit protocol on an S3 lake (moto) with its ledger and advisory locks in PostgreSQL.

The same ``commit_table`` as on a local lake: what changes is the store (conditional PUTs)
and the locks (``pg_try_advisory_lock``). Writers are separate processes (``spawn``), each
with its own lake and ledger, as they would be on separate hosts.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import multiprocessing
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

pytest.importorskip("boto3", reason="the S3 lake tests need boto3 (pip install 'bml-assets[s3]')")

from bml_assets.domain.schema import KLINES, MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.commit import CommitResult, commit_table, verify_partition
from bml_assets.lake.lake import Lake
from bml_assets.lake.layout import file_key
from bml_assets.lake.ledger import CommitConflict, Ledger
from bml_assets.lake.scan import ProblemKind, damaged_files, scan
from bml_assets.orchestration.errors import LakeRootNotWritable
from bml_assets.orchestration.scans import scan_range
from bml_assets.orchestration.state import check_lake
from bml_assets.storage.locks import AdvisoryLocks, LockTimeout
from bml_assets.storage.s3 import S3Store
from bml_assets.storage.store import UnsupportedStore
from bml_assets_tests.unit.lake._helpers import DAY, make_table, minute_table, no_validation
from bml_assets_tests.unit.lake._s3_workers import (
    based_on_worker,
    killed_after_put_worker,
    lock_holder_worker,
)

WRITERS = 8


@pytest.fixture
def state_url(empty_postgres_url: str) -> str:
    return empty_postgres_url


@pytest.fixture
def lake(s3_root: str, moto_endpoint: str, state_url: str) -> Lake:
    return Lake.at(s3_root, state_url=state_url, s3_endpoint_url=moto_endpoint)


@pytest.fixture
def ledger(state_url: str) -> Iterator[Ledger]:
    opened = Ledger(state_url)
    opened.init()
    yield opened
    opened.close()


def _commit(lake: Lake, ledger: Ledger, table: pa.Table, **kwargs: Any) -> CommitResult:
    return commit_table(
        table,
        lake=lake,
        ledger=ledger,
        dataset=kwargs.pop("dataset", KLINES),
        symbol="BTCUSDT",
        day=kwargs.pop("day", DAY),
        validate=no_validation,
        provenance={"test": True},
        **kwargs,
    )


def _object_sha256(lake: Lake, dataset: Any = KLINES, day: dt.date = DAY) -> str:
    return hashlib.sha256(lake.store.read(file_key(dataset, "BTCUSDT", day))).hexdigest()


def _wait_free(lake: Lake, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while lake.busy(KLINES, "BTCUSDT", DAY):
        assert time.monotonic() < deadline, "the dead writer's lock was never released"
        time.sleep(0.05)


# --------------------------------------------------------------------------- one writer


def test_the_lake_of_an_s3_root_is_an_s3_store_with_advisory_locks(lake: Lake, s3_root: str) -> None:
    assert isinstance(lake.store, S3Store) and isinstance(lake.locks, AdvisoryLocks)
    assert lake.root == s3_root
    assert lake.location(KLINES, "BTCUSDT", DAY) == f"{s3_root}/{file_key(KLINES, 'BTCUSDT', DAY)}"


def test_commit_recommit_and_replace(lake: Lake, ledger: Ledger) -> None:
    first = _commit(lake, ledger, make_table(KLINES, rows=10))
    assert first.rewritten and first.previous_content_hash is None
    assert first.path == lake.location(KLINES, "BTCUSDT", DAY)
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    st = lake.stat(KLINES, "BTCUSDT", DAY)
    assert row is not None and st is not None
    assert row.content_hash == first.content_hash == _object_sha256(lake)
    assert (row.file_bytes, row.file_mtime_ns) == (st.size, st.mtime_ns)
    assert lake.read(KLINES, "BTCUSDT", DAY).equals(make_table(KLINES, rows=10))

    again = _commit(lake, ledger, make_table(KLINES, rows=10))
    assert not again.rewritten and again.content_hash == first.content_hash
    assert lake.stat(KLINES, "BTCUSDT", DAY) == st  # same ETag: not rewritten

    replaced = _commit(lake, ledger, make_table(KLINES, rows=12), based_on=first.content_hash)
    assert replaced.rewritten and replaced.previous_content_hash == first.content_hash
    assert replaced.content_hash != first.content_hash
    assert _object_sha256(lake) == replaced.content_hash
    assert lake.read(KLINES, "BTCUSDT", DAY).num_rows == 12
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent
    assert lake.store.list("") == [file_key(KLINES, "BTCUSDT", DAY)]


def test_a_stale_base_is_a_conflict_and_changes_nothing(lake: Lake, ledger: Ledger) -> None:
    base = _commit(lake, ledger, make_table(KLINES, rows=10))
    newer = _commit(lake, ledger, make_table(KLINES, rows=12), based_on=base.content_hash)
    before = lake.stat(KLINES, "BTCUSDT", DAY)
    with pytest.raises(CommitConflict, match=base.content_hash):
        _commit(lake, ledger, make_table(KLINES, rows=11), based_on=base.content_hash)
    assert lake.stat(KLINES, "BTCUSDT", DAY) == before
    assert _object_sha256(lake) == newer.content_hash


def test_a_held_partition_lock_times_out_naming_the_partition(lake: Lake, ledger: Ledger, moto_endpoint: str) -> None:
    with lake.lock(KLINES, "BTCUSDT", DAY):
        other = Lake.at(lake.root, state_url=ledger.url, s3_endpoint_url=moto_endpoint)
        with pytest.raises(LockTimeout, match="klines_1m"):
            _commit(other, ledger, make_table(KLINES, rows=3), lock_timeout=0.2)
    assert lake.stat(KLINES, "BTCUSDT", DAY) is None


# --------------------------------------------------------------------------- many writers, crashes


def test_eight_writers_based_on_one_hash_one_wins(lake: Lake, ledger: Ledger, moto_endpoint: str) -> None:
    base = _commit(lake, ledger, make_table(KLINES, rows=5))
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [
        ctx.Process(
            target=based_on_worker, args=(lake.root, moto_endpoint, ledger.url, w, base.content_hash, start, out)
        )
        for w in range(WRITERS)
    ]
    for w in workers:
        w.start()
    start.set()
    outcomes = [out.get(timeout=180) for _ in workers]
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    kinds = sorted(kind for _, kind, _ in outcomes)
    assert kinds == ["conflict"] * (WRITERS - 1) + ["won"], outcomes
    winner = next(detail for _, kind, detail in outcomes if kind == "won")
    assert all(base.content_hash in detail for _, kind, detail in outcomes if kind == "conflict")
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.content_hash == winner == _object_sha256(lake)
    assert lake.store.list("") == [file_key(KLINES, "BTCUSDT", DAY)]
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent


def test_a_writer_killed_between_put_and_ledger_is_repaired_by_the_retry(
    lake: Lake, ledger: Ledger, moto_endpoint: str
) -> None:
    base = _commit(lake, ledger, make_table(KLINES, rows=5))
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=killed_after_put_worker, args=(lake.root, moto_endpoint, ledger.url))
    child.start()
    child.join(120)
    assert child.exitcode == -signal.SIGKILL

    # Its PUT landed, its ledger write never happened.
    check = verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY)
    assert check.ledger_content_hash == base.content_hash
    assert check.file_content_hash == _object_sha256(lake) != base.content_hash
    assert check.problem is not None and "re-run the commit" in check.problem

    # PostgreSQL ended the dead writer's session, and its lock with it.
    _wait_free(lake)
    retry = _commit(lake, ledger, make_table(KLINES, rows=5, base=7000.0), lock_timeout=30)
    assert retry.previous_content_hash == base.content_hash
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.content_hash == retry.content_hash == _object_sha256(lake)
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent


def test_a_writer_killed_while_holding_the_lock_frees_it(lake: Lake, ledger: Ledger, moto_endpoint: str) -> None:
    ctx = multiprocessing.get_context("spawn")
    held = ctx.Event()
    child = ctx.Process(target=lock_holder_worker, args=(lake.root, moto_endpoint, ledger.url, held))
    child.start()
    try:
        assert held.wait(60)
        assert lake.busy(KLINES, "BTCUSDT", DAY)
        with pytest.raises(LockTimeout):
            _commit(lake, ledger, make_table(KLINES, rows=3), lock_timeout=0.2)
    finally:
        child.kill()
        child.join(30)
    assert child.exitcode == -signal.SIGKILL
    _wait_free(lake)
    assert _commit(lake, ledger, make_table(KLINES, rows=3), lock_timeout=30).rewritten


# --------------------------------------------------------------------------- the scan


DAY_1, DAY_2, DAY_3 = dt.date(2024, 3, 5), dt.date(2024, 3, 6), dt.date(2024, 3, 7)


def _three_days(lake: Lake, ledger: Ledger) -> None:
    for day in (DAY_1, DAY_2, DAY_3):
        _commit(lake, ledger, minute_table(day), dataset=MINUTE_VIEW, day=day)
    store = lake.store
    store.delete(file_key(MINUTE_VIEW, "BTCUSDT", DAY_1))  # gone
    store.put(file_key(MINUTE_VIEW, "BTCUSDT", DAY_2), b"not parquet at all")  # corrupt


def _kinds(problems: Any) -> dict[dt.date, set[str]]:
    found: dict[dt.date, set[str]] = {}
    for p in problems:
        found.setdefault(p.day, set()).add(str(p.kind))
    return found


@pytest.mark.parametrize("deep", [True, False])
def test_the_scan_finds_a_missing_and_a_corrupt_object(lake: Lake, ledger: Ledger, deep: bool) -> None:
    _three_days(lake, ledger)
    report = scan(lake, ledger, ["BTCUSDT"], DAY_1, DAY_3, today=DAY_3 + dt.timedelta(days=1), deep=deep)
    kinds = _kinds(report.problems)
    assert kinds[DAY_1] == {ProblemKind.FILE_MISSING}
    assert ProblemKind.UNREADABLE in kinds[DAY_2] or ProblemKind.CONTENT_HASH_MISMATCH in kinds[DAY_2]
    assert DAY_3 not in kinds
    assert report.strays == []
    assert _kinds(damaged_files(lake, ledger)).keys() == {DAY_1, DAY_2}


def test_bml_scan_over_an_s3_lake(lake: Lake, ledger: Ledger, moto_endpoint: str, tmp_path: Path) -> None:
    _three_days(lake, ledger)
    settings = Settings(
        symbols=("BTCUSDT",),
        start_date=DAY_1,
        lake_root=lake.root,
        state_url=ledger.url,
        s3_endpoint_url=moto_endpoint,
        work_dir=tmp_path / "work",
    )
    found = scan_range(settings, DAY_1, DAY_3, today=DAY_3 + dt.timedelta(days=1))
    assert not found.clean
    kinds = _kinds(found.report.problems)
    assert kinds[DAY_1] == {ProblemKind.FILE_MISSING}
    assert DAY_2 in kinds and DAY_3 not in kinds


# --------------------------------------------------------------------------- configuration


def test_an_s3_lake_with_a_sqlite_ledger_is_refused(tmp_path: Path) -> None:
    settings = Settings(lake_root="s3://bucket/lake", state_url=f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    with pytest.raises(UnsupportedStore) as refused:
        Lake.from_settings(settings)
    message = str(refused.value)
    assert "s3://bucket/lake" in message and "PostgreSQL" in message and "sqlite:///" in message


def test_start_up_checks_an_s3_lake_like_a_local_one(lake: Lake, moto_endpoint: str, state_url: str) -> None:
    assert check_lake(lake) == lake.root
    missing = Lake.at("s3://bml-no-such-bucket/lake", state_url=state_url, s3_endpoint_url=moto_endpoint)
    with pytest.raises(LakeRootNotWritable) as refused:
        check_lake(missing)
    message = str(refused.value)
    assert "s3://bml-no-such-bucket/lake is not writable (no bucket 'bml-no-such-bucket'" in message
    assert "BML_S3_ENDPOINT_URL" in message
