"""Retries where the exchange expects them, through ``bml run-once``'s hot pass.

- A REST answer whose body is not JSON is asked for again with the HTTP client's
  backoff; past the last attempt the pass fails naming the URL and the body, and the
  lake stays as it was (the replay server's ``malformed_json`` fault).
- Two writers racing on one partition: the hot pass that loses the compare-and-swap
  re-reads what the winner committed and runs again (``runner.MAX_RUN_ATTEMPTS``).
  The race is forced, not timed: ``DayContext.existing`` (the hot band's incremental
  base) is wrapped so that, right after the losing run has read its base, a whole
  second ``run-once`` pass — the winner — commits the same partition.

The replay server's market clock is fixed, so every writer sees the same exchange minute.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from bml_assets.cli import main
from bml_assets.days.context import DayContext
from bml_assets.domain.schema import KLINES
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger, PartitionRecord
from bml_assets.orchestration.hot import hot_pass
from bml_assets.orchestration.runner import MAX_RUN_ATTEMPTS
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets.storage.store import file_sha256

HOT_DAY = dt.date(2024, 6, 3)
CLOCK_AT = dt.datetime(2024, 6, 3, 10, 30, 20, tzinfo=dt.UTC)


@dataclass
class Race:
    settings: Settings
    server: ReplayServer
    env: dict[str, str]

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.state_url)

    def path(self, dataset: str) -> Path:
        return self.settings.lake_root / "futures/um" / dataset / "symbol=BTCUSDT" / f"date={HOT_DAY}" / "part.parquet"


@pytest.fixture
def race(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Race]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in list(os.environ):
        if name.startswith("BML_") or name == "DAGSTER_HOME":
            monkeypatch.delenv(name)
    market = SyntheticMarket(MarketConfig(seed=21, trades_per_day=2000))
    with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT)) as server:
        root = tmp_path / "lake"
        settings = Settings(
            symbols=("BTCUSDT",),
            start_date=dt.date(2024, 1, 1),
            lake_root=root,
            vision_base_url=server.base_url,
            rest_base_url=server.base_url,
        )
        env = {
            "BML_SYMBOLS": "BTCUSDT",
            "BML_START_DATE": "2024-01-01",
            "BML_LAKE_ROOT": str(root),
            "BML_VISION_BASE_URL": server.base_url,
            "BML_REST_BASE_URL": server.base_url,
        }
        yield Race(settings, server, env)


RACED = ("minute", KLINES.name)
KLINES_PATH = "/fapi/v1/klines"


def _rows(race: Race) -> dict[str, PartitionRecord | None]:
    return {name: race.ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in RACED}


def _klines_answers(race: Race) -> list[int]:
    return [e.status for e in race.server.rest_log if e.path == KLINES_PATH]


# --- malformed JSON ---------------------------------------------------------------------------


def test_a_malformed_json_body_is_asked_for_again(race: Race) -> None:
    # Cut in the middle, with a Content-Length that matches: only the JSON parser notices.
    race.server.faults.add(FaultRule("malformed_json", KLINES_PATH, times=2))
    outcomes = list(hot_pass(race.settings))
    assert [(o.ok, o.runs, o.error) for o in outcomes] == [(True, 1, None)]
    assert _klines_answers(race) == [200, 200, 200]  # two cut bodies, then the whole one
    assert _rows(race)["minute"] is not None and _rows(race)["minute"].row_count == 629  # 00:00 … 10:28
    assert race.ledger.get_watermark("BTCUSDT") == dt.datetime(2024, 6, 3, 10, 28, tzinfo=dt.UTC)


def test_a_body_that_stays_malformed_fails_clearly_and_keeps_the_lake(race: Race) -> None:
    assert all(o.ok for o in hot_pass(race.settings))
    before = _rows(race)
    files = {name: race.path(name).read_bytes() for name in RACED}
    race.server.clock.set(CLOCK_AT + dt.timedelta(minutes=5))
    race.server.faults.add(FaultRule("malformed_json", KLINES_PATH))
    race.server.clear_rest_log()
    (outcome,) = hot_pass(race.settings)
    assert not outcome.ok and outcome.runs == 1  # not a commit race: not run again
    error = outcome.error or ""
    assert f"malformed JSON from {race.server.base_url}{KLINES_PATH}?symbol=BTCUSDT" in error, error
    assert "(HTTP 200" in error and "first bytes b'[[" in error and "(after 5 attempts)" in error, error
    assert _klines_answers(race) == [200] * 5  # the HTTP client's 4 retries
    assert _rows(race) == before
    assert {name: race.path(name).read_bytes() for name in RACED} == files
    assert race.ledger.get_watermark("BTCUSDT") == dt.datetime(2024, 6, 3, 10, 28, tzinfo=dt.UTC)


# --- commit races -----------------------------------------------------------------------------


def _winner_commits_after_the_base_read(
    monkeypatch: pytest.MonkeyPatch, race: Race, *, times: int | None, advance: dt.timedelta = dt.timedelta(0)
) -> list[dict[str, PartitionRecord | None]]:
    """Wrap the hot band's base read: after the klines base of a run is read, another
    ``run-once`` pass commits the partition (``times`` runs are raced; None: every run).
    Returns the minute and klines ledger rows the winner left each time."""
    original = DayContext.existing
    winners: list[dict[str, PartitionRecord | None]] = []
    inside = []

    def existing(self: DayContext, dataset, sd):  # type: ignore[no-untyped-def]
        base = original(self, dataset, sd)
        if dataset is KLINES and not inside and (times is None or len(winners) < times):
            inside.append(True)  # the winner's own base reads are not raced
            try:
                race.server.clock.set(race.server.clock.now() + advance)
                assert all(o.ok for o in hot_pass(race.settings))
            finally:
                inside.clear()
            winners.append({name: race.ledger.get_partition(name, sd.symbol, sd.day) for name in RACED})
        return base

    monkeypatch.setattr(DayContext, "existing", existing)
    return winners


def test_the_run_once_that_loses_the_race_rereads_and_exits_0(race: Race, monkeypatch: pytest.MonkeyPatch) -> None:
    winners = _winner_commits_after_the_base_read(monkeypatch, race, times=1)
    result = CliRunner().invoke(main, ["run-once"], env=race.env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    # The loser's watermark "before" was read before the winner committed; it ends where the winner did.
    assert "BTCUSDT      2024-06-03 hot      none              -> 2024-06-03 10:28" in result.output
    assert len(winners) == 1
    ledger = race.ledger
    klines = ledger.get_partition(KLINES.name, "BTCUSDT", HOT_DAY)
    minute = ledger.get_partition("minute", "BTCUSDT", HOT_DAY)
    winner = winners[0][KLINES.name]
    assert winner is not None and klines is not None
    assert klines.content_hash == winner.content_hash  # built on the winner's table: same bytes
    assert minute is not None and minute.status == "committed"
    assert minute.row_count == 629  # 00:00 … 10:28
    assert file_sha256(race.path("minute")) == minute.content_hash
    assert ledger.get_watermark("BTCUSDT") == dt.datetime(2024, 6, 3, 10, 28, tzinfo=dt.UTC)


def test_the_second_run_builds_on_the_winner_and_commits_each_partition_once(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    winners = _winner_commits_after_the_base_read(monkeypatch, race, times=1)
    outcomes = list(hot_pass(race.settings))
    assert [(o.ok, o.runs, o.error) for o in outcomes] == [(True, 2, None)]
    # What the winner committed is what stays: the loser's second run rebuilt the same
    # bytes on the winner's table, so neither file nor ledger row was written again.
    (winner,) = winners
    assert all(record is not None and record.status == "committed" for record in winner.values())
    ledger = race.ledger
    after = {name: ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in RACED}
    assert after == winner  # committed_at included
    assert {name: file_sha256(race.path(name)) for name in RACED} == {
        name: record.content_hash for name, record in winner.items() if record is not None
    }
    # A further pass at the same exchange minute finds nothing to do.
    again = list(hot_pass(race.settings))
    assert [(o.day, o.ok) for o in again] == [(None, True)]
    assert {name: ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in RACED} == winner


def test_a_writer_that_keeps_losing_gives_up_after_the_last_attempt(
    race: Race, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The winner commits a newer minute before each of the loser's commits.
    winners = _winner_commits_after_the_base_read(monkeypatch, race, times=None, advance=dt.timedelta(minutes=1))
    outcomes = list(hot_pass(race.settings))
    assert len(outcomes) == 1
    outcome = outcomes[0]
    assert not outcome.ok and outcome.runs == MAX_RUN_ATTEMPTS
    assert "commit conflict on partition klines_1m/BTCUSDT/2024-06-03" in (outcome.error or ""), outcome.error
    hashes = [w[KLINES.name].content_hash for w in winners if w[KLINES.name] is not None]
    assert len(winners) == MAX_RUN_ATTEMPTS and len(set(hashes)) == MAX_RUN_ATTEMPTS
    # Nothing is lost: the last winner's commits stand, files and ledger agree.
    ledger = race.ledger
    assert {name: ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in RACED} == winners[-1]
    assert file_sha256(race.path(KLINES.name)) == hashes[-1]
    # Each winner moved the clock a minute on: 10:28 + 3 minutes.
    assert ledger.get_watermark("BTCUSDT") == dt.datetime(2024, 6, 3, 10, 31, tzinfo=dt.UTC)
