"""The canonical asset: the 58-column minute view of one symbol × UTC day.

What belongs here: loading the per-stream tables of the run's partitions,
deciding what an unavailable HARD stream means for the day, calling the pure
join (``features/minute_view.py``), and reporting SPEC §6's checks through the
factory in ``checks.py``. What stays out: formulas, validation rules and the
commit (the IO manager enforces the blocking rules before the rename).
"""

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetIn,
    AssetKey,
    AssetsDefinition,
    BackfillPolicy,
    Failure,
    MetadataValue,
    Output,
    PartitionsDefinition,
    asset,
)

from bml_assets.assets.vision_streams import IO_MANAGER_KEY, MAX_PARTITIONS_PER_RUN, run_partitions, utc_today
from bml_assets.checks import ALL_RULES, Evidence, Outcome, check_result, check_specs, to_frame
from bml_assets.features.minute_view import build_minute_view
from bml_assets.lake.io_manager import DATASET_METADATA_KEY
from bml_assets.lake.partition_data import PartitionData
from bml_assets.partitions import SymbolDay
from bml_assets.resources import BmlResource
from bml_assets.schema import (
    BOOK_TICKER,
    FUNDING,
    INDEX_PRICE_KLINES,
    KLINES,
    MARK_PRICE_KLINES,
    METRICS,
    MINUTE_VIEW,
    PREMIUM_INDEX_KLINES,
    TRADE_FLOW,
)

ASSET_NAME = "minute_view"
GROUP = "minute"
# Input name of each upstream stream table: the dataset names, which are also the asset keys.
UPSTREAMS = (
    KLINES,
    MARK_PRICE_KLINES,
    INDEX_PRICE_KLINES,
    PREMIUM_INDEX_KLINES,
    TRADE_FLOW,
    BOOK_TICKER,
    METRICS,
    FUNDING,
)


