"""orchestration/runner.py's in-process run helper on a tiny real Dagster job: a run that only lost
commit races is run again (at most MAX_RUN_ATTEMPTS runs), any other failure is not, a failure reads
as its step and innermost cause, an interrupt is told apart, and an exception becomes a failed outcome."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import DagsterEvent, DagsterInstance, StaticPartitionsDefinition, job, op
from dagster._core.errors import DagsterExecutionInterruptedError

from bml_assets.domain.partitions import partition_key
from bml_assets.lake.ledger import CommitConflict
from bml_assets.orchestration.runner import MAX_RUN_ATTEMPTS, MAX_STORAGE_RERUNS, InProcessRunner, RunOutcome

BTC = "BTCUSDT"
DAY = dt.date(2024, 3, 1)
TAGS = {"bml/backfill": "2024-03-01..2024-03-01"}


def conflict() -> CommitConflict:
    return CommitConflict(f"minute/{BTC}/{DAY}", "aaa", "bbb", row_exists=True)


def failing_job(errors: list[BaseException | None]):
    """A job for the one partition (BTCUSDT, 2024-03-01) whose n-th run raises ``errors[n]`` (None: succeeds)."""

    @op
    def build_day() -> None:
        error = errors.pop(0)
        if error is not None:
            raise error

    @job(partitions_def=StaticPartitionsDefinition([partition_key(BTC, DAY)]))
    def day_job() -> None:
        build_day()

    return day_job


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        yield instance


def test_a_run_that_lost_commit_races_is_run_again_until_it_succeeds(instance: DagsterInstance) -> None:
    outcome = InProcessRunner(failing_job([conflict(), conflict(), None]), instance).run(BTC, DAY, TAGS)
    assert outcome == RunOutcome(ok=True, runs=3)
    runs = instance.get_runs()
    assert len(runs) == 3
    assert all(r.tags["bml/backfill"] == TAGS["bml/backfill"] for r in runs)
    assert {r.tags["dagster/partition"] for r in runs} == {"2024-03-01|BTCUSDT"}


def test_runs_stop_at_max_attempts_and_the_failure_names_the_step_and_the_innermost_cause(
    instance: DagsterInstance,
) -> None:
    outcome = InProcessRunner(failing_job([conflict()] * 5), instance).run(BTC, DAY, TAGS)
    assert MAX_RUN_ATTEMPTS == 3
    assert (outcome.ok, outcome.runs, outcome.interrupted) == (False, 3, False)
    # Dagster's message of the innermost error names its class, then the message.
    assert outcome.error == f"build_day: bml_assets.lake.ledger.CommitConflict: {conflict()}"
    assert len(instance.get_runs()) == 3


def test_a_failure_other_than_a_lost_race_is_not_run_again(instance: DagsterInstance) -> None:
    errors: list[BaseException | None] = [ValueError("bad row 7 in BTCUSDT-aggTrades-2024-03-01.csv"), None]
    outcome = InProcessRunner(failing_job(errors), instance).run(BTC, DAY, TAGS)
    assert outcome == RunOutcome(False, 1, "build_day: ValueError: bad row 7 in BTCUSDT-aggTrades-2024-03-01.csv")
    assert errors == [None]  # the second run never happened


def test_an_interrupted_step_is_told_apart(instance: DagsterInstance) -> None:
    outcome = InProcessRunner(failing_job([DagsterExecutionInterruptedError()]), instance).run(BTC, DAY, TAGS)
    assert (outcome.ok, outcome.runs, outcome.interrupted) == (False, 1, True)


def test_an_exception_of_the_run_itself_is_a_failed_outcome(instance: DagsterInstance) -> None:
    # ETHUSDT's key is not in the job's partition set: Dagster raises before any step runs.
    outcome = InProcessRunner(failing_job([None]), instance).run("ETHUSDT", DAY, TAGS)
    assert (outcome.ok, outcome.runs, outcome.interrupted) == (False, 1, False)
    assert outcome.error == "DagsterUnknownPartitionError: Could not find a partition with key `2024-03-01|ETHUSDT`."
    assert instance.get_runs() == []


class StorageGone(Exception):
    """An error in psycopg2's words for a PostgreSQL server that restarted under the run."""

    def __init__(self) -> None:
        super().__init__(
            "(psycopg2.OperationalError) server closed the connection unexpectedly\n"
            "\tThis probably means the server terminated abnormally"
        )


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bml_assets.orchestration.runner"]


