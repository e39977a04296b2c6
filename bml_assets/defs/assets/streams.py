"""Source-level assets: one per stream, per symbol × UTC day, from Vision or REST.

What belongs here: the Dagster assets of the per-stream tables and, for each
partition of a run, the choice of source (SPEC §1 bands, §8 completeness): verified
Vision when it has published the day; REST for today and for the recent days Vision
has not published yet; REST for an older day Vision has no file for (Vision has
holes) when REST serves the stream; otherwise "not listed" / "not published" with
the reason. A Vision file that lacks part of its day (a kline file short of minutes,
aggTrades short of the trades the klines count) is downloaded once more when it
covers far less than it should, then REST is asked for exactly what it lacks; only
what REST lacks too is confirmed missing. A fillable BACKFILL stream that REST
cannot serve now (an error after the client's retries, a ban, an id gap) is
recorded as missing with the reason (the minute view is then incomplete), never a
failed run; a HARD stream that cannot be filled fails the run. Also the hot
snapshots asset (premiumIndex / openInterest / bookTicker polled while a day is
live). What stays out: the Vision and REST day builders themselves
(``vision_days.py``, ``rest_days.py``), HTTP and formulas (``features/``).

Provenance of a stream (its ledger row, then the minute view's; typed in
``domain/provenance.py``): ``status`` is ``vision`` / ``rest`` / ``polled`` /
``not_published`` / ``not_listed``, or ``missing`` for a fillable stream that could
not be filled; a REST fill of a Vision hole names the Vision URL and HTTP status and
the REST weight it cost; a Vision table completed from REST says so under
``repaired``; ``incomplete`` (the reason) marks what the partition still lacks and
some source could fill.

"Today" is the exchange's today (REST server time), never this machine's clock,
so a replayed market with its own clock is served exactly like the real one.
"""

import datetime as dt
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    PartitionsDefinition,
    asset,
)

