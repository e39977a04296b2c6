"""Source-level assets: one per stream table (``days/streams.py``), per symbol × UTC day.

What belongs here: the Dagster side of building the per-stream tables — one asset
per ``StreamTable``, the run's partitions, the run tags the sensors set (the band of
a hot-poll run, a Vision promotion, the instant a run launched early waits for) and
``day_context``, which makes a ``DayContext`` from the resources and those tags —
then calling ``days/`` per partition and logging what came of it (not in a hot-band
run: ``hot_band_run``), with what it downloaded on its materialization. What stays out:
choosing sources, the day builders and the coverage fills (``days/``), and the
commit (the IO manager).

No ``from __future__ import annotations``: Dagster reads the resource parameters'
annotations at definition time.
"""

from collections.abc import Callable, Iterator, Mapping

from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    PartitionsDefinition,
    asset,
)

from bml_assets.days.context import DayContext
from bml_assets.days.partition_data import PartitionData
from bml_assets.days.streams import STREAM_TABLES, StreamTable, build_stream_day
from bml_assets.days.vision_days import StreamFetcher
from bml_assets.defs.io_manager import DATASET_METADATA_KEY
from bml_assets.defs.resources import BuildResource, LakeResource, LedgerResource, RestResource, VisionResource
from bml_assets.domain.partitions import SymbolDay, parse_partition_key
from bml_assets.sources.http import Traffic, traffic
from bml_assets.sources.rest import REST_POOL

IO_MANAGER_KEY = "lake_io_manager"
GROUP = "sources"
# Days of one symbol per run in a backfill: big enough to amortise process start-up,
# small enough that a failure costs little.
MAX_PARTITIONS_PER_RUN = 30
# Run tags set by the sensors: the band of a hot-poll run ("hot" skips Vision, which
# never has today; "catch-up" is a day after the watermark) and a Vision promotion.
# Either makes the run follow the exchange's clock (``DayContext``).
BAND_TAG = "bml/band"
HOT_BAND = "hot"
PROMOTION_TAG = "bml/promotion"
# Set by the hot poller, which launches a run a few seconds early to hide process
# start-up: the run waits until the exchange's clock reaches it (epoch ms).
NOT_BEFORE_TAG = "bml/not_before_ms"
# What building a partition downloaded, on its materialization: a backfill whose steps ran
# on Celery workers adds them up (``runner``), since its own process downloaded nothing.
BYTES_KEY = "bytes received"
WEIGHT_KEY = "REST weight"


def recorded_traffic(metadata: Mapping[str, object]) -> Traffic:
    """The ``Traffic`` a materialization's metadata records (none: zero)."""

    def value(key: str) -> int:
        entry = metadata.get(key)
        return int(getattr(entry, "value", entry) or 0)

    return Traffic(value(BYTES_KEY), value(WEIGHT_KEY))


def hot_band_run(tags: Mapping[str, str]) -> bool:
    """A run of the hot band (today or a catch-up day): it commits a minute or a few per
    partition, every minute, so it logs no line per partition — the materializations
    carry each partition's status, rows and watermark, and each log line is an event row
    Dagster stores (bench/results.md, issue 11 item 3)."""
    return BAND_TAG in tags


def run_partitions(context: AssetExecutionContext) -> list[SymbolDay]:
    """The partitions this run covers: one key, or a range in a single-run backfill."""
    return sorted(parse_partition_key(k) for k in context.partition_keys)


def day_context(
    context: AssetExecutionContext,
    *,
    ledger: LedgerResource,
    lake: LakeResource,
    vision: VisionResource,
    rest: RestResource,
    build: BuildResource,
) -> DayContext:
    """The ``DayContext`` of this run: the resources' clients, and the band and clock its tags ask for."""
    tags = context.run.tags
    the_ledger = ledger.ledger()
    return DayContext(
        ledger=the_ledger,
        lake=lake.lake(),
        vision=StreamFetcher(vision.client(), the_ledger, max_csv_bytes=vision.max_csv_bytes),
        rest=rest.client(),
        run_id=context.run.run_id,
        hot=tags.get(BAND_TAG) == HOT_BAND,
        exchange_clock=BAND_TAG in tags or PROMOTION_TAG in tags,
        not_before_ms=int(tags[NOT_BEFORE_TAG]) if NOT_BEFORE_TAG in tags else None,
        safety_lag_minutes=build.safety_lag_minutes,
        max_ffill_minutes=build.max_ffill_minutes,
    )


def build_stream_assets(partitions_def: PartitionsDefinition) -> list[AssetsDefinition]:
    return [_stream_asset(table, partitions_def) for table in STREAM_TABLES]


def _stream_asset(table: StreamTable, partitions_def: PartitionsDefinition) -> AssetsDefinition:
    @asset(
        name=table.dataset.name,
        description=table.description,
        partitions_def=partitions_def,
        io_manager_key=IO_MANAGER_KEY,
        metadata={DATASET_METADATA_KEY: table.dataset.name},
        group_name=GROUP,
        kinds={"parquet"},
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
        pool=REST_POOL,
        ins={d.name: AssetIn(key=AssetKey(d.name)) for d in table.inputs},
    )
    def _asset(
        context: AssetExecutionContext,
        ledger: LedgerResource,
        lake: LakeResource,
        vision: VisionResource,
        rest: RestResource,
        build: BuildResource,
        **upstream: dict[str, PartitionData],
    ) -> dict[str, PartitionData]:
        ctx = day_context(context, ledger=ledger, lake=lake, vision=vision, rest=rest, build=build)

        quiet = hot_band_run(context.run.tags)

        def build_one(sd: SymbolDay) -> PartitionData:
            inputs = {name: by_key[sd.key] for name, by_key in upstream.items()}
            before = traffic()
            data = build_stream_day(ctx, table, sd, inputs)
            if not quiet:  # a hot run's events stay lean (see hot_band_run)
                spent = traffic() - before
                metadata = {BYTES_KEY: spent.bytes_received, WEIGHT_KEY: spent.rest_weight}
                context.add_asset_metadata(metadata, partition_key=sd.key)
            return data

        return dict(_each(context, build_one))

    return _asset


def _each(
    context: AssetExecutionContext, build: Callable[[SymbolDay], PartitionData]
) -> Iterator[tuple[str, PartitionData]]:
    partitions = run_partitions(context)
    quiet = hot_band_run(context.run.tags)
    for i, sd in enumerate(partitions, start=1):
        data = build(sd)
        if quiet:
            yield sd.key, data
            continue
        rows = data.table.num_rows if data.table is not None else 0
        source = ",".join(sorted({str(data.provenance.status_of(s)) for s in data.provenance}))
        context.log.info(
            f"[{i}/{len(partitions)}] {context.asset_key.to_user_string()} {sd}: {data.status} ({source}), {rows} rows"
        )
        yield sd.key, data
