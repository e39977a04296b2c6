"""The Dagster IO manager of the lake: every asset output goes through SPEC §7's commit.

What belongs here: translating between Dagster (partition keys, output metadata)
and the lake (``commit.py``, ``ledger.py``): one ``commit_table`` or
``record_unavailable`` per partition of the run — a single-run backfill over a
range hands over many — with each dataset's blocking rules as the commit's
validator (their errors name where a failing row came from; a table whose builder
judged them already, the minute view's, is not judged twice), the fillable streams
a partition lacks (SPEC §8), the output metadata (sources per stream, what is
missing, the REST weight of the fills; Dagster's own ``dagster/row_count`` and
``dagster/column_schema`` from the registry, scoped to each partition in a ranged run),
and loading upstream partitions back as ``PartitionData``. A partition a source does not
have for a normal reason (a symbol not listed yet, a past day's hot snapshots, which are
polled only while the day is live, bookTicker after Vision stopped publishing it) is logged
at INFO, not as a WARNING; a hot-band run logs no line per partition (one line for the
watermarks it moved), its materializations say it all. What stays out: the commit protocol itself, validation rules
(``quality.py``) and formulas.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Mapping
from typing import Any

import pyarrow as pa
from dagster import (
    ConfigurableIOManager,
    DagsterInvariantViolationError,
    InputContext,
    MetadataValue,
    OutputContext,
    TableColumn,
    TableColumnConstraints,
    TableSchema,
)

from bml_assets.days.partition_data import PartitionData
from bml_assets.defs.resources import LakeResource, LedgerResource
from bml_assets.domain.partitions import SymbolDay, parse_partition_key
from bml_assets.domain.provenance import Provenance, provisional_streams
from bml_assets.domain.schema import BOOK_TICKER, DATASETS, HOT_SNAPSHOTS, LIVE_1M, MINUTE_VIEW, Dataset
from bml_assets.domain.streams import BOOK_TICKER_LAST_DAY
from bml_assets.lake.commit import NOT_BASED, commit_table, record_unavailable
from bml_assets.lake.ledger import PartitionRecord
from bml_assets.quality import RowLocator, enforce_blocking

DATASET_METADATA_KEY = "bml/dataset"
ROW_COUNT_KEY = "dagster/row_count"
COLUMN_SCHEMA_KEY = "dagster/column_schema"


def column_schema(dataset: Dataset) -> TableSchema:
    """The dataset's columns as Dagster's UI shows them, from the registry: Arrow type,
    nullability, and the unit and definition as the description."""
    return TableSchema(
        columns=[
            TableColumn(
                name=c.name,
                type=str(c.type),
                description="; ".join(t for t in (str(c.unit), c.description) if t),
                constraints=TableColumnConstraints(nullable=c.name != dataset.time_column),
            )
            for c in dataset.columns
        ]
    )


def normal_absence(dataset: Dataset, status: str, day: dt.date) -> bool:
    """An unavailable partition that is no news: a day before the symbol's listing, a past
    day's hot snapshots (polled only while the day is live, so a rebuilt past day has none),
    or bookTicker after Vision stopped publishing it (the hot snapshots give the book)."""
    return (
        status == "not_listed"
        or dataset is HOT_SNAPSHOTS
        or (dataset is BOOK_TICKER and status == "not_published" and day > BOOK_TICKER_LAST_DAY)
    )


def _hot_band_run(context: OutputContext | InputContext) -> bool:
    """Whether this output or input belongs to a hot-band run, which logs no line per
    partition (``defs/assets/streams.hot_band_run``); False outside a run (tests)."""
    from bml_assets.defs.assets.streams import hot_band_run  # it imports this module

    try:
        return hot_band_run(context.step_context.dagster_run.tags)
    except DagsterInvariantViolationError:
        return False


def dataset_of(metadata: Mapping[str, Any] | None, what: str) -> Dataset:
    name = (metadata or {}).get(DATASET_METADATA_KEY)
    if name is None:
        raise ValueError(f"{what} has no '{DATASET_METADATA_KEY}' metadata: the lake does not know where it lives")
    value = name.value if hasattr(name, "value") else name
    return DATASETS[str(value)]


def row_locator(dataset: Dataset, data: PartitionData | None) -> RowLocator | None:
    """Where a failing row came from: the builder's own answer (a file's data row, a
    request URL), else the sources the provenance names — for the minute view, those
    of the failing column's stream."""
    if data is None:
        return None
    own, provenance = data.locate, data.provenance
    names = set(dataset.column_names)

    def locate(minute: dt.datetime, column: str) -> str | None:
        found = own(minute, column) if own is not None else None
        if found is not None:
            return found
        if dataset is MINUTE_VIEW:
            first = column.split("/")[0]
            if first not in names:
                return provenance.sources()
            source = dataset.column(first).source
            # A LIVE column's source is the live collector, which the provenance does not name.
            return provenance.sources(source) if source is not None else None
        return provenance.sources()

    return locate


