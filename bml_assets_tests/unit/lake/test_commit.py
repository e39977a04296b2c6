"""lake/commit.py: the atomic commit, its failure modes, repair by re-run, and reading back."""

from __future__ import annotations

import hashlib
import itertools
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bml_assets.domain.schema import KLINES, MINUTE_VIEW, schema_hash
from bml_assets.lake import commit as commit_module
from bml_assets.lake.commit import (
    CommitIncomplete,
    UnavailableButCommitted,
    commit_table,
    encode_parquet,
    record_unavailable,
    refresh_file_stat,
    sweep_temp_files,
    verify_partition,
)
from bml_assets.lake.lake import Lake, PartitionNotFound, PartitionUnreadable, SchemaMismatch
from bml_assets.lake.ledger import CommitConflict, Ledger, PartitionRecord
from bml_assets.storage import store as store_module
from bml_assets.storage.locks import LockTimeout
from bml_assets_tests.unit.lake._helpers import DAY, commit_worker, make_table, minute_table, no_validation

PROVENANCE = {"klines": [{"url": "https://x/BTCUSDT-1m-2024-03-05.zip", "sha256": "a" * 64, "bytes": 9, "rows": 3}]}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.at(tmp_path / "lake")


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger(url) as led:
        yield led


def _commit(lake: Lake, ledger: Ledger, table: pa.Table, **kw: Any) -> commit_module.CommitResult:
    kw.setdefault("dataset", KLINES)
    kw.setdefault("validate", no_validation)
    kw.setdefault("provenance", PROVENANCE)
    return commit_table(table, lake=lake, ledger=ledger, symbol="BTCUSDT", day=DAY, **kw)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _temps(lake: Lake) -> list[Path]:
    return sorted(Path(lake.root).rglob("*.tmp"))


def _target(lake: Lake) -> Path:
    return Path(lake.root) / "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/part.parquet"


def test_commit_writes_the_file_and_the_ledger_row(lake: Lake, ledger: Ledger) -> None:
    table = make_table(MINUTE_VIEW, rows=3)
    gaps = [{"minute": "2024-03-05T00:03:00Z", "missing": ["klines"], "reason": "exchange downtime"}]
    result = _commit(lake, ledger, table, dataset=MINUTE_VIEW, source_gaps=gaps, message="from vision")
    target = Path(lake.root) / "futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    assert result.path == str(target) and target.is_file()
    assert result.content_hash == _sha(target)
    assert (result.row_count, result.rewritten, result.previous_content_hash) == (3, True, None)

    row = ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY)
    assert row is not None
    assert row.status == "committed"
    assert row.path == "futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    assert row.content_hash == _sha(target)
    assert row.row_count == 3
    assert (row.min_ts, row.max_ts) == (1709596800000, 1709596920000)  # 00:00 and 00:02 UTC
    assert row.schema_hash == schema_hash(MINUTE_VIEW.arrow_schema)
    assert row.provenance == PROVENANCE
    assert row.source_gaps == gaps
    assert row.message == "from vision"
    assert row.committed_at.tzinfo is not None
    assert _temps(lake) == []

    back = lake.read(MINUTE_VIEW, "BTCUSDT", DAY)
    assert back.equals(table) and back.schema.equals(MINUTE_VIEW.arrow_schema)
    assert back.column_names == MINUTE_VIEW.column_names  # no hive symbol/date columns added
    assert verify_partition(lake, ledger, MINUTE_VIEW, "BTCUSDT", DAY).consistent


def test_parquet_bytes_are_deterministic_whatever_the_chunking_or_metadata() -> None:
    table = make_table(KLINES, rows=50)
    once = encode_parquet(table)
    assert encode_parquet(table) == once
    rechunked = pa.concat_tables([table.slice(0, 20), table.slice(20)])
    assert rechunked.column(0).num_chunks == 2
    with_metadata = table.replace_schema_metadata({b"pandas": b"{}"})
    assert commit_module._canonical_table(rechunked, KLINES, "x").equals(table)
    assert encode_parquet(commit_module._canonical_table(rechunked, KLINES, "x")) == once
    assert encode_parquet(commit_module._canonical_table(with_metadata, KLINES, "x")) == once
    # The only key-value metadata is the Arrow schema: no pandas block, no write time.
    assert list(pq.read_metadata(pa.BufferReader(once)).metadata) == [b"ARROW:schema"]


