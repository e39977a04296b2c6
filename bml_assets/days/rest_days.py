"""REST-backed stream days: today, the warm band (days Vision has not published), the
cold days where Vision has a hole, and the minutes a short Vision file lacks.

What belongs here: building each per-stream table of a (symbol, day) from the REST
client in the same ``schema`` shapes the Vision path produces — for today only
what is new since the last commit, and only closed minutes (closed plus
``BML_SAFETY_LAG_MINUTES`` by the exchange's clock) — the rows of given minutes
(a Vision file's holes), and the hot snapshots. Raw aggTrades are checked against
their domains before aggregation hides them, and every table says which request
held a row a blocking check refuses.
What stays out: HTTP and rate limits (``sources/rest.py``), formulas
(``features/``), the clock (``clock.py``) and choosing between Vision and REST
(``choice.py``).

The incremental cursors are the committed tables themselves: the last kline
minute, the last agg trade id, the last snapshot. A restart resumes from what the
lake holds, so nothing is lost or doubled.
"""

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.days.clock import ExchangeNow
from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.minutes import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    datetime_to_ms,
    day_bounds_ms,
    floor_minute_ms,
    ms_to_datetime,
)
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import StreamProvenance, StreamStatus
from bml_assets.domain.schema import AGG_TRADE_ROWS, METRICS, TRADE_FLOW, Dataset
from bml_assets.domain.streams import Stream
from bml_assets.features.coverage import merge_minutes
from bml_assets.features.funding import funding_settlements, settlements_for_day
from bml_assets.features.hot_snapshots import append_snapshots, snapshot_row
from bml_assets.features.klines import kline_table
from bml_assets.features.timegrid import floor_minute, to_ms
from bml_assets.features.trade_flow import trade_flow
from bml_assets.quality import BadSourceRows, RowLocator, check_source_rows
from bml_assets.sources import rest_limits
from bml_assets.sources.rest import OutsideHistoryWindow, RestClient, request_urls_of
from bml_assets.sources.rest_limits import HIST_MAX_AGE_MS

# The provenance entry of the polled snapshots (not an exchange stream).
SNAPSHOTS = "snapshots"
# A minute missing while later ones exist is asked for again by every poll for this
# long after it closed (plus the safety lag), then recorded as a source gap.
GAP_CONFIRM_MINUTES = 3
# Settlements are 8 h apart at most: a day plus one interval before it finds the last one.
FUNDING_LOOKBACK_MS = 32 * HOUR_MS


def _rest(rest: RestClient, end_ms: int, rows: int, status: StreamStatus = StreamStatus.REST) -> StreamProvenance:
    return StreamProvenance(status, base_url=rest.base_url, through=ms_to_datetime(end_ms), rows=rows)


def _answer_of(raw: pa.Table, row: int) -> str:
    urls = request_urls_of(raw, row)
    return "answer of GET " + ", ".join(urls) if urls else "REST answer"


def request_rows(raw: pa.Table, time_column: str) -> RowLocator:
    """Where a minute's row came from: the request whose answer held it in ``raw`` (a
    table the REST client returned); None for a row committed by an earlier run."""
    minutes = floor_minute(to_ms(raw.column(time_column))) if raw.num_rows else np.zeros(0, dtype=np.int64)

    def locate(minute: dt.datetime, _column: str) -> str | None:
        hits = np.flatnonzero(minutes == floor_minute_ms(datetime_to_ms(minute)))
        return _answer_of(raw, int(hits[0])) if len(hits) else None

    return locate


def _last_ms(table: pa.Table | None, column: str) -> int | None:
    if table is None or table.num_rows == 0:
        return None
    return int(pc.max(pc.cast(table.column(column), pa.int64())).as_py())


