"""Assembly of the canonical minute view of one (symbol, day) (SPEC §5).

What belongs here: which minutes become rows (present in every HARD stream) and
which are source gaps; the joins of the per-stream tables onto those minutes; the
formulas the view computes from klines (vwap, average trade size, net taker volume,
taker-buy ratio) and from the filled metrics (columns 48-50); the NULL/0 rules of
minutes a stream does not cover; the warnings of the forward-fill bound. Which
columns a stream table fills (copied, as-of filled, 0 in a quiet minute) is read from
the registry (``domain/schema.py``), never listed here. What stays out: the per-stream
aggregation (``klines``, ``trade_flow``, ``book``, ``metrics``, ``funding``), the as-of
mechanics (``slow_series``), I/O and Dagster.

Each step is a function ``frame -> frame`` on a pandas frame indexed by the minute
start in epoch ms (nullable ``Float64``/``Int64`` columns), chained with ``.pipe``.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms, day_bounds_ms, describe_ms, ms_to_datetime
from bml_assets.domain.streams import Stream
from bml_assets.features.funding import funding_rate_at, next_funding_time_at
from bml_assets.features.slow_series import asof_fill
from bml_assets.features.timegrid import minute_grid_ms, ms_to_timestamps, to_ms

_PANDAS_TYPES = {pa.float64(): pd.Float64Dtype(), pa.int64(): pd.Int64Dtype()}


@dataclass(frozen=True)
class SourceGap:
    """A minute of the day that is not a row: ``missing`` names the HARD streams
    (``schema`` dataset names) that lack it — all of them when no source has it."""

    minute: dt.datetime
    missing: tuple[str, ...]


@dataclass(frozen=True)
class MinuteView:
    """The day's minute view: ``table`` in ``schema.MINUTE_SCHEMA``, sorted and unique on
    ``timestamp``; the minutes left out and why; the forward-fill warnings."""

    table: pa.Table
    source_gaps: list[SourceGap]
    warnings: list[str]


def build_minute_view(
    day: dt.date,
    *,
    klines: pa.Table | None,
    mark: pa.Table | None,
    index: pa.Table | None,
    premium: pa.Table | None,
    trade_flow: pa.Table | None,
    book: pa.Table | None,
    metrics: pa.Table | None,
    funding: pa.Table | None,
    max_ffill_minutes: int,
    grid_end: dt.datetime | None = None,
    predicted_funding: pa.Table | None = None,
    live: pa.Table | None = None,
) -> MinuteView:
    """Build the minute view of ``day`` from per-stream tables in their ``schema`` shapes.

    ``None`` means the stream is not available for the day: allowed for every stream but
    the HARD ones (``schema.HARD_DATASETS``). ``book`` and ``metrics`` may also hold rows from before the day
    (they seed its first minutes); ``funding`` should hold ``settlements_for_day``.
    ``grid_end`` (exclusive, minute-aligned) limits the grid for a day still in progress;
    it defaults to the end of the day. ``predicted_funding`` (``timestamp``,
    ``predicted_funding``: the hot poller's last polled rate per minute) fills column 57
    for the minutes that have a poll. ``live`` (the live collector's ``live_1m`` table)
    fills the LIVE and book columns (``schema.LIVE_VIEW_COLUMNS``) where it has a value,
    over the hot poller's; the LIVE columns no source fills stay NULL.
    """
    given = {schema.KLINES.name: klines, schema.MARK_PRICE_KLINES.name: mark, schema.INDEX_PRICE_KLINES.name: index}
    hard: dict[str, pa.Table] = {}
    for dataset in schema.HARD_DATASETS:
        table = given.get(dataset.name)
        if table is None:
            raise ValueError(f"build_minute_view: {dataset.name} is required (HARD stream), got None")
        hard[dataset.name] = table
    grid = _minute_grid(day, grid_end)
    rows, source_gaps = committed_minutes(grid, hard, day)
    warnings: list[str] = []
    frame = (
        pd.DataFrame(index=pd.Index(rows, name="minute_ms"))
        .pipe(_with_klines, klines)
        .pipe(_with_price_klines, mark=mark, index=index, premium=premium)
        .pipe(_with_trade_flow, trade_flow)
        .pipe(_with_book, book, max_ffill_minutes=max_ffill_minutes, warnings=warnings)
        .pipe(_with_metrics, metrics, max_ffill_minutes=max_ffill_minutes, warnings=warnings)
        .pipe(_with_funding, funding)
        .pipe(_with_predicted_funding, predicted_funding)
        .pipe(_with_live, live)
    )
    return MinuteView(table=_to_minute_table(frame), source_gaps=source_gaps, warnings=warnings)


def committed_minutes(grid: np.ndarray, hard: dict[str, pa.Table], day: dt.date) -> tuple[np.ndarray, list[SourceGap]]:
    """The minutes of ``grid`` present in every HARD table, and a ``SourceGap`` for each
    other minute of ``grid``. A HARD table's minute outside ``day`` is a ``ValueError``."""
    start, end = day_bounds_ms(day)
    present: dict[str, np.ndarray] = {}
    for name, table in hard.items():
        minutes = to_ms(table.column("timestamp"))
        outside = (minutes < start) | (minutes >= end)
        if outside.any():
            raise ValueError(f"{name}: minute {describe_ms(int(minutes[outside][0]))} is not in {day.isoformat()}")
        present[name] = np.isin(grid, minutes)
    everywhere = np.logical_and.reduce(list(present.values()))
    gaps = [
        SourceGap(
            minute=ms_to_datetime(int(grid[i])),
            missing=tuple(name for name, flags in present.items() if not flags[i]),
        )
        for i in np.flatnonzero(~everywhere).tolist()
    ]
    return grid[everywhere], gaps


def _minute_grid(day: dt.date, grid_end: dt.datetime | None) -> np.ndarray:
    start, end = day_bounds_ms(day)
    if grid_end is not None:
        if grid_end.tzinfo is None:
            raise ValueError(f"grid_end must be timezone-aware, got {grid_end!r}")
        requested = datetime_to_ms(grid_end)
        if requested % MINUTE_MS or not start <= requested <= end:
            raise ValueError(f"grid_end {grid_end.isoformat()} is not a whole minute within {day.isoformat()}")
        end = requested
    return minute_grid_ms(start, end)


# --- joins -------------------------------------------------------------------------------


def _by_minute(table: pa.Table, dataset: schema.Dataset, names: list[str] | None = None) -> pd.DataFrame:
    """``table`` (in ``dataset``'s shape; only ``names`` of its columns when given) as a
    pandas frame indexed by its time in ms."""
    columns = dataset.column_names if names is None else [dataset.time_column, *names]
    frame = table.select(columns).to_pandas(types_mapper=_PANDAS_TYPES.get)
    frame.index = pd.Index(to_ms(table.column(dataset.time_column)), name="minute_ms")
    if frame.index.has_duplicates:
        repeated = frame.index[frame.index.duplicated()][0]
        raise ValueError(f"{dataset.name}: {describe_ms(int(repeated))} appears more than once")
    return frame.drop(columns=dataset.time_column)


def _nulls(frame: pd.DataFrame, names: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """``frame`` with ``names`` added as all-NULL columns of their minute-view types."""
    types = {c.name: c.type for c in schema.MINUTE_VIEW.columns}
    return frame.assign(
        **{name: pd.Series(pd.NA, index=frame.index, dtype=_PANDAS_TYPES[types[name]]) for name in names}
    )


def _with_klines(frame: pd.DataFrame, klines: pa.Table) -> pd.DataFrame:
    """HARD columns 9-12 and 15-17, and the klines-derived columns 13, 18, 20-22, 25."""
    k = _by_minute(klines, schema.KLINES).reindex(frame.index)
    volume, count, taker_buy = k["volume"], k["count"], k["taker_buy_volume"]
    return frame.assign(
        open=k["open"],
        high=k["high"],
        low=k["low"],
        close=k["close"],
        vwap_1m=(k["quote_volume"] / volume).where(volume != 0, k["close"]),
        volume_btc=volume,
        volume_usdt=k["quote_volume"],
        trade_count=count,
        avg_trade_size_btc=(volume / count).where(count != 0, 0.0),
        taker_buy_vol_btc=taker_buy,
        taker_buy_vol_usdt=k["taker_buy_quote_volume"],
        net_taker_vol_btc=taker_buy - (volume - taker_buy),
        taker_buy_ratio=(taker_buy / volume).where(volume != 0),
    )


def _with_price_klines(
    frame: pd.DataFrame, *, mark: pa.Table, index: pa.Table, premium: pa.Table | None
) -> pd.DataFrame:
    """HARD columns 51-54 and the premium index (55, NULL without its source)."""
    m = _by_minute(mark, schema.MARK_PRICE_KLINES).reindex(frame.index)
    i = _by_minute(index, schema.INDEX_PRICE_KLINES).reindex(frame.index)
    frame = frame.assign(
        mark_price_open=m["open"],
        mark_price_close=m["close"],
        index_price_open=i["open"],
        index_price_close=i["close"],
    )
    if premium is None:
        return _nulls(frame, ["premium_index"])
    return frame.assign(premium_index=_by_minute(premium, schema.PREMIUM_INDEX_KLINES)["close"].reindex(frame.index))


def _with_trade_flow(frame: pd.DataFrame, trade_flow: pa.Table | None) -> pd.DataFrame:
    """The columns copied from the minute's trades (``schema.TRADE_FLOW_COLUMNS``): 0 in a
    minute without trades where the column says so (``transact_time`` is NULL there), all
    NULL without an aggTrades file."""
    names = schema.TRADE_FLOW_COLUMNS
    if trade_flow is None:
        return _nulls(frame, names)
    flow = _by_minute(trade_flow, schema.TRADE_FLOW).reindex(frame.index)
    quiet_zero = {name for name in names if schema.MINUTE_VIEW.column(name).zero_when_quiet}
    return frame.assign(**{name: flow[name].fillna(0) if name in quiet_zero else flow[name] for name in names})


def _with_book(
    frame: pd.DataFrame, book: pa.Table | None, *, max_ffill_minutes: int, warnings: list[str]
) -> pd.DataFrame:
    """The bookTicker columns: the minute's own snapshots where it has some; else the slow
    ones (``schema.BOOK_COLUMNS``) as-of filled from the last snapshot of an earlier minute,
    the others NULL; all NULL without bookTicker."""
    names = schema.STREAM_COLUMNS[Stream.BOOK_TICKER]
    slow = schema.BOOK_COLUMNS
    if book is None:
        return _nulls(frame, names)
    minutes = _by_minute(book, schema.BOOK_TICKER)
    own = minutes.reindex(frame.index)
    has_snapshot = frame.index.isin(minutes.index)
    without = frame.index[~has_snapshot].to_numpy()
    fill = asof_fill(
        without,
        book.column("timestamp"),
        {name: book.column(last) for name, last in slow.items()},
        max_ffill_minutes=max_ffill_minutes,
    )
    warnings.extend(fill.warnings())
    filled = {name: _series(fill.columns[name], pd.Index(without)).reindex(frame.index) for name in slow}
    return frame.assign(
        **{name: own[name].where(has_snapshot, filled[name]) if name in slow else own[name] for name in names}
    )


def _with_metrics(
    frame: pd.DataFrame, metrics: pa.Table | None, *, max_ffill_minutes: int, warnings: list[str]
) -> pd.DataFrame:
    """The slow metrics columns (``schema.METRICS_COLUMNS``, 44-47) as-of filled from the
    observations; 48-50 derived from them."""
    if metrics is None:
        metrics = schema.METRICS.arrow_schema.empty_table()
    fill = asof_fill(
        frame.index.to_numpy(),
        metrics.column(schema.METRICS.time_column),
        {name: metrics.column(observed) for name, observed in schema.METRICS_COLUMNS.items()},
        max_ffill_minutes=max_ffill_minutes,
    )
    warnings.extend(fill.warnings())
    filled = {name: _series(fill.columns[name], frame.index) for name in schema.METRICS_COLUMNS}
    top = filled["top_trader_ls_ratio_acct"]
    return frame.assign(
        **filled,
        ls_ratio_divergence=top - filled["global_ls_ratio_acct"],
        top_trader_long_pct=top / (1 + top),
        top_trader_short_pct=1 / (1 + top),
    )


def _with_funding(frame: pd.DataFrame, funding: pa.Table | None) -> pd.DataFrame:
    """Columns 56 and 58, step functions of the settlements (not bounded by the ffill limit)."""
    if funding is None:
        return _nulls(frame, ["funding_rate", "next_funding_time"])
    minutes = frame.index.to_numpy()
    return frame.assign(
        funding_rate=_series(funding_rate_at(minutes, funding), frame.index),
        next_funding_time=_series(next_funding_time_at(minutes, funding), frame.index),
    )


def _with_predicted_funding(frame: pd.DataFrame, predicted: pa.Table | None) -> pd.DataFrame:
    """Column 57 where a poll landed in the minute (never filled forward: a LIVE column)."""
    if predicted is None or predicted.num_rows == 0:
        return frame
    ms = predicted.column("timestamp").cast(pa.int64()).to_numpy()
    values = pd.Series(predicted.column("predicted_funding").to_numpy(zero_copy_only=False), index=ms)
    return frame.assign(predicted_funding=values.reindex(frame.index).astype("Float64"))


def _with_live(frame: pd.DataFrame, live: pa.Table | None) -> pd.DataFrame:
    """The live collector's columns where its minute has a value: it wins over the hot
    poller's snapshot (SPEC §9). Where it has none (a family did not cover the minute, or no
    collector ran), the view keeps what it had: the snapshot's value, or NULL. Never filled
    forward: ``live_1m`` already carries a covered minute's book values as §5 says."""
    if live is None or live.num_rows == 0:
        return frame
    names = list(schema.LIVE_VIEW_COLUMNS)
    own = _by_minute(live, schema.LIVE_1M, names).reindex(frame.index)
    taken = {}
    for name in schema.LIVE_VIEW_COLUMNS:
        value = own[name]
        before = frame[name] if name in frame else pd.Series(pd.NA, index=frame.index, dtype=value.dtype)
        taken[name] = value.where(value.notna(), before)
    return frame.assign(**taken)


# --- output ------------------------------------------------------------------------------


def _series(values: pa.Array, index: pd.Index) -> pd.Series:
    series = values.to_pandas(types_mapper=_PANDAS_TYPES.get)
    series.index = index
    return series


def _to_minute_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as ``schema.MINUTE_SCHEMA``: LIVE columns NULL, every other column
    required from the frame (a missing one is a bug here, not a NULL)."""
    n = len(frame)
    arrays = []
    for column in schema.MINUTE_COLUMNS:
        if column.name == "timestamp":
            arrays.append(ms_to_timestamps(frame.index.to_numpy()))
        elif column.name in frame:
            arrays.append(pa.array(frame[column.name], type=column.type))
        elif column.klass is schema.ColumnClass.LIVE:
            arrays.append(pa.nulls(n, column.type))
        else:
            raise ValueError(
                f"minute view: {column.name} is a {column.klass} column of the registry, "
                "but nothing here computes it (add its formula or its source to features/minute_view.py)"
            )
    return pa.Table.from_arrays(arrays, schema=schema.MINUTE_SCHEMA)
