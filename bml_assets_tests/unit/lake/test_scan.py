"""lake/scan.py: each problem kind planted in a tiny hand-built lake (every dataset), found exactly;
a clean lake is clean; stray temporary files found and swept safely; the incomplete backoff."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bml_assets.defs.repair import (
    Sweep,
    incomplete_retry_at,
    problems_markdown,
    repair_targets,
    scan_metadata,
    sweep,
)
from bml_assets.domain.schema import (
    DATASETS,
    HOT_SNAPSHOTS,
    KLINES,
    LIVE_1M,
    MINUTE_VIEW,
    TRADE_FLOW,
    Dataset,
    schema_hash,
)
from bml_assets.lake import scan as scan_module
from bml_assets.lake.commit import commit_table, encode_parquet, record_unavailable
from bml_assets.lake.lake import Lake as BmlLake
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import ProblemKind, ScanReport, outside_strays, scan
from bml_assets.quality import enforce_blocking
from bml_assets.sources.vision import stale_cache_files
from bml_assets_tests.unit.lake._helpers import minute_ms, minute_table

SYMBOLS = ("BTCUSDT", "ETHUSDT")
D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
TODAY = dt.date(2024, 3, 4)
VISION = {"klines": {"status": "vision", "files": []}}


def iso(day: dt.date, hh: int, mm: int) -> str:
    return dt.datetime.combine(day, dt.time(hh, mm), dt.UTC).isoformat()


STREAMS = tuple(d for d in DATASETS.values() if d is not MINUTE_VIEW)


def stream_table(dataset: Dataset, day: dt.date, rows: int = 1440) -> pa.Table:
    """``rows`` minutes from the day's start; floats ``1.5 + i``, ints ``i``, flags alternating."""
    arrays = []
    for name, dtype in ((c.name, c.type) for c in dataset.columns):
        if name == dataset.time_column:
            arrays.append(pa.array([minute_ms(day, m) for m in range(rows)], dtype))
        elif pa.types.is_integer(dtype):
            arrays.append(pa.array(list(range(rows)), dtype))
        elif pa.types.is_boolean(dtype):  # the live table's coverage flags
            arrays.append(pa.array([i % 2 == 0 for i in range(rows)], dtype))
        else:
            arrays.append(pa.array([1.5 + i for i in range(rows)], dtype))
    return pa.Table.from_arrays(arrays, schema=dataset.arrow_schema)


def commit_stream(root: Path, ledger: Ledger, dataset: Dataset, symbol: str, day: dt.date, **kw: Any) -> None:
    commit_table(
        kw.pop("table", None) or stream_table(dataset, day),
        lake=BmlLake.at(root),
        ledger=ledger,
        dataset=dataset,
        symbol=symbol,
        day=day,
        validate=lambda t: None,
        provenance=kw.pop("provenance", VISION),
        **kw,
    )


def commit(root: Path, ledger: Ledger, symbol: str, day: dt.date, table: pa.Table, **kw: Any) -> None:
    commit_table(
        table,
        lake=BmlLake.at(root),
        ledger=ledger,
        dataset=MINUTE_VIEW,
        symbol=symbol,
        day=day,
        validate=lambda t: enforce_blocking(t, day, label=f"test {symbol} {day}"),
        provenance=kw.pop("provenance", VISION),
        **kw,
    )


def plant(root: Path, ledger: Ledger, symbol: str, day: dt.date, table: pa.Table, *, ledger_too: bool) -> None:
    """Write ``table`` as the partition's file, bypassing the commit's validation; with
    ``ledger_too`` also record its hash, so only the planted content is wrong."""
    data = encode_parquet(table)
    Path(BmlLake.at(root).location(MINUTE_VIEW, symbol, day)).write_bytes(data)
    if ledger_too:
        old = ledger.get_partition(MINUTE_VIEW, symbol, day)
        assert old is not None
        ts = pc.min_max(table.column("timestamp").cast(pa.int64()))
        new = replace(
            old,
            content_hash=hashlib.sha256(data).hexdigest(),
            row_count=table.num_rows,
            min_ts=ts["min"].as_py(),
            max_ts=ts["max"].as_py(),
            schema_hash=schema_hash(table.schema),
        )
        ledger.commit_partition(new, expected_content_hash=old.content_hash)