def test_parquet_bytes_are_the_same_in_another_interpreter() -> None:
    script = (
        "import hashlib; from bml_assets.lake.commit import encode_parquet; from bml_assets.domain.schema import KLINES; "
        "from bml_assets_tests.unit.lake._helpers import make_table; "
        "print(hashlib.sha256(encode_parquet(make_table(KLINES, rows=50))).hexdigest())"
    )
    repo = Path(__file__).resolve().parents[3]
    other = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == hashlib.sha256(encode_parquet(make_table(KLINES, rows=50))).hexdigest()


def test_same_table_twice_is_not_rewritten(lake: Lake, ledger: Ledger) -> None:
    table = make_table(KLINES)
    first = _commit(lake, ledger, table)
    inode = _target(lake).stat().st_ino
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    second = _commit(lake, ledger, pa.concat_tables([table.slice(0, 1), table.slice(1)]), provenance={"other": 1})
    assert second.content_hash == first.content_hash
    assert (second.rewritten, second.previous_content_hash) == (False, first.content_hash)
    assert _target(lake).stat().st_ino == inode  # the file was not replaced
    after = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert after is not None and row is not None
    # Same bytes, but the ledger now names the sources that produced them.
    assert after.provenance == {"other": 1}
    assert (after.content_hash, after.path, after.row_count) == (row.content_hash, row.path, row.row_count)
    assert _temps(lake) == []
    third = _commit(lake, ledger, table, provenance={"other": 1})
    assert third.rewritten is False
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) == after  # nothing changed: the row was left as is


def test_a_new_table_replaces_the_file_from_the_ledger_hash(lake: Lake, ledger: Ledger) -> None:
    first = _commit(lake, ledger, make_table(KLINES, base=1.0))
    second = _commit(lake, ledger, make_table(KLINES, rows=4, base=2.0))
    assert second.rewritten and second.previous_content_hash == first.content_hash
    assert second.content_hash != first.content_hash
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and (row.content_hash, row.row_count) == (_sha(_target(lake)), 4)


@pytest.fixture
def committed(lake: Lake, ledger: Ledger) -> tuple[bytes, PartitionRecord]:
    """A partition committed once; returns the file's bytes and the ledger row."""
    _commit(lake, ledger, make_table(KLINES, base=1.0))
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None
    return _target(lake).read_bytes(), row


def _assert_untouched(lake: Lake, ledger: Ledger, committed: tuple[bytes, PartitionRecord]) -> None:
    data, row = committed
    assert _target(lake).read_bytes() == data
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) == row
    assert _temps(lake) == []


def test_failing_validate_leaves_everything_untouched(lake: Lake, ledger: Ledger, committed: Any) -> None:
    seen: list[int] = []

    def refuse(table: pa.Table) -> None:
        seen.append(table.num_rows)
        raise ValueError("low > high at 00:01")

    with pytest.raises(ValueError, match="low > high at 00:01"):
        _commit(lake, ledger, make_table(KLINES, rows=7, base=2.0), validate=refuse)
    assert seen == [7]
    _assert_untouched(lake, ledger, committed)


def test_failing_validate_on_a_new_partition_creates_nothing(lake: Lake, ledger: Ledger) -> None:
    def refuse(table: pa.Table) -> None:
        raise ValueError("no")

    with pytest.raises(ValueError, match="no"):
        _commit(lake, ledger, make_table(KLINES), validate=refuse)
    assert not _target(lake).parent.exists()
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) is None


