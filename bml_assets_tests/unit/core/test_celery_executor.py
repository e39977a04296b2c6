"""defs/celery_executor.py: a step whose Celery task raised ends the run (dagster-celery's own
loop spun forever on it), failing with the workers' error, which the runner can read.

The real loop runs here; only the submission of a step to Celery is replaced: each step's
"task" is ready at once and raises what a worker raised when its Dagster storage was cut off
(the CI hang after a PostgreSQL restart)."""

from __future__ import annotations

import threading
from typing import Any

import pytest

pytest.importorskip("dagster_celery", reason="the Celery executor is the optional 'celery' extra")

from celery.exceptions import TaskRevokedError
from dagster import (
    DagsterInstance,
    execute_job,
    executor,
    job,
    multiple_process_executor_requirements,
    op,
    reconstructable,
)
from dagster._core.execution.retries import RetryMode
from dagster._core.test_utils import instance_for_test

from bml_assets.defs.celery_executor import GuardedCeleryExecutor, StepTask
from bml_assets.orchestration import orphans

CUT_OFF = "(psycopg2.OperationalError) server closed the connection unexpectedly"


class WorkerRaised(Exception):
    pass


class RaisedTask:
    """An ``AsyncResult`` of a task that raised in the worker."""

    revoked = False

    def ready(self) -> bool:
        return True

    def get(self) -> Any:
        raise WorkerRaised(CUT_OFF)

    def revoke(self) -> None:
        self.revoked = True


def submit_raising(app: Any, context: Any, step: Any, queue: str, priority: int, known_state: Any) -> RaisedTask:
    return RaisedTask()


@executor(name="celery", config_schema={}, requirements=multiple_process_executor_requirements())
def raising_celery(_init_context: Any) -> GuardedCeleryExecutor:
    return GuardedCeleryExecutor(
        retries=RetryMode(RetryMode.DISABLED), submit=submit_raising, free_attempts=3, sleep=lambda _s: None
    )


POOL = "rest_test_pool"  # one slot: the second branch can start only once the first gives it back


@op(pool=POOL)
def klines() -> int:
    return 1


@op
def minute_view(rows: int) -> int:
    return rows


@op(pool=POOL)
def funding() -> int:
    return 2


@job(executor_def=raising_celery)
def two_branches() -> None:
    minute_view(klines())
    funding()


class DoneTask:
    """An ``AsyncResult`` of a task that ended: its serialized events, or revoked."""

    def __init__(self, revoked: bool = False) -> None:
        self.revoked = revoked

    def ready(self) -> bool:
        return True

    def get(self) -> Any:
        if self.revoked:
            raise TaskRevokedError("revoked by an operator")
        return ["<the step's events>"]


def test_a_task_that_raised_is_read_as_revoked_and_recorded() -> None:
    raised: dict[str, Any] = {}
    task = StepTask(RaisedTask(), "klines", raised)
    assert task.ready()
    with pytest.raises(TaskRevokedError, match="the task of step klines raised WorkerRaised"):
        task.get()
    assert list(raised) == ["klines"]
    assert CUT_OFF in raised["klines"].to_string()


def test_a_task_that_ended_or_was_revoked_passes_through_unrecorded() -> None:
    raised: dict[str, Any] = {}
    assert StepTask(DoneTask(), "klines", raised).get() == ["<the step's events>"]
    with pytest.raises(TaskRevokedError, match="revoked by an operator"):
        StepTask(DoneTask(revoked=True), "funding", raised).get()
    assert raised == {}


def _run_to_its_end(instance: DagsterInstance) -> Any:
    """The job's run; the thread only bounds a hang (a spinning loop): nothing is timed."""
    ended: list[Any] = []

    def run() -> None:
        ended.append(execute_job(reconstructable(two_branches), instance, raise_on_error=False))

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(timeout=120)
    assert ended, "the run never ended (the executor's loop is waiting or spinning)"
    return ended[0]


def _run_failure(result: Any) -> str:
    failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
    return failure.event_specific_data.error.to_string()


def test_a_run_whose_step_tasks_raised_ends_failed_with_the_workers_error() -> None:
    """Both branches' tasks raise, one at a time (their pool has one slot). dagster-celery's loop
    alone never returns here: after the first task raised it launches no step, and waits for
    the second, which never had its slot. The guarded one frees the slot, the second branch runs
    (and raises too) and the run ends, failed, each worker error in the run's log."""
    with instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 1)
        result = _run_to_its_end(instance)
        assert not result.success
        error = _run_failure(result)
        assert "During celery execution errors occurred in workers:" in error
        assert "[klines]: " in error and "[funding]: " in error
        # The runner reads it as PostgreSQL gone, and releases and reruns the partition.
        assert orphans.storage_lost(error)
        # The downstream step never ran; neither branch succeeded; the pool's slot is free again.
        assert not any(e.is_step_success for e in result.all_events)
        assert instance.event_log_storage.get_concurrency_info(POOL).active_slot_count == 0
        logs = instance.all_logs(result.run_id)
        logged = [e.user_message for e in logs if "Celery task of step" in e.user_message]
        assert sorted(m.split(" raised:")[0] for m in logged) == [
            "The Celery task of step funding",
            "The Celery task of step klines",
        ]


def test_a_slot_freed_only_at_the_second_try_still_lets_the_run_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL still restarting when the slot is freed: tried again (the executor sleeps
    nothing here), the run's other branch then gets the slot and the run ends."""
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        real_free = storage.free_concurrency_slot_for_step
        calls: list[str] = []

        def free_after_a_refusal(run_id: str, step_key: str) -> None:
            calls.append(step_key)
            if len(calls) == 1:
                raise WorkerRaised("(psycopg2.OperationalError) the database system is starting up")
            real_free(run_id, step_key)

        monkeypatch.setattr(storage, "free_concurrency_slot_for_step", free_after_a_refusal)
        result = _run_to_its_end(instance)
        assert "[klines]: " in _run_failure(result) and "[funding]: " in _run_failure(result)
        assert calls[:2] == [calls[0], calls[0]]  # the first step's slot, twice
        assert storage.get_concurrency_info(POOL).active_slot_count == 0


def test_a_slot_that_cannot_be_freed_ends_the_run_at_once_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with instance_for_test() as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots(POOL, 1)
        calls: list[str] = []

        def never_free(run_id: str, step_key: str) -> None:
            calls.append(step_key)
            raise WorkerRaised("(psycopg2.OperationalError) connection refused")

        monkeypatch.setattr(storage, "free_concurrency_slot_for_step", never_free)
        result = _run_to_its_end(instance)
        error = _run_failure(result)
        assert f"the pool slot of step {calls[0]} could not be freed: " in error
        assert calls[:3] == [calls[0]] * 3  # free_attempts, then the run ends
        assert orphans.storage_lost(error)
