"""The one entry point of the code location: assets, checks, resources and jobs.

What belongs here: assembling the Definitions from the factories of the other
modules, with the resources ``resources_for`` makes from one ``Settings``. What
stays out: everything else. The environment is read once, when Dagster loads the
definitions (the ``@definitions`` function ``defs``), not when this module is
imported: the partition set depends on ``BML_SYMBOLS`` and ``BML_START_DATE``.
Tests, the demo and the CLI pass their own ``Settings`` to ``build_definitions``.

Dagster's beta and preview notices about the parameters these definitions use (e.g.
``backfill_policy``) are silenced while they are built, and only then: each process that
loads the code location (the code server, every run) would print them again, hundreds of
lines in one ``dagster dev`` session, none a user can act on. Only those two categories,
only when Dagster's own modules raise them (``DAGSTER_NOTICES``); every other warning,
and these anywhere else, still show.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from dagster import (
    AssetSelection,
    BetaWarning,
    Definitions,
    PreviewWarning,
    define_asset_job,
    definitions,
    in_process_executor,
)

from bml_assets.defs.assets.live import build_live_spec
from bml_assets.defs.assets.minute_view import ASSET_NAME, build_minute_view_asset
from bml_assets.defs.assets.streams import IO_MANAGER_KEY, build_stream_assets
from bml_assets.defs.coverage import build_coverage_sensor
from bml_assets.defs.executor import backfill_executor
from bml_assets.defs.io_manager import LakeIOManager
from bml_assets.defs.partitions import build_partitions_def
from bml_assets.defs.repair import build_repair_sensor, build_scan_job
from bml_assets.defs.resources import resources_for
from bml_assets.defs.sensors import build_hot_poll_sensor, build_live_collector_sensor, build_vision_promotion_sensor
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger

MINUTE_VIEW_JOB = "minute_view_job"
HOT_JOB = "hot_minute_job"
DAGSTER_NOTICES: tuple[type[Warning], ...] = (BetaWarning, PreviewWarning)
"""Warning categories silenced while the definitions are built (see the module docstring)."""


@contextmanager
def quiet_dagster_notices() -> Iterator[None]:
    """Dagster's beta/preview notices, raised from Dagster's own modules, ignored inside."""
    with warnings.catch_warnings():
        for category in DAGSTER_NOTICES:
            warnings.filterwarnings("ignore", category=category, module=r"dagster(_shared)?(\.|$)")
        yield


def synced_listing_dates(ledger: Ledger) -> dict[str, dt.date]:
    """Onboard days from the synced universe (``bml symbols sync``): earlier days are not work."""
    return {s: r.onboard_date for s, r in ledger.symbols().items() if r.onboard_date is not None}


def build_definitions(settings: Settings) -> Definitions:
    """The code location for ``settings``: its partitions, assets, jobs, sensors and resources."""
    with quiet_dagster_notices():
        return _build(settings)


def _build(settings: Settings) -> Definitions:
    partitions_def = build_partitions_def(settings)
    resources = resources_for(settings)
    assets = [
        *build_stream_assets(partitions_def),
        build_live_spec(partitions_def),
        build_minute_view_asset(partitions_def),
    ]
    minute_view_job = define_asset_job(
        MINUTE_VIEW_JOB,
        selection=AssetSelection.assets(ASSET_NAME).upstream(),
        partitions_def=partitions_def,
        executor_def=backfill_executor(settings),
        description="Build the minute view of the selected symbol × day partitions from Binance Vision.",
    )
    # The hot poll runs every minute: one process for all its steps keeps it within seconds.
    hot_job = define_asset_job(
        HOT_JOB,
        selection=AssetSelection.assets(ASSET_NAME).upstream(),
        partitions_def=partitions_def,
        executor_def=in_process_executor,
        description="One incremental poll of a live day (REST): new closed minutes committed, watermark advanced.",
    )
    return Definitions(
        # One process per run: on a small machine a process per step costs more than the
        # step (bench/results.md: 87 % orchestration); parallelism comes from concurrent runs.
        executor=in_process_executor,
        assets=assets,
        jobs=[
            minute_view_job,
            hot_job,
            build_scan_job(settings.symbols, settings.start_date, listing_dates=synced_listing_dates),
        ],
        sensors=[
            build_hot_poll_sensor(settings.symbols, job_name=HOT_JOB),
            build_vision_promotion_sensor(job_name=MINUTE_VIEW_JOB),
            build_live_collector_sensor(settings.symbols),
            build_coverage_sensor(settings.symbols),
            build_repair_sensor(
                settings.symbols,
                settings.start_date,
                job_name=MINUTE_VIEW_JOB,
                listing_dates=synced_listing_dates,
                cache_max_bytes=settings.vision_cache_max_bytes,
                # Against the real exchange, the default start (years back) is not a choice the user made.
                cautious=settings.vision_base_url == Settings.vision_base_url
                and settings.start_date == Settings.start_date,
            ),
        ],
        resources={
            **resources.by_key(),
            IO_MANAGER_KEY: LakeIOManager(lake=resources.lake, ledger=resources.ledger),
        },
    )


@definitions
def defs() -> Definitions:
    return build_definitions(Settings.from_env())
