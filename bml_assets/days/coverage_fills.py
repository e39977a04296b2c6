"""Completing a Vision file that lacks part of its day (SPEC §8).

What belongs here: a kline file short of minutes, and an aggTrades file short of the
trades the day's klines count: a file covering far less than it should is downloaded
once more (it may have been re-uploaded whole), then REST is asked for exactly what it
lacks; only what REST lacks too is confirmed missing, and the provenance says so under
``repaired`` (or ``redownloaded``). A REST failure fails a HARD stream's run and leaves
a BACKFILL stream incomplete (or missing, for trades: a short minute must not be
published as a quiet one). What stays out: the per-minute arithmetic
(``features/coverage.py``), the day builders and Dagster.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pyarrow as pa

from bml_assets.days import rest_days, vision_days
from bml_assets.days.context import FILL_ERRORS, DayContext, StreamFillFailed
from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.minutes import MINUTE_MS, MINUTES_PER_DAY, day_bounds_ms, ms_to_datetime
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import Repair, StreamProvenance, StreamStatus
from bml_assets.domain.schema import HARD_DATASETS, TRADE_FLOW, Dataset
from bml_assets.domain.streams import Stream
from bml_assets.features import coverage

# A Vision file holding less than this share of what the day should have (1440 minutes
# for a kline file; the trades the klines count, for aggTrades) is suspect: it is
# downloaded once more before REST is asked for what it lacks.
SUSPECT_COVERAGE = 0.9


def from_vision(data: PartitionData, stream: Stream) -> bool:
    return data.table is not None and data.provenance.is_vision(stream)


def _first_sha256(data: PartitionData, stream: Stream) -> str | None:
    return (data.provenance[stream].files or ())[0].sha256


def _redownload_note(before: PartitionData, again: PartitionData, stream: Stream) -> str:
    old = _first_sha256(before, stream)
    if again.table is None:
        return f"re-downloaded once: {again.message}; the first download (sha256 {old}) is used"
    new = _first_sha256(again, stream)
    if new == old:
        return f"re-downloaded once, same sha256 {old}"
    return f"re-downloaded once: the host now serves sha256 {new} (was {old})"


def _redownloaded(
    data: PartitionData, again: Callable[[], PartitionData], stream: Stream, notes: list[str]
) -> PartitionData:
    """The file downloaded once more (a short file may have been re-uploaded whole)."""
    fresh = again()
    notes.append(_redownload_note(data, fresh, stream))
    return fresh if fresh.table is not None else data


def kline_minutes_from_rest(
    ctx: DayContext, stream: Stream, dataset: Dataset, sd: SymbolDay, data: PartitionData
) -> PartitionData:
    """A Vision kline file short of minutes: a far-short one is downloaded once more, then
    REST is asked for exactly the minutes it lacks (Vision rows stay where present). What
    REST lacks too is a confirmed source gap; a REST failure fails a HARD stream's run and
    leaves a BACKFILL stream incomplete."""
    assert data.table is not None
    missing = coverage.missing_minutes(data.table, sd.day)
    if not len(missing):
        return data
    notes = [f"the Vision file holds {data.table.num_rows} of {MINUTES_PER_DAY} minutes"]
    if data.table.num_rows < SUSPECT_COVERAGE * MINUTES_PER_DAY:
        data = _redownloaded(
            data, lambda: vision_days.kline_day(ctx.vision, stream, dataset, sd, refetch=True), stream, notes
        )
        assert data.table is not None
        missing = coverage.missing_minutes(data.table, sd.day)
    entry = data.provenance[stream]
    if not len(missing):
        return _with_entry(data, stream, replace(entry, redownloaded="; ".join(notes)))
    before = ctx.rest_weight_spent()
    try:
        rows = rest_days.kline_minutes(ctx.rest, stream, dataset, sd, missing)
    except FILL_ERRORS as err:
        reason = "; ".join(notes) + f"; REST failed for the {len(missing)} missing minutes: {err}"
        if dataset in HARD_DATASETS:
            raise StreamFillFailed(f"{dataset.name} {sd}: {reason}. Nothing was published.") from err
        return _with_entry(data, stream, replace(entry, incomplete=reason))
    notes.append(
        f"{len(missing)} missing minutes asked from REST: {rows.num_rows} filled, "
        f"{len(missing) - rows.num_rows} absent there too"
    )
    repaired = Repair(
        source=StreamStatus.REST.value,
        base_url=ctx.rest.base_url,
        minutes=rows.num_rows,
        absent_from_rest=len(missing) - rows.num_rows,
        rest_weight=ctx.rest_weight_spent() - before,
        reason="; ".join(notes),
    )
    # A refused row is named in the Vision file where it is one, else by the provenance.
    return PartitionData(
        coverage.merge_minutes(data.table, rows),
        data.provenance | {stream: replace(entry, repaired=repaired)},
        locate=data.locate,
    )


def _with_entry(data: PartitionData, stream: Stream, entry: StreamProvenance) -> PartitionData:
    return replace(data, provenance=data.provenance | {stream: entry})


def trades_from_rest(ctx: DayContext, sd: SymbolDay, data: PartitionData, klines: pa.Table) -> PartitionData:
    """A Vision aggTrades file holding fewer trades than the day's klines count: a far-short
    one is downloaded once more, then REST's trades replace the minutes where REST has more
    (minutes short in every source stay as Vision has them, and are counted). When REST
    fails the stream is missing: a short minute must not be published as a quiet one."""
    stream = Stream.AGG_TRADES
    assert data.table is not None
    short = coverage.short_trade_minutes(data.table, klines)
    if not len(short):
        return data
    counted = coverage.trades_counted(klines)
    notes = [
        f"the Vision file holds {coverage.trades_held(data.table)} of the {counted} trades the day's klines count "
        f"({len(short)} minutes short)"
    ]
    if coverage.trades_held(data.table) < SUSPECT_COVERAGE * counted:
        data = _redownloaded(data, lambda: vision_days.trade_flow_day(ctx.vision, sd, refetch=True), stream, notes)
        assert data.table is not None
        short = coverage.short_trade_minutes(data.table, klines)
    entry = data.provenance[stream]
    if not len(short):
        return _with_entry(data, stream, replace(entry, redownloaded="; ".join(notes)))
    before = ctx.rest_weight_spent()
    try:
        other = rest_days.trade_flow_window(ctx.rest, sd, int(short[0]), int(short[-1]) + MINUTE_MS)
    except FILL_ERRORS as err:
        reason = "; ".join(notes) + f"; REST failed for those minutes: {err}"
        kept = ctx.committed(TRADE_FLOW, sd)
        if kept is not None and kept.table is not None and len(coverage.short_trade_minutes(kept.table, klines)):
            raise StreamFillFailed(
                f"{TRADE_FLOW.name} {sd}: {reason}; the committed table is short too and is kept as it is"
            ) from err
        if kept is not None:
            return kept  # an earlier build completed it: the lake keeps it
        message = f"{TRADE_FLOW.name} {sd}: {reason}"
        missing = replace(entry, status=StreamStatus.MISSING, incomplete=reason)
        return PartitionData.unavailable("not_published", message, {stream: missing})
    flow, replaced = coverage.take_fuller_minutes(data.table, other, short)
    still = coverage.short_trade_minutes(flow, klines)
    span = f"{ms_to_datetime(int(short[0])):%H:%M}-{ms_to_datetime(int(short[-1])):%H:%M}"
    notes.append(
        f"REST asked for the trades of {span} UTC: {replaced} minutes taken from REST, "
        f"{len(still)} short in every source"
    )
    repaired = Repair(
        source=StreamStatus.REST.value,
        base_url=ctx.rest.base_url,
        minutes=replaced,
        short_in_every_source=len(still),
        rest_weight=ctx.rest_weight_spent() - before,
        reason="; ".join(notes),
    )
    return PartitionData(flow, data.provenance | {stream: replace(entry, repaired=repaired)}, locate=data.locate)


def first_trade_ms(klines: PartitionData, sd: SymbolDay) -> int | None:
    """Where the day's first trade is, by its klines: the first minute counting one; the
    day's end when Vision's klines count none; None when the klines cannot tell."""
    if klines.table is None:
        return None
    first = coverage.first_traded_minute(klines.table)
    if first is None and from_vision(klines, Stream.KLINES):
        return day_bounds_ms(sd.day)[1]
    return first
