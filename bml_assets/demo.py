"""The offline demo: the real definitions, fed by the replay server on loopback.

What belongs here: starting the replay server, materializing the minute view for
a few symbol × day partitions through Dagster's own execution of the real
``Definitions``, and summarising what landed in the lake. What stays out: any
logic of its own about the data — it only drives the product.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from dagster import DagsterInstance

from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

# Dagster's per-event debug lines would bury the summary; warnings and errors still show.
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass
class PartitionReport:
    key: str
    success: bool
    status: str
    path: str | None
    rows: int | None
    checks: dict[str, bool] = field(default_factory=dict)
    error: str | None = None


def run_demo(
    *,
    lake_root: Path,
    symbols: tuple[str, ...],
    days: list[dt.date],
    vision_base_url: str | None = None,
    trades_per_day: int = 20_000,
    echo=print,
) -> list[PartitionReport]:
    """Materialize ``symbols`` × ``days`` into the lake at ``lake_root``; with no
    ``vision_base_url`` a replay server is started."""
    lake_root = Path(lake_root).resolve()  # the report names files by absolute paths
    server: ReplayServer | None = None
    if vision_base_url is None:
        # The market lists exactly the demo's symbols (the others would be "Invalid symbol").
        market = SyntheticMarket(MarketConfig(trades_per_day=trades_per_day, symbols=symbols))
        server = ReplayServer(market=market).start()
        vision_base_url = server.base_url
        echo(f"replay server (synthetic market) on {vision_base_url}")
    try:
        settings = Settings.from_env().with_(
            symbols=symbols, start_date=min(days), lake_root=lake_root, state_url="", vision_base_url=vision_base_url
        )
        if server is not None:
            # The replay server answers REST too: nothing in the demo reaches the internet.
            settings = settings.with_(rest_base_url=server.base_url)
        job = build_definitions(settings).resolve_job_def(MINUTE_VIEW_JOB)
        ledger, lake = Ledger(settings.state_url), Lake.from_settings(settings)
        reports: list[PartitionReport] = []
        with DagsterInstance.ephemeral() as instance:
            for symbol in symbols:
                for day in days:
                    key = partition_key(symbol, day)
                    echo(f"materializing minute_view {key} …")
                    result = job.execute_in_process(
                        partition_key=key, instance=instance, raise_on_error=False, run_config=QUIET
                    )
                    reports.append(_report(key, result, ledger, lake, symbol, day))
        return reports
    finally:
        if server is not None:
            server.stop()


def _report(key: str, result, ledger: Ledger, lake: Lake, symbol: str, day: dt.date) -> PartitionReport:
    record = ledger.get_partition(MINUTE_VIEW.name, symbol, day)
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = failures[0].step_failure_data.error.message.strip() if failures else "run failed"
    return PartitionReport(
        key=key,
        success=result.success,
        status=record.status if record else "missing",
        path=lake.store.location(record.path) if record and record.path else None,
        rows=record.row_count if record else None,
        checks=checks,
        error=error,
    )


def format_reports(reports: list[PartitionReport]) -> str:
    lines = [f"{'partition':<22} {'status':<13} {'rows':>5}  checks  file"]
    for r in reports:
        passed = sum(r.checks.values())
        lines.append(f"{r.key:<22} {r.status:<13} {r.rows!s:>5}  {passed:>2}/{len(r.checks):<3}  {r.path or ''}")
        if r.error:
            lines.append(f"    error: {r.error}")
    names = sorted({n for r in reports for n in r.checks})
    if names:
        lines.append("")
        lines.append("asset checks (partitions passed / checked):")
        for name in names:
            ran = [r.checks[name] for r in reports if name in r.checks]
            lines.append(f"  {'ok  ' if all(ran) else 'FAIL'} {name:<34} {sum(ran)}/{len(ran)}")
    return "\n".join(lines)
