"""orchestration/orphans.py on a real SQLite Dagster instance: a run whose orchestrating process
is gone is marked failed and its ``binance_rest`` slots freed (the pool would otherwise stay full
for every later run); runs of live processes, of other hosts and of the daemon are left alone;
a release waits for a storage that went away, for a bounded time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from dagster import DagsterInstance, DagsterRunStatus
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import instance_for_test

from bml_assets.orchestration import orphans
from bml_assets.sources.rest import REST_POOL

PG_RESTARTED = (
    "(psycopg2.OperationalError) server closed the connection unexpectedly\n"
    "\tThis probably means the server terminated abnormally\n\tbefore or while processing the request."
)


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots(REST_POOL, 4)
        yield instance


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def started_run(instance: DagsterInstance, tags: dict[str, str], slots: int = 2) -> str:
    """A STARTED run with ``tags`` holding ``slots`` slots of the REST pool."""
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="minute_view_job", run_id=run_id, status=DagsterRunStatus.STARTED, tags=tags))
    for i in range(slots):
        claim = instance.event_log_storage.claim_concurrency_slot(REST_POOL, run_id, f"step_{i}")
        assert claim.is_claimed
    return run_id


def held(instance: DagsterInstance, run_id: str) -> int:
    return sum(
        1 for s in instance.event_log_storage.get_concurrency_info(REST_POOL).claimed_slots if s.run_id == run_id
    )


def test_this_process_is_alive_and_a_finished_one_is_gone() -> None:
    assert not orphans.process_gone(orphans.this_process())
    host, namespace, pid, ticks = orphans.this_process().split(":")
    assert (host, int(pid)) == (socket.gethostname(), os.getpid())
    assert namespace == os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    assert orphans.process_gone(f"{host}:{namespace}:{dead_pid()}:{ticks}")
    # The same pid started at another time is another process (a reused pid).
    assert orphans.process_gone(f"{host}:{namespace}:{pid}:{int(ticks) + 1}")
    # A process of another host, or of another PID namespace (a container sharing the host's
    # name), is never judged from here; nor is a tag of another shape.
    assert not orphans.process_gone(f"not-{host}:{namespace}:{dead_pid()}:1")
    assert not orphans.process_gone(f"{host}:1{namespace}:{dead_pid()}:1")
    assert not orphans.process_gone(f"{host}:{dead_pid()}:1")


def gone_process() -> str:
    host, namespace, _, _ = orphans.this_process().split(":")
    return f"{host}:{namespace}:{dead_pid()}:1"


def test_sweep_releases_the_runs_of_gone_processes_of_this_host_only(instance: DagsterInstance) -> None:
    gone = started_run(instance, {orphans.ORCHESTRATOR_TAG: gone_process()})
    alive = started_run(instance, {orphans.ORCHESTRATOR_TAG: orphans.this_process()}, slots=1)
    elsewhere = started_run(instance, {orphans.ORCHESTRATOR_TAG: "not-" + gone_process()}, slots=1)
    daemon = started_run(instance, {}, slots=0)  # launched by the daemon: no orchestrator tag

    assert orphans.sweep(instance) == ([gone], [])

    run = instance.get_run_by_id(gone)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    assert held(instance, gone) == 0
    failure = instance.all_logs(gone)[-1]
    assert "the process that ran it (pid" in failure.message and "is gone" in failure.message
    for run_id, slots in ((alive, 1), (elsewhere, 1), (daemon, 0)):
        other = instance.get_run_by_id(run_id)
        assert other is not None and other.status == DagsterRunStatus.STARTED
        assert held(instance, run_id) == slots
    # The freed slots are there for the next run: 4 in the pool, 2 held.
    assert instance.event_log_storage.get_concurrency_info(REST_POOL).active_slot_count == 2
    assert orphans.sweep(instance) == ([], [])


def test_a_run_launched_from_a_code_location_with_a_bml_runs_tags_is_left_alone(instance: DagsterInstance) -> None:
    """A re-execution from the UI copies its parent's tags, the orchestrator's too; it has a
    job origin, which a bml command's runs have not."""
    from dagster._core.remote_origin import (
        GrpcServerCodeLocationOrigin,
        RemoteJobOrigin,
        RemoteRepositoryOrigin,
    )

    origin = RemoteJobOrigin(
        RemoteRepositoryOrigin(GrpcServerCodeLocationOrigin(host="localhost", port=4000), "defs"), "minute_view_job"
    )
    attempt = uuid.uuid4().hex
    run_id = str(uuid.uuid4())
    tags = {orphans.ORCHESTRATOR_TAG: gone_process(), orphans.ATTEMPT_TAG: attempt}
    instance.add_run(
        DagsterRun(
            job_name="minute_view_job",
            run_id=run_id,
            status=DagsterRunStatus.STARTED,
            tags=tags,
            remote_job_origin=origin,
        )
    )
    assert orphans.sweep(instance) == ([], [])
    assert orphans.release(instance, attempt, "why", wait_s=0) is None
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.STARTED