def _provenance(inputs: Mapping[str, PartitionData]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for data in inputs.values():
        merged.update(data.provenance)
    return merged


def _unavailable_day(sd: SymbolDay, inputs: Mapping[str, PartitionData]) -> PartitionData | None:
    """The day has no minute view when a HARD stream has no file; say why, or fail loudly."""
    hard = {d.name: inputs[d.name] for d in (KLINES, MARK_PRICE_KLINES, INDEX_PRICE_KLINES)}
    missing = {name: d for name, d in hard.items() if not d.available}
    if not missing:
        return None
    if len(missing) == len(hard):
        first = hard[KLINES.name]
        status = "not_listed" if all(d.status == "not_listed" for d in hard.values()) else "not_published"
        return PartitionData.unavailable(status, first.message or status, _provenance(inputs))  # type: ignore[arg-type]
    if any(d.status == "not_published" for d in missing.values()):
        # Vision publishes each stream on its own schedule: wait for the rest.
        message = f"minute view {sd} waits for " + "; ".join(str(d.message) for d in missing.values())
        return PartitionData.unavailable("not_published", message, _provenance(inputs))
    raise Failure(
        description=f"minute view {sd}: HARD streams disagree — "
        + "; ".join(f"{name}: {d.status} ({d.message})" for name, d in missing.items())
        + f"; present: {', '.join(sorted(set(hard) - set(missing)))}. Nothing was published.",
        allow_retries=False,
    )


def build_day(sd: SymbolDay, inputs: Mapping[str, PartitionData], *, max_ffill_minutes: int) -> PartitionData:
    unavailable = _unavailable_day(sd, inputs)
    if unavailable is not None:
        return unavailable
    view = build_minute_view(
        sd.day,
        klines=inputs[KLINES.name].table,
        mark=inputs[MARK_PRICE_KLINES.name].table,
        index=inputs[INDEX_PRICE_KLINES.name].table,
        premium=inputs[PREMIUM_INDEX_KLINES.name].table,
        trade_flow=inputs[TRADE_FLOW.name].table,
        book=inputs[BOOK_TICKER.name].table,
        metrics=inputs[METRICS.name].table,
        funding=inputs[FUNDING.name].table,
        max_ffill_minutes=max_ffill_minutes,
    )
    gaps = [
        {
            "minute": g.minute.isoformat(),
            "missing": list(g.missing),
            "reason": "absent from every source" if len(g.missing) == 3 else "absent from " + ", ".join(g.missing),
        }
        for g in view.source_gaps
    ]
    return PartitionData(view.table, _provenance(inputs), source_gaps=gaps, warnings=tuple(view.warnings))


def evidence_for(sd: SymbolDay, data: PartitionData, trade_flow: PartitionData, *, today: dt.date) -> Evidence:
    assert data.table is not None
    return Evidence(
        day=sd.day,
        frame=to_frame(data.table),
        closed_day=sd.day < today,
        trade_flow=to_frame(trade_flow.table) if trade_flow.table is not None else None,
        provenance=data.provenance,
        source_gaps=data.source_gaps,
    )


def build_minute_view_asset(partitions_def: PartitionsDefinition) -> AssetsDefinition:
    key = AssetKey(ASSET_NAME)

    @asset(
        name=ASSET_NAME,
        description="The canonical 58-column 1-minute view (SPEC §5), one parquet file per symbol × UTC day.",
        partitions_def=partitions_def,
        io_manager_key=IO_MANAGER_KEY,
        metadata={DATASET_METADATA_KEY: MINUTE_VIEW.name},
        group_name=GROUP,
        kinds={"parquet"},
        ins={d.name: AssetIn(key=AssetKey(d.name)) for d in UPSTREAMS},
        check_specs=check_specs(key),
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    )
    def minute_view(
        context: AssetExecutionContext, bml: BmlResource, **upstream: dict[str, PartitionData]
    ) -> Iterator[Any]:
        max_ffill = bml.settings().max_ffill_minutes
        today = utc_today()
        out: dict[str, PartitionData] = {}
        outcomes: dict[str, dict[str, Outcome]] = {r.name: {} for r in ALL_RULES}
        partitions = run_partitions(context)
        for i, sd in enumerate(partitions, start=1):
            inputs = {name: by_key[sd.key] for name, by_key in upstream.items()}
            data = build_day(sd, inputs, max_ffill_minutes=max_ffill)
            out[sd.key] = data
            if data.table is None:
                context.log.warning(f"[{i}/{len(partitions)}] minute view {sd}: {data.status} — {data.message}")
                continue
            ev = evidence_for(sd, data, inputs[TRADE_FLOW.name], today=today)
            for rule in ALL_RULES:
                outcomes[rule.name][sd.key] = rule.run(ev)
            context.log.info(
                f"[{i}/{len(partitions)}] minute view {sd}: {data.table.num_rows} rows, {len(data.source_gaps)} source-gap minutes"
            )
        blocking_failed = {
            f"{rule.name} {k}": o
            for rule in ALL_RULES
            if rule.blocking
            for k, o in outcomes[rule.name].items()
            if not o.passed
        }
        if blocking_failed:
            # Stop before the IO manager sees the output: nothing is published.
            raise Failure(
                description="minute view not published, blocking checks failed: " + ", ".join(sorted(blocking_failed)),
                metadata={
                    "failures": MetadataValue.json(
                        {k: o.failures.head(20).astype(str).to_dict("records") for k, o in blocking_failed.items()}
                    )
                },
                allow_retries=False,
            )
        yield Output(out)
        for rule in ALL_RULES:
            if not outcomes[rule.name]:
                yield AssetCheckResult(
                    check_name=rule.name,
                    passed=True,
                    description=f"{rule.description} — nothing to check: no minute view for "
                    + ", ".join(f"{k} ({d.status})" for k, d in out.items()),
                    metadata={"partitions_checked": 0},
                )
                continue
            yield check_result(rule, outcomes[rule.name])

    return minute_view
