"""orchestration/backfill.py's loop on a real tmp lake and ledger, with a fake run helper in place of
Dagster: scan → sweep → plan → execute → rescan, as the events the CLI prints, and its ends (clean,
failures left, interrupted, dry run, nothing listed, refused before any work)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.commit import commit_table
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger, SymbolRecord
from bml_assets.orchestration.backfill import (
    UNIVERSE_NOT_SYNCED,
    Building,
    Estimated,
    Finished,
    Interrupted,
    Note,
    PartitionOutcome,
    Planned,
    Scanned,
    Scanning,
    run_backfill,
)
from bml_assets.orchestration.errors import BadRequest, UnknownSymbol
from bml_assets.orchestration.runner import RunOutcome
from bml_assets.quality import enforce_blocking
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets_tests.unit.lake._helpers import minute_table

BTC, ETH = "BTCUSDT", "ETHUSDT"
D1, D2 = dt.date(2024, 3, 1), dt.date(2024, 3, 2)
TODAY = dt.date(2024, 3, 10)
VISION = {"klines": {"status": "vision", "files": []}}


class FakeRunner:
    """Stands in for the Dagster run helper: a run commits a whole valid minute-view day
    (as the real job would), fails, or reports an interrupt, per partition."""

    def __init__(self, settings: Settings, *, fail: Mapping[tuple[str, dt.date], RunOutcome] | None = None) -> None:
        self.settings = settings
        self.fail = dict(fail or {})
        self.calls: list[tuple[str, dt.date, dict[str, str]]] = []

    def run(self, symbol: str, day: dt.date, tags: Mapping[str, str]) -> RunOutcome:
        self.calls.append((symbol, day, dict(tags)))
        if (symbol, day) in self.fail:
            return self.fail[(symbol, day)]
        with Ledger(self.settings.state_url) as ledger:
            commit_table(
                minute_table(day),
                lake=Lake.at(self.settings.lake_root),
                ledger=ledger,
                dataset=MINUTE_VIEW,
                symbol=symbol,
                day=day,
                validate=lambda t: enforce_blocking(t, day, label=f"fake run {symbol} {day}"),
                provenance=VISION,
            )
        return RunOutcome(True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(symbols=(BTC, ETH), lake_root=tmp_path / "lake")


def backfill(settings: Settings, runner: FakeRunner, **kw: Any) -> list[Any]:
    return list(run_backfill(settings, D1, D2, today=TODAY, runner=runner, chunk_days=1, **kw))


def built(event: PartitionOutcome) -> tuple[str, dt.date, bool, str, bool, str | None]:
    return (event.symbol, event.day, event.ok, event.status, event.rewritten, event.error)


def committed(settings: Settings) -> list[tuple[str, dt.date]]:
    with Ledger(settings.state_url) as ledger:
        rows = ledger.partitions(dataset=MINUTE_VIEW.name)
    return sorted((r.symbol, r.day) for r in rows if r.status == "committed")


def stray_in(settings: Settings, symbol: str, day: dt.date) -> Path:
    folder = Path(Lake.at(settings.lake_root).location(MINUTE_VIEW, symbol, day)).parent
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f".part.parquet.{7:032x}.tmp"
    path.write_bytes(b"left by a killed commit")
    return path


def test_an_empty_lake_is_scanned_swept_planned_built_and_rescanned_clean(settings: Settings) -> None:
    runner = FakeRunner(settings)
    stray = stray_in(settings, BTC, D1)
    events = backfill(settings, runner)

    kinds = [type(e) for e in events]
    assert kinds == [
        Note, Scanning, Scanned, Scanned, Note, Planned, Building,
        PartitionOutcome, PartitionOutcome, PartitionOutcome, PartitionOutcome, Finished,
    ]  # fmt: skip
    assert events[0].text == UNIVERSE_NOT_SYNCED
    assert events[1].spans == ((D1, D1), (D2, D2))
    assert [e.span for e in events[2:4]] == [(D1, D1), (D2, D2)]
    assert events[4].text == "swept 1 stray temporary file(s)" and not stray.exists()
    # A run's plan leaves out the partition list; chunk by chunk, symbol by symbol.
    assert events[5].lines() == ["plan: 4 partition(s) to build (96 h) in 2024-03-01..2024-03-02 for BTCUSDT, ETHUSDT"]
    assert events[6].plan is events[5].plan
    assert [built(e) for e in events[7:11]] == [
        (BTC, D1, True, "committed", True, None),
        (ETH, D1, True, "committed", True, None),
        (BTC, D2, True, "committed", True, None),
        (ETH, D2, True, "committed", True, None),
    ]
    assert runner.calls == [
        (BTC, D1, {"bml/backfill": "2024-03-01..2024-03-02"}),
        (ETH, D1, {"bml/backfill": "2024-03-01..2024-03-02"}),
        (BTC, D2, {"bml/backfill": "2024-03-01..2024-03-02"}),
        (ETH, D2, {"bml/backfill": "2024-03-01..2024-03-02"}),
    ]
    end = events[-1]
    assert end.clean and end.remaining == () and len(end.outcomes) == 4
    assert end.lines() == [
        "built 4 of 4 partition(s) (4 committed; 4 written, 0 unchanged)",
        "traffic: 0 B received, REST weight 0",  # the fake runner fetches nothing
        "final scan: clean",
    ]

    # Again: the rescan finds nothing, so nothing is planned, built or run.
    again = backfill(settings, runner)
    assert [type(e) for e in again] == [Note, Scanning, Scanned, Scanned, Planned, Finished]
    assert again[-2].plan.partitions == () and again[-1].clean
    assert again[-1].lines() == ["built 0 of 0 partition(s)", "final scan: clean"]
    assert len(runner.calls) == 4


def test_a_failed_partition_does_not_stop_the_others_and_the_rescan_reports_it(settings: Settings) -> None:
    runner = FakeRunner(settings, fail={(BTC, D1): RunOutcome(False, 1, "minute_view: the day has no klines")})
    events = backfill(settings, runner)
    outcomes = [built(e) for e in events if isinstance(e, PartitionOutcome)]
    assert outcomes == [
        (BTC, D1, False, "missing", False, "minute_view: the day has no klines"),
        (ETH, D1, True, "committed", True, None),
        (BTC, D2, True, "committed", True, None),
        (ETH, D2, True, "committed", True, None),
    ]
    end = events[-1]
    assert isinstance(end, Finished) and not end.clean
    assert [(p.symbol, p.day, str(p.kind)) for p in end.remaining] == [(BTC, D1, "not_built")]
    assert end.lines() == [
        "built 3 of 4 partition(s) (3 committed; 3 written, 0 unchanged)",
        "traffic: 0 B received, REST weight 0",
        "FAILED 1 partition(s):",
        "  BTCUSDT 2024-03-01: minute_view: the day has no klines",
        "final scan: 1 problem(s) remain (not_built: 1)",
    ]
    assert committed(settings) == [(BTC, D2), (ETH, D1), (ETH, D2)]


def test_an_interrupted_run_ends_the_loop_with_what_was_committed_kept(settings: Settings) -> None:
    runner = FakeRunner(settings, fail={(ETH, D1): RunOutcome(False, 1, "minute_view: stopped", interrupted=True)})
    events = backfill(settings, runner)
    assert [type(e) for e in events[-4:]] == [Building, PartitionOutcome, PartitionOutcome, Interrupted]
    assert built(events[-2]) == (ETH, D1, False, "missing", False, "interrupted")
    assert (events[-1].done, events[-1].planned) == (1, 4)
    assert [(s, d) for s, d, _ in runner.calls] == [(BTC, D1), (ETH, D1)]  # the rest of the plan is not run
    assert committed(settings) == [(BTC, D1)]


def test_a_dry_run_plans_without_sweeping_or_building(settings: Settings) -> None:
    runner = FakeRunner(settings)
    stray = stray_in(settings, ETH, D2)
    with ReplayServer(market=SyntheticMarket(MarketConfig(trades_per_day=200))) as vision:
        # The estimate asks the Vision host for sizes (HEAD): the replay server, never the internet.
        local = dataclasses.replace(settings, vision_base_url=vision.base_url)
        events = backfill(local, runner, dry_run=True, max_missing_hours=48)
    assert [type(e) for e in events] == [Note, Scanning, Scanned, Scanned, Planned, Estimated, Finished]
    assert events[-3].lines() == [
        "plan: 2 partition(s) to build (48 h) in 2024-03-01..2024-03-02 for BTCUSDT, ETHUSDT",
        "  BTCUSDT      2024-03-01  not_built (1 day(s))",
        "  ETHUSDT      2024-03-01  not_built (1 day(s))",
        "cap reached: --max-missing-hours 48 allows 48 h; 2 more partition(s) (48 h) left for a later run",
    ]
    estimate = events[-2].estimate
    # Per day: 7 daily streams, the day before's metrics, fundingRate of February and March.
    assert (estimate.partitions, estimate.committed_skipped, estimate.zips, estimate.heads) == (2, 0, 20, 16)
    assert (estimate.cached_zips, estimate.known_zips, estimate.headed_zips, estimate.unsized_zips) == (0, 0, 20, 0)
    assert estimate.headed_bytes > 0 and estimate.rest_days == 0 and estimate.rate_per_min is None
    assert estimate.head_error is None
    end = events[-1]
    assert not end.clean and end.lines() == []  # the plan said it all
    assert [(p.symbol, p.day) for p in end.remaining] == [(BTC, D2), (ETH, D2)]  # what the cap leaves
    assert runner.calls == [] and committed(settings) == [] and stray.exists()


def test_symbols_not_listed_in_the_range_end_the_loop_before_any_scan(settings: Settings) -> None:
    with Ledger(settings.state_url) as ledger:
        ledger.init()
        ledger.upsert_symbols([SymbolRecord(ETH, onboard_date=dt.date(2024, 3, 5), status="TRADING")])
    events = list(run_backfill(settings, D1, D2, symbols=(ETH,), today=TODAY, runner=FakeRunner(settings)))
    assert [type(e) for e in events] == [Note, Finished]
    assert events[0].text == "ETHUSDT: 2024-03-01..2024-03-02 is before its listing on 2024-03-05: nothing to do"
    assert events[1].plan is None and events[1].clean and events[1].lines() == []


@pytest.mark.parametrize(
    ("start", "end", "symbols", "error", "message"),
    [
        (D2, D1, None, BadRequest, "the range is reversed: --start 2024-03-02 is after --end 2024-03-01"),
        (D1, dt.date(2024, 3, 11), None, BadRequest, r"--end 2024-03-11 is after today \(2024-03-10 UTC\)"),
        (D1, D2, ("XRPUSDT",), UnknownSymbol, r"unknown symbol XRPUSDT: not in BML_SYMBOLS \(BTCUSDT,ETHUSDT\)"),
    ],
)
def test_a_request_that_cannot_be_is_refused_before_any_work(
    settings: Settings, start: dt.date, end: dt.date, symbols: tuple[str, ...] | None, error: type, message: str
) -> None:
    runner = FakeRunner(settings)
    with pytest.raises(error, match=message):
        next(run_backfill(settings, start, end, symbols=symbols, today=TODAY, runner=runner))
    assert runner.calls == []
    if error is BadRequest:  # refused before the lake root is even created
        assert not settings.lake_root.exists()