def test_a_run_cut_off_by_postgresql_going_away_is_released_and_run_again(
    instance: DagsterInstance, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = InProcessRunner(failing_job([StorageGone(), None]), instance).run(BTC, DAY, TAGS)
    assert outcome == RunOutcome(ok=True, runs=2)
    assert said(caplog) == [
        "2024-03-01|BTCUSDT: PostgreSQL went away or is not accepting connections (restarted?) during its run; "
        "waiting for it to release the run",
        "2024-03-01|BTCUSDT: PostgreSQL is back; running it again",
    ]
    second, first = instance.get_runs()  # newest first
    assert (first.status.value, second.status.value) == ("FAILURE", "SUCCESS")
    assert first.tags["bml/attempt"] != second.tags["bml/attempt"]
    assert first.tags["bml/orchestrator"] == second.tags["bml/orchestrator"]


def test_postgresql_going_away_is_run_again_at_most_max_storage_reruns_times(
    instance: DagsterInstance, caplog: pytest.LogCaptureFixture
) -> None:
    outcome = InProcessRunner(failing_job([StorageGone()] * 10), instance).run(BTC, DAY, TAGS)
    assert MAX_STORAGE_RERUNS == 3
    assert (outcome.ok, outcome.runs) == (False, 4)
    assert outcome.error == (
        "build_day: PostgreSQL went away or is not accepting connections (restarted?): run the command again when "
        "it is back (what was committed stays)"
    )
    assert sum("running it again" in line for line in said(caplog)) == 3


def test_storage_reruns_do_not_use_up_the_commit_race_attempts(instance: DagsterInstance) -> None:
    errors: list[BaseException | None] = [StorageGone(), StorageGone(), conflict(), conflict(), None]
    outcome = InProcessRunner(failing_job(errors), instance).run(BTC, DAY, TAGS)
    assert outcome == RunOutcome(ok=True, runs=5)


def test_a_run_left_started_holding_slots_is_released_before_it_is_run_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The case of the issue: the storage goes away under the orchestration, Dagster raises,
    and the run stays STARTED holding its REST pool slots. The runner marks it failed, frees
    the slots and runs the partition again, which then finds them free."""
    from dagster._core.test_utils import instance_for_test

    from bml_assets.sources.rest import REST_POOL

    with instance_for_test() as sqlite_instance:
        storage = sqlite_instance.event_log_storage
        storage.set_concurrency_slots(REST_POOL, 2)
        runner = InProcessRunner(failing_job([None]), sqlite_instance)
        real_run_once = runner._run_once
        cut_off: list[str] = []

        def cut_off_once(tags: dict[str, str], partition_key: str | None):
            if cut_off:
                assert storage.get_concurrency_info(REST_POOL).active_slot_count == 0  # freed before the rerun
                return real_run_once(tags, partition_key)
            run = sqlite_instance.create_run_for_job(failing_job([None]), tags=tags)
            sqlite_instance.handle_run_event(
                run.run_id,
                DagsterEvent(event_type_value="PIPELINE_START", job_name=run.job_name),
            )
            for step in ("klines_1m", "funding_settlements"):
                assert storage.claim_concurrency_slot(REST_POOL, run.run_id, step).is_claimed
            cut_off.append(run.run_id)
            raise StorageGone()

        monkeypatch.setattr(runner, "_run_once", cut_off_once)
        outcome = runner.run(BTC, DAY, TAGS)
        assert (outcome.ok, outcome.runs) == (True, 2)
        first = sqlite_instance.get_run_by_id(cut_off[0])
        assert first is not None and first.status.value == "FAILURE"
        assert storage.get_concurrency_info(REST_POOL).active_slot_count == 0
        assert said(caplog)[-1] == "2024-03-01|BTCUSDT: PostgreSQL is back; running it again"


def test_a_run_whose_release_failed_is_released_again_before_the_next_run(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage stayed away past the wait: the failed run keeps its pool slots, the outcome
    says so, and the same runner releases it before its next run (which would wait for them)."""
    from bml_assets.orchestration import orphans

    released: list[str] = []
    real = orphans.release

    def storage_away_once(instance: DagsterInstance, attempt: str, why: str, **_: object) -> str | None:
        released.append(attempt)
        if len(released) == 1:
            return "DagsterPostgresException: too many retries for DB connection"
        return real(instance, attempt, why, wait_s=0)

    monkeypatch.setattr(orphans, "release", storage_away_once)
    runner = InProcessRunner(failing_job([ValueError("bad row 7"), None]), instance)
    first = runner.run(BTC, DAY, TAGS)
    assert first.error == (
        "build_day: ValueError: bad row 7; its REST pool slots stay claimed until Dagster's storage answers again"
    )
    assert runner.run(BTC, DAY, TAGS).ok
    assert released[1] == released[0]  # the first run's attempt, again, before the second run
    assert len(released) == 2


def test_postgresql_down_for_good_costs_one_wait_not_one_per_run(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every release fails (the storage never comes back): the first waits the whole
    STORAGE_WAIT_S, every later one only what is left of it, so partitions then fail at once."""
    from bml_assets.orchestration import orphans

    monkeypatch.setattr(orphans, "STORAGE_WAIT_S", 0.5)
    waits: list[float] = []

    def never_back(instance: DagsterInstance, attempt: str, why: str, *, wait_s: float) -> str:
        waits.append(wait_s)
        time.sleep(wait_s)
        return "OperationalError: PostgreSQL cannot be reached"

    monkeypatch.setattr(orphans, "release", never_back)
    runner = InProcessRunner(failing_job([StorageGone()] * 3), instance)
    for _ in range(3):
        assert not runner.run(BTC, DAY, TAGS).ok
    # The first gets the whole budget (less any stall of a loaded machine); the wait is spent by
    # the time the later ones start, so theirs is exactly nothing.
    assert 0.25 < waits[0] <= 0.5
    assert waits[1:] == [0.0] * 5, waits
    assert len(waits) == 1 + (1 + 1) + (2 + 1)  # each later run retries every earlier attempt, then its own


class LedgerServer:
    """A probe of the ledger's server (``ledger_probe``) that raises ``down`` times, in psycopg2's
    words for a refused connection, then answers; it records the runner's sleeps."""

    def __init__(self, down: int) -> None:
        self.down = down
        self.probes = 0
        self.sleeps: list[float] = []

    def __call__(self) -> None:
        self.probes += 1
        if self.probes <= self.down:
            raise StorageGone()

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)


def test_the_rerun_waits_for_the_ledgers_server_too(
    instance: DagsterInstance, caplog: pytest.LogCaptureFixture
) -> None:
    """Dagster's storage answers at once (here: an ephemeral instance), the ledger's
    PostgreSQL only at the third probe: the partition runs again after that, not before."""
    ledger = LedgerServer(down=2)
    errors: list[BaseException | None] = [StorageGone(), None]
    runner = InProcessRunner(failing_job(errors), instance, ledger_probe=ledger, sleep=ledger.sleep)
    assert runner.run(BTC, DAY, TAGS) == RunOutcome(ok=True, runs=2)
    assert (ledger.probes, ledger.sleeps) == (3, [2.0, 2.0])
    assert said(caplog)[-1] == "2024-03-01|BTCUSDT: PostgreSQL is back; running it again"


def test_a_ledger_server_that_stays_away_fails_the_partition_and_says_so(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bml_assets.orchestration import orphans

    monkeypatch.setattr(orphans, "STORAGE_WAIT_S", 0.0)  # spent at once: one probe, then the verdict
    ledger = LedgerServer(down=100)
    errors: list[BaseException | None] = [StorageGone(), None]
    outcome = InProcessRunner(failing_job(errors), instance, ledger_probe=ledger, sleep=ledger.sleep).run(
        BTC, DAY, TAGS
    )
    assert (outcome.ok, outcome.runs) == (False, 1)
    assert outcome.error == (
        "build_day: PostgreSQL went away or is not accepting connections (restarted?): run the command again when "
        "it is back (what was committed stays); the ledger's server (BML_STATE_URL) still does not answer: "
        "StorageGone: (psycopg2.OperationalError) server closed the connection unexpectedly"
    )
    assert errors == [None]  # not run again
    assert ledger.probes == 1


def test_a_run_that_failed_for_another_reason_does_not_probe_the_ledger(instance: DagsterInstance) -> None:
    ledger = LedgerServer(down=0)
    InProcessRunner(failing_job([ValueError("bad row 7")]), instance, ledger_probe=ledger).run(BTC, DAY, TAGS)
    assert ledger.probes == 0


def test_the_ledgers_probe_raises_while_nothing_listens_and_is_none_on_sqlite(tmp_path: Path) -> None:
    import socket

    from bml_assets.orchestration import orphans
    from bml_assets.storage.state_db import server_probe

    assert server_probe(f"sqlite:///{tmp_path / 'ledger.sqlite'}") is None
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]  # closed again when the block ends: nothing listens there
    probe = server_probe(f"postgresql+psycopg2://bml@127.0.0.1:{port}/bml")
    assert probe is not None
    with pytest.raises(Exception) as refused:
        probe()
    assert orphans.storage_lost(orphans.error_text(refused.value))


def test_a_run_that_succeeds_gives_the_next_outage_its_own_wait_for_the_ledger(
    instance: DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outage 1 outlasts the wait (the partition fails); a run then succeeds; outage 2 gets a
    wait again: its refused probe is waited out, not taken for the first outage's verdict."""
    from bml_assets.orchestration import orphans

    ledger = LedgerServer(down=2)  # outage 1's probe, then outage 2's first one
    errors: list[BaseException | None] = [StorageGone(), None, StorageGone(), None]
    runner = InProcessRunner(failing_job(errors), instance, ledger_probe=ledger, sleep=ledger.sleep)
    monkeypatch.setattr(orphans, "STORAGE_WAIT_S", 0.0)
    assert not runner.run(BTC, DAY, TAGS).ok
    assert runner.run(BTC, DAY, TAGS).ok
    monkeypatch.setattr(orphans, "STORAGE_WAIT_S", 300.0)  # never reached: the fake sleep takes no time
    assert runner.run(BTC, DAY, TAGS) == RunOutcome(ok=True, runs=2)
    assert (ledger.probes, ledger.sleeps, errors) == (3, [2.0], [])