def test_schema_mismatch_lists_the_differences_and_touches_nothing(lake: Lake, ledger: Ledger, committed: Any) -> None:
    table = make_table(KLINES, base=2.0)
    wrong = (
        table.drop_columns(["quote_volume"])
        .set_column(1, "open", pa.array([1, 2, 3], pa.int64()))
        .append_column("extra", pa.array([1.0, 2.0, 3.0]))
    )
    with pytest.raises(SchemaMismatch) as info:
        _commit(lake, ledger, wrong)
    assert info.value.differences == [
        "missing columns: quote_volume",
        "unexpected columns: extra",
        "column 'open' has type int64, expected double",
    ]
    assert str(info.value).startswith("klines_1m/BTCUSDT/2024-03-05: the table does not match the dataset schema: ")
    swapped = table.select(["timestamp", "high", "open", *KLINES.column_names[3:]])
    with pytest.raises(SchemaMismatch, match="position 2 holds 'high' where 'open' belongs"):
        _commit(lake, ledger, swapped)
    naive = table.set_column(0, "timestamp", table.column(0).cast(pa.timestamp("ms")))
    with pytest.raises(
        SchemaMismatch, match=r"column 'timestamp' has type timestamp\[ms\], expected timestamp\[ms, tz=UTC\]"
    ):
        _commit(lake, ledger, naive)
    _assert_untouched(lake, ledger, committed)


def test_nullability_is_ignored_but_nulls_in_the_time_column_are_not(lake: Lake, ledger: Ledger) -> None:
    table = make_table(KLINES)
    loose = pa.Table.from_arrays(table.columns, schema=pa.schema([f.with_nullable(True) for f in table.schema]))
    result = _commit(lake, ledger, loose)
    assert pq.read_schema(result.path).field("timestamp").nullable is False
    assert result.content_hash == hashlib.sha256(encode_parquet(table)).hexdigest()
    holes = loose.set_column(0, "timestamp", pa.array([None, 1, 2], pa.timestamp("ms", tz="UTC")))
    with pytest.raises(SchemaMismatch, match=r"non-nullable columns hold NULLs: timestamp \(1\)"):
        _commit(lake, ledger, holes)