def test_release_marks_the_unfinished_run_failed_and_frees_its_slots(instance: DagsterInstance) -> None:
    attempt = uuid.uuid4().hex
    run_id = started_run(instance, {orphans.ATTEMPT_TAG: attempt})
    assert orphans.release(instance, attempt, "bml: PostgreSQL went away", wait_s=0) is None
    run = instance.get_run_by_id(run_id)
    assert run is not None and run.status == DagsterRunStatus.FAILURE
    assert held(instance, run_id) == 0
    # A run that never got created (Dagster raised before): nothing to release.
    assert orphans.release(instance, uuid.uuid4().hex, "why", wait_s=0) is None


class StorageAway:
    """The instance, with its storage unreachable for the first ``calls`` lookups (psycopg2's words)."""

    def __init__(self, instance: DagsterInstance, calls: int) -> None:
        self._instance = instance
        self.calls = calls

    def get_runs(self, *args, **kwargs):
        if self.calls > 0:
            self.calls -= 1
            raise RuntimeError(PG_RESTARTED)
        return self._instance.get_runs(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._instance, name)


def test_release_waits_for_the_storage_to_come_back(instance: DagsterInstance) -> None:
    attempt = uuid.uuid4().hex
    run_id = started_run(instance, {orphans.ATTEMPT_TAG: attempt})
    slept: list[float] = []
    away = StorageAway(instance, calls=2)
    assert orphans.release(away, attempt, "why", wait_s=60, sleep=slept.append) is None
    assert slept == [2.0, 2.0]
    assert held(instance, run_id) == 0


def test_release_gives_up_after_its_wait_and_says_why(instance: DagsterInstance) -> None:
    attempt = uuid.uuid4().hex
    run_id = started_run(instance, {orphans.ATTEMPT_TAG: attempt})
    away = StorageAway(instance, calls=10**6)
    assert orphans.release(away, attempt, "why", wait_s=0) == (
        "RuntimeError: (psycopg2.OperationalError) server closed the connection unexpectedly"
    )
    assert held(instance, run_id) == 2  # nothing released: the storage never answered


def test_dagsters_own_wrapper_of_the_drivers_error_is_waited_for_too(instance: DagsterInstance) -> None:
    """dagster-postgres gives up connecting after ≈ 2 s with its own exception, raised from the
    driver's: the release still waits."""

    class Wrapped(StorageAway):
        def get_runs(self, *args, **kwargs):
            if self.calls > 0:
                self.calls -= 1
                try:
                    raise RuntimeError('connection to server at "127.0.0.1", port 5432 failed: Connection refused')
                except RuntimeError as exc:
                    raise LookupError("too many retries for DB connection") from exc
            return self._instance.get_runs(*args, **kwargs)

    attempt = uuid.uuid4().hex
    run_id = started_run(instance, {orphans.ATTEMPT_TAG: attempt})
    slept: list[float] = []
    assert orphans.release(Wrapped(instance, calls=3), attempt, "why", wait_s=60, sleep=slept.append) is None
    assert slept == [2.0, 2.0, 2.0] and held(instance, run_id) == 0


def test_an_error_that_is_not_the_storage_going_away_is_not_waited_for(instance: DagsterInstance) -> None:
    class Broken(StorageAway):
        def get_runs(self, *args, **kwargs):
            raise ValueError("no such table: runs")

    slept: list[float] = []
    assert orphans.release(Broken(instance, 0), "x", "why", wait_s=60, sleep=slept.append) == (
        "ValueError: no such table: runs"
    )
    assert slept == []


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (PG_RESTARTED, "PostgreSQL went away or is not accepting connections (restarted?)"),
        (
            '(psycopg2.OperationalError) connection to server at "127.0.0.1", port 50119 failed: Connection refused',
            "PostgreSQL at 127.0.0.1:50119 cannot be reached",
        ),
        (
            "FATAL:  the database system is starting up",
            "PostgreSQL went away or is not accepting connections (restarted?)",
        ),
    ],
)
def test_the_storage_going_away_is_recognised_from_psycopg2s_words(text: str, words: str) -> None:
    assert orphans.storage_lost(text)
    assert orphans.storage_loss(text) == words


@pytest.mark.parametrize(
    "text",
    [
        "SSL SYSCALL error: EOF detected",
        "SSL connection has been closed unexpectedly",
        "(psycopg2.InterfaceError) connection already closed",
        'connection to server on socket "/run/postgresql/.s.PGSQL.5432" failed: No such file or directory',
    ],
)
def test_a_restart_seen_over_tls_or_a_socket_is_recognised_too(text: str) -> None:
    assert orphans.storage_lost(text)


def test_other_errors_are_not_taken_for_the_storage_going_away() -> None:
    assert not orphans.storage_lost("connection refused at http://127.0.0.1:9/fapi/v1/klines")
    assert not orphans.storage_lost("CommitConflict: minute/BTCUSDT/2024-03-01")
    # A refused password or a missing database: waiting does not mend them.
    for fatal in ('password authentication failed for user "bml"', 'database "bml" does not exist'):
        assert not orphans.storage_lost(f'connection to server at "10.0.0.5", port 5432 failed: FATAL:  {fatal}')
    # dagster-postgres's give-up alone says nothing of why: its cause must (``error_text``).
    assert not orphans.storage_lost("too many retries for DB connection")