def kline_day(
    rest: RestClient, stream: Stream, dataset: Dataset, sd: SymbolDay, now: ExchangeNow, existing: pa.Table | None
) -> PartitionData:
    """The day's klines of ``stream`` through the last committable minute: new minutes, and
    again any recent hole (a minute the exchange has not given yet) until it is confirmed."""
    start, _ = day_bounds_ms(sd.day)
    last = _last_ms(existing, "timestamp")
    begin = start if last is None else last + MINUTE_MS
    holes = _unconfirmed_holes(existing, start, now)
    if len(holes):
        begin = min(begin, int(holes[0]))
    end = now.end_ms(sd.day)
    table = existing if existing is not None else dataset.arrow_schema.empty_table()
    locate = None
    if begin < end:
        raw = rest.klines(stream, sd.symbol, begin, end)
        new = kline_table(raw, sd.day, dataset, source=f"{rest.base_url} {stream} {sd}")
        table = merge_minutes(table, new)
        locate = request_rows(raw, "open_time")
    return PartitionData(table, {stream.value: _rest(rest, end, table.num_rows)}, locate=locate)


def kline_minutes(rest: RestClient, stream: Stream, dataset: Dataset, sd: SymbolDay, minutes: np.ndarray) -> pa.Table:
    """The REST klines of ``stream`` at ``minutes`` (epoch ms, ascending, of a closed day):
    one span from the first to the last, so scattered holes cost a few requests, not one each."""
    raw = rest.klines(stream, sd.symbol, int(minutes[0]), int(minutes[-1]) + MINUTE_MS)
    table = kline_table(raw, sd.day, dataset, source=f"{rest.base_url} {stream} {sd}")
    return table.filter(pa.array(np.isin(to_ms(table.column("timestamp")), minutes)))


def _unconfirmed_holes(existing: pa.Table | None, start: int, now: ExchangeNow) -> np.ndarray:
    """Minutes before the last committed one that are missing and still within the
    confirmation window: every poll asks for them again."""
    if existing is None or existing.num_rows == 0:
        return np.array([], dtype=np.int64)
    have = pc.cast(existing.column("timestamp"), pa.int64()).to_numpy()
    grid = np.arange(start, int(have.max()), MINUTE_MS, dtype=np.int64)
    holes = grid[~np.isin(grid, have)]
    return holes[holes + (1 + now.lag_minutes + GAP_CONFIRM_MINUTES) * MINUTE_MS > now.now_ms]


def trade_flow_day(
    rest: RestClient,
    sd: SymbolDay,
    now: ExchangeNow,
    existing: pa.Table | None,
    *,
    first_trade_ms: int | None = None,
) -> PartitionData:
    """The day's trade flow; aggTrades are paged by id from the last committed one.

    ``first_trade_ms``: the first minute the day's klines count a trade in (the day's
    end when they count none): the first id is looked up there, not hour by hour from
    midnight, which costs weight 20 per empty hour."""
    start, _ = day_bounds_ms(sd.day)
    end = now.end_ms(sd.day)
    last_id = _last_ms(existing, "last_agg_trade_id")
    last_minute = _last_ms(existing, "timestamp")
    begin = start if last_minute is None else last_minute + MINUTE_MS
    if existing is None and first_trade_ms is not None:
        begin = max(begin, first_trade_ms)
    table = existing
    locate = None
    if begin < end:
        trades = rest.agg_trades(
            sd.symbol, start_ms=begin, end_ms=end, from_id=None if last_id is None else last_id + 1
        )
        new = _checked_trade_flow(rest, sd, trades)
        table = new if existing is None else pa.concat_tables([existing, new])
        locate = request_rows(trades, "transact_time")
    if table is None:
        table = TRADE_FLOW.arrow_schema.empty_table()
    return PartitionData(table, {Stream.AGG_TRADES.value: _rest(rest, end, table.num_rows)}, locate=locate)


def trade_flow_window(rest: RestClient, sd: SymbolDay, start_ms: int, end_ms: int) -> pa.Table:
    """The trade flow of the minutes in ``[start_ms, end_ms)`` of a closed day, from every
    aggTrade REST has there (first id by time, then paged by id, ids checked contiguous)."""
    return _checked_trade_flow(rest, sd, rest.agg_trades(sd.symbol, start_ms=start_ms, end_ms=end_ms))


