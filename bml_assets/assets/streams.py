"""Source-level assets: one per stream, per symbol × UTC day, from Vision or REST.

What belongs here: the Dagster assets of the per-stream tables and, for each
partition of a run, the choice of source (SPEC §1 bands): verified Vision when it
has published the day; REST for today and for the recent days Vision has not
published yet; otherwise "not listed" / "not published" with the reason. Also
the hot snapshots asset (premiumIndex / openInterest / bookTicker polled while a
day is live). What stays out: the Vision and REST day builders themselves
(``vision_days.py``, ``rest_days.py``), HTTP and formulas.

"Today" is the exchange's today (REST server time), never this machine's clock,
so a replayed market with its own clock is served exactly like the real one.
"""

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import pyarrow as pa
from dagster import AssetExecutionContext, AssetsDefinition, BackfillPolicy, PartitionsDefinition, asset

from bml_assets.assets import rest_days, vision_days
from bml_assets.assets.rest_days import ExchangeNow
from bml_assets.assets.vision_days import StreamFetcher
from bml_assets.lake.commit import PartitionNotFound, PartitionUnreadable, SchemaMismatch, read_partition
from bml_assets.lake.io_manager import DATASET_METADATA_KEY
from bml_assets.lake.ledger import SymbolRecord
from bml_assets.lake.partition_data import PartitionData
from bml_assets.partitions import SymbolDay, parse_partition_key
from bml_assets.resources import BmlResource
from bml_assets.schema import (
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
from bml_assets.sources.rest import REST_POOL, RestClient
from bml_assets.sources.vision import Stream

# Vision publishes a day one to several days late (SPEC §4): inside this many days
# REST stands in (provisionally); older, a HARD stream's 404 means "not listed".
PUBLICATION_LAG_DAYS = 7
# fundingRate is published monthly, after the month: REST stands in for up to two months.
FUNDING_REST_DAYS = 62
IO_MANAGER_KEY = "lake_io_manager"
GROUP = "sources"
# Days of one symbol per run in a backfill: big enough to amortise process start-up,
# small enough that a failure costs little.
MAX_PARTITIONS_PER_RUN = 30
# Run tags set by the sensors: the band of a hot-poll run ("hot" skips Vision, which
# never has today; "catch-up" is a day after the watermark) and a Vision promotion.
BAND_TAG = "bml/band"
HOT_BAND = "hot"
PROMOTION_TAG = "bml/promotion"
# Set by the hot poller, which launches a run a few seconds early to hide process
# start-up: the run waits until the exchange's clock reaches it (epoch ms).
NOT_BEFORE_TAG = "bml/not_before_ms"
MAX_NOT_BEFORE_WAIT_S = 30.0
# One clock reading per run, shared by its steps in this process: every stream of a
# run is cut at the same minute.
_RUN_CLOCKS: dict[str, ExchangeNow] = {}
HARD_STREAMS = (KLINES.name, MARK_PRICE_KLINES.name, INDEX_PRICE_KLINES.name)


def run_partitions(context: AssetExecutionContext) -> list[SymbolDay]:
    """The partitions this run covers: one key, or a range in a single-run backfill."""
    return sorted(parse_partition_key(k) for k in context.partition_keys)


class DayContext:
    """What a stream asset needs for one run: both sources, a clock, the lake.

    Runs requested by the sensors (tagged with ``bml/band`` or ``bml/promotion``)
    follow the exchange's clock (REST server time), so a replayed market with a
    clock of its own is served like the real one. Runs started by hand or by a
    backfill use this machine's UTC clock and never call REST for a day Vision
    is expected to have.
    """

    def __init__(self, bml: BmlResource, *, run_id: str, tags: Mapping[str, str]) -> None:
        self.bml = bml
        self.run_id = run_id
        self.hot = tags.get(BAND_TAG) == HOT_BAND
        self.exchange_clock = BAND_TAG in tags or PROMOTION_TAG in tags
        self.not_before_ms = int(tags[NOT_BEFORE_TAG]) if NOT_BEFORE_TAG in tags else None
        self.vision = StreamFetcher(bml)
        self._universe: dict[str, SymbolRecord] | None = None
        self.bases: dict[tuple[str, SymbolDay], str | None] = {}

    @property
    def rest(self) -> RestClient:
        return self.bml.rest()

    @property
    def max_ffill_minutes(self) -> int:
        return self.bml.settings().max_ffill_minutes

    def now(self) -> ExchangeNow:
        """The clock of this run (see the class docstring), read once per run."""
        cached = _RUN_CLOCKS.get(self.run_id)
        if cached is not None:
            return cached
        if self.exchange_clock:
            now_ms = self._exchange_time_not_before()
        else:
            now_ms = int(dt.datetime.now(dt.UTC).timestamp() * 1000)
        if len(_RUN_CLOCKS) > 64:  # a long in-process backfill: forget finished runs
            _RUN_CLOCKS.clear()
        now = _RUN_CLOCKS[self.run_id] = ExchangeNow(now_ms, self.bml.settings().safety_lag_minutes)
        return now

    def _exchange_time_not_before(self) -> int:
        now_ms = self.rest.server_time_ms()
        if self.not_before_ms is None:
            return now_ms
        deadline = time.monotonic() + MAX_NOT_BEFORE_WAIT_S
        while now_ms < self.not_before_ms and time.monotonic() < deadline:
            time.sleep(min((self.not_before_ms - now_ms) / 1000, 1.0))
            now_ms = self.rest.server_time_ms()
        return now_ms

    def listing(self, symbol: str) -> SymbolRecord | None:
        """The symbol's row of the synced universe, if ``bml symbols sync`` ran."""
        if self._universe is None:
            self._universe = self.bml.ledger().symbols()
        return self._universe.get(symbol)

    def existing(self, dataset: Dataset, sd: SymbolDay) -> pa.Table | None:
        """The committed table of the partition, the incremental cursor of the hot band.
        What it was (its content hash) is remembered: the commit must still find it.

        A file that is gone or damaged (the scan reports it) is no cursor: the day is
        fetched again from the start and replaces it. Except a past day's hot snapshots:
        polled live, they exist nowhere else, so that error stands (a human decides)."""
        record = self.bml.ledger().get_partition(dataset.name, sd.symbol, sd.day)
        self.bases[(dataset.name, sd)] = record.content_hash if record is not None else None
        if record is None or record.status != "committed":
            return None
        if any(isinstance(p, Mapping) and p.get("status") == "vision" for p in record.provenance.values()):
            return None  # a complete Vision table is replaced, never extended from REST
        try:
            return read_partition(self.bml.settings().lake_root, dataset, sd.symbol, sd.day)
        except (PartitionNotFound, PartitionUnreadable, SchemaMismatch):
            if dataset is HOT_SNAPSHOTS and sd.day != self.now().today:
                raise
            return None


def listing_verdict(ctx: DayContext, sd: SymbolDay) -> PartitionData | None:
    """ "Not listed" straight from the synced universe (``bml symbols sync``), with no request:
    before the symbol's onboard day, or after its last trading day."""
    record = ctx.listing(sd.symbol)
    if record is None:
        return None
    if record.onboard_date is not None and sd.day < record.onboard_date:
        reason = f"{sd.symbol} is not listed on {sd.day}: it started trading on {record.onboard_date} (exchangeInfo)"
    elif record.delist_date is not None and sd.day > record.delist_date:
        reason = f"{sd.symbol} is not listed on {sd.day}: it stopped trading after {record.delist_date} (exchangeInfo)"
    else:
        return None
    return PartitionData.unavailable("not_listed", reason, {"exchangeInfo": {"status": "not_listed", "reason": reason}})


def choose(
    ctx: DayContext,
    sd: SymbolDay,
    dataset: Dataset,
    vision: Callable[[], PartitionData],
    rest: Callable[[ExchangeNow], PartitionData] | None,
    *,
    rest_window_days: int = PUBLICATION_LAG_DAYS,
) -> PartitionData:
    """Vision when it has the day; REST for today and the recent unpublished days."""
    not_listed = listing_verdict(ctx, sd)
    if not_listed is not None:
        return not_listed
    if ctx.hot and rest is not None:
        return rest(ctx.now())
    data = vision()
    if data.available:
        return data
    now = ctx.now()
    if sd.day > now.today:
        message = f"{sd} is after today ({now.today}): nothing is published for it yet"
        return PartitionData.unavailable("not_published", message, data.provenance)
    age_days = (now.today - sd.day).days
    if age_days <= rest_window_days and rest is not None:
        return rest(now)
    recent = age_days <= PUBLICATION_LAG_DAYS
    if dataset.name in HARD_STREAMS and not recent:
        # Vision has holes in old history (a stream starting later than another): REST
        # repairs the day if the exchange has it; if REST has nothing either, the
        # symbol did not trade that day.
        if rest is not None:
            repaired = rest(now)
            if repaired.table is not None and repaired.table.num_rows:
                return repaired
        stream = next(iter(data.provenance))
        message = f"{sd.symbol} is not listed on {sd.day}: {data.message}"
        return PartitionData.unavailable(
            "not_listed", message, {stream: {**data.provenance[stream], "reason": "not listed"}}
        )
    return data


@dataclass(frozen=True)
class StreamAsset:
    dataset: Dataset
    build: Callable[[DayContext, SymbolDay], PartitionData]
    description: str


def _kline_stream(stream: Stream, dataset: Dataset) -> Callable[[DayContext, SymbolDay], PartitionData]:
    def build(ctx: DayContext, sd: SymbolDay) -> PartitionData:
        return choose(
            ctx,
            sd,
            dataset,
            lambda: vision_days.kline_day(ctx.vision, stream, dataset, sd),
            lambda now: rest_days.kline_day(ctx.rest, stream, dataset, sd, now, ctx.existing(dataset, sd)),
        )

    return build


def _trade_flow(ctx: DayContext, sd: SymbolDay) -> PartitionData:
    return choose(
        ctx,
        sd,
        TRADE_FLOW,
        lambda: vision_days.trade_flow_day(ctx.vision, sd),
        lambda now: rest_days.trade_flow_day(ctx.rest, sd, now, ctx.existing(TRADE_FLOW, sd)),
    )


def _book_ticker(ctx: DayContext, sd: SymbolDay) -> PartitionData:
    # REST has no bookTicker history: live days take their book from the hot snapshots.
    return choose(ctx, sd, BOOK_TICKER, lambda: vision_days.book_ticker_day(ctx.vision, sd), None)


def _metrics(ctx: DayContext, sd: SymbolDay) -> PartitionData:
    return choose(
        ctx,
        sd,
        METRICS,
        lambda: vision_days.metrics_day(ctx.vision, sd),
        lambda now: rest_days.metrics_day(ctx.rest, sd, now, max_ffill_minutes=ctx.max_ffill_minutes),
    )


def _funding(ctx: DayContext, sd: SymbolDay) -> PartitionData:
    return choose(
        ctx,
        sd,
        FUNDING,
        lambda: vision_days.funding_day(ctx.vision, sd),
        lambda now: rest_days.funding_day(ctx.rest, sd, now),
        rest_window_days=FUNDING_REST_DAYS,
    )


def _hot_snapshots(ctx: DayContext, sd: SymbolDay) -> PartitionData:
    return rest_days.hot_snapshot_day(ctx.rest, sd, ctx.now(), ctx.existing(HOT_SNAPSHOTS, sd))


STREAM_ASSETS: tuple[StreamAsset, ...] = (
    StreamAsset(KLINES, _kline_stream(Stream.KLINES, KLINES), "1-minute trade klines"),
    StreamAsset(
        MARK_PRICE_KLINES, _kline_stream(Stream.MARK_PRICE_KLINES, MARK_PRICE_KLINES), "1-minute mark price klines"
    ),
    StreamAsset(
        INDEX_PRICE_KLINES, _kline_stream(Stream.INDEX_PRICE_KLINES, INDEX_PRICE_KLINES), "1-minute index price klines"
    ),
    StreamAsset(
        PREMIUM_INDEX_KLINES,
        _kline_stream(Stream.PREMIUM_INDEX_KLINES, PREMIUM_INDEX_KLINES),
        "1-minute premium index klines",
    ),
    StreamAsset(TRADE_FLOW, _trade_flow, "per-minute trade flow computed from the day's aggTrades"),
    StreamAsset(
        BOOK_TICKER, _book_ticker, "per-minute top-of-book features from bookTicker (Vision has it until 2024-03-30)"
    ),
    StreamAsset(METRICS, _metrics, "5-minute open interest and long/short ratios, stamped with the snapshot time"),
    StreamAsset(FUNDING, _funding, "funding settlements covering the day, including the last one before it"),
    StreamAsset(
        HOT_SNAPSHOTS,
        _hot_snapshots,
        "premiumIndex / openInterest / bookTicker polled from REST while the day is live (one row per poll)",
    ),
)


def _based(ctx: DayContext, dataset: Dataset, sd: SymbolDay, data: PartitionData) -> PartitionData:
    """Mark a table built on the committed one as incremental, naming its base."""
    key = (dataset.name, sd)
    if key not in ctx.bases or data.table is None:
        return data
    return replace(data, incremental=True, base_content_hash=ctx.bases[key])


def build_stream_assets(partitions_def: PartitionsDefinition) -> list[AssetsDefinition]:
    return [_stream_asset(spec, partitions_def) for spec in STREAM_ASSETS]


def _stream_asset(spec: StreamAsset, partitions_def: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name=spec.dataset.name,
        description=spec.description,
        partitions_def=partitions_def,
        io_manager_key=IO_MANAGER_KEY,
        metadata={DATASET_METADATA_KEY: spec.dataset.name},
        group_name=GROUP,
        kinds={"parquet"},
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
        pool=REST_POOL,
    )
    def _asset(context: AssetExecutionContext, bml: BmlResource) -> dict[str, PartitionData]:
        ctx = DayContext(bml, run_id=context.run.run_id, tags=context.run.tags)
        return dict(_each(context, lambda sd: _based(ctx, spec.dataset, sd, spec.build(ctx, sd))))

    return _asset


def _each(
    context: AssetExecutionContext, build: Callable[[SymbolDay], PartitionData]
) -> Iterator[tuple[str, PartitionData]]:
    partitions = run_partitions(context)
    for i, sd in enumerate(partitions, start=1):
        data = build(sd)
        rows = data.table.num_rows if data.table is not None else 0
        source = ",".join(sorted({str(p.get("status")) for p in data.provenance.values() if isinstance(p, dict)}))
        context.log.info(
            f"[{i}/{len(partitions)}] {context.asset_key.to_user_string()} {sd}: {data.status} ({source}), {rows} rows"
        )
        yield sd.key, data
