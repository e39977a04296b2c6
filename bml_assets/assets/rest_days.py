"""REST-backed stream days: the warm band (days Vision has not published) and today.

What belongs here: building each per-stream table of a (symbol, day) from the REST
client in the same ``schema`` shapes the Vision path produces — for today only
what is new since the last commit, and only closed minutes (closed plus
``BML_SAFETY_LAG_MINUTES`` by the exchange's clock) — and the hot snapshots.
What stays out: HTTP and rate limits (``sources/rest.py``), formulas
(``features/``), and choosing between Vision and REST (``streams.py``).

The incremental cursors are the committed tables themselves: the last kline
minute, the last agg trade id, the last snapshot. A restart resumes from what the
lake holds, so nothing is lost or doubled.
"""

import datetime as dt
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.features.funding import funding_settlements, settlements_for_day
from bml_assets.features.hot_snapshots import append_snapshots, snapshot_row
from bml_assets.features.klines import kline_table
from bml_assets.features.timegrid import day_bounds_ms, ms_to_datetime
from bml_assets.features.trade_flow import trade_flow
from bml_assets.lake.partition_data import PartitionData
from bml_assets.partitions import SymbolDay
from bml_assets.schema import METRICS, TRADE_FLOW, Dataset
from bml_assets.sources.rest import OutsideHistoryWindow, RestClient
from bml_assets.sources.vision import Stream

MINUTE_MS = 60_000
# Settlements are 8 h apart at most: a day plus one interval before it finds the last one.
FUNDING_LOOKBACK_MS = 32 * 3_600_000


@dataclass(frozen=True)
class ExchangeNow:
    """The exchange's clock at the start of a run, and what it makes committable."""

    now_ms: int
    lag_minutes: int

    @property
    def today(self) -> dt.date:
        return ms_to_datetime(self.now_ms).date()

    @property
    def closed_end_ms(self) -> int:
        """Minutes starting before this instant are closed and past the safety lag:
        minute M qualifies when M + 60 s + lag ≤ now."""
        return (self.now_ms - self.lag_minutes * MINUTE_MS) // MINUTE_MS * MINUTE_MS

    def end_ms(self, day: dt.date) -> int:
        """The exclusive end of what can be committed for ``day`` now."""
        return min(day_bounds_ms(day)[1], self.closed_end_ms)

    def is_closed(self, day: dt.date) -> bool:
        return self.end_ms(day) == day_bounds_ms(day)[1]


def _rest(rest: RestClient, end_ms: int, rows: int, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "status": "rest",
        "base_url": rest.base_url,
        "through": ms_to_datetime(end_ms).isoformat(),
        "rows": rows,
    } | (extra or {})


def _last_ms(table: pa.Table | None, column: str) -> int | None:
    if table is None or table.num_rows == 0:
        return None
    return int(pc.max(pc.cast(table.column(column), pa.int64())).as_py())


def kline_day(
    rest: RestClient, stream: Stream, dataset: Dataset, sd: SymbolDay, now: ExchangeNow, existing: pa.Table | None
) -> PartitionData:
    """The day's klines of ``stream`` through the last committable minute; only new minutes are fetched."""
    start, _ = day_bounds_ms(sd.day)
    last = _last_ms(existing, "timestamp")
    begin = start if last is None else last + MINUTE_MS
    end = now.end_ms(sd.day)
    table = existing if existing is not None else dataset.arrow_schema.empty_table()
    if begin < end:
        raw = rest.klines(stream, sd.symbol, begin, end)
        new = kline_table(raw, sd.day, dataset, source=f"{rest.base_url} {stream} {sd}")
        table = pa.concat_tables([table, new]) if existing is not None else new
    return PartitionData(table, {stream.value: _rest(rest, end, table.num_rows)})


def trade_flow_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow, existing: pa.Table | None) -> PartitionData:
    """The day's trade flow; aggTrades are paged by id from the last committed one."""
    start, _ = day_bounds_ms(sd.day)
    end = now.end_ms(sd.day)
    last_id = _last_ms(existing, "last_agg_trade_id")
    last_minute = _last_ms(existing, "timestamp")
    begin = start if last_minute is None else last_minute + MINUTE_MS
    table = existing
    if begin < end:
        trades = rest.agg_trades(
            sd.symbol, start_ms=begin, end_ms=end, from_id=None if last_id is None else last_id + 1
        )
        new = trade_flow(trades, sd.day, source=f"{rest.base_url} aggTrades {sd}")
        table = new if existing is None else pa.concat_tables([existing, new])
    if table is None:
        table = TRADE_FLOW.arrow_schema.empty_table()
    return PartitionData(table, {Stream.AGG_TRADES.value: _rest(rest, end, table.num_rows)})


def metrics_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow, *, max_ffill_minutes: int) -> PartitionData:
    """5-minute history (the latest 30 days only), from the ffill bound before the day on."""
    start, _ = day_bounds_ms(sd.day)
    end = min(now.end_ms(sd.day), now.now_ms)
    try:
        table = rest.metrics_history(sd.symbol, start - max_ffill_minutes * MINUTE_MS, end)
    except OutsideHistoryWindow as err:
        message = f"REST keeps 5-minute metrics for 30 days only: {err}"
        return PartitionData.unavailable(
            "not_published", message, {Stream.METRICS.value: {"status": "not_published", "reason": message}}
        )
    # Only snapshots taken before what is committable: no look-ahead into later minutes.
    ms = pc.cast(table.column(METRICS.time_column), pa.int64())
    table = table.filter(pc.less(ms, end))
    return PartitionData(table, {Stream.METRICS.value: _rest(rest, end, table.num_rows)})


def funding_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow) -> PartitionData:
    start, day_end = day_bounds_ms(sd.day)
    end = min(day_end + FUNDING_LOOKBACK_MS // 4, now.now_ms)
    raw = rest.funding_history(sd.symbol, start - FUNDING_LOOKBACK_MS, end)
    table = settlements_for_day(funding_settlements(raw), sd.day)
    return PartitionData(table, {Stream.FUNDING_RATE.value: _rest(rest, end, table.num_rows)})


def hot_snapshot_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow, existing: pa.Table | None) -> PartitionData:
    """One poll of premiumIndex, openInterest and bookTicker, appended to the day's snapshots.

    Only today is polled: a snapshot describes the moment it was taken, so a past
    day never receives one (no look-ahead).
    """
    if sd.day != now.today:
        if existing is not None:
            return PartitionData(existing, {"snapshots": {"status": "rest", "rows": existing.num_rows}})
        message = f"no snapshots for {sd}: they are polled only while the day is live"
        return PartitionData.unavailable(
            "not_published", message, {"snapshots": {"status": "not_published", "reason": message}}
        )
    row = snapshot_row(rest.premium_index(sd.symbol), rest.open_interest(sd.symbol), rest.book_ticker(sd.symbol))
    start, end = day_bounds_ms(sd.day)
    observed = _last_ms(row, "observation_time")
    assert observed is not None
    if not start <= observed < end:
        # The exchange's clock has moved into the next day since the run started.
        table = existing if existing is not None else row.schema.empty_table()
    else:
        table = append_snapshots(existing, row)
    return PartitionData(table, {"snapshots": _rest(rest, now.now_ms, table.num_rows)})
