"""End-to-end fixtures: the replay server on a free loopback port and a fresh lake per test."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult

from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake as BmlLake
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

# Fixed dates, far from any real "today": the synthetic market publishes them all.
DAY = dt.date(2024, 3, 1)  # a 1st of the month, bookTicker still published
DOWNTIME_DAY = dt.date(2024, 3, 2)
DOWNTIME = ((600, 3),)  # 10:00-10:02 UTC: the exchange produced nothing
LISTING = dt.date(2024, 2, 20)
SYMBOLS = ("BTCUSDT", "ETHUSDT")
TRADES_PER_DAY = 4000
MARKET_TODAY = dt.date(2026, 11, 1)


def failure_text(result: ExecuteInProcessResult) -> str:
    """Every error message of a run's failed steps, causes included."""
    texts = []
    for event in result.all_events:
        if event.is_step_failure:
            err = event.step_failure_data.error
            while err is not None:
                texts.append(err.message)
                err = err.cause
    return "\n".join(texts)


@pytest.fixture(scope="session")
def market() -> SyntheticMarket:
    return SyntheticMarket(
        MarketConfig(
            seed=11,
            trades_per_day=TRADES_PER_DAY,
            listing_dates={"ETHUSDT": LISTING},
            downtime={("BTCUSDT", DOWNTIME_DAY): DOWNTIME},
            shuffle_and_duplicate=True,
            # Publication is judged against this day, not the wall clock.
            today=MARKET_TODAY,
        )
    )


@pytest.fixture(scope="session")
def replay(market: SyntheticMarket) -> Iterator[ReplayServer]:
    server = ReplayServer(market=market).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Lake:
    """A lake in a temp dir wired to the replay server through the real definitions."""

    root: Path
    settings: Settings
    defs: Definitions
    instance: DagsterInstance

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.state_url)

    @property
    def lake(self) -> BmlLake:
        """The product's lake object over ``root`` (its store and locks)."""
        return BmlLake.at(self.root)

    def materialize(self, symbol: str, day: dt.date) -> ExecuteInProcessResult:
        job = self.defs.resolve_job_def(MINUTE_VIEW_JOB)
        return job.execute_in_process(
            partition_key=partition_key(symbol, day), instance=self.instance, raise_on_error=False
        )

    def minute_path(self, symbol: str, day: dt.date) -> Path:
        return self.root / "futures" / "um" / "minute" / f"symbol={symbol}" / f"date={day.isoformat()}" / "part.parquet"


def make_lake(root: Path, vision_base_url: str, instance: DagsterInstance, **settings_fields: object) -> Lake:
    """``settings_fields``: more ``Settings`` fields (e.g. ``vision_max_csv_bytes``)."""
    # The replay server answers REST too (repairs of missing Vision files go there).
    settings = Settings(
        symbols=SYMBOLS,
        start_date=dt.date(2019, 1, 1),
        lake_root=root,
        vision_base_url=vision_base_url,
        rest_base_url=vision_base_url,
        **settings_fields,  # type: ignore[arg-type]
    )
    return Lake(root, settings, build_definitions(settings), instance)


@pytest.fixture
def lake(tmp_path: Path, replay: ReplayServer) -> Iterator[Lake]:
    replay.faults.clear()
    with DagsterInstance.ephemeral() as instance:
        yield make_lake(tmp_path / "lake", replay.base_url, instance)
    replay.faults.clear()
