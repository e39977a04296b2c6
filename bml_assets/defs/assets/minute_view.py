"""The canonical asset: the minute view of one symbol × UTC day.

What belongs here: the Dagster asset — its inputs (every stream table), its checks
(SPEC §6's rules through the factory in ``defs/checks.py``, and the lake scan of what
it committed) — and its body, one job per function: build and judge each partition
of the run (``days/minute_view.py``), refuse the run when a blocking rule failed
(nothing is handed to the IO manager then), hand the tables over, report the checks
— one evaluation per rule and partition, also in a ranged run.

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
    AssetCheckEvaluation,
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
from bml_assets.defs.checks import check_evaluation, check_specs, partitioned_check_spec, report_checks
from bml_assets.defs.io_manager import DATASET_METADATA_KEY, row_locator
from bml_assets.defs.resources import BuildResource, LakeResource, LedgerResource, RestResource, VisionResource
from bml_assets.domain.partitions import SymbolDay, parse_partition_key
from bml_assets.domain.schema import MINUTE_VIEW, TRADE_FLOW
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import scan
from bml_assets.quality import ALL_RULES, describe_failures

ASSET_NAME = "minute_view"
GROUP = "minute"
LAKE_SCAN_CHECK = "lake_scan_clean"


def lake_scan_evaluations(
    lake: Lake,
    ledger: Ledger,
    out: Mapping[str, PartitionData],
    grid_ends: Mapping[SymbolDay, dt.datetime | None],
) -> Iterator[AssetCheckEvaluation]:
    """The consistency scan (``lake/scan.py``) of each partition this run committed."""
    for partition, data in out.items():
        sd = parse_partition_key(partition)
        if sd not in grid_ends:
            yield AssetCheckEvaluation(
                asset_key=AssetKey(ASSET_NAME),
                check_name=LAKE_SCAN_CHECK,
                passed=True,
                description=f"nothing committed, nothing to scan ({data.status})",
                partition=partition,
            )
            continue
        # A day still forming is checked as "today": its later minutes are not missing yet.
        today = sd.day if grid_ends[sd] is not None else sd.day + dt.timedelta(days=1)
        problems = scan(lake, ledger, [sd.symbol], sd.day, sd.day, today=today, deep=True).to_rows()
        yield AssetCheckEvaluation(
            asset_key=AssetKey(ASSET_NAME),
            check_name=LAKE_SCAN_CHECK,
            passed=not problems,
            metadata={"problems": MetadataValue.json(problems)},
            partition=partition,
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


def _rule_evaluations(
    judged: Mapping[SymbolDay, JudgedDay], out: Mapping[str, PartitionData]
) -> Iterator[AssetCheckEvaluation]:
    """One evaluation per rule and partition; a partition with no minute view says so."""
    key = AssetKey(ASSET_NAME)
    for rule in ALL_RULES:
        for partition, data in out.items():
            sd = parse_partition_key(partition)
            if sd in judged:
                yield check_evaluation(key, rule, partition, judged[sd].outcomes[rule.name])
            else:
                yield AssetCheckEvaluation(
                    asset_key=key,
                    check_name=rule.name,
                    passed=True,
                    description=f"{rule.description} — nothing to check: no minute view ({data.status})",
                    partition=partition,
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
            *check_specs(key, partitions_def),
            partitioned_check_spec(
                LAKE_SCAN_CHECK,
                key,
                partitions_def,
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
        yield from report_checks(
            context, [*lake_scan_evaluations(ctx.lake, ctx.ledger, out, grid_ends), *_rule_evaluations(judged, out)]
        )

    return minute_view
