"""Faults and bad files end to end: a clear failure, and the lake and ledger as they were."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from bml_assets.replay.server import FaultRule, ReplayServer

from .conftest import DAY, Lake, failure_text, make_lake

AGG_PATH = f"aggTrades/BTCUSDT/BTCUSDT-aggTrades-{DAY.isoformat()}.zip"
KLINES_PATH = f"klines/BTCUSDT/1m/BTCUSDT-1m-{DAY.isoformat()}.zip"


@pytest.fixture
def built(lake: Lake) -> Iterator[tuple[Lake, bytes, object]]:
    """A lake holding a good minute view of BTCUSDT on DAY, with an empty download cache."""
    assert lake.materialize("BTCUSDT", DAY).success
    before = lake.minute_path("BTCUSDT", DAY).read_bytes()
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    shutil.rmtree(lake.settings.cache_dir)  # so the next run downloads again
    yield lake, before, record


def assert_untouched(lake: Lake, before: bytes, record: object) -> None:
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == before
    assert lake.ledger.get_partition("minute", "BTCUSDT", DAY) == record
    leftovers = [p for p in lake.root.rglob("*.tmp")]
    assert leftovers == []


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (FaultRule("corrupt_zip", AGG_PATH), "corrupt"),
        (FaultRule("checksum_mismatch", AGG_PATH), "checksum mismatch"),
        (FaultRule("truncated", AGG_PATH), AGG_PATH),
        (FaultRule("error_500", AGG_PATH), "500"),
    ],
    ids=["corrupt_zip", "checksum_mismatch", "truncated", "persistent_500"],
)
def test_fault_fails_clearly_and_keeps_the_previous_file(
    built, replay: ReplayServer, rule: FaultRule, expected: str
) -> None:
    lake, before, record = built
    replay.faults.add(rule)
    result = lake.materialize("BTCUSDT", DAY)
    assert not result.success
    text = failure_text(result)
    assert expected in text, text
    assert AGG_PATH in text, text  # the URL is named
    assert_untouched(lake, before, record)


def test_a_vision_file_gone_from_an_old_day_is_repaired_from_rest(built, replay: ReplayServer) -> None:
    lake, before, record = built
    replay.faults.add(FaultRule("missing", KLINES_PATH))
    replay.clear_rest_log()
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success, failure_text(result)
    assert [e.path for e in replay.rest_log if e.path.endswith("/klines")] == ["/fapi/v1/klines"]
    # REST serves the same market: same minutes, same bytes; the ledger says where they came from.
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == before
    after = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert after is not None and after.content_hash == record.content_hash  # type: ignore[attr-defined]
    assert after.provenance["klines"]["status"] == "rest"


def test_a_day_missing_from_vision_and_rest_keeps_the_committed_file(built, replay: ReplayServer) -> None:
    lake, before, record = built
    replay.faults.add(FaultRule("missing", KLINES_PATH))
    replay.faults.add(FaultRule("missing", "/fapi/v1/klines"))
    result = lake.materialize("BTCUSDT", DAY)
    assert not result.success
    assert "klines_1m" in failure_text(result)
    assert_untouched(lake, before, record)


def test_transient_500_burst_and_slow_responses_are_survived(built, replay: ReplayServer) -> None:
    lake, before, record = built
    replay.faults.add(FaultRule("error_500", AGG_PATH, times=2))
    replay.faults.add(FaultRule("slow", KLINES_PATH, delay_s=0.3))
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success, failure_text(result)
    assert_untouched(lake, before, record)  # same inputs, same bytes, same ledger row


def _klines_zip(csv_text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"BTCUSDT-1m-{DAY.isoformat()}.csv", csv_text)
    return buf.getvalue()


HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
T0 = 1709251200000  # 2024-03-01 00:00 UTC


def _row(t: int, open_: str = "100.0") -> str:
    return f"{t},{open_},101.0,99.0,100.5,2.0,{t + 59999},201.0,3,1.0,100.5,0\n"


BAD_KLINES = {
    "wrong_column_count": (HEADER + _row(T0) + f"{T0 + 60000},100.0,101.0\n", "row 2"),
    "non_numeric_field": (HEADER + _row(T0) + _row(T0 + 60000, open_="abc"), "row 2"),
    "row_outside_the_day": (HEADER + _row(T0) + _row(T0 + 86_400_000), "row 2"),
    "truncated_csv": (HEADER + _row(T0) + _row(T0 + 60000)[:17], "row 2"),
    # Named at its row in the file as written, though the parser sorts the rows.
    "unsorted_row_outside_the_day": (
        HEADER + _row(T0 + 86_400_000) + _row(T0 + 120_000) + _row(T0 + 60_000) + _row(T0),
        "data row 1:",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_KLINES))
def test_bad_klines_file_names_file_and_row_and_keeps_the_lake(built, market, tmp_path: Path, case: str) -> None:
    lake, before, record = built
    csv_text, row_hint = BAD_KLINES[case]
    target = tmp_path / "real" / "data" / "futures" / "um" / "daily" / "klines" / "BTCUSDT" / "1m"
    target.mkdir(parents=True)
    (target / f"BTCUSDT-1m-{DAY.isoformat()}.zip").write_bytes(_klines_zip(csv_text))
    with ReplayServer(market=market, real_dir=tmp_path / "real") as bad, DagsterInstance.ephemeral() as instance:
        bad_lake = make_lake(lake.root, bad.base_url, instance)
        result = bad_lake.materialize("BTCUSDT", DAY)
    assert not result.success
    text = failure_text(result)
    assert KLINES_PATH in text, text
    assert row_hint in text, text
    assert_untouched(lake, before, record)
