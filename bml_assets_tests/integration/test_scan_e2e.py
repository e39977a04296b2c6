"""The consistency scan on a real lake: built through the definitions from the replay
server, damaged in six ways, found by the scan (and the scan job, and the sensor), then
repaired by rebuilding the targets through the same job until the scan is clean; and
damage to any table's file rebuilt from what the repair sensor requests, within two ticks."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster import AssetKey, RunRequest, build_sensor_context, materialize

from bml_assets.definitions import MINUTE_VIEW_JOB
from bml_assets.defs.repair import REPAIR_TAG, build_repair_sensor, build_scan_job, repair_targets
from bml_assets.defs.resources import resources_for
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import BOOK_TICKER, MINUTE_VIEW, schema_hash
from bml_assets.lake.commit import encode_parquet
from bml_assets.lake.scan import ScanReport, scan
from bml_assets.storage.store import file_sha256

from .conftest import DAY, DOWNTIME_DAY, SYMBOLS, Lake

D1, D2, D3 = DAY, DOWNTIME_DAY, dt.date(2024, 3, 3)
TODAY = dt.date(2024, 3, 4)
NOW = dt.datetime(2024, 3, 4, 12, 0, tzinfo=dt.UTC)  # the host's clock, as the sensor is given it
DROPPED = (100, 101, 102, 103, 104)  # 01:40-01:44 of D2, dropped from the file behind the ledger's back


def minute(day: dt.date, m: int) -> str:
    return (dt.datetime.combine(day, dt.time(), dt.UTC) + dt.timedelta(minutes=m)).isoformat()


def run_scan(lake: Lake, *, deep: bool = True) -> ScanReport:
    return scan(lake.lake, lake.ledger, SYMBOLS, D1, D3, today=TODAY, deep=deep)


def found(report: ScanReport) -> list[tuple[str, str, str]]:
    return [(p.symbol, p.day.isoformat(), str(p.kind)) for p in report.problems]


def scan_job_metadata(lake: Lake) -> dict[str, object]:
    job = build_scan_job(SYMBOLS, D1)
    result = job.execute_in_process(
        resources=resources_for(lake.settings).by_key(),
        instance=lake.instance,
        run_config={"ops": {"scan_lake": {"config": {"end": D3.isoformat(), "today": TODAY.isoformat()}}}},
    )
    assert result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: getattr(v, "value", v) for k, v in event.event_specific_data.metadata.items()}


def test_planted_damage_is_found_and_rebuilding_the_targets_makes_the_lake_clean(lake: Lake) -> None:
    for symbol in SYMBOLS:
        for day in (D1, D2, D3):
            if (symbol, day) != ("ETHUSDT", D3):  # left unbuilt
                assert lake.materialize(symbol, day).success

    # The exchange's downtime on D2 is three confirmed source gaps, not a problem.
    downtime = lake.ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D2)
    assert downtime is not None and downtime.row_count == 1437 and len(downtime.source_gaps) == 3
    assert found(run_scan(lake)) == [("ETHUSDT", "2024-03-03", "not_built")]

    # 1. a deleted file
    lake.minute_path("BTCUSDT", D1).unlink()
    # 2. corrupt bytes: a zeroed stretch in the middle and a broken end marker
    path = lake.minute_path("ETHUSDT", D1)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = bytes(4096)
    data[-4:] = b"PAR0"
    path.write_bytes(bytes(data))
    # 3. rows dropped from a file, the ledger kept
    path = lake.minute_path("BTCUSDT", D2)
    table = pq.ParquetFile(path).read()
    minutes = pc.divide(
        pc.subtract(table.column("timestamp").cast(pa.int64()), int(table.column("timestamp")[0].value)), 60_000
    )
    keep = pc.invert(pc.is_in(minutes, pa.array(DROPPED, pa.int64())))
    pq.write_table(table.filter(keep), path)
    # 4. a ledger row with a wrong content hash
    record = lake.ledger.get_partition(MINUTE_VIEW, "ETHUSDT", D2)
    assert record is not None
    lake.ledger.commit_partition(replace(record, content_hash="0" * 64), expected_content_hash=record.content_hash)
    # 5. a file of an older layout (one column fewer), recorded as such
    path = lake.minute_path("BTCUSDT", D3)
    old = pq.ParquetFile(path).read().drop_columns(["premium_index"])
    old_bytes = encode_parquet(old)
    path.write_bytes(old_bytes)
    record = lake.ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D3)
    assert record is not None
    lake.ledger.commit_partition(
        replace(record, content_hash=hashlib.sha256(old_bytes).hexdigest(), schema_hash=schema_hash(old.schema)),
        expected_content_hash=record.content_hash,
    )
    # 6. ETHUSDT D3 was never built

    report = run_scan(lake)
    assert found(report) == [
        ("BTCUSDT", "2024-03-01", "file_missing"),
        ("ETHUSDT", "2024-03-01", "unreadable"),
        ("ETHUSDT", "2024-03-01", "content_hash_mismatch"),
        ("BTCUSDT", "2024-03-02", "content_hash_mismatch"),
        ("BTCUSDT", "2024-03-02", "missing_minutes"),
        ("ETHUSDT", "2024-03-02", "content_hash_mismatch"),
        ("BTCUSDT", "2024-03-03", "schema_outdated"),
        ("ETHUSDT", "2024-03-03", "not_built"),
    ]
    (gap_day,) = [p for p in report.problems if p.kind == "missing_minutes"]
    # Exactly the dropped minutes: the three source-gap minutes of 10:00-10:02 are not owed.
    assert gap_day.minutes == tuple(minute(D2, m) for m in DROPPED)
    assert gap_day.detail == "1432 rows, 3 source-gap minutes: 5 minutes missing"
    (schema,) = [p for p in report.problems if p.kind == "schema_outdated"]
    assert "missing columns: premium_index" in schema.detail and "the ledger records schema_hash" in schema.detail

    # The shallow scan (the sensor's) sees what the ledger, a stat and, for a file whose stat
    # changed, its footer and hash can tell: all but the ledger's wrong hash for a file
    # left as committed (ETHUSDT D2), which only the deep scan's hashing finds.
    assert found(run_scan(lake, deep=False)) == [
        ("BTCUSDT", "2024-03-01", "file_missing"),
        ("ETHUSDT", "2024-03-01", "unreadable"),
        ("BTCUSDT", "2024-03-02", "content_hash_mismatch"),
        ("BTCUSDT", "2024-03-03", "schema_outdated"),
        ("ETHUSDT", "2024-03-03", "not_built"),
    ]
    sensor = build_repair_sensor(SYMBOLS, D1, job_name=MINUTE_VIEW_JOB, today=lambda _rest: TODAY)
    with build_sensor_context(instance=lake.instance, resources=resources_for(lake.settings).by_key()) as context:
        requests = [r for r in sensor(context) if isinstance(r, RunRequest)]
    assert [(r.partition_key, r.tags[REPAIR_TAG]) for r in requests] == [
        (partition_key("BTCUSDT", D1), "file_missing"),
        (partition_key("ETHUSDT", D1), "unreadable"),
        (partition_key("BTCUSDT", D2), "content_hash_mismatch"),
        (partition_key("BTCUSDT", D3), "schema_outdated"),
        (partition_key("ETHUSDT", D3), "not_built"),
    ]

    metadata = scan_job_metadata(lake)
    assert metadata["clean"] is False and metadata["checked"] == 6 and metadata["partitions_to_repair"] == 6
    assert metadata["by_kind"] == {
        "not_built": 1,
        "file_missing": 1,
        "unreadable": 1,
        "schema_outdated": 1,
        "content_hash_mismatch": 3,
        "missing_minutes": 1,
    }
    assert "| BTCUSDT | 2024-03-02 | missing_minutes |" in str(metadata["problem_table"])

    # Repair: rebuild every target through the ordinary job.
    targets = repair_targets(report)
    assert targets == [
        ("BTCUSDT", D1),
        ("ETHUSDT", D1),
        ("BTCUSDT", D2),
        ("ETHUSDT", D2),
        ("BTCUSDT", D3),
        ("ETHUSDT", D3),
    ]
    for symbol, day in targets:
        assert lake.materialize(symbol, day).success, (symbol, day)
    after = run_scan(lake)
    assert after.clean, after.to_rows()
    assert run_scan(lake, deep=False).clean
    assert scan_job_metadata(lake)["clean"] is True
    # The downtime day is whole again, its gaps still recorded.
    rebuilt = lake.ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D2)
    assert rebuilt is not None and rebuilt.row_count == 1437 and rebuilt.content_hash == downtime.content_hash


def test_a_stale_schema_hash_in_the_ledger_alone_is_repaired_by_a_rebuild(lake: Lake) -> None:
    assert lake.materialize("BTCUSDT", D1).success
    record = lake.ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D1)
    assert record is not None
    lake.ledger.commit_partition(replace(record, schema_hash="0" * 16), expected_content_hash=record.content_hash)
    report = scan(lake.lake, lake.ledger, ["BTCUSDT"], D1, D1, today=TODAY)
    assert found(report) == [("BTCUSDT", "2024-03-01", "schema_outdated")]
    assert lake.materialize("BTCUSDT", D1).success
    assert scan(lake.lake, lake.ledger, ["BTCUSDT"], D1, D1, today=TODAY).clean


def test_the_repair_sensor_rebuilds_a_damaged_file_of_any_table_within_two_ticks(lake: Lake) -> None:
    """The issue's acceptance: a part.parquet of a stream table truncated, a minute view emptied
    and another table's file deleted are rebuilt from what the sensor requests; stray files swept."""
    for symbol, day in ((s, d) for s in SYMBOLS for d in (D1, D2)):
        assert lake.materialize(symbol, day).success
    ledger = lake.ledger
    before = {
        (r.dataset, r.symbol, r.day): r.content_hash
        for r in ledger.partitions(symbols=SYMBOLS, start=D1, end=D2)
        if r.status == "committed"
    }
    assert {d for d, _, _ in before} >= {"minute", "klines_1m", "trade_flow_1m", "funding_settlements"}
    files = {key: Path(lake.lake.location(key[0], key[1], key[2])) for key in before}

    klines = files[("klines_1m", "BTCUSDT", D1)]
    with open(klines, "r+b") as f:
        f.truncate(5000)
    files[("minute", "ETHUSDT", D1)].write_bytes(b"")
    files[("funding_settlements", "ETHUSDT", D2)].unlink()
    stray = files[("trade_flow_1m", "BTCUSDT", D2)].with_name(f".part.parquet.{'5' * 32}.tmp")
    stray.write_bytes(b"left by a killed commit")
    entry = next(p for p in lake.settings.cache_dir.glob("*/*") if p.is_dir())
    old_download, new_download = entry / ".0123456789abcdef.abc123.part", entry / ".0123456789abcdef.def456.part"
    for path, age_s in ((old_download, 7200), (new_download, 60)):
        path.write_bytes(b"partial zip")
        stamp = int((NOW.timestamp() - age_s) * 1e9)
        os.utime(path, ns=(stamp, stamp))

    def two_days(deep: bool) -> ScanReport:
        return scan(lake.lake, ledger, SYMBOLS, D1, D2, today=D3, deep=deep)

    shallow = two_days(False)
    assert [(p.dataset, p.symbol, p.day.isoformat(), str(p.kind)) for p in shallow.problems] == [
        ("klines_1m", "BTCUSDT", "2024-03-01", "unreadable"),
        ("minute", "ETHUSDT", "2024-03-01", "unreadable"),
        ("funding_settlements", "ETHUSDT", "2024-03-02", "file_missing"),
    ]
    assert [f.path for f in shallow.strays] == [stray]

    sensor = build_repair_sensor(SYMBOLS, D1, job_name=MINUTE_VIEW_JOB, today=lambda _rest: D3, clock=lambda: NOW)
    job = lake.defs.resolve_job_def(MINUTE_VIEW_JOB)
    cursor = None
    ticks: list[list[RunRequest]] = []
    for _ in range(2):
        with build_sensor_context(
            instance=lake.instance, resources=resources_for(lake.settings).by_key(), cursor=cursor
        ) as context:
            requests = [r for r in sensor(context) if isinstance(r, RunRequest)]
            cursor = context.cursor
        ticks.append(requests)
        for request in requests:
            result = job.execute_in_process(
                partition_key=request.partition_key, tags=request.tags, instance=lake.instance, raise_on_error=False
            )
            assert result.success, request.partition_key
    assert [(r.partition_key, r.tags[REPAIR_TAG]) for r in ticks[0]] == [
        (partition_key("BTCUSDT", D1), "unreadable"),
        (partition_key("ETHUSDT", D1), "unreadable"),
        (partition_key("ETHUSDT", D2), "file_missing"),
    ]
    assert ticks[1] == []  # the second tick finds nothing left to do

    # Every file is back, byte for byte as committed before the damage; the strays are gone.
    after = {
        (r.dataset, r.symbol, r.day): r.content_hash
        for r in ledger.partitions(symbols=SYMBOLS, start=D1, end=D2)
        if r.status == "committed"
    }
    assert after == before
    for key, path in files.items():
        assert file_sha256(path) == before[key], key
    assert not stray.exists() and not old_download.exists()
    assert new_download.exists()  # young: it may be a live download's
    assert two_days(False).clean and two_days(True).clean