from bml_assets.defs.assets import rest_days, vision_days
from bml_assets.defs.assets.rest_days import ExchangeNow
from bml_assets.defs.assets.vision_days import StreamFetcher
from bml_assets.defs.io_manager import DATASET_METADATA_KEY
from bml_assets.defs.resources import BmlResource
from bml_assets.domain.minutes import MINUTE_MS, MINUTES_PER_DAY, datetime_to_ms, day_bounds_ms, ms_to_datetime
from bml_assets.domain.partitions import SymbolDay, parse_partition_key
from bml_assets.domain.provenance import Provenance, Repair, StreamProvenance, StreamStatus
from bml_assets.domain.schema import (
    BOOK_TICKER,
    FUNDING,
    HARD_DATASETS,
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
from bml_assets.features import coverage
from bml_assets.lake.lake import PartitionNotFound, PartitionUnreadable, SchemaMismatch
from bml_assets.lake.ledger import SymbolRecord
from bml_assets.lake.partition_data import PartitionData
from bml_assets.sources.rest import REST_POOL, HttpError, RestBanned, RestClient, RestError
from bml_assets.sources.rest_limits import INVALID_SYMBOL_CODE

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
# The provenance entry of a listing verdict from the synced universe (not a stream).
EXCHANGE_INFO = "exchangeInfo"
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
# A Vision file holding less than this share of what the day should have (1440 minutes
# for a kline file; the trades the klines count, for aggTrades) is suspect: it is
# downloaded once more before REST is asked for what it lacks.
SUSPECT_COVERAGE = 0.9
# What a REST fill can still fail with after the client's own retries: a fillable
# BACKFILL stream is then missing (the partition incomplete), not the run failed.
FILL_ERRORS = (HttpError, RestError, RestBanned)


class StreamFillFailed(RuntimeError):
    """A HARD stream that neither Vision nor REST could give: the run stops, nothing is published."""


def run_partitions(context: AssetExecutionContext) -> list[SymbolDay]:
    """The partitions this run covers: one key, or a range in a single-run backfill."""
    return sorted(parse_partition_key(k) for k in context.partition_keys)


class DayContext:
    """What a stream asset needs for one run: both sources, a clock, the lake.

    Runs requested by the sensors (tagged with ``bml/band`` or ``bml/promotion``)
    follow the exchange's clock (REST server time), so a replayed market with a
    clock of its own is served like the real one. Runs started by hand or by a
    backfill use this machine's UTC clock and call REST for a day Vision is expected
    to have only for what Vision lacks (a missing or short file, SPEC §8).
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
            now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
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

    def rest_weight_spent(self) -> int:
        """Weight this process's REST client has sent so far (the run's steps share it)."""
        return self.rest.weight_spent

    def committed(self, dataset: Dataset, sd: SymbolDay) -> PartitionData | None:
        """The committed table of the partition with its recorded provenance, as it is."""
        record = self.bml.ledger().get_partition(dataset.name, sd.symbol, sd.day)
        if record is None or record.status != "committed":
            return None
        table = self.bml.lake().read(dataset, sd.symbol, sd.day)
        return PartitionData(table, record.provenance)

    def existing(self, dataset: Dataset, sd: SymbolDay) -> pa.Table | None:
        """The committed table of the partition, the incremental cursor of the hot band.
        What it was (its content hash) is remembered: the commit must still find it.

        A file that is gone or damaged (the scan reports it) is no cursor: the day is
        fetched again from the start and replaces it. Except a past day's hot snapshots:
        polled live, they exist nowhere else, so that error stands (a human decides). A
        file of an older schema that only lacks nullable columns is a cursor (they read
        as NULL): the commit of the extended table rewrites it in the current schema."""
        record = self.bml.ledger().get_partition(dataset.name, sd.symbol, sd.day)
        self.bases[(dataset.name, sd)] = record.content_hash if record is not None else None
        if record is None or record.status != "committed":
            return None
        if Provenance.of(record.provenance).any_vision():
            return None  # a complete Vision table is replaced, never extended from REST
        try:
            return self.bml.lake().read(dataset, sd.symbol, sd.day)
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
    return PartitionData.unavailable(
        "not_listed", reason, {EXCHANGE_INFO: StreamProvenance(StreamStatus.NOT_LISTED, reason=reason)}
    )


def choose(
    ctx: DayContext,
    sd: SymbolDay,
    dataset: Dataset,
    vision: Callable[[], PartitionData],
    rest: Callable[[ExchangeNow], PartitionData] | None,
    *,
    rest_window_days: int = PUBLICATION_LAG_DAYS,
    cold_rest: Callable[[ExchangeNow], PartitionData] | None = None,
) -> PartitionData:
    """Vision when it has the day; REST for today and the recent unpublished days, and
    (``cold_rest``, else ``rest``) for an older day Vision has no file for."""
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
    if rest is None or age_days <= PUBLICATION_LAG_DAYS:
        return data  # REST keeps no history of the stream, or Vision may still publish it
    return _fill_vision_hole(ctx, sd, dataset, data, cold_rest or rest, now)


def _fill_vision_hole(
    ctx: DayContext,
    sd: SymbolDay,
    dataset: Dataset,
    missed: PartitionData,
    rest: Callable[[ExchangeNow], PartitionData],
    now: ExchangeNow,
) -> PartitionData:
    """An old day Vision has no file for: Vision has real holes, so REST fills it (SPEC §8).

    A HARD stream REST has nothing for means the symbol did not trade that day; a HARD
    stream REST fails for stops the run. A BACKFILL stream REST fails for keeps the
    committed table if there is one, else it is missing with the reason (the minute
    view is committed without it, incomplete)."""
    stream, entry = next(iter(missed.provenance.items()))
    why = f"Vision has no file (HTTP {entry.http_status} at {entry.url})"
    before = ctx.rest_weight_spent()
    try:
        filled = rest(now)
    except FILL_ERRORS as err:
        if isinstance(err, HttpError) and err.code == INVALID_SYMBOL_CODE:
            # Neither source knows the symbol on that day: it was not listed (or is long delisted).
            message = f"{sd.symbol} is not listed on {sd.day}: {why}, and REST does not know the symbol ({err})"
            return PartitionData.unavailable("not_listed", message, {stream: replace(entry, reason="not listed")})
        reason = f"{why}; REST failed: {err}"
        if dataset in HARD_DATASETS:
            raise StreamFillFailed(f"{dataset.name} {sd}: {reason}. Nothing was published.") from err
        kept = ctx.committed(dataset, sd)
        if kept is not None:
            return kept  # the lake keeps what an earlier build filled
        message = f"{dataset.name} {sd}: {reason}"
        missing = StreamProvenance(
            StreamStatus.MISSING, vision_url=entry.url, vision_http_status=entry.http_status, incomplete=reason
        )
        return PartitionData.unavailable("not_published", message, {stream: missing})
    weight = ctx.rest_weight_spent() - before
    if dataset in HARD_DATASETS and (filled.table is None or filled.table.num_rows == 0):
        # Vision has holes (a stream starting later than another), but REST has nothing
        # either: the symbol did not trade that day.
        message = f"{sd.symbol} is not listed on {sd.day}: {missed.message}; REST has no {stream} for it either"
        return PartitionData.unavailable("not_listed", message, {stream: replace(entry, reason="not listed")})
    provenance = {
        name: replace(
            p,
            vision_url=entry.url,
            vision_http_status=entry.http_status,
            reason=f"{why}: built from REST",
            rest_weight=weight,
        )
        if p.is_rest
        else replace(
            p, vision_url=entry.url, vision_http_status=entry.http_status, reason=f"{why}; {p.reason}", fillable=False
        )
        for name, p in filled.provenance.items()
    }
    return replace(filled, provenance=provenance)


def _from_vision(data: PartitionData, stream: Stream) -> bool:
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


def _kline_minutes_from_rest(
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


def _trades_from_rest(ctx: DayContext, sd: SymbolDay, data: PartitionData, klines: pa.Table) -> PartitionData:
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


def _first_trade_ms(klines: PartitionData, sd: SymbolDay) -> int | None:
    """Where the day's first trade is, by its klines: the first minute counting one; the
    day's end when Vision's klines count none; None when the klines cannot tell."""
    if klines.table is None:
        return None
    first = coverage.first_traded_minute(klines.table)
    if first is None and _from_vision(klines, Stream.KLINES):
        return day_bounds_ms(sd.day)[1]
    return first


# The partitions of a stream's inputs, by dataset name (e.g. the day's klines for aggTrades).
Upstream = Mapping[str, PartitionData]
Build = Callable[[DayContext, SymbolDay, Upstream], PartitionData]


@dataclass(frozen=True)
class StreamAsset:
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
        return _kline_minutes_from_rest(ctx, stream, dataset, sd, data) if _from_vision(data, stream) else data

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
            ctx.rest, sd, now, ctx.existing(TRADE_FLOW, sd), first_trade_ms=_first_trade_ms(klines, sd)
        ),
    )
    if _from_vision(data, Stream.AGG_TRADES) and klines.table is not None:
        return _trades_from_rest(ctx, sd, data, klines.table)
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
    StreamAsset(
        TRADE_FLOW,
        _trade_flow,
        "per-minute trade flow computed from the day's aggTrades, checked against the day's klines",
        inputs=(KLINES,),
    ),
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
        ins={d.name: AssetIn(key=AssetKey(d.name)) for d in spec.inputs},
    )
    def _asset(
        context: AssetExecutionContext, bml: BmlResource, **upstream: dict[str, PartitionData]
    ) -> dict[str, PartitionData]:
        ctx = DayContext(bml, run_id=context.run.run_id, tags=context.run.tags)

        def build(sd: SymbolDay) -> PartitionData:
            inputs = {name: by_key[sd.key] for name, by_key in upstream.items()}
            return _based(ctx, spec.dataset, sd, spec.build(ctx, sd, inputs))

        return dict(_each(context, build))

    return _asset


def _each(
    context: AssetExecutionContext, build: Callable[[SymbolDay], PartitionData]
) -> Iterator[tuple[str, PartitionData]]:
    partitions = run_partitions(context)
    for i, sd in enumerate(partitions, start=1):
        data = build(sd)
        rows = data.table.num_rows if data.table is not None else 0
        source = ",".join(sorted({str(data.provenance.status_of(s)) for s in data.provenance}))
        context.log.info(
            f"[{i}/{len(partitions)}] {context.asset_key.to_user_string()} {sd}: {data.status} ({source}), {rows} rows"
        )
        yield sd.key, data
