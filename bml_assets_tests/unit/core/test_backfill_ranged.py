"""Ranged runs of a backfill (orchestration/plan.run_batches, backfill.execute_plan with a runner
that can run a range), the one Dagster instance under the lake root, the partitions the ledger has
reported to Dagster, and failure lines that name the root cause (runner.plain_cause)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey

from bml_assets.domain.settings import Settings
from bml_assets.orchestration import backfill
from bml_assets.orchestration.backfill import execute_plan, report_unknown_partitions
from bml_assets.orchestration.plan import Target, plan_backfill, run_batches
from bml_assets.orchestration.runner import RunOutcome, dagster_home, dagster_instance, plain_cause
from bml_assets_tests.unit.core.test_backfill_loop import BTC, ETH, FakeRunner, committed

D = [dt.date(2024, 3, 1) + dt.timedelta(days=i) for i in range(6)]


def t(symbol: str, i: int) -> Target:
    return Target(symbol, D[i])


def keys(batches: list[tuple[Target, ...]]) -> list[list[tuple[str, int]]]:
    return [[(x.symbol, D.index(x.day)) for x in b] for b in batches]


def test_batches_are_one_symbols_consecutive_days_capped_and_shared_among_workers() -> None:
    plan = [t(BTC, 0), t(BTC, 1), t(BTC, 2), t(BTC, 4), t(ETH, 0), t(ETH, 1)]
    assert keys(run_batches(plan, per_run=30)) == [[(BTC, 0), (BTC, 1), (BTC, 2)], [(BTC, 4)], [(ETH, 0), (ETH, 1)]]
    assert keys(run_batches(plan, per_run=2)) == [
        [(BTC, 0), (BTC, 1)], [(BTC, 2)], [(BTC, 4)], [(ETH, 0), (ETH, 1)],
    ]  # fmt: skip
    # 6 days of one symbol on 2 workers: 2 runs of 3, not one of 6.
    six = [t(BTC, i) for i in range(6)]
    assert keys(run_batches(six, per_run=30, workers=2)) == [
        [(BTC, i) for i in range(3)],
        [(BTC, i) for i in range(3, 6)],
    ]
    assert keys(run_batches(six, per_run=1)) == [[(BTC, i)] for i in range(6)]
    with pytest.raises(ValueError, match="at least 1"):
        run_batches(six, per_run=0)


class RangeFakeRunner(FakeRunner):
    """A FakeRunner that also runs ranges: a range commits each day, unless one of its days
    is to fail, when the whole run fails (as one failed Dagster step fails the run)."""

    def __init__(self, settings: Settings, **kw) -> None:
        super().__init__(settings, **kw)
        self.ranges: list[tuple[str, dt.date, dt.date]] = []

    def run_range(self, symbol: str, first: dt.date, last: dt.date, tags: Mapping[str, str]) -> RunOutcome:
        self.ranges.append((symbol, first, last))
        days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
        if any((symbol, d) in self.fail for d in days):
            return RunOutcome(False, 1, "minute_view: one day failed the run")
        for d in days:
            super().run(symbol, d, tags)
        self.calls = [c for c in self.calls if c[0] != symbol or c[1] not in days]  # count ranges apart
        return RunOutcome(True)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(symbols=(BTC, ETH), lake_root=tmp_path / "lake")


def plan_of(targets: list[Target]):
    return plan_backfill(targets, start=D[0], end=D[-1], symbols=(BTC, ETH))


def test_a_range_is_one_run_and_a_failed_range_is_run_again_day_by_day(settings: Settings) -> None:
    runner = RangeFakeRunner(settings, fail={(ETH, D[1]): RunOutcome(False, 1, "minute_view: no klines for ETH")})
    plan = plan_of([t(BTC, 0), t(BTC, 1), t(BTC, 2), t(ETH, 0), t(ETH, 1), t(ETH, 2)])
    outcomes = list(execute_plan(plan, settings, runner=runner))
    assert runner.ranges == [(BTC, D[0], D[2]), (ETH, D[0], D[2])]
    # The failed range, day by day: only the bad day fails, with its own cause.
    assert [(s, D.index(d)) for s, d, _ in runner.calls] == [(ETH, 0), (ETH, 1), (ETH, 2)]
    assert [(o.symbol, D.index(o.day), o.ok, o.status, o.error) for o in outcomes] == [
        (BTC, 0, True, "committed", None),
        (BTC, 1, True, "committed", None),
        (BTC, 2, True, "committed", None),
        (ETH, 0, True, "committed", None),
        (ETH, 1, False, "missing", "minute_view: no klines for ETH"),
        (ETH, 2, True, "committed", None),
    ]
    assert len(committed(settings)) == 5


def test_a_runner_of_this_process_is_not_shared_with_workers(settings: Settings) -> None:
    with pytest.raises(ValueError, match="workers=1"):
        list(execute_plan(plan_of([t(BTC, 0)]), settings, runner=FakeRunner(settings), workers=2))


def test_a_plan_of_one_run_runs_in_this_process_whatever_workers_says(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker process would pay the imports, definitions and instance again (bench/results.md).
    here = FakeRunner(settings)

    @contextmanager
    def in_process(*_args: Any, **_kwargs: Any) -> Iterator[FakeRunner]:
        yield here

    def no_pool(*_args: Any, **_kwargs: Any) -> None:
        pytest.fail("a worker process was started for a plan of one run")

    monkeypatch.setattr(backfill, "in_process", in_process)
    monkeypatch.setattr(backfill, "ProcessPoolExecutor", no_pool)
    outcomes = list(execute_plan(plan_of([t(BTC, 2)]), settings, workers=2))
    assert [(s, D.index(d)) for s, d, _ in here.calls] == [(BTC, 2)]
    assert [(o.symbol, D.index(o.day), o.ok, o.status) for o in outcomes] == [(BTC, 2, True, "committed")]


def test_the_instance_lives_under_the_lake_root_unless_dagster_home_is_set(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    home = dagster_home(settings)
    assert home == (tmp_path / "lake" / "_dagster").resolve()
    assert "max_concurrent_runs" in (home / "dagster.yaml").read_text()  # the project's settings, copied
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "elsewhere"))
    assert dagster_home(settings) == (tmp_path / "elsewhere").resolve()


def test_partitions_the_ledger_has_and_dagster_has_not_are_reported_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    list(execute_plan(plan_of([t(BTC, 0), t(ETH, 1)]), settings, runner=FakeRunner(settings)))  # ledger only
    assert report_unknown_partitions(settings, (BTC, ETH), D[0], D[-1]) == 2
    with dagster_instance(settings) as instance:
        assert instance.get_materialized_partitions(AssetKey("minute_view")) == {
            "2024-03-01|BTCUSDT",
            "2024-03-02|ETHUSDT",
        }
    assert report_unknown_partitions(settings, (BTC, ETH), D[0], D[-1]) == 0  # known now


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "GET http://127.0.0.1:9/data/futures/um/daily/klines/x.zip failed: ConnectionError: HTTPConnectionPool"
            "(host='127.0.0.1', port=9): Max retries exceeded (Caused by NewConnectionError('Failed to establish a "
            "new connection: [Errno 111] Connection refused'))",
            "connection refused at http://127.0.0.1:9/data/futures/um/daily/klines/x.zip",
        ),
        ("OSError: [Errno 28] No space left on device: '/lake/x.tmp'\nmore", "No space left on device (/lake/x.tmp)"),
        (
            "127.0.0.1:8765 has banned this IP for exceeding its request weight limit until 2024-06-03 10:31:00 UTC; "
            "no request is sent to it before then",
            "HTTP 418 (banned) from 127.0.0.1:8765 until 2024-06-03 10:31:00 UTC",
        ),
        (
            "VisionError: checksum mismatch for http://h/a.zip: expected aa got bb, twice",
            "checksum mismatch for http://h/a.zip",
        ),
        ("ValueError: bad row 7\n  second line", "ValueError: bad row 7"),
        (
            'OperationalError: (psycopg2.OperationalError) connection to server at "127.0.0.1", port 5433 failed: '
            "Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?",
            "PostgreSQL at 127.0.0.1:5433 cannot be reached: run the command again when it is back (what was "
            "committed stays)",
        ),
        (
            "OperationalError: (psycopg2.OperationalError) server closed the connection unexpectedly\n\tThis "
            "probably means the server terminated abnormally",
            "PostgreSQL went away or is not accepting connections (restarted?): run the command again when it is "
            "back (what was committed stays)",
        ),
        (
            # A refused password is not the server being away: waiting does not mend it.
            'OperationalError: connection to server at "10.0.0.5", port 5432 failed: FATAL:  password '
            'authentication failed for user "bml"',
            'OperationalError: connection to server at "10.0.0.5", port 5432 failed: FATAL:  password '
            'authentication failed for user "bml"',
        ),
    ],
)
def test_a_failure_is_one_line_naming_the_root_cause(message: str, line: str) -> None:
    assert plain_cause(message) == line


def test_a_run_that_failed_outside_its_steps_says_why() -> None:
    """No step failed (the instance's storage went away under the executor): the line comes
    from the run's own failure event, its innermost cause in plain words."""
    from types import SimpleNamespace

    from dagster._utils.error import SerializableErrorInfo

    from bml_assets.orchestration.runner import _run_error

    cause = SerializableErrorInfo(
        'connection to server at "127.0.0.1", port 5433 failed: Connection refused\n', [], "OperationalError"
    )
    error = SerializableErrorInfo("DagsterInstance storage failed\n", [], "DagsterError", cause=cause)
    failure = SimpleNamespace(is_step_failure=False, is_run_failure=True, job_failure_data=SimpleNamespace(error=error))
    other = SimpleNamespace(is_step_failure=False, is_run_failure=False)
    assert _run_error(SimpleNamespace(all_events=[other, failure])) == (
        "run failed: PostgreSQL at 127.0.0.1:5433 cannot be reached: run the command again when it is back "
        "(what was committed stays)"
    )
    assert _run_error(SimpleNamespace(all_events=[other])) == "run failed"


def test_what_a_failed_ranged_run_downloaded_elsewhere_counts_with_its_days(settings: Settings) -> None:
    """With Celery the steps download on the workers: a ranged run that failed still spent its
    traffic, counted with the first of the days that were then run one by one."""
    from bml_assets.sources.http import Traffic

    class Elsewhere(RangeFakeRunner):
        def run_range(self, symbol, first, last, tags):
            return dataclasses.replace(super().run_range(symbol, first, last, tags), traffic_elsewhere=Traffic(5000, 7))

        def run(self, symbol, day, tags):
            return dataclasses.replace(super().run(symbol, day, tags), traffic_elsewhere=Traffic(1000, 1))

    runner = Elsewhere(settings, fail={(BTC, D[1]): RunOutcome(False, 1, "minute_view: no klines")})
    outcomes = list(execute_plan(plan_of([t(BTC, 0), t(BTC, 1), t(BTC, 2)]), settings, runner=runner))
    # The ranged run (5000 B, weight 7) and three single runs (1000 B, weight 1 each).
    assert sum(o.bytes_received for o in outcomes) == 8000
    assert sum(o.rest_weight for o in outcomes) == 10


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (600, "600 B"),
        (1024, "1 KiB"),
        (307_200, "300 KiB"),
        (1_047_552, "1023 KiB"),
        (1_048_064, "1.0 MiB"),
        (5_242_880, "5.0 MiB"),
    ],
)
def test_sizes_read_in_b_kib_or_mib(n: int, text: str) -> None:
    from bml_assets.orchestration.backfill import size_text

    assert size_text(n) == text