def test_a_stream_file_of_an_older_schema_still_feeds_the_minute_view_until_the_repair_rebuilds_it(
    lake: Lake,
) -> None:
    """A book_ticker_1m file written before its nullable ``snapshot_count`` existed (and the
    ledger row that writer left): the IO manager loads it (NULL there) for the minute view,
    the scan reports it outdated, and the repair sensor's rebuild rewrites it in the current schema."""
    assert lake.materialize("BTCUSDT", D1).success
    ledger = lake.ledger
    view = ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D1)
    book = ledger.get_partition(BOOK_TICKER, "BTCUSDT", D1)
    assert view is not None and book is not None
    path = Path(lake.lake.location(BOOK_TICKER, "BTCUSDT", D1))
    current_bytes = path.read_bytes()
    old = pq.ParquetFile(path).read().drop_columns(["snapshot_count"])
    old_bytes = encode_parquet(old)
    path.write_bytes(old_bytes)
    st = lake.lake.stat(BOOK_TICKER, "BTCUSDT", D1)
    assert st is not None
    ledger.commit_partition(
        replace(
            book,
            content_hash=hashlib.sha256(old_bytes).hexdigest(),
            schema_hash=schema_hash(old.schema),
            file_bytes=st.size,
            file_mtime_ns=st.mtime_ns,
        ),
        expected_content_hash=book.content_hash,
    )

    def problems() -> list[tuple[str, str]]:
        report = scan(lake.lake, ledger, ["BTCUSDT"], D1, D1, today=D2)
        return [(p.dataset, str(p.kind)) for p in report.problems]

    assert problems() == [(BOOK_TICKER.name, "schema_outdated")]

    # The minute view alone, its inputs loaded from the lake by the IO manager: the old file
    # reads (the view does not use snapshot_count), so the day's view is the same bytes.
    result = materialize(
        list(lake.defs.assets or ()),
        selection=[AssetKey("minute_view")],
        partition_key=partition_key("BTCUSDT", D1),
        instance=lake.instance,
        resources=dict(lake.defs.resources or {}),
    )
    assert result.success
    rebuilt_view = ledger.get_partition(MINUTE_VIEW, "BTCUSDT", D1)
    assert rebuilt_view is not None and rebuilt_view.content_hash == view.content_hash
    assert path.read_bytes() == old_bytes  # the stream table was only read

    # The repair sensor asks for the day; its rebuild writes the stream file in the current schema.
    sensor = build_repair_sensor(("BTCUSDT",), D1, job_name=MINUTE_VIEW_JOB, today=lambda _rest: D2, clock=lambda: NOW)
    with build_sensor_context(instance=lake.instance, resources=resources_for(lake.settings).by_key()) as context:
        requests = [r for r in sensor(context) if isinstance(r, RunRequest)]
    assert [(r.partition_key, r.tags[REPAIR_TAG]) for r in requests] == [
        (partition_key("BTCUSDT", D1), "schema_outdated")
    ]
    assert lake.materialize("BTCUSDT", D1).success
    assert path.read_bytes() == current_bytes
    assert problems() == []
