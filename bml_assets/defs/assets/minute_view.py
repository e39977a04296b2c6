"""The canonical asset: the minute view of one symbol × UTC day.

What belongs here: loading the per-stream tables of the run's partitions,
deciding what an unavailable HARD stream means for the day, calling the pure
join (``features/minute_view.py``), naming the fillable streams the day still
lacks (SPEC §8: the partition is then committed incomplete, ``missing_streams``),
and reporting SPEC §6's checks through the factory in ``defs/checks.py``. What stays out: formulas, validation rules and the
commit (the IO manager enforces the blocking rules before the rename).
"""

import datetime as dt
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
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

from bml_assets.defs.assets.rest_days import GAP_CONFIRM_MINUTES, ExchangeNow
from bml_assets.defs.assets.streams import (
    IO_MANAGER_KEY,
    MAX_PARTITIONS_PER_RUN,
    STREAM_ASSETS,
    DayContext,
    run_partitions,
)
from bml_assets.defs.checks import check_result, check_specs
from bml_assets.defs.io_manager import DATASET_METADATA_KEY, row_locator
from bml_assets.defs.resources import BmlResource
from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms, day_bounds_ms, ms_to_datetime
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import Provenance
from bml_assets.domain.schema import (
    BOOK_TICKER,
    DATASETS,
    FUNDING,
    HARD_DATASETS,
    HOT_SNAPSHOTS,
    INDEX_PRICE_KLINES,
    KLINES,
    MARK_PRICE_KLINES,
    METRICS,
    MINUTE_VIEW,
    PREMIUM_INDEX_KLINES,
    TRADE_FLOW,
)
from bml_assets.domain.streams import Stream
from bml_assets.features.hot_snapshots import book_from_snapshots, open_interest_observations, predicted_funding_minutes
from bml_assets.features.metrics import combine_observations
from bml_assets.features.minute_view import build_minute_view
from bml_assets.lake.partition_data import PartitionData
from bml_assets.lake.scan import scan
from bml_assets.quality import ALL_RULES, BLOCKING_RULES, Evidence, Outcome, describe_failures, to_frame

ASSET_NAME = "minute_view"
GROUP = "minute"
# Every stream table is an input, named (and keyed) by its dataset name.
UPSTREAMS = tuple(spec.dataset for spec in STREAM_ASSETS)
LAKE_SCAN_CHECK = "lake_scan_clean"


def _provenance(inputs: Mapping[str, PartitionData]) -> Provenance:
    merged = Provenance()
    for data in inputs.values():
        merged = merged | data.provenance
    return merged


def missing_streams(inputs: Mapping[str, PartitionData]) -> list[dict[str, str]]:
    """The fillable streams the day lacks, wholly or in part, and why (SPEC §8): every
    input stream whose provenance carries an ``incomplete`` reason (``streams.py``)."""
    return sorted(
        (
            {"stream": stream, "reason": reason}
            for data in inputs.values()
            for stream, reason in data.provenance.incomplete().items()
        ),
        key=lambda m: m["stream"],
    )


def _gap_reason(missing: tuple[str, ...], provenance: Provenance) -> str:
    if len(missing) == len(HARD_DATASETS):
        return "absent from every source"

    def looked_in(name: str) -> str:
        stream = DATASETS[name].stream
        p = provenance.get(stream) if stream is not None else None
        rest = p is not None and (p.is_rest or p.repaired is not None)
        return f"{name} ({'Vision and REST' if rest else 'its source'})"

    return "absent from " + ", ".join(looked_in(name) for name in missing)


def _unavailable_day(sd: SymbolDay, inputs: Mapping[str, PartitionData]) -> PartitionData | None:
    """The day has no minute view when a HARD stream has no file; say why, or fail loudly."""
    hard = {d.name: inputs[d.name] for d in HARD_DATASETS}
    missing = {name: d for name, d in hard.items() if not d.available}
    if not missing:
        return None
    if len(missing) == len(hard):
        first = hard[HARD_DATASETS[0].name]
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


def _is_live_source(inputs: Mapping[str, PartitionData]) -> bool:
    """True when a HARD stream came from REST: the day may still be forming."""
    return any(inputs[d.name].provenance.is_rest(stream) for d in HARD_DATASETS for stream in inputs[d.name].provenance)


