"""The Dagster face of data quality: asset check specs and results from the rules of ``quality.py``.

What belongs here: ``check_specs`` (one spec per rule of the minute view) and
``check_result``, the one factory that turns a rule's outcomes over a run's
partitions into an ``AssetCheckResult`` with its offending minutes as metadata.
What stays out: the rules themselves and how they are evaluated (``quality.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from bml_assets.quality import ALL_RULES, MAX_LISTED_FAILURES, NO_FAILURES, Outcome, Rule


def check_specs(asset_key: Any) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(asset=asset_key, **r.spec_kwargs) for r in ALL_RULES]


def check_result(rule: Rule, outcomes_by_partition: Mapping[str, Outcome]) -> AssetCheckResult:
    """The factory: pandera failure cases of one rule, over the run's partitions, as check metadata."""
    failing = {k: o for k, o in outcomes_by_partition.items() if not o.passed}
    frames = [o.failures.assign(partition=k) for k, o in failing.items()]
    cases = pd.concat(frames) if frames else NO_FAILURES.assign(partition=[])
    metadata: dict[str, Any] = {
        "partitions_checked": len(outcomes_by_partition),
        "partitions_failing": len(failing),
        "failure_count": len(cases),
    }
    if len(cases):
        shown = cases[["partition", "minute", "column", "value"]].head(MAX_LISTED_FAILURES)
        metadata["offending_minutes"] = MetadataValue.md(_markdown_table(shown))
        metadata["offending_minute_list"] = MetadataValue.json(
            sorted({str(m) for m in cases["minute"] if m})[:MAX_LISTED_FAILURES]
        )
    facts = {k: dict(o.facts) for k, o in outcomes_by_partition.items() if o.facts}
    if facts:
        metadata["facts"] = MetadataValue.json(facts)
    return AssetCheckResult(
        check_name=rule.name,
        passed=not failing,
        severity=AssetCheckSeverity.ERROR if rule.blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
        description=rule.description,
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
