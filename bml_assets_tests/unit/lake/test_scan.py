"""lake/scan.py: each problem kind planted in a tiny hand-built lake, found exactly; a clean lake is clean."""

from __future__ import annotations

import datetime as dt
import hashlib
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from bml_assets.checks import enforce_blocking
from bml_assets.lake.commit import commit_table, encode_parquet, record_unavailable
from bml_assets.lake.layout import partition_path
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import ProblemKind, ScanReport, scan
from bml_assets.repair import problems_markdown, repair_targets, scan_metadata
from bml_assets.schema import MINUTE_VIEW, schema_hash

SYMBOLS = ("BTCUSDT", "ETHUSDT")
D1, D2, D3 = dt.date(2024, 3, 1), dt.date(2024, 3, 2), dt.date(2024, 3, 3)
TODAY = dt.date(2024, 3, 4)
VISION = {"klines": {"status": "vision", "files": []}}


def minute_ms(day: dt.date, minute: int) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000) + 60_000 * minute


def iso(day: dt.date, hh: int, mm: int) -> str:
    return dt.datetime.combine(day, dt.time(hh, mm), dt.UTC).isoformat()


def minute_table(day: dt.date, minutes: Sequence[int] = range(1440)) -> pa.Table:
    """A valid minute-view table: floats 100.0 (so OHLC holds; a fraction or rate its
    domain's upper bound), ints 1 (an epoch-ms column its domain's lower bound), the
    given minutes of ``day``."""
    n = len(minutes)
    arrays = []
    for c in MINUTE_VIEW.columns:
        if c.name == "timestamp":
            arrays.append(pa.array([minute_ms(day, m) for m in minutes], c.type))
        elif pa.types.is_integer(c.type):
            arrays.append(pa.array([max(1, int(c.domain.low))] * n, c.type))
        else:
            arrays.append(pa.array([min(100.0, c.domain.high)] * n, c.type))
    return pa.Table.from_arrays(arrays, schema=MINUTE_VIEW.arrow_schema)


def commit(root: Path, ledger: Ledger, symbol: str, day: dt.date, table: pa.Table, **kw: Any) -> None:
    commit_table(
        table,
        lake_root=root,
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
    partition_path(root, MINUTE_VIEW, symbol, day).write_bytes(data)
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
        self.ledger = Ledger(f"sqlite:///{root / '_state' / 'ledger.sqlite'}")

    def path(self, symbol: str, day: dt.date) -> Path:
        return partition_path(self.root, MINUTE_VIEW, symbol, day)

    def scan(self, start: dt.date = D1, end: dt.date = D3, **kw: Any) -> ScanReport:
        kw.setdefault("today", TODAY)
        return scan(self.root, self.ledger, kw.pop("symbols", SYMBOLS), start, end, **kw)

    def both(self, **kw: Any) -> tuple[ScanReport, ScanReport]:
        return self.scan(deep=True, **kw), self.scan(deep=False, **kw)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 symbols × 3 closed days, 1440 valid rows each, committed through the real commit."""
    root = tmp_path_factory.mktemp("template") / "lake"
    led = Ledger(f"sqlite:///{root / '_state' / 'ledger.sqlite'}")
    for symbol in SYMBOLS:
        for day in (D1, D2, D3):
            commit(root, led, symbol, day, minute_table(day))
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
        assert report.checked == 6
        assert report.by_kind() == {} and report.to_rows() == []
    assert repair_targets(lake.scan()) == []


def test_the_ledger_is_queried_once_for_the_whole_range(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    real = lake.ledger.partitions

    def counting(*args: Any, **kw: Any):
        calls.append((args, tuple(sorted(kw))))
        return real(*args, **kw)

    monkeypatch.setattr(lake.ledger, "partitions", counting)
    monkeypatch.setattr(lake.ledger, "get_partition", lambda *a, **k: pytest.fail("per-partition ledger read"))
    assert lake.scan().clean
    assert len(calls) == 1


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
    assert shallow.clean  # stat only: the file is there


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
            lake_root=lake.root,
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


def test_the_scan_looks_where_the_layout_puts_files(tmp_path: Path) -> None:
    from bml_assets.lake import scan as scan_module

    symbol_dir = str(partition_path(tmp_path, MINUTE_VIEW, "BTCUSDT", D1).parent.parent)
    assert scan_module._file_of(symbol_dir, D2) == str(partition_path(tmp_path, MINUTE_VIEW, "BTCUSDT", D2))


def test_vision_published_asks_for_the_klines_checksum() -> None:
    from bml_assets.repair import vision_klines_published
    from bml_assets.sources.vision import NotPublished, Stream
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