def live_grid_end(sd: SymbolDay, inputs: Mapping[str, PartitionData], now: ExchangeNow) -> dt.datetime | None:
    """Where a REST-built day's committable minutes end (exclusive), or None for the whole day.

    Stops at the last minute closed plus the safety lag, and before any missing
    minute not yet confirmed as a source gap (so the watermark never passes it).
    """
    start, day_end = day_bounds_ms(sd.day)
    end = now.end_ms(sd.day)
    # Never past what the stream steps fetched: in a multi-process run they may have
    # read the clock earlier than this step.
    for d in HARD_DATASETS:
        for p in inputs[d.name].provenance.values():
            if p.is_rest and p.through is not None:
                end = min(end, datetime_to_ms(p.through))
    present: np.ndarray | None = None
    for d in HARD_DATASETS:
        table = inputs[d.name].table
        assert table is not None
        ms = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
        present = ms if present is None else np.intersect1d(present, ms)
    grid = np.arange(start, end, MINUTE_MS, dtype=np.int64)
    missing = grid[~np.isin(grid, present if present is not None else [])]
    confirm_ms = (1 + now.lag_minutes + GAP_CONFIRM_MINUTES) * MINUTE_MS
    unconfirmed = missing[missing + confirm_ms > now.now_ms]
    if len(unconfirmed):
        end = min(end, int(unconfirmed[0]))
    return None if end == day_end else ms_to_datetime(end)


def _with_snapshots(inputs: Mapping[str, PartitionData], sd: SymbolDay) -> dict[str, Any]:
    """Book, open interest and predicted funding from the hot snapshots, where there are some."""
    snaps = inputs[HOT_SNAPSHOTS.name].table
    book = inputs[BOOK_TICKER.name].table
    metrics = inputs[METRICS.name].table
    if snaps is None or snaps.num_rows == 0:
        return {"book": book, "metrics": metrics, "predicted_funding": None}
    if book is None:
        book = book_from_snapshots(snaps, sd.day, source=f"hot snapshots {sd}")
    oi = open_interest_observations(snaps)
    metrics = oi if metrics is None else combine_observations([metrics, oi])
    return {"book": book, "metrics": metrics, "predicted_funding": predicted_funding_minutes(snaps, sd.day)}


def build_day(
    sd: SymbolDay,
    inputs: Mapping[str, PartitionData],
    *,
    max_ffill_minutes: int,
    grid_end: dt.datetime | None = None,
) -> PartitionData:
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
        funding=inputs[FUNDING.name].table,
        max_ffill_minutes=max_ffill_minutes,
        grid_end=grid_end,
        **_with_snapshots(inputs, sd),
    )
    provenance = _provenance(inputs)
    gaps = [
        {"minute": g.minute.isoformat(), "missing": list(g.missing), "reason": _gap_reason(g.missing, provenance)}
        for g in view.source_gaps
    ]
    return PartitionData(
        view.table,
        provenance,
        source_gaps=gaps,
        warnings=tuple(view.warnings),
        missing_streams=missing_streams(inputs),
    )


def watermark_target(sd: SymbolDay, grid_end: dt.datetime | None) -> dt.datetime | None:
    """The day's last committed grid minute: where its commit may move the symbol's watermark
    (the ledger moves it only when that continues it, in the commit's transaction). None
    when the grid is empty."""
    day_start = dt.datetime.combine(sd.day, dt.time(), dt.UTC)
    last = (grid_end or day_start + dt.timedelta(days=1)) - dt.timedelta(minutes=1)
    return last if last >= day_start else None


def lake_scan_result(bml: BmlResource, grid_ends: Mapping[SymbolDay, dt.datetime | None]) -> AssetCheckResult:
    """The consistency scan (``lake/scan.py``) of the partitions this run committed."""
    lake, ledger = bml.lake(), bml.ledger()
    problems: list[dict[str, Any]] = []
    for sd, grid_end in grid_ends.items():
        # A day still forming is checked as "today": its later minutes are not missing yet.
        today = sd.day if grid_end is not None else sd.day + dt.timedelta(days=1)
        report = scan(lake, ledger, [sd.symbol], sd.day, sd.day, today=today, deep=True)
        problems += report.to_rows()
    return AssetCheckResult(
        check_name=LAKE_SCAN_CHECK,
        passed=not problems,
        metadata={"partitions_scanned": len(grid_ends), "problems": MetadataValue.json(problems)},
    )


def replaced_rest_view(ctx: DayContext, sd: SymbolDay, data: PartitionData) -> pd.DataFrame | None:
    """The committed REST-built view this build replaces with Vision klines (a promotion)."""
    record = ctx.bml.ledger().get_partition(MINUTE_VIEW.name, sd.symbol, sd.day)
    if record is None or record.status != "committed" or not data.provenance.is_vision(Stream.KLINES):
        return None
    if not Provenance.of(record.provenance).is_rest(Stream.KLINES):
        return None
    previous = ctx.existing(MINUTE_VIEW, sd)
    return to_frame(previous) if previous is not None else None


