"""The canonical asset: the minute view of one symbol × UTC day.

What belongs here: the Dagster asset — its inputs (every stream table), its checks
(SPEC §6's rules through the factory in ``defs/checks.py``, and the lake scan of what
it committed) — and its body, one job per function: build and judge each partition
of the run (``days/minute_view.py``), refuse the run when a blocking rule failed
(nothing is handed to the IO manager then), hand the tables over, report the checks.

The blocking rules run once per table: here, with the reported ones, on one evidence;
the table carries that verdict (``PartitionData.blocking``) and the IO manager's commit
does not judge the very same table again. Any table without a verdict about it — a
stream table, or one that was replaced after judging — is judged by the commit before
the rename, so a bad value is never published either way. What stays out: building
and judging a day (``days/``), the rules (``quality.py``) and the commit (the IO
manager).

No ``from __future__ import annotations``: Dagster reads the resource parameters'
annotations at definition time.
"""

import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

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

from bml_assets.days.context import DayContext
from bml_assets.days.minute_view import UPSTREAMS, HardStreamsDisagree, JudgedDay, judge_day, minute_view_day
from bml_assets.days.partition_data import PartitionData
from bml_assets.defs.assets.streams import (
    IO_MANAGER_KEY,
    MAX_PARTITIONS_PER_RUN,
    day_context,
    hot_band_run,
    run_partitions,
)
from bml_assets.defs.checks import check_result, check_specs
from bml_assets.defs.io_manager import DATASET_METADATA_KEY, row_locator
from bml_assets.defs.resources import BuildResource, LakeResource, LedgerResource, RestResource, VisionResource
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.schema import MINUTE_VIEW, TRADE_FLOW
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import scan
from bml_assets.quality import ALL_RULES, describe_failures

ASSET_NAME = "minute_view"
GROUP = "minute"
LAKE_SCAN_CHECK = "lake_scan_clean"


def lake_scan_result(lake: Lake, ledger: Ledger, grid_ends: Mapping[SymbolDay, dt.datetime | None]) -> AssetCheckResult:
    """The consistency scan (``lake/scan.py``) of the partitions this run committed."""
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


def _build_and_judge(
    context: AssetExecutionContext,
    ctx: DayContext,
    upstream: Mapping[str, Mapping[str, PartitionData]],
) -> tuple[dict[str, PartitionData], dict[SymbolDay, JudgedDay], dict[SymbolDay, dt.datetime | None]]:
    """Each partition of the run built and, when it has a table, judged; logged as it goes.
    Returns the data by partition key, the judged days and their grid ends."""
    out: dict[str, PartitionData] = {}
    judged: dict[SymbolDay, JudgedDay] = {}
    grid_ends: dict[SymbolDay, dt.datetime | None] = {}
    partitions = run_partitions(context)
    quiet = hot_band_run(context.run.tags)
    for i, sd in enumerate(partitions, start=1):
        inputs = {name: by_key[sd.key] for name, by_key in upstream.items()}
        try:
            day = minute_view_day(ctx, sd, inputs)
        except HardStreamsDisagree as err:
            raise Failure(description=str(err), allow_retries=False) from err
        if day.data.table is None:
            out[sd.key] = day.data
            context.log.warning(f"[{i}/{len(partitions)}] minute view {sd}: {day.data.status} — {day.data.message}")
            continue
        judged[sd] = judge_day(ctx, sd, day, inputs[TRADE_FLOW.name])
        data = out[sd.key] = judged[sd].data
        grid_ends[sd] = day.grid_end
        assert data.table is not None
        if quiet:
            continue
        incomplete = ", ".join(m["stream"] for m in data.missing_streams)
        weight = data.provenance.rest_weight()
        context.log.info(
            f"[{i}/{len(partitions)}] minute view {sd}: {data.table.num_rows} rows, "
            f"{len(data.source_gaps)} source-gap minutes"
            + (f", REST weight {weight}" if weight else "")
            + (f", incomplete: {incomplete} missing" if incomplete else "")
        )
    return out, judged, grid_ends


def _refuse_if_blocked(judged: Mapping[SymbolDay, JudgedDay]) -> None:
    """Stop before the IO manager sees the output when a blocking rule failed: nothing is published."""
    failed = {sd: j for sd, j in judged.items() if j.blocking_failed}
    if not failed:
        return
    details = [
        f"minute view {sd.key}: not committed — "
        + describe_failures(j.blocking_failed, row_locator(MINUTE_VIEW, j.data))
        for sd, j in sorted(failed.items(), key=lambda item: item[0].key)
    ]
    failures = {f"{o.rule.name} {sd.key}": o for sd, j in failed.items() for o in j.blocking_failed}
    raise Failure(
        description="minute view not published, blocking checks failed: "
        + ", ".join(sorted(failures))
        + "\n"
        + "\n".join(details),
        metadata={
            "failures": MetadataValue.json(
                {k: o.failures.head(20).astype(str).to_dict("records") for k, o in failures.items()}
            )
        },
        allow_retries=False,
    )


def _check_results(
    judged: Mapping[SymbolDay, JudgedDay], out: Mapping[str, PartitionData]
) -> Iterator[AssetCheckResult]:
    """One result per rule over the run's judged partitions (a run with none says so)."""
    for rule in ALL_RULES:
        if not judged:
            yield AssetCheckResult(
                check_name=rule.name,
                passed=True,
                description=f"{rule.description} — nothing to check: no minute view for "
                + ", ".join(f"{k} ({d.status})" for k, d in out.items()),
                metadata={"partitions_checked": 0},
            )
            continue
        yield check_result(rule, {sd.key: j.outcomes[rule.name] for sd, j in judged.items()})


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
        context: AssetExecutionContext,
        ledger: LedgerResource,
        lake: LakeResource,
        vision: VisionResource,
        rest: RestResource,
        build: BuildResource,
        **upstream: dict[str, PartitionData],
    ) -> Iterator[Any]:
        ctx = day_context(context, ledger=ledger, lake=lake, vision=vision, rest=rest, build=build)
        out, judged, grid_ends = _build_and_judge(context, ctx, upstream)
        _refuse_if_blocked(judged)
        # The IO manager commits each table (the watermark moves in the commit's transaction).
        yield Output(out)
        yield lake_scan_result(ctx.lake, ctx.ledger, grid_ends)
        yield from _check_results(judged, out)

    return minute_view