def test_crash_before_the_rename_keeps_the_old_file(
    lake: Lake, ledger: Ledger, committed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_replace(src: Any, dst: Any) -> None:
        assert Path(src).is_file() and Path(src).name.startswith(".part.parquet.")
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(store_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated I/O error"):
        _commit(lake, ledger, make_table(KLINES, base=2.0))
    _assert_untouched(lake, ledger, committed)


def test_crash_while_writing_the_temporary_file_keeps_the_old_file(
    lake: Lake, ledger: Ledger, committed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_fsync(fd: int) -> None:
        raise OSError(28, "simulated disk full")

    monkeypatch.setattr(store_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        _commit(lake, ledger, make_table(KLINES, base=2.0))
    _assert_untouched(lake, ledger, committed)


def test_temporary_files_of_dead_writers_are_swept(lake: Lake, ledger: Ledger, committed: Any) -> None:
    stale = _target(lake).with_name(".part.parquet." + "f" * 32 + ".tmp")
    stale.write_bytes(b"half a file")
    _commit(lake, ledger, make_table(KLINES, base=2.0))
    assert _temps(lake) == []


def test_crash_after_the_rename_then_a_rerun_repairs_the_ledger(
    lake: Lake, ledger: Ledger, committed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, old_row = committed
    new_table = make_table(KLINES, base=2.0)

    def lost_connection(record: PartitionRecord, *, expected_content_hash: str | None) -> None:
        raise ConnectionError("ledger unreachable")

    monkeypatch.setattr(ledger, "commit_partition", lost_connection)
    with pytest.raises(CommitIncomplete) as info:
        _commit(lake, ledger, new_table)
    new_hash = hashlib.sha256(encode_parquet(new_table)).hexdigest()
    assert isinstance(info.value.__cause__, ConnectionError)
    assert (info.value.content_hash, info.value.ledger_content_hash) == (new_hash, old_row.content_hash)
    assert "re-run the commit" in str(info.value)
    # The new file is complete and in place; the ledger still describes the old one.
    assert _sha(_target(lake)) == new_hash
    assert lake.read(KLINES, "BTCUSDT", DAY).equals(new_table)
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) == old_row
    assert _temps(lake) == []
    check = verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY)
    assert not check.consistent and "re-run the commit" in (check.problem or "")
    assert (check.file_content_hash, check.ledger_content_hash) == (new_hash, old_row.content_hash)

    monkeypatch.undo()
    rerun = _commit(lake, ledger, new_table)
    assert (rerun.rewritten, rerun.previous_content_hash, rerun.content_hash) == (True, old_row.content_hash, new_hash)
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.content_hash == new_hash == _sha(_target(lake))
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent


def test_rerun_with_the_old_table_after_a_post_rename_crash_restores_the_old_file(
    lake: Lake, ledger: Ledger, committed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    old_bytes, old_row = committed

    def lost_connection(record: PartitionRecord, *, expected_content_hash: str | None) -> None:
        raise ConnectionError("ledger unreachable")

    monkeypatch.setattr(ledger, "commit_partition", lost_connection)
    with pytest.raises(CommitIncomplete):
        _commit(lake, ledger, make_table(KLINES, base=2.0))
    monkeypatch.undo()
    # The re-run's bytes equal the ledger's hash, but not the file's: it must rewrite.
    rerun = _commit(lake, ledger, make_table(KLINES, base=1.0))
    assert rerun.rewritten and rerun.content_hash == old_row.content_hash
    assert _target(lake).read_bytes() == old_bytes
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent


def test_first_commit_crashing_after_the_rename_is_repaired_too(
    lake: Lake, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def conflict(record: PartitionRecord, *, expected_content_hash: str | None) -> None:
        raise CommitConflict("klines_1m/BTCUSDT/2024-03-05", None, "x", row_exists=True)

    monkeypatch.setattr(ledger, "commit_partition", conflict)
    with pytest.raises(CommitIncomplete, match="still records no file"):
        _commit(lake, ledger, make_table(KLINES))
    check = verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY)
    assert check.problem is not None and "the ledger records nothing" in check.problem
    monkeypatch.undo()
    assert _commit(lake, ledger, make_table(KLINES)).rewritten
    assert verify_partition(lake, ledger, KLINES, "BTCUSDT", DAY).consistent


def test_lock_timeout_names_the_partition(lake: Lake, ledger: Ledger) -> None:
    with lake.lock(KLINES, "BTCUSDT", DAY):
        with pytest.raises(
            LockTimeout, match=r"klines_1m/BTCUSDT/2024-03-05: another writer held the lock .*2024-03-05\.lock"
        ):
            _commit(lake, ledger, make_table(KLINES), lock_timeout=0.1)
    assert not _target(lake).exists()
    assert _commit(lake, ledger, make_table(KLINES), lock_timeout=0.1).rewritten  # released


def test_non_json_provenance_fails_before_any_write(lake: Lake, ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="provenance must be plain JSON"):
        _commit(lake, ledger, make_table(KLINES), provenance={"day": date(2024, 3, 5)})
    assert not _target(lake).parent.exists()


def test_record_unavailable_then_commit_then_refuse(lake: Lake, ledger: Ledger) -> None:
    record_unavailable(
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        status="not_published",
        message="Vision answered 404",
        provenance={"klines": {"status": "not_published", "url": "https://x/a.zip", "reason": "HTTP 404"}},
    )
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None
    assert (row.status, row.path, row.content_hash, row.row_count, row.message) == (
        "not_published",
        None,
        None,
        None,
        "Vision answered 404",
    )
    assert not _target(lake).exists()

    result = _commit(lake, ledger, make_table(KLINES))  # the day appeared
    assert result.previous_content_hash is None
    committed_row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert committed_row is not None and committed_row.status == "committed"
    data = _target(lake).read_bytes()

    with pytest.raises(UnavailableButCommitted, match=r"refusing to record it as not_listed .*file is kept"):
        record_unavailable(
            lake=lake,
            ledger=ledger,
            dataset=KLINES,
            symbol="BTCUSDT",
            day=DAY,
            status="not_listed",
            message="not in exchangeInfo",
            provenance={},
        )
    assert _target(lake).read_bytes() == data
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) == committed_row


def test_record_unavailable_replaces_a_row_whose_file_is_gone(lake: Lake, ledger: Ledger, committed: Any) -> None:
    _target(lake).unlink()
    record_unavailable(
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        status="not_listed",
        message="delisted",
        provenance={},
    )
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and (row.status, row.content_hash) == ("not_listed", None)


def test_record_unavailable_refuses_other_statuses(lake: Lake, ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="status must be one of not_listed, not_published"):
        record_unavailable(
            lake=lake,
            ledger=ledger,
            dataset=KLINES,
            symbol="BTCUSDT",
            day=DAY,
            status="committed",  # type: ignore[arg-type]
            message="",
            provenance={},
        )


def test_read_partition_errors_name_the_path(lake: Lake) -> None:
    path = Path(lake.location(KLINES, "BTCUSDT", DAY))
    with pytest.raises(PartitionNotFound, match=f"no committed file at {path}"):
        lake.read(KLINES, "BTCUSDT", DAY)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not parquet")
    with pytest.raises(PartitionUnreadable, match=f"cannot read {path} as parquet"):
        lake.read(KLINES, "BTCUSDT", DAY)
    # Any difference but absent nullable columns is refused, naming the file.
    table = make_table(KLINES)
    pq.write_table(table.set_column(7, "count", table.column("count").cast(pa.float64())), path)
    with pytest.raises(SchemaMismatch, match=f"the file {path} .*column 'count' has type double, expected int64"):
        lake.read(KLINES, "BTCUSDT", DAY)
    pq.write_table(table.drop_columns(["timestamp"]), path)  # the time column is not nullable
    with pytest.raises(SchemaMismatch, match="missing columns: timestamp"):
        lake.read(KLINES, "BTCUSDT", DAY)
    pq.write_table(table.append_column("extra", pa.array([1.0, 2.0, 3.0])), path)
    with pytest.raises(SchemaMismatch, match="unexpected columns: extra"):
        lake.read(KLINES, "BTCUSDT", DAY)
    pq.write_table(table.drop_columns(["count"]), path)
    assert lake.read(KLINES, "BTCUSDT", DAY, check_schema=False).num_columns == 9


def test_a_file_lacking_only_nullable_columns_reads_them_as_null(lake: Lake) -> None:
    path = Path(lake.location(KLINES, "BTCUSDT", DAY))
    path.parent.mkdir(parents=True)
    table = make_table(KLINES, rows=3)
    # Written before "count" (inside) and "taker_buy_quote_volume" (the last) were added.
    pq.write_table(table.drop_columns(["count", "taker_buy_quote_volume"]), path)
    back = lake.read(KLINES, "BTCUSDT", DAY)
    assert back.schema.equals(KLINES.arrow_schema) and back.column_names == KLINES.column_names
    assert back.column("count").to_pylist() == [None, None, None]
    assert back.column("taker_buy_quote_volume").to_pylist() == [None, None, None]
    assert back.column("open").to_pylist() == [100.0, 101.0, 102.0]
    assert back.drop_columns(["count", "taker_buy_quote_volume"]).equals(
        table.drop_columns(["count", "taker_buy_quote_volume"])
    )
    # Present columns in another order are another layout, not an older one.
    old = table.drop_columns(["count"])
    pq.write_table(old.select(["timestamp", "high", "open", *old.column_names[3:]]), path)
    with pytest.raises(SchemaMismatch, match="missing columns: count"):
        lake.read(KLINES, "BTCUSDT", DAY)


def test_two_processes_committing_one_partition_are_serialised(lake: Lake, ledger: Ledger, tmp_path: Path) -> None:
    ledger.init()
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    log = tmp_path / "critical_sections.log"
    commits = 4
    workers = [
        ctx.Process(target=commit_worker, args=(lake.root, ledger.url, w, commits, start, str(log), out))
        for w in (1, 2)
    ]
    for w in workers:
        w.start()
    start.set()
    results = dict(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    for worker, outcomes in results.items():
        assert [kind for kind, _ in outcomes] == ["ok"] * commits, (worker, outcomes)

    # The critical sections of the two processes never overlap.
    spans = sorted(tuple(int(x) for x in line.split()[1:]) for line in log.read_text().splitlines())
    assert len(spans) == 2 * commits
    assert all(prev_end <= begin for (_, prev_end), (begin, _) in itertools.pairwise(spans))

    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.content_hash == _sha(_target(lake))
    last_hashes = {outcomes[-1][1] for outcomes in results.values()}
    assert row.content_hash in last_hashes
    assert _temps(lake) == []
    assert os.listdir(_target(lake).parent) == ["part.parquet"]


def test_an_update_built_on_a_stale_base_never_overwrites_a_newer_commit(lake: Lake, ledger: Ledger) -> None:
    base = _commit(lake, ledger, make_table(KLINES, rows=10))
    newer = _commit(lake, ledger, make_table(KLINES, rows=12), based_on=base.content_hash)
    before = _target(lake).read_bytes()
    with pytest.raises(CommitConflict, match=base.content_hash):
        _commit(lake, ledger, make_table(KLINES, rows=11), based_on=base.content_hash)  # built from the old one
    assert _target(lake).read_bytes() == before
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY).content_hash == newer.content_hash  # type: ignore[union-attr]
    assert _temps(lake) == []


def test_the_ledger_records_the_files_size_and_mtime_and_refreshes_them(lake: Lake, ledger: Ledger) -> None:
    _commit(lake, ledger, make_table(KLINES, rows=3))
    st = os.stat(_target(lake))
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and (row.file_bytes, row.file_mtime_ns) == (st.st_size, st.st_mtime_ns)
    # Same bytes again, but the file was touched: the row follows the file, not the rewrite.
    os.utime(_target(lake), ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert _commit(lake, ledger, make_table(KLINES, rows=3)).rewritten is False
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.file_mtime_ns == st.st_mtime_ns + 5_000_000_000


def test_incomplete_builds_count_builds_in_a_row_missing_the_same_streams(lake: Lake, ledger: Ledger) -> None:
    agg = [{"stream": "aggTrades", "reason": "Vision 404, REST refused"}]
    premium = [{"stream": "premiumIndexKlines", "reason": "Vision 404"}]
    counts = []
    for i, missing in enumerate([agg, agg, agg, premium, [], agg]):
        _commit(lake, ledger, make_table(KLINES, rows=3, base=100.0 + i), missing_streams=missing)
        row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
        assert row is not None and list(row.missing_streams) == missing and row.incomplete == bool(missing)
        counts.append(row.incomplete_builds)
    assert counts == [1, 2, 3, 1, 0, 1]


def test_sweeping_temporary_files_waits_for_no_live_writer(lake: Lake, ledger: Ledger, committed: Any) -> None:
    stale = _target(lake).with_name(".part.parquet." + "e" * 32 + ".tmp")
    stale.write_bytes(b"half a file")
    other = _target(lake).with_name("notes.txt")  # not a commit's temporary: never touched
    other.write_text("kept")
    assert lake.busy(KLINES, "BTCUSDT", DAY) is False
    with lake.lock(KLINES, "BTCUSDT", DAY):
        # A writer holds the lock: the file may be its own, so it stays.
        assert lake.busy(KLINES, "BTCUSDT", DAY) is True
        assert sweep_temp_files(lake, KLINES, "BTCUSDT", DAY) is None
        assert stale.exists()
    assert sweep_temp_files(lake, KLINES, "BTCUSDT", DAY) == [stale]
    assert not stale.exists() and other.read_text() == "kept"
    assert sweep_temp_files(lake, KLINES, "BTCUSDT", DAY) == []
    # A partition never written has no lock file; asking creates none.
    assert lake.busy(KLINES, "ETHUSDT", DAY) is False
    assert not (Path(lake.root) / "_state/locks/klines_1m/ETHUSDT").exists()


def test_refresh_file_stat_re_records_only_unchanged_bytes(lake: Lake, ledger: Ledger, committed: Any) -> None:
    data, row = committed
    target = _target(lake)
    st = os.stat(target)
    assert refresh_file_stat(lake, ledger, KLINES, "BTCUSDT", DAY) is False  # nothing to do
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 7_000_000_000))  # touched: same bytes
    with lake.lock(KLINES, "BTCUSDT", DAY):
        assert refresh_file_stat(lake, ledger, KLINES, "BTCUSDT", DAY) is False  # busy: left for later
    assert refresh_file_stat(lake, ledger, KLINES, "BTCUSDT", DAY) is True
    after = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert after is not None and after.file_mtime_ns == st.st_mtime_ns + 7_000_000_000
    assert after.file_bytes == len(data) and after.content_hash == row.content_hash
    # Different bytes are never re-described: the row keeps naming the committed file.
    target.write_bytes(data[: len(data) // 2])
    assert refresh_file_stat(lake, ledger, KLINES, "BTCUSDT", DAY) is False
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) == after
    target.unlink()
    assert refresh_file_stat(lake, ledger, KLINES, "BTCUSDT", DAY) is False


# --------------------------------------------------------------------------- the watermark moves with the minute view's commit


def _at(hh: int, mm: int) -> datetime:
    return datetime(DAY.year, DAY.month, DAY.day, hh, mm, tzinfo=UTC)


def _view(lake: Lake, ledger: Ledger, minutes: Any, **kw: Any) -> commit_module.CommitResult:
    kw.setdefault("validate", no_validation)
    return _commit(lake, ledger, minute_table(DAY, minutes), dataset=MINUTE_VIEW, **kw)


def test_the_minute_views_commit_moves_the_watermark(lake: Lake, ledger: Ledger) -> None:
    first = _view(lake, ledger, range(600), watermark=_at(9, 59))
    assert (first.rewritten, first.watermark) == (True, _at(9, 59))
    assert ledger.get_watermark("BTCUSDT") == _at(9, 59)
    later = _view(lake, ledger, range(630), watermark=_at(10, 29))
    assert later.watermark == _at(10, 29) == ledger.get_watermark("BTCUSDT")
    # The same bytes again with a watermark already there: nothing moves, nothing is written.
    row = ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY)
    again = _view(lake, ledger, range(630), watermark=_at(10, 29))
    assert (again.rewritten, again.watermark) == (False, None)
    assert ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY) == row


def test_unchanged_bytes_still_move_a_watermark_left_behind(lake: Lake, ledger: Ledger) -> None:
    _view(lake, ledger, range(600))  # committed without moving it (e.g. it lost a race)
    row = ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY)
    assert ledger.get_watermark("BTCUSDT") is None
    same = _view(lake, ledger, range(600), watermark=_at(9, 59))
    assert (same.rewritten, same.watermark) == (False, _at(9, 59))
    assert ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY) == row  # the row was left as it was


