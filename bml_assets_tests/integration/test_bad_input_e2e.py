"""Faults, bad files and bad values end to end: a clear failure naming the URL (and the
data row and minute of a bad value), and the lake and ledger as they were."""

from __future__ import annotations

import io
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterInstance

from bml_assets.domain.schema import KLINES, TRADE_FLOW, Dataset
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.server import ReplayServer

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


def _zip(name: str, csv_text: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(name, csv_text)
    return buf.getvalue()


def _klines_zip(csv_text: str) -> bytes:
    return _zip(f"BTCUSDT-1m-{DAY.isoformat()}.csv", csv_text)


HEADER = "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,taker_buy_quote_volume,ignore\n"
T0 = 1709251200000  # 2024-03-01 00:00 UTC


def _row(t: int, open_: str = "100.0", high: str = "101.0", low: str = "99.0", volume: str = "2.0") -> str:
    return f"{t},{open_},{high},{low},100.5,{volume},{t + 59999},201.0,3,1.0,100.5,0\n"


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


# --- bad values: refused before the rename, named at their row --------------------------------

MIN = 60_000


def _serve(tmp_path: Path, path: str, csv_text: str) -> Path:
    """A folder the replay server serves real files from, holding one file at ``path``."""
    target = tmp_path / "real" / "data" / "futures" / "um" / "daily" / path
    target.parent.mkdir(parents=True)
    target.write_bytes(_zip(target.name.removesuffix(".zip") + ".csv", csv_text))
    return tmp_path / "real"


def _partition(lake: Lake, dataset: Dataset) -> tuple[bytes, object]:
    return (
        Path(lake.lake.location(dataset, "BTCUSDT", DAY)).read_bytes(),
        lake.ledger.get_partition(dataset.name, "BTCUSDT", DAY),
    )


def _run_against(lake: Lake, market: object, real_dir: Path) -> tuple[bool, str, str]:
    """Materialize DAY again with the replay server serving ``real_dir`` over its market."""
    with ReplayServer(market=market, real_dir=real_dir) as bad, DagsterInstance.ephemeral() as instance:
        result = make_lake(lake.root, bad.base_url, instance).materialize("BTCUSDT", DAY)
        return result.success, failure_text(result), bad.base_url


# The file's rows as written: data row n is the n-th line after the header. Minutes are
# out of order, so the parsed (sorted) table's row numbers differ from the data rows.
KLINES_WITH_BAD_VALUES = (
    HEADER
    + _row(T0 + 5 * MIN, high="inf")  # data row 1
    + _row(T0)  # data row 2
    + _row(T0 + 7 * MIN, low="101.5")  # data row 3: low > high
    + _row(T0 + 2 * MIN, high="NaN")  # data row 4
    + _row(T0 + 1 * MIN)  # data row 5
    + _row(T0 + 3 * MIN, low="0")  # data row 6
    + _row(T0 + 6 * MIN, volume="-2.0")  # data row 7: negative volume
    + _row(T0 + 4 * MIN, low="-1.0")  # data row 8
)


def test_bad_kline_values_are_refused_with_url_row_and_minute_and_nothing_is_replaced(
    built, market, tmp_path: Path
) -> None:
    lake, before, record = built
    klines_before = _partition(lake, KLINES)
    success, text, base_url = _run_against(lake, market, _serve(tmp_path, KLINES_PATH, KLINES_WITH_BAD_VALUES))
    assert not success
    url = f"{base_url}/data/futures/um/daily/{KLINES_PATH}"
    assert "klines_1m BTCUSDT 2024-03-01: not committed — " in text, text
    for expected in (
        f"high = inf at minute 2024-03-01T00:05:00+00:00 ({url}, data row 1)",
        f"high = nan at minute 2024-03-01T00:02:00+00:00 ({url}, data row 4)",
        f"low = 0.0 at minute 2024-03-01T00:03:00+00:00 ({url}, data row 6)",
        f"low = -1.0 at minute 2024-03-01T00:04:00+00:00 ({url}, data row 8)",
    ):
        assert expected in text, (expected, text)
    assert "blocking rule 'prices_positive_finite' failed (4 failures): " in text, text
    assert (
        "blocking rule 'quantities_non_negative_finite' failed (1 failure): "
        f"volume = -2.0 at minute 2024-03-01T00:06:00+00:00 ({url}, data row 7)"
    ) in text, text
    assert (
        f"open/high/low/close = 100.0/101.0/101.5/100.5 at minute 2024-03-01T00:07:00+00:00 ({url}, data row 3)"
    ) in text, text
    # Nothing replaced: the committed klines table and minute view, their ledger rows.
    assert _partition(lake, KLINES) == klines_before
    assert_untouched(lake, before, record)


def _trade(agg_id: int, price: str, qty: str, ms: int) -> str:
    return f"{agg_id},{price},{qty},{2 * agg_id},{2 * agg_id + 1},{T0 + ms},true\n"


AGG_HEADER = "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
# 40 000 trades, one every 60 ms from 00:00: about 2 MB, so the reader's 1 MB blocks
# make two batches. Two bad trades in the second one.
N_TRADES = 40_000
BAD_TRADES = {
    30_000: ("100.5", "-0.5"),  # 00:30:00.000, data row 30 001: a negative quantity
    39_000: ("inf", "0.010"),  # 00:39:00.000, data row 39 001: an infinite price
}


def _agg_trades_csv(*, swap_first_two: bool) -> str:
    lines = [_trade(100 + i, *BAD_TRADES.get(i, ("100.5", "0.010")), i * 60) for i in range(N_TRADES)]
    if swap_first_two:
        lines[0], lines[1] = lines[1], lines[0]
    return AGG_HEADER + "".join(lines)


@pytest.mark.parametrize(
    "swap_first_two",
    [
        # in order: checked batch by batch as it streams, rows counted as read
        False,
        # the first batch out of order: streaming stops there, the file is parsed and
        # sorted, its rows checked, and the bad ones found again in the file as written
        True,
    ],
    ids=["streamed", "parsed_and_sorted"],
)
def test_bad_trades_are_refused_before_aggregation_with_url_row_and_minute(
    built, market, tmp_path: Path, swap_first_two: bool
) -> None:
    lake, before, record = built
    flow_before = _partition(lake, TRADE_FLOW)
    csv_text = _agg_trades_csv(swap_first_two=swap_first_two)
    success, text, base_url = _run_against(lake, market, _serve(tmp_path, AGG_PATH, csv_text))
    assert not success
    url = f"{base_url}/data/futures/um/daily/{AGG_PATH}"
    assert (
        "trade_flow_1m BTCUSDT 2024-03-01: not committed — "
        "blocking rule 'quantities_non_negative_finite' failed: quantity = -0.5 "
        f"at minute 2024-03-01T00:30:00+00:00 ({url}, data row 30001); "
        "blocking rule 'prices_positive_finite' failed: price = inf "
        f"at minute 2024-03-01T00:39:00+00:00 ({url}, data row 39001)"
    ) in text, text
    assert _partition(lake, TRADE_FLOW) == flow_before
    assert_untouched(lake, before, record)
