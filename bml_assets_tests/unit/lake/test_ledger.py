"""lake/ledger.py: tables, version check, partition CAS, source files, watermark CAS (migrations: test_migrations.py).

Tests taking ``url`` also run on PostgreSQL when asked to (see conftest.py).
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path

import pytest

from bml_assets.domain.schema import KLINES, MINUTE_VIEW
from bml_assets.lake.ledger import (
    CommitConflict,
    Ledger,
    LedgerVersionError,
    PartitionRecord,
    WatermarkConflict,
    WatermarkRegression,
)
from bml_assets_tests.unit.lake._helpers import COMMITTED_AT, DAY, cas_worker

H0, H1, H2 = "0" * 64, "1" * 64, "2" * 64


def _url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'nested' / 'ledger.sqlite'}"


def _committed(content_hash: str, **changes: object) -> PartitionRecord:
    fields: dict[str, object] = {
        "dataset": "klines_1m",
        "symbol": "BTCUSDT",
        "day": DAY,
        "status": "committed",
        "committed_at": COMMITTED_AT,
        "path": "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/part.parquet",
        "row_count": 1440,
        "min_ts": 1709596800000,
        "max_ts": 1709683140000,
        "schema_hash": "abcd",
        "content_hash": content_hash,
        "provenance": {"klines": [{"url": "https://x/a.zip", "sha256": H0, "bytes": 10, "rows": 1440}]},
        "source_gaps": [{"minute": "2024-03-05T01:00:00Z", "missing": ["klines"], "reason": "downtime"}],
    }
    fields.update(changes)
    return PartitionRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def ledger(url: str) -> Iterator[Ledger]:
    with Ledger(url) as led:
        yield led


def test_init_creates_the_file_in_wal_mode_with_version_2(tmp_path: Path) -> None:
    led = Ledger(_url(tmp_path))
    led.init()
    led.init()  # idempotent
    Ledger(_url(tmp_path)).init()  # and for a second object on the same file
    db = tmp_path / "state" / "nested" / "ledger.sqlite"
    assert db.is_file()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT value FROM ledger_meta WHERE key = 'schema_version'").fetchall() == [("2",)]
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    # The migrations create symbols too (before them it came with the first sync), and their version table.
    assert tables == {"partitions", "source_files", "watermark", "ledger_meta", "symbols", "bml_alembic_version"}
    assert led.schema_version() == 2
    led.close()


def test_a_ledger_of_another_version_is_refused(tmp_path: Path) -> None:
    Ledger(_url(tmp_path)).init()
    with sqlite3.connect(tmp_path / "state" / "nested" / "ledger.sqlite") as conn:
        conn.execute("UPDATE ledger_meta SET value = '3' WHERE key = 'schema_version'")
    with pytest.raises(LedgerVersionError, match=r"schema_version '3'.*schema_version 2"):
        Ledger(_url(tmp_path)).get_partition(KLINES, "BTCUSDT", DAY)


# The tables as version 1 of the ledger created them (every open ran create_all, so all four).
_VERSION_1_DDL = (
    "CREATE TABLE partitions (dataset VARCHAR(64) NOT NULL, symbol VARCHAR(20) NOT NULL, date DATE NOT NULL, "
    "status VARCHAR(16) NOT NULL, path TEXT, row_count BIGINT, min_ts BIGINT, max_ts BIGINT, "
    "schema_hash VARCHAR(64), content_hash VARCHAR(64), provenance JSON NOT NULL, source_gaps JSON NOT NULL, "
    "message TEXT, committed_at DATETIME NOT NULL, PRIMARY KEY (dataset, symbol, date))",
    "CREATE TABLE source_files (url TEXT NOT NULL, sha256 VARCHAR(64) NOT NULL, bytes BIGINT NOT NULL, "
    "rows BIGINT, checksum_verified BOOLEAN NOT NULL, fetched_at DATETIME NOT NULL, PRIMARY KEY (url, sha256))",
    "CREATE TABLE watermark (symbol VARCHAR(20) NOT NULL, last_complete_minute DATETIME NOT NULL, "
    "updated_at DATETIME NOT NULL, PRIMARY KEY (symbol))",
    "CREATE TABLE ledger_meta (key VARCHAR(64) NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    "INSERT INTO ledger_meta VALUES ('schema_version', '1')",
    "INSERT INTO partitions VALUES ('klines_1m', 'BTCUSDT', '2024-03-05', 'committed', 'p', 1440, 0, 1, "
    "'s', '" + "a" * 64 + "', '{}', '[]', NULL, '2024-03-06 01:02:03.000000')",
)


def test_a_version_1_ledger_is_upgraded_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    db = tmp_path / "state" / "nested" / "ledger.sqlite"
    db.parent.mkdir(parents=True)
    with sqlite3.connect(db) as conn:
        for statement in _VERSION_1_DDL:
            conn.execute(statement)
    with Ledger(_url(tmp_path)) as led:
        assert led.schema_version() == 2
        old = led.get_partition(KLINES, "BTCUSDT", DAY)
        assert old is not None and old.row_count == 1440 and old.content_hash == "a" * 64
        assert (old.file_bytes, old.file_mtime_ns, list(old.missing_streams), old.incomplete_builds) == (
            None,
            None,
            [],
            0,
        )
        missing = [{"stream": "aggTrades", "reason": "Vision 404 and REST refused"}]
        led.commit_partition(
            _committed(H2, file_bytes=123, file_mtime_ns=456, missing_streams=missing, incomplete_builds=2),
            expected_content_hash="a" * 64,
        )
        new = led.get_partition(KLINES, "BTCUSDT", DAY)
        assert new is not None and new.incomplete
        assert (new.file_bytes, new.file_mtime_ns, list(new.missing_streams), new.incomplete_builds) == (
            123,
            456,
            missing,
            2,
        )
    with sqlite3.connect(db) as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(partitions)")]
    assert columns[-4:] == ["file_bytes", "file_mtime_ns", "missing_streams", "incomplete_builds"]


def test_partition_round_trip(ledger: Ledger) -> None:
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) is None
    record = _committed(H1)
    assert ledger.commit_partition(record, expected_content_hash=None) == record
    stored = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert stored == record
    assert stored is not None and stored.committed_at.tzinfo is not None
    assert ledger.get_partition("klines_1m", "BTCUSDT", DAY) == record
    assert ledger.get_partition(MINUTE_VIEW, "BTCUSDT", DAY) is None


def test_committed_at_is_stored_in_utc(ledger: Ledger) -> None:
    plus_two = datetime(2024, 3, 6, 3, 2, 3, tzinfo=timezone(timedelta(hours=2)))
    ledger.commit_partition(_committed(H1, committed_at=plus_two), expected_content_hash=None)
    stored = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert stored is not None and stored.committed_at == COMMITTED_AT
    assert stored.committed_at.utcoffset() == timedelta(0)


def test_cas_update_from_the_expected_hash(ledger: Ledger) -> None:
    ledger.commit_partition(_committed(H0), expected_content_hash=None)
    ledger.commit_partition(_committed(H1, row_count=5), expected_content_hash=H0)
    stored = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert stored is not None and (stored.content_hash, stored.row_count) == (H1, 5)


def test_two_ledger_objects_cas_from_the_same_hash_one_wins(url: str) -> None:
    a, b = Ledger(url), Ledger(url)
    a.commit_partition(_committed(H0), expected_content_hash=None)
    assert b.get_partition(KLINES, "BTCUSDT", DAY) == _committed(H0)
    a.commit_partition(_committed(H1), expected_content_hash=H0)
    with pytest.raises(CommitConflict) as info:
        b.commit_partition(_committed(H2), expected_content_hash=H0)
    message = str(info.value)
    assert "klines_1m/BTCUSDT/2024-03-05" in message and H0 in message and H1 in message
    assert (info.value.expected_content_hash, info.value.actual_content_hash) == (H0, H1)
    assert b.get_partition(KLINES, "BTCUSDT", DAY) == _committed(H1)
    a.close()
    b.close()


def test_insert_expecting_no_file_conflicts_with_an_existing_file(ledger: Ledger) -> None:
    ledger.commit_partition(_committed(H0), expected_content_hash=None)
    with pytest.raises(
        CommitConflict, match=f"expected the ledger to hold no content_hash, but it holds content_hash {H0}"
    ):
        ledger.commit_partition(_committed(H1), expected_content_hash=None)


def test_expecting_a_hash_on_a_missing_row_conflicts(ledger: Ledger) -> None:
    with pytest.raises(CommitConflict, match="but it holds no row") as info:
        ledger.commit_partition(_committed(H1), expected_content_hash=H0)
    assert info.value.row_exists is False
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) is None


def test_unavailable_rows_have_no_hash_and_are_replaced_expecting_none(ledger: Ledger) -> None:
    not_published = PartitionRecord(
        "klines_1m", "BTCUSDT", DAY, "not_published", COMMITTED_AT, message="HTTP 404", provenance={"klines": {}}
    )
    ledger.commit_partition(not_published, expected_content_hash=None)
    ledger.commit_partition(not_published, expected_content_hash=None)  # recording it twice is fine
    with pytest.raises(CommitConflict):  # a stale writer that believed a file existed
        ledger.commit_partition(_committed(H1), expected_content_hash=H0)
    ledger.commit_partition(_committed(H1), expected_content_hash=None)  # NULL hash matches "no file"
    stored = ledger.get_partition(KLINES, "BTCUSDT", DAY)
    assert stored is not None and (stored.status, stored.content_hash, stored.message) == ("committed", H1, None)


def test_record_validation() -> None:
    with pytest.raises(ValueError, match="a committed row needs content_hash"):
        _committed(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="has no file, so no content_hash"):
        _committed(H0, status="not_listed")
    with pytest.raises(ValueError, match="is not one of committed, not_listed, not_published"):
        _committed(H0, status="done")
    with pytest.raises(ValueError, match="timezone-aware"):
        _committed(H0, committed_at=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="invalid symbol"):
        _committed(H0, symbol="../x")


def test_non_json_provenance_is_refused_with_the_partition_named(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match=r"klines_1m/BTCUSDT/2024-03-05: provenance must be plain JSON"):
        ledger.commit_partition(_committed(H0, provenance={"when": date(2024, 1, 1)}), expected_content_hash=None)
    assert ledger.get_partition(KLINES, "BTCUSDT", DAY) is None


def test_partitions_filters_and_order(ledger: Ledger) -> None:
    for dataset in ("minute", "klines_1m"):
        for symbol in ("ETHUSDT", "BTCUSDT"):
            for day in (date(2024, 3, 6), date(2024, 3, 4), date(2024, 3, 5)):
                ledger.commit_partition(
                    _committed(H0, dataset=dataset, symbol=symbol, day=day), expected_content_hash=None
                )

    def keys(rows: list[PartitionRecord]) -> list[tuple[str, str, str]]:
        return [(r.dataset, r.symbol, r.day.isoformat()) for r in rows]

    assert len(ledger.partitions()) == 12
    assert keys(ledger.partitions()[:4]) == [
        ("klines_1m", "BTCUSDT", "2024-03-04"),
        ("klines_1m", "BTCUSDT", "2024-03-05"),
        ("klines_1m", "BTCUSDT", "2024-03-06"),
        ("klines_1m", "ETHUSDT", "2024-03-04"),
    ]
    assert keys(ledger.partitions(MINUTE_VIEW, ["ETHUSDT"], date(2024, 3, 5), date(2024, 3, 6))) == [
        ("minute", "ETHUSDT", "2024-03-05"),
        ("minute", "ETHUSDT", "2024-03-06"),
    ]
    assert keys(ledger.partitions("minute", end=date(2024, 3, 4))) == [
        ("minute", "BTCUSDT", "2024-03-04"),
        ("minute", "ETHUSDT", "2024-03-04"),
    ]
    assert ledger.partitions(symbols=[]) == []
    assert ledger.partitions(status="not_listed") == []


def test_source_file_upsert(ledger: Ledger) -> None:
    url = "https://data.binance.vision/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-05.zip"
    t0 = datetime(2024, 3, 6, tzinfo=UTC)
    ledger.record_source_file(url=url, sha256=H0, bytes=100, checksum_verified=False, fetched_at=t0)
    ledger.record_source_file(url=url, sha256=H0, bytes=100, rows=1440, checksum_verified=True, fetched_at=t0)
    stored = ledger.get_source_file(url, H0)
    assert stored is not None
    assert (stored.bytes, stored.rows, stored.checksum_verified, stored.fetched_at) == (100, 1440, True, t0)
    # A re-upload under the same URL is a second row; without a sha256 the newest is returned.
    ledger.record_source_file(
        url=url, sha256=H1, bytes=101, rows=1440, checksum_verified=True, fetched_at=t0 + timedelta(days=1)
    )
    newest = ledger.get_source_file(url)
    assert newest is not None and (newest.sha256, newest.bytes) == (H1, 101)
    assert ledger.get_source_file(url, H0) == stored
    assert ledger.get_source_file("https://nowhere") is None
    with pytest.raises(ValueError, match="64 lower-case hex"):
        ledger.record_source_file(url=url, sha256="ABC", bytes=1, checksum_verified=True)


def test_watermark_cas_and_never_backwards(ledger: Ledger) -> None:
    m0 = datetime(2024, 3, 5, 10, 0, tzinfo=UTC)
    m1 = m0 + timedelta(minutes=5)
    assert ledger.get_watermark("BTCUSDT") is None
    assert ledger.advance_watermark("BTCUSDT", m0, expected=None) == m0
    assert ledger.get_watermark("BTCUSDT") == m0
    with pytest.raises(WatermarkConflict, match="expected no watermark, but the ledger holds 2024-03-05T10:00:00"):
        ledger.advance_watermark("BTCUSDT", m1, expected=None)
    assert ledger.advance_watermark("BTCUSDT", m1, expected=m0) == m1
    with pytest.raises(WatermarkConflict) as info:  # a stale reader
        ledger.advance_watermark("BTCUSDT", m1 + timedelta(minutes=1), expected=m0)
    assert (info.value.expected, info.value.actual) == (m0, m1)
    with pytest.raises(WatermarkRegression, match="cannot move backwards"):
        ledger.advance_watermark("BTCUSDT", m0, expected=m1)
    assert ledger.advance_watermark("BTCUSDT", m1, expected=m1) == m1  # idempotent
    assert ledger.get_watermark("BTCUSDT") == m1
    assert ledger.watermarks() == {"BTCUSDT": m1}
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.advance_watermark("BTCUSDT", datetime(2024, 3, 6), expected=m1)
    with pytest.raises(ValueError, match="start of a minute"):
        ledger.advance_watermark("BTCUSDT", m1 + timedelta(seconds=30), expected=m1)
    assert ledger.get_watermark("BTCUSDT") == m1


def test_a_commit_moves_the_watermark_in_its_transaction_and_only_contiguously(ledger: Ledger) -> None:
    def at(day: date, hh: int, mm: int) -> datetime:
        return datetime(day.year, day.month, day.day, hh, mm, tzinfo=UTC)

    def view(content_hash: str, day: date = DAY) -> PartitionRecord:
        return _committed(content_hash, dataset="minute", day=day)

    day2, day4 = DAY + timedelta(days=1), DAY + timedelta(days=3)
    commit = ledger.commit_partition_and_watermark
    assert commit(view(H0), expected_content_hash=None, watermark=at(DAY, 10, 0)) == at(DAY, 10, 0)
    assert ledger.get_watermark("BTCUSDT") == at(DAY, 10, 0)
    assert commit(view(H1), expected_content_hash=H0, watermark=at(DAY, 10, 5)) == at(DAY, 10, 5)
    # Not backwards, not past a day never committed; the row is committed either way.
    assert commit(view(H2), expected_content_hash=H1, watermark=at(DAY, 10, 3)) is None
    assert commit(view(H0, day4), expected_content_hash=None, watermark=at(day4, 23, 59)) is None
    assert ledger.get_watermark("BTCUSDT") == at(DAY, 10, 5)
    assert [(r.day, r.content_hash) for r in ledger.partitions("minute")] == [(DAY, H2), (day4, H0)]
    # From the day's last minute into the next day: contiguous.
    assert commit(view(H0), expected_content_hash=H2, watermark=at(DAY, 23, 59)) == at(DAY, 23, 59)
    assert commit(view(H1, day2), expected_content_hash=None, watermark=at(day2, 0, 30)) == at(day2, 0, 30)

    # A lost CAS moves neither the row nor the watermark.
    with pytest.raises(CommitConflict):
        commit(view(H2, day2), expected_content_hash=H0, watermark=at(day2, 1, 0))
    assert ledger.get_watermark("BTCUSDT") == at(day2, 0, 30)
    assert ledger.get_partition("minute", "BTCUSDT", day2) == view(H1, day2)
    # A watermark outside the row's day is refused before anything is written.
    with pytest.raises(ValueError, match="is not a minute of that day"):
        commit(view(H2, day2), expected_content_hash=H1, watermark=at(DAY, 12, 0))
    assert ledger.get_partition("minute", "BTCUSDT", day2) == view(H1, day2)

    # Same bytes: the row is only checked (not rewritten), the watermark moves.
    unchanged = replace(view(H1, day2), committed_at=COMMITTED_AT + timedelta(hours=1))
    assert commit(unchanged, expected_content_hash=H1, watermark=at(day2, 0, 45), row_unchanged=True) == at(day2, 0, 45)
    assert ledger.get_partition("minute", "BTCUSDT", day2) == view(H1, day2)
    with pytest.raises(CommitConflict, match=f"expected the ledger to hold content_hash {H2}"):
        commit(unchanged, expected_content_hash=H2, watermark=at(day2, 1, 0), row_unchanged=True)
    assert ledger.get_watermark("BTCUSDT") == at(day2, 0, 45)
    # Another symbol's watermark starts on its own.
    eth = replace(view(H0), symbol="ETHUSDT")
    assert commit(eth, expected_content_hash=None, watermark=at(DAY, 0, 0)) == at(DAY, 0, 0)
    assert ledger.watermarks() == {"BTCUSDT": at(day2, 0, 45), "ETHUSDT": at(DAY, 0, 0)}


def test_concurrent_cas_from_processes_exactly_one_wins(url: str) -> None:
    with Ledger(url) as led:
        led.commit_partition(_committed(H0), expected_content_hash=None)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=cas_worker, args=(url, i + 1, H0, start, out)) for i in range(3)]
    for w in workers:
        w.start()
    start.set()
    outcomes = dict(out.get(timeout=60) for _ in workers)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    winners = [w for w, outcome in outcomes.items() if outcome == "won"]
    assert len(winners) == 1, outcomes
    losers = [o for w, o in outcomes.items() if w not in winners]
    assert all(o.startswith("conflict: commit conflict on partition klines_1m/BTCUSDT/2024-03-05") for o in losers), (
        outcomes
    )
    with Ledger(url) as led:
        stored = led.get_partition(KLINES, "BTCUSDT", DAY)
    assert stored is not None and stored.content_hash == f"{winners[0]:064x}"


def test_file_states_read_what_a_row_says_about_its_file(ledger: Ledger) -> None:
    missing = [{"stream": "metrics", "reason": "REST keeps 30 days"}]
    klines = _committed(H1, file_bytes=4321, file_mtime_ns=1_709_700_000_123_456_789, missing_streams=missing)
    ledger.commit_partition(klines, expected_content_hash=None)
    ledger.commit_partition(_committed(H2, dataset="trade_flow_1m", symbol="ETHUSDT"), expected_content_hash=None)
    ledger.commit_partition(_committed(H0, day=DAY + timedelta(days=1)), expected_content_hash=None)
    ledger.commit_partition(_committed(H0, dataset="minute"), expected_content_hash=None)
    states = ledger.file_states([KLINES, "trade_flow_1m"], ["BTCUSDT", "ETHUSDT"], DAY, DAY)
    assert [(s.dataset, s.symbol, s.day) for s in states] == [
        ("klines_1m", "BTCUSDT", DAY),
        ("trade_flow_1m", "ETHUSDT", DAY),
    ]
    first, second = states
    assert (first.status, first.committed_at, first.row_count, first.min_ts, first.max_ts) == (
        "committed",
        COMMITTED_AT,
        1440,
        1709596800000,
        1709683140000,
    )
    assert (first.schema_hash, first.content_hash, first.file_bytes, first.file_mtime_ns) == (
        "abcd",
        H1,
        4321,
        1_709_700_000_123_456_789,
    )
    assert list(first.missing_streams) == missing and first.incomplete and first.incomplete_builds == 0
    assert first.label == "klines_1m/BTCUSDT/2024-03-05"
    # A row without them (as version 1 left it): NULL size and mtime, nothing missing.
    assert (second.file_bytes, second.file_mtime_ns, list(second.missing_streams)) == (None, None, [])
    assert not second.incomplete
    assert ledger.file_states([], ["BTCUSDT"], DAY, DAY) == [] == ledger.file_states([KLINES], [], DAY, DAY)
