"""The per-stream tables of a (symbol, day): what each is, what it is built from, and its build.

What belongs here: ``STREAM_TABLES``, one ``StreamTable`` per stream table (its
dataset, its description, the tables it takes as inputs, and how one day of it is
built: the source choice of ``choice.py`` over the Vision and REST day builders, the
coverage fills of a Vision file), the hot snapshots, and ``build_stream_day``, which
marks a table built on the committed one as incremental. What stays out: Dagster
(``defs/assets/streams.py`` makes one asset per entry), the day builders
(``vision_days.py``, ``rest_days.py``) and formulas (``features/``).

Provenance of a stream (its ledger row, then the minute view's; typed in
``domain/provenance.py``): ``status`` is ``vision`` / ``rest`` / ``polled`` /
``not_published`` / ``not_listed``, or ``missing`` for a fillable stream that could
not be filled; a REST fill of a Vision hole names the Vision URL and HTTP status and
the REST weight it cost; a Vision table completed from REST says so under
``repaired``; ``incomplete`` (the reason) marks what the partition still lacks and
some source could fill.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from bml_assets.days import rest_days, vision_days
from bml_assets.days.choice import FUNDING_REST_DAYS, choose
from bml_assets.days.context import DayContext
from bml_assets.days.coverage_fills import first_trade_ms, from_vision, kline_minutes_from_rest, trades_from_rest
from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import StreamProvenance, StreamStatus
from bml_assets.domain.schema import (
    BOOK_TICKER,
    FUNDING,
    HOT_SNAPSHOTS,
    INDEX_PRICE_KLINES,
    KLINES,
    MARK_PRICE_KLINES,
    METRICS,
    PREMIUM_INDEX_KLINES,
    TRADE_FLOW,
    Dataset,
)
from bml_assets.domain.streams import Stream

# The partitions of a stream's inputs, by dataset name (e.g. the day's klines for aggTrades).
Upstream = Mapping[str, PartitionData]
Build = Callable[[DayContext, SymbolDay, Upstream], PartitionData]


@dataclass(frozen=True)
class StreamTable:
    dataset: Dataset
    build: Build
    description: str
    inputs: tuple[Dataset, ...] = ()


def _kline_stream(stream: Stream, dataset: Dataset) -> Build:
    def build(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
        data = choose(
            ctx,
            sd,
            dataset,
            lambda: vision_days.kline_day(ctx.vision, stream, dataset, sd),
            lambda now: rest_days.kline_day(ctx.rest, stream, dataset, sd, now, ctx.existing(dataset, sd)),
        )
        return kline_minutes_from_rest(ctx, stream, dataset, sd, data) if from_vision(data, stream) else data

    return build


def _trade_flow(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    """The day's klines come in: they say whether the symbol traded, where its first trade
    is (a REST fill starts there) and how many trades there were (a short file shows)."""
    klines = upstream[KLINES.name]
    if klines.status == "not_listed":
        prov = {Stream.AGG_TRADES: StreamProvenance(StreamStatus.NOT_LISTED, reason=f"klines: {klines.message}")}
        return PartitionData.unavailable("not_listed", klines.message or "not listed", prov)
    data = choose(
        ctx,
        sd,
        TRADE_FLOW,
        lambda: vision_days.trade_flow_day(ctx.vision, sd),
        lambda now: rest_days.trade_flow_day(ctx.rest, sd, now, ctx.existing(TRADE_FLOW, sd)),
        cold_rest=lambda now: rest_days.trade_flow_day(
            ctx.rest, sd, now, ctx.existing(TRADE_FLOW, sd), first_trade_ms=first_trade_ms(klines, sd)
        ),
    )
    if from_vision(data, Stream.AGG_TRADES) and klines.table is not None:
        return trades_from_rest(ctx, sd, data, klines.table)
    return data


def _book_ticker(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    # REST has no bookTicker history: live days take their book from the hot snapshots.
    return choose(ctx, sd, BOOK_TICKER, lambda: vision_days.book_ticker_day(ctx.vision, sd), None)


def _metrics(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    return choose(
        ctx,
        sd,
        METRICS,
        lambda: vision_days.metrics_day(ctx.vision, sd),
        lambda now: rest_days.metrics_day(ctx.rest, sd, now, max_ffill_minutes=ctx.max_ffill_minutes),
    )


def _funding(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    return choose(
        ctx,
        sd,
        FUNDING,
        lambda: vision_days.funding_day(ctx.vision, sd),
        lambda now: rest_days.funding_day(ctx.rest, sd, now),
        rest_window_days=FUNDING_REST_DAYS,
    )


def _hot_snapshots(ctx: DayContext, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    return rest_days.hot_snapshot_day(ctx.rest, sd, ctx.now(), ctx.existing(HOT_SNAPSHOTS, sd))


STREAM_TABLES: tuple[StreamTable, ...] = (
    StreamTable(KLINES, _kline_stream(Stream.KLINES, KLINES), "1-minute trade klines"),
    StreamTable(
        MARK_PRICE_KLINES, _kline_stream(Stream.MARK_PRICE_KLINES, MARK_PRICE_KLINES), "1-minute mark price klines"
    ),
    StreamTable(
        INDEX_PRICE_KLINES, _kline_stream(Stream.INDEX_PRICE_KLINES, INDEX_PRICE_KLINES), "1-minute index price klines"
    ),
    StreamTable(
        PREMIUM_INDEX_KLINES,
        _kline_stream(Stream.PREMIUM_INDEX_KLINES, PREMIUM_INDEX_KLINES),
        "1-minute premium index klines",
    ),
    StreamTable(
        TRADE_FLOW,
        _trade_flow,
        "per-minute trade flow computed from the day's aggTrades, checked against the day's klines",
        inputs=(KLINES,),
    ),
    StreamTable(
        BOOK_TICKER, _book_ticker, "per-minute top-of-book features from bookTicker (Vision has it until 2024-03-30)"
    ),
    StreamTable(METRICS, _metrics, "5-minute open interest and long/short ratios, stamped with the snapshot time"),
    StreamTable(FUNDING, _funding, "funding settlements covering the day, including the last one before it"),
    StreamTable(
        HOT_SNAPSHOTS,
        _hot_snapshots,
        "premiumIndex / openInterest / bookTicker polled from REST while the day is live (one row per poll)",
    ),
)


def build_stream_day(ctx: DayContext, table: StreamTable, sd: SymbolDay, upstream: Upstream) -> PartitionData:
    """One day of ``table``; one built on the committed table names it as its base."""
    return ctx.based(table.dataset, sd, table.build(ctx, sd, upstream))