class Lake:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lake = BmlLake.at(root)
        self.ledger = Ledger(f"sqlite:///{root / '_state' / 'ledger.sqlite'}")

    def path(self, symbol: str, day: dt.date, dataset: Dataset = MINUTE_VIEW) -> Path:
        return Path(self.lake.location(dataset, symbol, day))

    def scan(self, start: dt.date = D1, end: dt.date = D3, **kw: Any) -> ScanReport:
        kw.setdefault("today", TODAY)
        return scan(self.lake, self.ledger, kw.pop("symbols", SYMBOLS), start, end, **kw)

    def both(self, **kw: Any) -> tuple[ScanReport, ScanReport]:
        return self.scan(deep=True, **kw), self.scan(deep=False, **kw)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 symbols × 3 closed days, committed through the real commit: the minute view (1440
    valid rows each) and every stream table (1440 rows each, 15-80 kB)."""
    root = tmp_path_factory.mktemp("template") / "lake"
    led = Ledger(f"sqlite:///{root / '_state' / 'ledger.sqlite'}")
    for symbol in SYMBOLS:
        for day in (D1, D2, D3):
            commit(root, led, symbol, day, minute_table(day))
            for dataset in STREAMS:
                commit_stream(root, led, dataset, symbol, day)
    led.close()
    return root


@pytest.fixture
def lake(template: Path, tmp_path: Path) -> Iterator[Lake]:
    root = tmp_path / "lake"
    shutil.copytree(template, root)
    lk = Lake(root)
    yield lk
    lk.ledger.close()


def kinds(report: ScanReport) -> list[tuple[str, str, str]]:
    return [(p.symbol, p.day.isoformat(), str(p.kind)) for p in report.problems]


# --------------------------------------------------------------------------- clean


def test_a_clean_lake_is_clean_deep_and_shallow(lake: Lake) -> None:
    for report in lake.both():
        assert report.clean and report.problems == []
        assert report.checked == 6 and report.files == 66  # 6 partitions × 11 datasets
        assert report.strays == [] and report.restat == []
        assert report.by_kind() == {} and report.to_rows() == []
    assert repair_targets(lake.scan()) == []


def test_the_ledger_is_queried_once_for_the_whole_range(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real = lake.ledger.partitions

    def counting(*args: Any, **kw: Any):
        calls.append((args, tuple(sorted(kw))))
        return real(*args, **kw)

    states: list[tuple[Any, ...]] = []
    real_states = lake.ledger.file_states

    def counting_states(*args: Any, **kw: Any):
        states.append(args)
        return real_states(*args, **kw)

    monkeypatch.setattr(lake.ledger, "partitions", counting)
    monkeypatch.setattr(lake.ledger, "file_states", counting_states)
    monkeypatch.setattr(lake.ledger, "get_partition", lambda *a, **k: pytest.fail("per-partition ledger read"))
    assert lake.scan().clean
    # One query for the minute view's rows, one for the stream tables' file states.
    assert len(calls) == 1 and len(states) == 1


# --------------------------------------------------------------------------- not built


def test_days_without_a_ledger_row_before_today_are_not_built(lake: Lake) -> None:
    report = lake.scan(D1, dt.date(2024, 3, 6), today=dt.date(2024, 3, 6))
    assert kinds(report) == [
        ("BTCUSDT", "2024-03-04", "not_built"),
        ("ETHUSDT", "2024-03-04", "not_built"),
        ("BTCUSDT", "2024-03-05", "not_built"),
        ("ETHUSDT", "2024-03-05", "not_built"),
    ]
    assert report.problems[0].detail == "no ledger row"
    assert report.checked == 10
    # Today and later are never owed.
    assert lake.scan(D1, dt.date(2024, 3, 9), today=TODAY).clean


def test_days_before_the_listing_are_never_problems(lake: Lake) -> None:
    before = dt.date(2024, 2, 28)
    report = lake.scan(before, D3, listing_dates={"ETHUSDT": D1})
    assert kinds(report) == [
        ("BTCUSDT", "2024-02-28", "not_built"),
        ("BTCUSDT", "2024-02-29", "not_built"),
    ]


def test_an_unrecorded_file_is_named_in_not_built(lake: Lake) -> None:
    day = dt.date(2024, 2, 29)
    path = lake.path("BTCUSDT", day)
    path.parent.mkdir(parents=True)
    path.write_bytes(encode_parquet(minute_table(day)))
    (problem,) = lake.scan(day, day, symbols=["BTCUSDT"]).problems
    assert problem.kind == ProblemKind.NOT_BUILT
    assert problem.detail == f"no ledger row; a file exists at {path} without a ledger row"


# --------------------------------------------------------------------------- ledger vs file


def test_a_deleted_file_is_file_missing(lake: Lake) -> None:
    path = lake.path("ETHUSDT", D2)
    path.unlink()
    for report in lake.both():
        assert kinds(report) == [("ETHUSDT", "2024-03-02", "file_missing")]
        assert str(path) in report.problems[0].detail
    assert repair_targets(lake.scan()) == [("ETHUSDT", D2)]


def test_corrupt_bytes_are_unreadable_and_a_hash_mismatch(lake: Lake) -> None:
    path = lake.path("BTCUSDT", D1)
    data = bytearray(path.read_bytes())
    data[-12:-4] = b"\x00" * 8  # the footer length and part of the footer
    path.write_bytes(bytes(data))
    deep, shallow = lake.both()
    assert kinds(deep) == [
        ("BTCUSDT", "2024-03-01", "unreadable"),
        ("BTCUSDT", "2024-03-01", "content_hash_mismatch"),
    ]
    assert deep.problems[0].detail.startswith(f"cannot read {path} as parquet:")
    # The rewrite changed the mtime, so the shallow scan reads the footer: unreadable.
    assert kinds(shallow) == [("BTCUSDT", "2024-03-01", "unreadable")]
    assert shallow.problems[0].detail.startswith(f"cannot read the parquet footer of {path} (")


def test_a_wrong_ledger_hash_is_a_content_hash_mismatch(lake: Lake) -> None:
    record = lake.ledger.get_partition(MINUTE_VIEW, "ETHUSDT", D3)
    assert record is not None
    lake.ledger.commit_partition(replace(record, content_hash="f" * 64), expected_content_hash=record.content_hash)
    deep, shallow = lake.both()
    assert kinds(deep) == [("ETHUSDT", "2024-03-03", "content_hash_mismatch")]
    assert deep.problems[0].detail == (
        f"{lake.path('ETHUSDT', D3)} has sha256 {record.content_hash}, the ledger records {'f' * 64}"
    )
    assert shallow.clean


def test_an_old_schema_hash_in_the_ledger_is_schema_outdated(lake: Lake) -> None:
    record = lake.ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D2)
    assert record is not None
    lake.ledger.commit_partition(replace(record, schema_hash="0" * 16), expected_content_hash=record.content_hash)
    for report in lake.both():
        assert kinds(report) == [("BTCUSDT", "2024-03-02", "schema_outdated")]
        assert report.problems[0].detail.startswith("the ledger records schema_hash 0000000000000000, the current")


def test_a_file_of_an_older_layout_is_schema_outdated_once(lake: Lake) -> None:
    old = minute_table(D2).drop_columns(["next_funding_time"])
    plant(lake.root, lake.ledger, "ETHUSDT", D2, old, ledger_too=True)
    deep, shallow = lake.both()
    assert kinds(deep) == [("ETHUSDT", "2024-03-02", "schema_outdated")]
    detail = deep.problems[0].detail
    assert "the ledger records schema_hash" in detail and "missing columns: next_funding_time" in detail
    assert kinds(shallow) == [("ETHUSDT", "2024-03-02", "schema_outdated")]


# --------------------------------------------------------------------------- content


def test_missing_minutes_are_listed(lake: Lake) -> None:
    kept = [m for m in range(1440) if m not in {600, 601, 602, 603, 604, 1439}]
    commit(lake.root, lake.ledger, "BTCUSDT", D3, minute_table(D3, kept))
    deep, shallow = lake.both()
    assert kinds(deep) == [("BTCUSDT", "2024-03-03", "missing_minutes")]
    problem = deep.problems[0]
    assert problem.detail == "1434 rows, 0 source-gap minutes: 6 minutes missing"
    assert problem.minutes == (
        iso(D3, 10, 0),
        iso(D3, 10, 1),
        iso(D3, 10, 2),
        iso(D3, 10, 3),
        iso(D3, 10, 4),
        iso(D3, 23, 59),
    )
    assert kinds(shallow) == [("BTCUSDT", "2024-03-03", "missing_minutes")]
    assert shallow.problems[0].detail == (
        "the ledger records 1434 rows and 0 source-gap minutes: 6 minutes unaccounted for"
    )
    assert shallow.problems[0].minutes == ()


def test_confirmed_source_gaps_are_not_problems(lake: Lake) -> None:
    kept = [m for m in range(1440) if m not in {600, 601, 602, 1439}]
    gaps = [
        {"minute": iso(D1, 10, m), "missing": ["klines_1m"], "reason": "absent from every source"} for m in (0, 1, 2)
    ]
    commit(lake.root, lake.ledger, "ETHUSDT", D1, minute_table(D1, kept), source_gaps=gaps)
    deep, shallow = lake.both()
    # 10:00-10:02 are confirmed gaps; only 23:59 is owed.
    assert [(str(p.kind), p.minutes) for p in deep.problems] == [("missing_minutes", (iso(D1, 23, 59),))]
    assert deep.problems[0].detail == "1436 rows, 3 source-gap minutes: 1 minutes missing"
    assert shallow.problems[0].detail.endswith("3 source-gap minutes: 1 minutes unaccounted for")
    # With 23:59 confirmed too, the day is complete: nothing for the repair sensor to retry.
    commit(
        lake.root,
        lake.ledger,
        "ETHUSDT",
        D1,
        minute_table(D1, kept),
        source_gaps=[*gaps, {"minute": iso(D1, 23, 59), "missing": ["klines_1m"], "reason": "x"}],
    )
    assert all(r.clean for r in lake.both())


def test_many_missing_minutes_are_capped_with_the_count(lake: Lake) -> None:
    commit(lake.root, lake.ledger, "BTCUSDT", D1, minute_table(D1, range(1340)))
    (problem,) = lake.scan().problems
    assert problem.detail == "1340 rows, 0 source-gap minutes: 100 minutes missing (first 50 listed)"
    assert len(problem.minutes) == 50
    assert problem.minutes[0] == iso(D1, 22, 20) and problem.minutes[-1] == iso(D1, 23, 9)


def test_today_may_be_incomplete(lake: Lake) -> None:
    commit(lake.root, lake.ledger, "BTCUSDT", TODAY, minute_table(TODAY, range(629)))
    for report in lake.both(end=TODAY):
        assert report.clean and report.checked == 7


def test_timestamps_out_of_order_are_disorder(lake: Lake) -> None:
    ts = list(range(1440))
    ts[100], ts[101] = ts[101], ts[100]
    plant(lake.root, lake.ledger, "ETHUSDT", D1, minute_table(D1, ts), ledger_too=True)
    deep, shallow = lake.both()
    assert kinds(deep) == [("ETHUSDT", "2024-03-01", "timestamp_disorder")]
    assert deep.problems[0].detail == "timestamps: 1 not strictly increasing; 1 minutes involved"
    assert deep.problems[0].minutes == (iso(D1, 1, 40),)
    assert shallow.clean  # the ledger's min/max are inside the day


def test_a_timestamp_outside_the_day_is_disorder(lake: Lake) -> None:
    table = minute_table(D2, [*range(1439), 1440])  # the last row is the next day's 00:00
    plant(lake.root, lake.ledger, "BTCUSDT", D2, table, ledger_too=True)
    deep, shallow = lake.both()
    assert kinds(deep) == [
        ("BTCUSDT", "2024-03-02", "missing_minutes"),
        ("BTCUSDT", "2024-03-02", "timestamp_disorder"),
    ]
    assert deep.problems[0].minutes == (iso(D2, 23, 59),)
    assert deep.problems[1].detail == "timestamps: 1 outside 2024-03-02; 1 minutes involved"
    assert deep.problems[1].minutes == (iso(D3, 0, 0),)
    # The ledger's max_ts says so too.
    assert kinds(shallow) == [("BTCUSDT", "2024-03-02", "timestamp_disorder")]
    assert shallow.problems[0].detail == f"the ledger records max_ts {iso(D3, 0, 0)} outside the day"


def test_nulls_in_hard_columns_are_listed(lake: Lake) -> None:
    table = minute_table(D3)
    opens = table.column("open").to_pylist()
    closes = table.column("close").to_pylist()
    opens[5] = opens[6] = None
    closes[5] = None
    table = table.set_column(table.schema.get_field_index("open"), "open", pa.array(opens, pa.float64()))
    table = table.set_column(table.schema.get_field_index("close"), "close", pa.array(closes, pa.float64()))
    plant(lake.root, lake.ledger, "ETHUSDT", D3, table, ledger_too=True)
    deep, shallow = lake.both()
    assert kinds(deep) == [("ETHUSDT", "2024-03-03", "hard_nulls")]
    assert deep.problems[0].detail == "NULL in HARD columns: open (2), close (1); 2 rows"
    assert deep.problems[0].minutes == (iso(D3, 0, 5), iso(D3, 0, 6))
    assert shallow.clean


# --------------------------------------------------------------------------- unavailable and provisional


def test_not_published_is_stale_after_a_week_and_not_listed_is_fine(lake: Lake) -> None:
    old, recent, unlisted = dt.date(2024, 2, 20), dt.date(2024, 2, 27), dt.date(2024, 2, 21)
    for day, status in ((old, "not_published"), (recent, "not_published"), (unlisted, "not_listed")):
        record_unavailable(
            lake=lake.lake,
            ledger=lake.ledger,
            dataset=MINUTE_VIEW,
            symbol="ETHUSDT",
            day=day,
            status=status,  # type: ignore[arg-type]
            message=f"{status} by the test",
            provenance={},
        )
    report = lake.scan(old, dt.date(2024, 2, 27), symbols=["ETHUSDT"])
    assert kinds(report) == [
        ("ETHUSDT", "2024-02-20", "not_published_stale"),
        *[("ETHUSDT", f"2024-02-{d}", "not_built") for d in (22, 23, 24, 25, 26)],
    ]
    assert "more than 7 days before 2024-03-04" in report.problems[0].detail
    assert report.checked == 8


def test_a_rest_built_day_is_provisional_only_once_vision_has_it(lake: Lake) -> None:
    rest = {"klines": {"status": "rest"}, "metrics": {"status": "vision"}, "aggTrades": {"status": "rest"}}
    commit(lake.root, lake.ledger, "BTCUSDT", D2, minute_table(D2), provenance=rest)
    asked: list[tuple[str, dt.date]] = []

    def published(symbol: str, day: dt.date) -> bool:
        asked.append((symbol, day))
        return True

    report = lake.scan(vision_published=published)
    assert kinds(report) == [("BTCUSDT", "2024-03-02", "provisional")]
    assert report.problems[0].detail == "built from REST (aggTrades, klines) and Vision has published the day"
    assert asked == [("BTCUSDT", D2)]  # only REST-built days are asked about
    assert lake.scan(vision_published=lambda s, d: False).clean
    assert lake.scan().clean  # without the callable nobody asks


# --------------------------------------------------------------------------- the report


def test_report_rows_counts_targets_and_markdown(lake: Lake) -> None:
    lake.path("BTCUSDT", D1).unlink()
    lake.path("ETHUSDT", D1).write_bytes(b"not parquet")
    report = lake.scan(D1, dt.date(2024, 3, 4), today=dt.date(2024, 3, 5))
    assert report.by_kind() == {"not_built": 2, "file_missing": 1, "unreadable": 1, "content_hash_mismatch": 1}
    assert not report.clean and report.checked == 8
    assert repair_targets(report) == [("BTCUSDT", D1), ("ETHUSDT", D1), ("BTCUSDT", TODAY), ("ETHUSDT", TODAY)]
    row = report.to_rows()[0]
    assert row["symbol"] == "BTCUSDT" and row["date"] == "2024-03-01" and row["kind"] == "file_missing"
    assert row["minutes"] == []
    table = problems_markdown(report)
    assert len(table.splitlines()) == 2 + 5 and "| ETHUSDT | 2024-03-04 | not_built | no ledger row |  |" in table
    md = scan_metadata(report)
    assert md["clean"] is False and md["partitions_to_repair"] == 4 and md["problems"] == 5


def test_vision_published_asks_for_the_klines_checksum() -> None:
    from bml_assets.defs.repair import vision_klines_published
    from bml_assets.domain.streams import Stream
    from bml_assets.sources.vision import NotPublished
    from bml_assets.sources.vision import daily_url as vision_daily_url

    class FakeVision:
        published = frozenset({vision_daily_url("http://v", Stream.KLINES, "BTCUSDT", D1)})

        def daily_url(self, stream: Stream, symbol: str, day: dt.date) -> str:
            return vision_daily_url("http://v", stream, symbol, day)

        def checksum(self, url: str) -> str:
            if url not in self.published:
                raise NotPublished(url, 404)
            return "a" * 64

    published = vision_klines_published(FakeVision())  # type: ignore[arg-type]
    assert published("BTCUSDT", D1) is True
    assert published("BTCUSDT", D2) is False


def test_a_ledger_row_whose_counts_no_longer_describe_the_file_is_stale(lake: Lake) -> None:
    record = lake.ledger.get_partition("minute", "BTCUSDT", D2)
    assert record is not None
    # Same file and hash; only the row's count is wrong (a hand edit, an old writer).
    lake.ledger.commit_partition(replace(record, row_count=1000), expected_content_hash=record.content_hash)
    deep = lake.scan(deep=True)
    assert kinds(deep) == [("BTCUSDT", D2.isoformat(), "ledger_stale")]
    assert "rows/min_ts/max_ts (1000," in deep.problems[0].detail
    assert repair_targets(deep) == [("BTCUSDT", D2)]


# --------------------------------------------------------------------------- every dataset: the file against the ledger

ALL = tuple(DATASETS.values())


def _truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


def _found(report: ScanReport) -> list[tuple[str, str, str, str]]:
    return [(p.dataset, p.symbol, p.day.isoformat(), str(p.kind)) for p in report.problems]


@pytest.mark.parametrize("dataset", ALL, ids=lambda d: d.name)
@pytest.mark.parametrize("size", [5000, 0], ids=["truncated", "emptied"])
def test_a_truncated_or_emptied_file_is_found_shallow_and_deep_in_every_dataset(
    lake: Lake, dataset: Dataset, size: int
) -> None:
    path = lake.path("ETHUSDT", D2, dataset)
    recorded = path.stat().st_size
    assert recorded > 5000
    _truncate(path, size)
    deep, shallow = lake.both()
    assert _found(shallow) == [(dataset.name, "ETHUSDT", "2024-03-02", "unreadable")]
    assert shallow.problems[0].detail.startswith(
        f"cannot read the parquet footer of {path} ({size} bytes; the ledger recorded {recorded} bytes): "
    )
    assert _found(deep) == [
        (dataset.name, "ETHUSDT", "2024-03-02", "unreadable"),
        (dataset.name, "ETHUSDT", "2024-03-02", "content_hash_mismatch"),
    ]
    # Hot snapshots are polled live and the live table is rebuilt from its spool (bml live-rebuild):
    # reported, but no minute-view rebuild makes them again.
    expected = [] if dataset in (HOT_SNAPSHOTS, LIVE_1M) else [("ETHUSDT", D2)]
    assert repair_targets(shallow) == repair_targets(deep) == expected


@pytest.mark.parametrize("dataset", ALL, ids=lambda d: d.name)
def test_a_deleted_file_is_file_missing_in_every_dataset(lake: Lake, dataset: Dataset) -> None:
    path = lake.path("BTCUSDT", D3, dataset)
    path.unlink()
    for report in lake.both():
        assert _found(report) == [(dataset.name, "BTCUSDT", "2024-03-03", "file_missing")]
        assert str(path) in report.problems[0].detail
    assert repair_targets(lake.scan(deep=False)) == ([] if dataset in (HOT_SNAPSHOTS, LIVE_1M) else [("BTCUSDT", D3)])


@pytest.mark.parametrize("dataset", [MINUTE_VIEW, KLINES, TRADE_FLOW], ids=lambda d: d.name)
def test_same_size_corruption_needs_the_hash_and_a_kept_mtime_needs_the_deep_scan(lake: Lake, dataset: Dataset) -> None:
    path = lake.path("BTCUSDT", D1, dataset)
    before = path.stat()
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF  # in the first data page: the footer (at the end) still reads
    path.write_bytes(bytes(data))
    assert path.stat().st_size == before.st_size
    # The mtime moved: the shallow scan reads the footer (fine), then hashes.
    deep, shallow = lake.both()
    assert _found(shallow) == [(dataset.name, "BTCUSDT", "2024-03-01", "content_hash_mismatch")]
    assert f"committed as {before.st_size} bytes" in shallow.problems[0].detail
    assert (dataset.name, "BTCUSDT", "2024-03-01", "content_hash_mismatch") in _found(deep)
    # The same edit with the mtime put back is invisible to a stat: only the deep scan sees it.
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    deep, shallow = lake.both()
    assert shallow.clean
    assert (dataset.name, "BTCUSDT", "2024-03-01", "content_hash_mismatch") in _found(deep)


def test_a_touched_file_is_not_a_problem_and_the_sweep_re_records_its_stat(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = lake.path("ETHUSDT", D1, KLINES)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 3_000_000_000))  # same bytes, new mtime
    deep, shallow = lake.both()
    assert deep.clean and shallow.clean
    assert shallow.restat == deep.restat == [(KLINES.name, "ETHUSDT", D1)]
    done = sweep(shallow.strays, lake=lake.lake, now=NOW, ledger=lake.ledger, restat=shallow.restat)
    assert done.restated == [(KLINES.name, "ETHUSDT", D1)] and done.removed == []
    row = lake.ledger.get_partition(KLINES, "ETHUSDT", D1)
    assert row is not None and row.file_mtime_ns == st.st_mtime_ns + 3_000_000_000
    # Now the stat matches again: no footer, no hash.
    monkeypatch.setattr(lake.lake.store, "sha256", lambda key: pytest.fail(f"hashed {key}"))
    monkeypatch.setattr(scan_module.pq, "read_metadata", lambda p: pytest.fail(f"read the footer of {p}"))
    report = lake.scan(deep=False)
    assert report.clean and report.restat == []


def test_a_row_without_size_and_mtime_falls_back_to_the_footer(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    for dataset, symbol in ((MINUTE_VIEW, "BTCUSDT"), (TRADE_FLOW, "ETHUSDT")):
        row = lake.ledger.get_partition(dataset, symbol, D2)
        assert row is not None
        # As a version-1 ledger left it.
        lake.ledger.commit_partition(
            replace(row, file_bytes=None, file_mtime_ns=None), expected_content_hash=row.content_hash
        )
    read: list[str] = []
    real = scan_module.pq.read_metadata

    def reading(path: str) -> Any:
        read.append(path)
        return real(path)

    monkeypatch.setattr(scan_module.pq, "read_metadata", reading)
    monkeypatch.setattr(lake.lake.store, "sha256", lambda key: pytest.fail(f"hashed {key}"))
    report = lake.scan(deep=False)
    assert report.clean
    assert sorted(read) == sorted([str(lake.path("BTCUSDT", D2)), str(lake.path("ETHUSDT", D2, TRADE_FLOW))])
    assert report.restat == [(MINUTE_VIEW.name, "BTCUSDT", D2), (TRADE_FLOW.name, "ETHUSDT", D2)]
    # Truncated, the footer says so.
    _truncate(lake.path("ETHUSDT", D2, TRADE_FLOW), 5000)
    assert _found(lake.scan(deep=False)) == [(TRADE_FLOW.name, "ETHUSDT", "2024-03-02", "unreadable")]


def test_a_row_without_stat_whose_footer_disagrees_is_hashed(lake: Lake) -> None:
    path = lake.path("BTCUSDT", D3, KLINES)
    row = lake.ledger.get_partition(KLINES, "BTCUSDT", D3)
    assert row is not None
    lake.ledger.commit_partition(
        replace(row, file_bytes=None, file_mtime_ns=None), expected_content_hash=row.content_hash
    )
    path.write_bytes(encode_parquet(stream_table(KLINES, D3, rows=1000)))  # a valid file of other rows
    (problem,) = lake.scan(deep=False).problems
    assert (problem.dataset, str(problem.kind)) == (KLINES.name, "content_hash_mismatch")


def test_stream_tables_get_order_and_count_checks_in_the_deep_scan(lake: Lake) -> None:
    table = stream_table(TRADE_FLOW, D1)
    order = list(range(1440))
    order[10], order[11] = order[11], order[10]
    shuffled = table.take(pa.array(order))
    data = encode_parquet(shuffled)
    path = lake.path("ETHUSDT", D1, TRADE_FLOW)
    path.write_bytes(data)
    row = lake.ledger.get_partition(TRADE_FLOW, "ETHUSDT", D1)
    assert row is not None
    st = path.stat()
    lake.ledger.commit_partition(
        replace(
            row, content_hash=hashlib.sha256(data).hexdigest(), file_bytes=st.st_size, file_mtime_ns=st.st_mtime_ns
        ),
        expected_content_hash=row.content_hash,
    )
    metrics = lake.ledger.get_partition(DATASETS["metrics_5m"], "BTCUSDT", D3)
    assert metrics is not None
    lake.ledger.commit_partition(replace(metrics, row_count=1000), expected_content_hash=metrics.content_hash)
    deep, shallow = lake.both()
    assert _found(deep) == [
        (TRADE_FLOW.name, "ETHUSDT", "2024-03-01", "timestamp_disorder"),
        ("metrics_5m", "BTCUSDT", "2024-03-03", "ledger_stale"),
    ]
    assert deep.problems[0].detail == "timestamp[ms, tz=UTC] column: 1 not strictly increasing"
    assert deep.problems[0].minutes == (iso(D1, 0, 10),)
    assert shallow.clean  # the stat matches the rows: only reading the file can tell
    # The minute view's day checks (missing minutes, HARD NULLs) are the minute view's only:
    # a stream table of 60 rows on a closed day is fine.
    commit_stream(lake.root, lake.ledger, KLINES, "BTCUSDT", D1, table=stream_table(KLINES, D1, rows=60))
    assert [p for p in lake.scan().problems if p.dataset == KLINES.name] == []


def test_an_old_schema_hash_of_a_stream_table_is_schema_outdated(lake: Lake) -> None:
    row = lake.ledger.get_partition(KLINES, "ETHUSDT", D3)
    assert row is not None
    lake.ledger.commit_partition(replace(row, schema_hash="0" * 16), expected_content_hash=row.content_hash)
    for report in lake.both():
        assert _found(report) == [(KLINES.name, "ETHUSDT", "2024-03-03", "schema_outdated")]
        assert report.problems[0].detail == (
            f"the ledger records schema_hash 0000000000000000, the current layout is {schema_hash(KLINES.arrow_schema)}"
        )


def test_hot_snapshots_are_reported_but_never_repair_targets(lake: Lake) -> None:
    lake.path("BTCUSDT", D2, HOT_SNAPSHOTS).unlink()
    report = lake.scan(deep=False)
    assert _found(report) == [(HOT_SNAPSHOTS.name, "BTCUSDT", "2024-03-02", "file_missing")]
    assert not report.clean and repair_targets(report) == []
    # With the day's minute view damaged too, the day is rebuilt.
    _truncate(lake.path("BTCUSDT", D2), 5000)
    assert repair_targets(lake.scan(deep=False)) == [("BTCUSDT", D2)]


def test_problems_are_sorted_by_day_symbol_kind_then_dataset_and_name_it(lake: Lake) -> None:
    lake.path("BTCUSDT", D1, TRADE_FLOW).unlink()
    _truncate(lake.path("BTCUSDT", D1, KLINES), 5000)
    lake.path("BTCUSDT", D1).unlink()
    report = lake.scan(deep=False)
    assert [(p.dataset, str(p.kind)) for p in report.problems] == [
        (MINUTE_VIEW.name, "file_missing"),
        (TRADE_FLOW.name, "file_missing"),
        (KLINES.name, "unreadable"),
    ]
    assert report.to_rows()[1]["dataset"] == TRADE_FLOW.name
    assert "| trade_flow_1m |" in problems_markdown(report)
    assert repair_targets(report) == [("BTCUSDT", D1)]


# --------------------------------------------------------------------------- incomplete partitions and the backoff

NOW = dt.datetime(2024, 3, 4, 12, 0, tzinfo=dt.UTC)
MISSING = [
    {"stream": "metrics", "reason": "REST keeps 30 days of history"},
    {"stream": "premiumIndexKlines", "reason": "Vision 404 and REST empty"},
]


def test_an_incomplete_partition_names_its_streams_and_builds(lake: Lake) -> None:
    for _ in range(3):  # three builds in a row lacking the same streams
        commit(lake.root, lake.ledger, "ETHUSDT", D2, minute_table(D2), missing_streams=MISSING)
    row = lake.ledger.get_partition(MINUTE_VIEW, "ETHUSDT", D2)
    assert row is not None and row.incomplete_builds == 3
    for report in lake.both():
        (problem,) = report.problems
        assert (problem.dataset, str(problem.kind)) == (MINUTE_VIEW.name, "incomplete")
        assert problem.detail == (
            "missing metrics (REST keeps 30 days of history), premiumIndexKlines (Vision 404 and REST empty); "
            f"3 build(s) in a row ended so, the last at {row.committed_at:%Y-%m-%d %H:%M:%S}Z"
        )
        assert problem.committed_at == row.committed_at and problem.incomplete_builds == 3
        assert not report.clean and report.by_kind() == {"incomplete": 1}
    # A stream table's row may say so too.
    commit_stream(lake.root, lake.ledger, KLINES, "BTCUSDT", D3, missing_streams=MISSING[:1])
    assert (KLINES.name, "BTCUSDT", "2024-03-03", "incomplete") in _found(lake.scan(deep=False))


def _incomplete(builds: int, committed_at: dt.datetime = NOW) -> ScanReport:
    problem = scan_module.Problem(
        "BTCUSDT", D1, ProblemKind.INCOMPLETE, "missing metrics", committed_at=committed_at, incomplete_builds=builds
    )
    return ScanReport(problems=[problem], checked=1)


@pytest.mark.parametrize(
    ("builds", "wait"),
    [
        (1, dt.timedelta(minutes=30)),
        (2, dt.timedelta(hours=1)),
        (3, dt.timedelta(hours=2)),
        (6, dt.timedelta(hours=16)),
        (7, dt.timedelta(days=1)),  # 32 h, capped
        (400, dt.timedelta(days=1)),  # retried forever, at the cap
    ],
)
def test_the_incomplete_backoff_doubles_per_build_up_to_a_day(builds: int, wait: dt.timedelta) -> None:
    report = _incomplete(builds)
    assert incomplete_retry_at(report.problems[0]) == NOW + wait
    second = dt.timedelta(seconds=1)
    assert repair_targets(report, now=NOW + wait - second) == []
    assert repair_targets(report, now=NOW + wait) == [("BTCUSDT", D1)]
    assert repair_targets(report) == [("BTCUSDT", D1)]  # no clock (a backfill): at once


def test_an_incomplete_partition_with_another_problem_is_due_at_once() -> None:
    report = _incomplete(5)
    report.problems.append(scan_module.Problem("BTCUSDT", D1, ProblemKind.FILE_MISSING, "gone", dataset=KLINES.name))
    assert repair_targets(report, now=NOW) == [("BTCUSDT", D1)]


# --------------------------------------------------------------------------- stray temporary files


def _temp(folder: Path, n: int) -> Path:
    path = folder / f".part.parquet.{n:032x}.tmp"
    path.write_bytes(b"half a parquet file")
    return path


def test_stray_commit_temporaries_are_reported_in_every_dataset_and_swept_under_the_lock(lake: Lake) -> None:
    minute_temp = _temp(lake.path("BTCUSDT", D1).parent, 1)
    stream_temp = _temp(lake.path("ETHUSDT", D3, TRADE_FLOW).parent, 2)
    # A partition whose minute view was never built still has a folder (a killed first commit).
    unbuilt = lake.path("ETHUSDT", dt.date(2024, 2, 29), KLINES).parent
    unbuilt.mkdir(parents=True)
    unbuilt_temp = _temp(unbuilt, 3)
    live = _temp(lake.path("BTCUSDT", D2, KLINES).parent, 4)
    with lake.lake.lock(KLINES, "BTCUSDT", D2):
        # A writer holds that partition's lock: its temporary file is its own, not stray.
        shallow = lake.scan(deep=False)
        deep = lake.scan(dt.date(2024, 2, 29), D3, deep=True)
        assert [f.path for f in shallow.strays] == [minute_temp, stream_temp]
        assert [f.path for f in deep.strays] == [unbuilt_temp, minute_temp, stream_temp]
        assert shallow.problems == [] and not shallow.clean
        metadata = scan_metadata(shallow)
        assert metadata["clean"] is False and metadata["stray_files"] == 2 and metadata["problems"] == 0
        assert f"| lake | {minute_temp} | 19 |" in str(metadata["stray_table"].value)
        stray = deep.strays[1]
        assert (stray.dataset, stray.symbol, stray.day, stray.bytes, stray.where) == (
            MINUTE_VIEW.name,
            "BTCUSDT",
            D1,
            19,
            "lake",
        )
        # The writer's file was never reported, so the sweep cannot touch it; were it listed,
        # the busy lock would leave it too.
        listed = [*deep.strays, scan_module.StrayFile(live, 19, NOW, KLINES.name, "BTCUSDT", D2)]
        done = sweep(listed, lake=lake.lake, now=NOW)
        assert sorted(done.removed) == sorted([unbuilt_temp, minute_temp, stream_temp])
        assert done.left == [live] and live.exists()
    assert [f.path for f in lake.scan(deep=False).strays] == [live]  # its writer died with the lock
    assert repair_targets(shallow) == []  # strays are swept, never rebuilt
    assert lake.scan(deep=False, datasets=[MINUTE_VIEW]).strays == []


def test_stale_vision_cache_temporaries_are_swept_and_fresh_ones_left(tmp_path: Path) -> None:
    cache = tmp_path / "_cache" / "vision"
    entry = cache / "ab" / ("ab" + "c" * 62)
    entry.mkdir(parents=True)
    (entry / ("d" * 64 + ".zip")).write_bytes(b"zip")  # a cached file: never a temporary
    old_download = entry / ".0123456789abcdef.x1y2z3.part"
    old_sidecar = entry / ".sidecar.q9w8e7.part"
    fresh = entry / ".0123456789abcdef.k4l5m6.part"
    other_bucket = cache / "07" / ("07" + "e" * 62)
    other_bucket.mkdir(parents=True)
    elsewhere = other_bucket / ".fedcba9876543210.a1b2c3.part"
    ages = {old_download: 2 * 3600, old_sidecar: 3601, fresh: 3599, elsewhere: 86_400}
    for path, age in ages.items():
        path.write_bytes(b"partial")
        stamp = int((NOW.timestamp() - age) * 1e9)
        os.utime(path, ns=(stamp, stamp))
    found = outside_strays(stale_cache_files(cache, now=NOW))
    assert [f.path for f in found] == sorted([old_download, old_sidecar, elsewhere])
    assert all(f.where == "vision cache" and f.dataset is None for f in found)
    assert [p for p, _ in stale_cache_files(cache, now=NOW, buckets=["ab"])] == sorted([old_download, old_sidecar])
    # Written again after the scan (a live download after all): left.
    os.utime(old_sidecar, ns=(int(NOW.timestamp() * 1e9),) * 2)
    done = sweep(found, lake=BmlLake.at(tmp_path / "lake"), now=NOW)
    assert sorted(done.removed) == sorted([old_download, elsewhere]) and done.left == [old_sidecar]
    assert sorted(p.name for p in entry.iterdir()) == sorted([fresh.name, old_sidecar.name, "d" * 64 + ".zip"])
    assert stale_cache_files(tmp_path / "nowhere", now=NOW) == []
    assert isinstance(done, Sweep) and done.summary() == (
        "swept 2 stray temporary file(s), left 1 (a live writer may own them)"
    )
