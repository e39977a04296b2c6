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
    return GuardedCeleryExecutor(retries=RetryMode(RetryMode.DISABLED), submit=submit_raising)


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


def test_a_task_that_raised_is_read_as_revoked_and_recorded() -> None:
    raised: dict[str, Any] = {}
    freed: list[bool] = []
    task = StepTask(RaisedTask(), "klines", raised, lambda: freed.append(True))
    assert task.ready()
    with pytest.raises(Exception, match="the task of step klines raised WorkerRaised") as caught:
        task.get()
    assert type(caught.value).__name__ == "TaskRevokedError"
    assert list(raised) == ["klines"]
    assert CUT_OFF in raised["klines"].to_string()
    assert freed == [True]


def test_a_run_whose_step_tasks_raised_ends_failed_with_the_workers_error() -> None:
    """Both branches' tasks raise, one at a time (their pool has one slot). dagster-celery's loop
    alone never returns here: after the first task raised it launches no step, and waits for
    the second, which never had its slot. The guarded one frees the slot, the second branch runs
    (and raises too) and the run ends, failed. The thread only bounds a hang: nothing is timed."""
    with instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 1)
        ended: list[Any] = []

        def run(instance: DagsterInstance = instance) -> None:
            ended.append(execute_job(reconstructable(two_branches), instance, raise_on_error=False))

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        runner.join(timeout=300)
        assert ended, "the run never ended (the executor's loop is spinning)"
        result = ended[0]
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "PIPELINE_FAILURE")
        error = failure.event_specific_data.error.to_string()
        assert "During celery execution errors occurred in workers:" in error
        assert "[klines]: " in error and "[funding]: " in error
        # The runner reads it as PostgreSQL gone, and releases and reruns the partition.
        assert orphans.storage_lost(error)
        # The downstream step never ran; neither branch succeeded; the pool's slot is free again.
        assert not any(e.is_step_success for e in result.all_events)
        assert instance.event_log_storage.get_concurrency_info(POOL).active_slot_count == 0
