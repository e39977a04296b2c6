"""The Dagster face of data quality: asset check specs and per-partition evaluations from ``quality.py``.

What belongs here: ``check_specs`` (one spec per rule of the minute view, partitioned
like the asset, so the UI's Checks tab shows each result against its partition),
``check_evaluation``, the one factory that turns a rule's outcome on one partition
into an ``AssetCheckEvaluation`` with its offending minutes as metadata, and
``report_checks``, which hands a run's evaluations to Dagster — one per partition
even in a ranged run, where Dagster's ``AssetCheckResult`` would carry no partition.
What stays out: the rules themselves and how they are evaluated (``quality.py``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import pandas as pd
from dagster import (
    AssetCheckEvaluation,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    MetadataValue,
    Output,
    PartitionsDefinition,
    PreviewWarning,
)

from bml_assets.quality import ALL_RULES, MAX_LISTED_FAILURES, Outcome, Rule


def partitioned_check_spec(
    name: str, asset_key: AssetKey, partitions_def: PartitionsDefinition, **kwargs: Any
) -> AssetCheckSpec:
    """A check spec partitioned like its asset. Dagster 1.13 calls ``partitions_def`` on a
    check spec a preview (the project pins Dagster < 1.14); its notice, raised once per spec
    from our frame, is the one silenced here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*partitions_def on an AssetCheckSpec", category=PreviewWarning)
        return AssetCheckSpec(name, asset=asset_key, partitions_def=partitions_def, **kwargs)


def check_specs(asset_key: AssetKey, partitions_def: PartitionsDefinition) -> list[AssetCheckSpec]:
    return [
        partitioned_check_spec(asset_key=asset_key, partitions_def=partitions_def, **r.spec_kwargs) for r in ALL_RULES
    ]


def check_evaluation(asset_key: AssetKey, rule: Rule, partition: str, outcome: Outcome) -> AssetCheckEvaluation:
    """The factory: one rule's pandera failure cases on one partition, as check metadata."""
    cases = outcome.failures
    metadata: dict[str, Any] = {"failure_count": len(cases)}
    if len(cases):
        shown = cases[["minute", "column", "value"]].head(MAX_LISTED_FAILURES)
        metadata["offending_minutes"] = MetadataValue.md(_markdown_table(shown))
        metadata["offending_minute_list"] = MetadataValue.json(
            sorted({str(m) for m in cases["minute"] if m})[:MAX_LISTED_FAILURES]
        )
    if outcome.facts:
        metadata["facts"] = MetadataValue.json(dict(outcome.facts))
    return AssetCheckEvaluation(
        asset_key=asset_key,
        check_name=rule.name,
        passed=outcome.passed,
        severity=AssetCheckSeverity.ERROR if rule.blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
        description=rule.description,
        partition=partition,
    )


def report_checks(
    context: AssetExecutionContext, evaluations: Iterable[AssetCheckEvaluation]
) -> Iterator[Output | AssetCheckEvaluation]:
    """Every selected check's step output once (Dagster requires it), then its evaluations.

    An ``AssetCheckResult`` takes its partition from a single-partition run only; a
    ranged run's results would read "Partition —" in the UI, so each partition's
    evaluation is handed over as such."""
    selected = context.selected_asset_check_keys
    for key in sorted(selected, key=lambda k: k.name):
        yield Output(None, output_name=context.assets_def.get_output_name_for_asset_check_key(key))
    yield from (e for e in evaluations if e.asset_check_key in selected)


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