def test_the_watermark_never_passes_a_minute_that_is_neither_a_row_nor_a_source_gap(lake: Lake, ledger: Ledger) -> None:
    holed = [m for m in range(600) if m != 300]
    with pytest.raises(
        ValueError, match=r"minute 2024-03-05T05:00:00\+00:00 is neither a row nor a confirmed source gap"
    ):
        _view(lake, ledger, holed, watermark=_at(9, 59))
    assert not Path(lake.location(MINUTE_VIEW, "BTCUSDT", DAY)).exists()
    assert ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY) is None and ledger.get_watermark("BTCUSDT") is None
    gap = [{"minute": "2024-03-05T05:00:00+00:00", "missing": ["klines"], "reason": "absent from every source"}]
    assert _view(lake, ledger, holed, watermark=_at(9, 59), source_gaps=gap).watermark == _at(9, 59)
    with pytest.raises(ValueError, match="is not a minute of 2024-03-05"):
        _view(lake, ledger, holed, watermark=_at(9, 59) + timedelta(days=1), source_gaps=gap)
    with pytest.raises(ValueError, match="only a minute view commit moves the watermark"):
        _commit(lake, ledger, make_table(KLINES), watermark=_at(0, 2))
    assert ledger.get_watermark("BTCUSDT") == _at(9, 59)


def test_a_ledger_failure_after_the_publication_moves_no_watermark(
    lake: Lake, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    def lost_connection(record: PartitionRecord, **kw: Any) -> None:
        raise ConnectionError("ledger unreachable")

    monkeypatch.setattr(ledger, "commit_partition_and_watermark", lost_connection)
    with pytest.raises(CommitIncomplete):
        _view(lake, ledger, range(600), watermark=_at(9, 59))
    monkeypatch.undo()
    assert ledger.get_watermark("BTCUSDT") is None
    assert _view(lake, ledger, range(600), watermark=_at(9, 59)).watermark == _at(9, 59)  # the re-run