def _checked_trade_flow(rest: RestClient, sd: SymbolDay, trades: pa.Table) -> pa.Table:
    """The trade flow of REST aggTrades, after their raw rows passed their domains (a bad
    trade is named by the request that returned it: aggregation would hide it)."""
    try:
        check_source_rows(trades, AGG_TRADE_ROWS)
    except BadSourceRows as err:
        raise err.located(f"{TRADE_FLOW.name} {sd}", lambda i: _answer_of(trades, i)) from None
    return trade_flow(trades, sd.day, source=f"{rest.base_url} aggTrades {sd}")


def metrics_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow, *, max_ffill_minutes: int) -> PartitionData:
    """5-minute history (the latest 30 days only), from the ffill bound before the day on.

    A day plainly older than that (by a day's margin: ``now`` may be this machine's
    clock) is answered without a request; near the edge the client asks the exchange's."""
    start, _ = day_bounds_ms(sd.day)
    end = min(now.end_ms(sd.day), now.now_ms)
    first = start - max_ffill_minutes * MINUTE_MS
    try:
        if first < now.now_ms - HIST_MAX_AGE_MS - DAY_MS:
            raise OutsideHistoryWindow(sd.symbol, first, now.now_ms - HIST_MAX_AGE_MS)
        table = rest.metrics_history(sd.symbol, first, end)
    except OutsideHistoryWindow as err:
        message = f"REST keeps 5-minute metrics for 30 days only: {err}"
        return PartitionData.unavailable(
            "not_published",
            message,
            {Stream.METRICS.value: StreamProvenance(StreamStatus.NOT_PUBLISHED, reason=message)},
        )
    # Only snapshots taken before what is committable: no look-ahead into later minutes.
    locate = request_rows(table, METRICS.time_column)
    ms = pc.cast(table.column(METRICS.time_column), pa.int64())
    table = table.filter(pc.less(ms, end))
    return PartitionData(table, {Stream.METRICS.value: _rest(rest, end, table.num_rows)}, locate=locate)


def funding_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow) -> PartitionData:
    start, day_end = day_bounds_ms(sd.day)
    end = min(day_end + FUNDING_LOOKBACK_MS // 4, now.now_ms)
    raw = rest.funding_history(sd.symbol, start - FUNDING_LOOKBACK_MS, end)
    table = settlements_for_day(funding_settlements(raw), sd.day)
    return PartitionData(
        table, {Stream.FUNDING_RATE.value: _rest(rest, end, table.num_rows)}, locate=request_rows(raw, "calc_time")
    )


def hot_snapshot_day(rest: RestClient, sd: SymbolDay, now: ExchangeNow, existing: pa.Table | None) -> PartitionData:
    """One poll of premiumIndex, openInterest and bookTicker, appended to the day's snapshots.

    Only today is polled: a snapshot describes the moment it was taken, so a past
    day never receives one (no look-ahead).
    """
    if sd.day != now.today:
        if existing is not None:
            return PartitionData(existing, {SNAPSHOTS: StreamProvenance(StreamStatus.POLLED, rows=existing.num_rows)})
        message = f"no snapshots for {sd}: they are polled only while the day is live"
        return PartitionData.unavailable(
            "not_published", message, {SNAPSHOTS: StreamProvenance(StreamStatus.NOT_PUBLISHED, reason=message)}
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
    # The three requests of every poll; only this poll's row is new (earlier ones were
    # checked when committed).
    polled = ", ".join(
        f"{rest.base_url}{path}?symbol={sd.symbol}"
        for path in (rest_limits.PREMIUM_INDEX_PATH, rest_limits.OPEN_INTEREST_PATH, rest_limits.BOOK_TICKER_PATH)
    )
    # "polled", not "rest": snapshots are live observations, final as taken (Vision has
    # no such history to promote them to).
    return PartitionData(
        table,
        {SNAPSHOTS: _rest(rest, now.now_ms, table.num_rows, StreamStatus.POLLED)},
        locate=lambda minute, column: f"answers of GET {polled}",
    )
