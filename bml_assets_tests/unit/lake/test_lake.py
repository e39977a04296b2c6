"""lake/lake.py: the Lake over a local store and its locks, and schema evolution: a file written
under an older schema that lacks only nullable columns is read (NULL there), scanned as
``schema_outdated``, and rebuilt by a commit in the current schema."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest

from bml_assets.defs.repair import repair_targets
from bml_assets.domain.schema import KLINES, MINUTE_VIEW, schema_hash
from bml_assets.lake.commit import commit_table, encode_parquet
from bml_assets.lake.lake import Lake, SchemaMismatch, absent_nullable_columns, conform
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import scan
from bml_assets.storage.locks import FileLocks, LockTimeout
from bml_assets.storage.store import LocalStore
from bml_assets_tests.unit.lake._helpers import DAY, make_table, no_validation

SCHEMA = KLINES.arrow_schema
PROVENANCE = {"klines": {"status": "vision", "files": []}}


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake.at(tmp_path / "lake")


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger(url) as led:
        yield led


def _commit(lake: Lake, ledger: Ledger, table: pa.Table) -> None:
    commit_table(
        table,
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        validate=no_validation,
        provenance=PROVENANCE,
    )


def test_a_local_lake_is_a_folder_with_its_locks_beside_the_data(tmp_path: Path) -> None:
    lake = Lake.at(tmp_path / "lake")
    assert isinstance(lake.store, LocalStore) and isinstance(lake.locks, FileLocks)
    assert lake.root == str(tmp_path / "lake")
    assert lake.key(KLINES, "BTCUSDT", DAY) == "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/part.parquet"
    assert lake.location(KLINES, "BTCUSDT", DAY) == str(tmp_path / "lake" / lake.key(KLINES, "BTCUSDT", DAY))
    assert Lake.at(f"file://{tmp_path / 'lake'}").location(KLINES, "BTCUSDT", DAY) == lake.location(
        KLINES, "BTCUSDT", DAY
    )
    assert (
        repr(lake)
        == f"Lake(LocalStore({str(tmp_path / 'lake')!r}), FileLocks({str(tmp_path / 'lake/_state/locks')!r}))"
    )


def test_what_is_there_after_a_commit(lake: Lake, ledger: Ledger) -> None:
    assert lake.stat(KLINES, "BTCUSDT", DAY) is None
    with pytest.raises(FileNotFoundError):
        lake.sha256(KLINES, "BTCUSDT", DAY)
    table = make_table(KLINES, rows=4)
    _commit(lake, ledger, table)
    data = Path(lake.location(KLINES, "BTCUSDT", DAY)).read_bytes()
    st = lake.stat(KLINES, "BTCUSDT", DAY)
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert st is not None and row is not None
    assert (st.size, st.mtime_ns) == (len(data), row.file_mtime_ns) == (row.file_bytes, row.file_mtime_ns)
    assert lake.sha256(KLINES, "BTCUSDT", DAY) == hashlib.sha256(data).hexdigest() == row.content_hash
    assert row.path == lake.key(KLINES, "BTCUSDT", DAY)
    assert lake.read(KLINES, "BTCUSDT", DAY).equals(table)
    assert lake.temp_files(KLINES, "BTCUSDT", DAY) == []
    staged = lake.store.stage(lake.key(KLINES, "BTCUSDT", DAY), b"in flight")
    assert lake.temp_files(KLINES, "BTCUSDT", DAY) == [
        f"futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/{Path(staged.location).name}"
    ]
    staged.discard()


def test_the_partition_lock_names_the_partition(lake: Lake) -> None:
    assert lake.busy(KLINES, "BTCUSDT", DAY) is False
    with lake.lock(KLINES, "BTCUSDT", DAY):
        assert lake.busy(KLINES, "BTCUSDT", DAY) is True
        assert lake.busy(MINUTE_VIEW, "BTCUSDT", DAY) is False  # one lock per partition
        with pytest.raises(LockTimeout, match=r"^klines_1m/BTCUSDT/2024-03-05: another writer held the lock "):
            with lake.lock(KLINES, "BTCUSDT", DAY, timeout=0):
                pass
    assert lake.busy(KLINES, "BTCUSDT", DAY) is False


# --------------------------------------------------------------------------- schema evolution


def _without(*names: str) -> pa.Schema:
    return pa.schema([f for f in SCHEMA if f.name not in names])


def test_only_absent_nullable_columns_make_an_older_schema() -> None:
    assert absent_nullable_columns(_without("taker_buy_quote_volume"), SCHEMA) == ["taker_buy_quote_volume"]
    assert absent_nullable_columns(_without("open", "count"), SCHEMA) == ["open", "count"]
    assert absent_nullable_columns(SCHEMA, SCHEMA) is None  # nothing absent: not an older schema
    assert absent_nullable_columns(_without("timestamp"), SCHEMA) is None  # not nullable
    other_type = _without("count").set(1, pa.field("open", pa.float32()))
    assert absent_nullable_columns(other_type, SCHEMA) is None
    extra = _without("count").append(pa.field("extra", pa.float64()))
    assert absent_nullable_columns(extra, SCHEMA) is None
    old = _without("count")
    swapped = pa.schema([old.field(0), old.field(2), old.field(1), *list(old)[3:]])
    assert absent_nullable_columns(swapped, SCHEMA) is None


def test_conform_adds_absent_nullable_columns_in_registry_order() -> None:
    table = make_table(KLINES, rows=2)
    old = table.drop_columns(["open", "count"])
    back = conform(old, KLINES, "klines_1m/BTCUSDT/2024-03-05", what="the file x")
    assert back.schema.equals(SCHEMA) and back.column_names == KLINES.column_names
    assert back.column("open").to_pylist() == [None, None] and back.column("count").to_pylist() == [None, None]
    assert back.drop_columns(["open", "count"]).equals(old)
    assert conform(table, KLINES, "x", what="the file x") is table
    with pytest.raises(
        SchemaMismatch, match=r"^x: the file y does not match the dataset schema: missing columns: timestamp"
    ):
        conform(table.drop_columns(["timestamp"]), KLINES, "x", what="the file y")


def test_a_file_of_an_older_schema_is_read_scanned_and_rebuilt(lake: Lake, ledger: Ledger) -> None:
    """The nullable column ``taker_buy_quote_volume`` was added after this file was written."""
    current = make_table(KLINES, rows=1440)
    _commit(lake, ledger, current)
    committed = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert committed is not None
    old = current.drop_columns(["taker_buy_quote_volume"])
    data = encode_parquet(old)
    path = Path(lake.location(KLINES, "BTCUSDT", DAY))
    path.write_bytes(data)
    st = lake.stat(KLINES, "BTCUSDT", DAY)
    assert st is not None
    # The ledger row that old writer left: its bytes, its schema hash, its file's stat.
    ledger.commit_partition(
        replace(
            committed,
            content_hash=hashlib.sha256(data).hexdigest(),
            schema_hash=schema_hash(old.schema),
            file_bytes=st.size,
            file_mtime_ns=st.mtime_ns,
        ),
        expected_content_hash=committed.content_hash,
    )

    back = lake.read(KLINES, "BTCUSDT", DAY)  # read: the new column is NULL
    assert back.schema.equals(SCHEMA)
    assert back.column("taker_buy_quote_volume").null_count == 1440
    assert back.drop_columns(["taker_buy_quote_volume"]).equals(old)

    def problems(deep: bool) -> list[tuple[str, str, str]]:
        report = scan(lake, ledger, ["BTCUSDT"], DAY, DAY, today=date(2024, 3, 6), deep=deep, datasets=[KLINES])
        return [(p.dataset, str(p.kind), p.detail) for p in report.problems]

    (deep,) = problems(True)
    assert deep[:2] == ("klines_1m", "schema_outdated")
    assert f"the ledger records schema_hash {schema_hash(old.schema)}" in deep[2]
    assert f"the file {path}: missing columns: taker_buy_quote_volume (it reads with them NULL" in deep[2]
    # The shallow scan trusts the file's stat and judges by the ledger's schema hash.
    (shallow,) = problems(False)
    assert shallow[:2] == ("klines_1m", "schema_outdated") and "the ledger records schema_hash" in shallow[2]
    report = scan(lake, ledger, ["BTCUSDT"], DAY, DAY, today=date(2024, 3, 6), datasets=[KLINES])
    assert repair_targets(report) == [("BTCUSDT", DAY)]  # the repair rebuilds it in the background

    # The rebuild commits the day in the current schema over the old file.
    _commit(lake, ledger, current)
    row = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert row is not None and row.schema_hash == schema_hash(SCHEMA) and row.content_hash == committed.content_hash
    assert lake.read(KLINES, "BTCUSDT", DAY).equals(current)
    assert problems(True) == [] and problems(False) == []