def evidence_for(
    sd: SymbolDay,
    data: PartitionData,
    trade_flow: PartitionData,
    *,
    closed_day: bool,
    replaced_rest_view: pd.DataFrame | None = None,
) -> Evidence:
    assert data.table is not None
    return Evidence(
        replaced_rest_view=replaced_rest_view,
        day=sd.day,
        frame=to_frame(data.table),
        closed_day=closed_day,
        trade_flow=to_frame(trade_flow.table) if trade_flow.table is not None else None,
        provenance=data.provenance,
        source_gaps=data.source_gaps,
    )


def build_minute_view_asset(partitions_def: PartitionsDefinition) -> AssetsDefinition:
    key = AssetKey(ASSET_NAME)

    @asset(
        name=ASSET_NAME,
        description=f"The canonical {len(MINUTE_VIEW.columns)}-column 1-minute view (SPEC §5), "
        "one parquet file per symbol × UTC day.",
        partitions_def=partitions_def,
        io_manager_key=IO_MANAGER_KEY,
        metadata={DATASET_METADATA_KEY: MINUTE_VIEW.name},
        group_name=GROUP,
        kinds={"parquet"},
        ins={d.name: AssetIn(key=AssetKey(d.name)) for d in UPSTREAMS},
        check_specs=[
            *check_specs(key),
            AssetCheckSpec(
                LAKE_SCAN_CHECK,
                asset=key,
                description="the committed file and its ledger row pass the consistency scan (bml scan)",
            ),
        ],
        backfill_policy=BackfillPolicy.multi_run(max_partitions_per_run=MAX_PARTITIONS_PER_RUN),
    )
    def minute_view(
        context: AssetExecutionContext, bml: BmlResource, **upstream: dict[str, PartitionData]
    ) -> Iterator[Any]:
        max_ffill = bml.settings().max_ffill_minutes
        ctx = DayContext(bml, run_id=context.run.run_id, tags=context.run.tags)
        out: dict[str, PartitionData] = {}
        grid_ends: dict[SymbolDay, dt.datetime | None] = {}
        outcomes: dict[str, dict[str, Outcome]] = {r.name: {} for r in ALL_RULES}
        partitions = run_partitions(context)
        for i, sd in enumerate(partitions, start=1):
            inputs = {name: by_key[sd.key] for name, by_key in upstream.items()}
            grid_end = None
            if _unavailable_day(sd, inputs) is None and _is_live_source(inputs):
                grid_end = live_grid_end(sd, inputs, ctx.now())
            data = build_day(sd, inputs, max_ffill_minutes=max_ffill, grid_end=grid_end)
            if data.table is not None:
                # The IO manager's commit moves the watermark, in the ledger transaction of the row.
                data = replace(data, watermark=watermark_target(sd, grid_end))
            out[sd.key] = data
            if data.table is None:
                context.log.warning(f"[{i}/{len(partitions)}] minute view {sd}: {data.status} — {data.message}")
                continue
            grid_ends[sd] = grid_end
            ev = evidence_for(
                sd,
                data,
                inputs[TRADE_FLOW.name],
                closed_day=grid_end is None,
                replaced_rest_view=replaced_rest_view(ctx, sd, data),
            )
            for rule in ALL_RULES:
                outcomes[rule.name][sd.key] = rule.run(ev)
            incomplete = ", ".join(m["stream"] for m in data.missing_streams)
            weight = data.provenance.rest_weight()
            context.log.info(
                f"[{i}/{len(partitions)}] minute view {sd}: {data.table.num_rows} rows, "
                f"{len(data.source_gaps)} source-gap minutes"
                + (f", REST weight {weight}" if weight else "")
                + (f", incomplete: {incomplete} missing" if incomplete else "")
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
            details = [
                f"minute view {k}: not committed — "
                + describe_failures(
                    [outcomes[r.name][k] for r in BLOCKING_RULES if not outcomes[r.name][k].passed],
                    row_locator(MINUTE_VIEW, out[k]),
                )
                for k in sorted({k for r in BLOCKING_RULES for k, o in outcomes[r.name].items() if not o.passed})
            ]
            raise Failure(
                description="minute view not published, blocking checks failed: "
                + ", ".join(sorted(blocking_failed))
                + "\n"
                + "\n".join(details),
                metadata={
                    "failures": MetadataValue.json(
                        {k: o.failures.head(20).astype(str).to_dict("records") for k, o in blocking_failed.items()}
                    )
                },
                allow_retries=False,
            )
        yield Output(out)
        yield lake_scan_result(bml, grid_ends)
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