def _validator(dataset: Dataset, sd: SymbolDay, data: PartitionData | None = None) -> Callable[[pa.Table], None]:
    """The dataset's blocking rules (``quality.blocking_rules``), run by the commit before the
    rename — unless ``data`` carries a verdict about that very table (the minute view's asset
    judged it with its checks): they run once per table, and every table is judged."""
    label = f"minute view {sd}" if dataset is MINUTE_VIEW else f"{dataset.name} {sd}"
    locate = row_locator(dataset, data)
    verdict = data.blocking if data is not None else None
    return lambda table: enforce_blocking(table, sd.day, label=label, dataset=dataset, locate=locate, verdict=verdict)


def _promotion_note(previous: PartitionRecord | None, provenance: Provenance) -> str | None:
    """The ledger's record of a promotion: streams that were REST-built and now come from Vision."""
    if previous is None or previous.status != "committed":
        return None
    promoted = [s for s in provisional_streams(previous.provenance) if provenance.is_vision(s)]
    if not promoted:
        return None
    return f"promoted from REST to Vision: {', '.join(promoted)} (previous content hash {previous.content_hash})"


def _null_counts(table: pa.Table) -> dict[str, int]:
    return {name: table.column(name).null_count for name in table.column_names}


class LakeIOManager(ConfigurableIOManager):
    """Atomic parquet partitions in the lake at ``BML_LAKE_ROOT``, recorded in the ledger (the
    minute view's commit moves the symbol's watermark in the same transaction)."""

    lake: LakeResource
    ledger: LedgerResource

    def _partitions(self, context: OutputContext | InputContext) -> list[SymbolDay]:
        if not context.has_asset_partitions:
            raise ValueError(f"{context.asset_key.to_user_string()}: the lake stores partitioned assets only")
        return [parse_partition_key(k) for k in context.asset_partition_keys]

    def handle_output(self, context: OutputContext, obj: Mapping[str, PartitionData]) -> None:
        dataset = dataset_of(context.definition_metadata, context.asset_key.to_user_string())
        lake, ledger = self.lake.lake(), self.ledger.ledger()
        by_key = {parse_partition_key(k): v for k, v in obj.items()}
        expected = self._partitions(context)
        if set(by_key) != set(expected):
            raise ValueError(
                f"{dataset.name}: the asset returned partitions {sorted(map(str, by_key))} "
                f"but the run is for {sorted(map(str, expected))}"
            )
        summary: dict[str, dict[str, Any]] = {}
        quiet = _hot_band_run(context)
        moved: list[str] = []
        for sd in sorted(expected):
            data = by_key[sd]
            if data.table is None:
                record_unavailable(
                    lake=lake,
                    ledger=ledger,
                    dataset=dataset,
                    symbol=sd.symbol,
                    day=sd.day,
                    status=data.status,
                    message=data.message or data.status,
                    provenance=data.provenance.to_json(),
                )
                summary[sd.key] = {"status": data.status, "message": data.message}
                normal = normal_absence(dataset, data.status, sd.day)
                if not (quiet and normal):
                    log = context.log.info if normal else context.log.warning
                    log(f"{dataset.name} {sd}: {data.status} — {data.message}")
                continue
            result = commit_table(
                data.table,
                message=_promotion_note(ledger.get_partition(dataset.name, sd.symbol, sd.day), data.provenance),
                lake=lake,
                ledger=ledger,
                dataset=dataset,
                symbol=sd.symbol,
                day=sd.day,
                validate=_validator(dataset, sd, data),
                provenance=data.provenance.to_json(),
                source_gaps=data.source_gaps,
                missing_streams=data.missing_streams,
                based_on=data.base_content_hash if data.incremental else NOT_BASED,
                watermark=data.watermark,
            )
            summary[sd.key] = {
                "status": "committed",
                "rows": result.row_count,
                "path": str(result.path),
                "content_hash": result.content_hash,
                "rewritten": result.rewritten,
            }
            if result.watermark is not None:
                summary[sd.key]["watermark"] = result.watermark.isoformat()
                moved.append(f"{sd.symbol} → {result.watermark.isoformat()}")
                if not quiet:
                    context.log.info(f"watermark {moved[-1]}")
            if data.missing_streams:
                summary[sd.key]["missing_streams"] = [dict(m) for m in data.missing_streams]
                context.log.warning(
                    f"{dataset.name} {sd}: incomplete, "
                    + "; ".join(f"{m.get('stream')} missing: {m.get('reason')}" for m in data.missing_streams)
                )
            for w in data.warnings:
                context.log.warning(f"{dataset.name} {sd}: {w}")
        if quiet and moved:
            # One line for the run: a hot run moves every symbol's watermark each minute.
            context.log.info("watermarks " + ", ".join(moved))
        context.add_output_metadata(self._metadata(summary, by_key, dataset))
        if len(summary) > 1:
            self._scope_to_partitions(context, summary, by_key)

    @staticmethod
    def _scope_to_partitions(
        context: OutputContext, summary: Mapping[str, Mapping[str, Any]], by_key: Mapping[SymbolDay, PartitionData]
    ) -> None:
        """A ranged run: each partition's materialization gets its own row count, path, sources…
        (Dagster merges partition-scoped asset metadata over the output's)."""
        try:
            step = context.step_context
        except DagsterInvariantViolationError:
            return  # an output context built outside a run (tests): nothing to scope
        for sd, data in by_key.items():
            step.add_asset_metadata(
                LakeIOManager._partition_metadata(summary[sd.key], data),
                asset_key=context.asset_key,
                partition_key=sd.key,
            )

    @staticmethod
    def _metadata(
        summary: Mapping[str, Mapping[str, Any]], by_key: Mapping[SymbolDay, PartitionData], dataset: Dataset
    ) -> dict[str, Any]:
        md: dict[str, Any] = {
            "partitions": len(summary),
            "rows": sum(int(s.get("rows", 0)) for s in summary.values()),
            COLUMN_SCHEMA_KEY: column_schema(dataset),
        }
        if len(summary) == 1:
            md.update(LakeIOManager._partition_metadata(next(iter(summary.values())), next(iter(by_key.values()))))
        else:
            md["per_partition"] = MetadataValue.json(json.loads(json.dumps(summary, default=str)))
        return md

    @staticmethod
    def _partition_metadata(s: Mapping[str, Any], data: PartitionData) -> dict[str, Any]:
        """What one partition's materialization says: its status and file, rows, sources, gaps."""
        md: dict[str, Any] = {"status": s["status"], ROW_COUNT_KEY: int(s.get("rows", 0))}
        if data.table is not None:
            md["path"] = MetadataValue.path(s["path"])
            md["content_hash"] = s["content_hash"]
            md["rewritten"] = s["rewritten"]
            if "watermark" in s:
                md["watermark"] = s["watermark"]
            md["null_count_per_column"] = MetadataValue.json(_null_counts(data.table))
        else:
            md["message"] = str(data.message)
        md["provenance"] = MetadataValue.json(json.loads(json.dumps(data.provenance.to_json(), default=str)))
        md["sources"] = MetadataValue.json(data.provenance.summaries())
        live = data.provenance.to_json().get("live")
        if isinstance(live, Mapping) and live.get("covered") is not None:
            # The live collector's covered minutes, per stream family, as [first, end) ranges.
            md["live_coverage"] = MetadataValue.json(live["covered"])
        weight = data.provenance.rest_weight()
        if weight:
            md["rest_weight"] = weight
        if data.table is not None:
            md["incomplete"] = bool(data.missing_streams)
            md["missing_streams"] = MetadataValue.json(json.loads(json.dumps(list(data.missing_streams), default=str)))
        if data.source_gaps:
            md["source_gaps"] = MetadataValue.json(json.loads(json.dumps(list(data.source_gaps), default=str)))
        return md

    def load_input(self, context: InputContext) -> dict[str, PartitionData]:
        dataset = dataset_of(
            context.upstream_output.definition_metadata if context.upstream_output else None,
            context.asset_key.to_user_string(),
        )
        lake, ledger = self.lake.lake(), self.ledger.ledger()
        loaded: dict[str, PartitionData] = {}
        quiet = _hot_band_run(context)
        for sd in self._partitions(context):
            record = ledger.get_partition(dataset.name, sd.symbol, sd.day)
            if record is None and dataset is LIVE_1M:
                # Written by the live collector, not by a run: a day it did not record has none.
                loaded[sd.key] = PartitionData.unavailable(
                    "not_published", f"{dataset.name} {sd}: the live collector recorded no minute of this day", {}
                )
                continue
            if record is None:
                raise ValueError(
                    f"{dataset.name} {sd} is not in the ledger ({self.ledger.state_url}); "
                    f"materialize {context.asset_key.to_user_string()} for partition {sd.key} first"
                )
            if record.status != "committed":
                loaded[sd.key] = PartitionData.unavailable(
                    record.status, record.message or record.status, record.provenance
                )  # type: ignore[arg-type]
                continue
            # A file of an older schema that lacks only nullable columns reads with them NULL.
            loaded[sd.key] = PartitionData(
                table=lake.read(dataset, sd.symbol, sd.day),
                provenance=record.provenance,
                source_gaps=record.source_gaps,
            )
        read = [k for k, d in loaded.items() if d.table is not None]
        if read and not quiet:
            # One line per input, not per partition: a ranged run's event log stays short.
            first = parse_partition_key(read[0])
            where = lake.location(dataset, first.symbol, first.day)
            context.log.debug(
                f"loaded {dataset.name} for {len(read)} partition(s) ({read[0]} … {read[-1]}), e.g. from {where}"
            )
        return loaded
