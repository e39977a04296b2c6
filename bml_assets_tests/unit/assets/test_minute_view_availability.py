"""What a missing HARD stream means for the day's minute view."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from bml_assets.days.minute_view import HardStreamsDisagree, build_day
from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.schema import KLINES

SD = SymbolDay("BTCUSDT", dt.date(2024, 3, 1))
NAMES = (
    "klines_1m",
    "mark_price_klines_1m",
    "index_price_klines_1m",
    "premium_index_klines_1m",
    "trade_flow_1m",
    "book_ticker_1m",
    "metrics_5m",
    "funding_settlements",
    "hot_snapshots",
)


def inputs(**status: str) -> dict[str, PartitionData]:
    out = {}
    for name in NAMES:
        s = status.get(name, "committed")
        if s == "committed":
            out[name] = PartitionData(
                KLINES.arrow_schema.empty_table() if name == "klines_1m" else pa.table({}), {name: {"status": "vision"}}
            )
        else:
            out[name] = PartitionData.unavailable(s, f"{name} is {s}", {name: {"status": s}})  # type: ignore[arg-type]
    return out


def test_all_hard_streams_not_listed_means_not_listed() -> None:
    data = build_day(
        SD,
        inputs(klines_1m="not_listed", mark_price_klines_1m="not_listed", index_price_klines_1m="not_listed"),
        max_ffill_minutes=60,
    )
    assert (data.status, data.table) == ("not_listed", None)


def test_a_hard_stream_not_yet_published_means_not_published() -> None:
    data = build_day(SD, inputs(mark_price_klines_1m="not_published"), max_ffill_minutes=60)
    assert data.status == "not_published"
    assert "mark_price_klines_1m is not_published" in (data.message or "")


def test_hard_streams_that_disagree_on_an_old_day_fail_loudly() -> None:
    with pytest.raises(HardStreamsDisagree, match="HARD streams disagree"):
        build_day(SD, inputs(index_price_klines_1m="not_listed"), max_ffill_minutes=60)


def test_a_live_grid_never_reaches_past_what_the_stream_steps_fetched() -> None:
    """In a multi-process run the minute view may read a later clock than the streams did:
    minutes after their 'through' were never asked for, so they are neither rows nor gaps."""
    from bml_assets.days.clock import ExchangeNow
    from bml_assets.days.minute_view import live_grid_end

    start = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    ten = pa.table(
        {"timestamp": pa.array([start + dt.timedelta(minutes=i) for i in range(10)], pa.timestamp("ms", tz="UTC"))}
    )
    through = {"status": "rest", "through": (start + dt.timedelta(minutes=10)).isoformat()}
    data = inputs()
    for name in ("klines_1m", "mark_price_klines_1m", "index_price_klines_1m"):
        data[name] = PartitionData(ten, {name: through})
    now = ExchangeNow(int((start + dt.timedelta(minutes=30)).timestamp() * 1000), lag_minutes=1)
    assert live_grid_end(SD, data, now) == start + dt.timedelta(minutes=10)


def test_the_fillable_streams_a_day_lacks_are_named_with_their_reasons() -> None:
    from bml_assets.days.minute_view import missing_streams

    data = inputs(trade_flow_1m="not_published")
    data["trade_flow_1m"] = PartitionData.unavailable(
        "not_published",
        "trade_flow_1m BTCUSDT 2024-03-01: REST failed",
        {"aggTrades": {"status": "missing", "incomplete": "Vision has no file (HTTP 404); REST failed: HTTP 500"}},
    )
    data["premium_index_klines_1m"] = PartitionData(
        pa.table({}), {"premiumIndexKlines": {"status": "vision", "incomplete": "1340 minutes: REST failed"}}
    )
    # Known missing with no source to fill it: not incomplete.
    data["book_ticker_1m"] = PartitionData.unavailable(
        "not_published", "bookTicker ends", {"bookTicker": {"status": "not_published", "reason": "ends 2024-03-30"}}
    )
    assert missing_streams(data) == [
        {"stream": "aggTrades", "reason": "Vision has no file (HTTP 404); REST failed: HTTP 500"},
        {"stream": "premiumIndexKlines", "reason": "1340 minutes: REST failed"},
    ]
    assert missing_streams(inputs()) == []
