"""dagster-celery's executor with one change: a step whose Celery task raised ends the run.

dagster-celery's loop (``core_celery_execution_loop``) records a task that raised (not a
failed step: the task itself, e.g. the worker's Dagster storage cut off by a PostgreSQL
restart before the step could report) and from then on launches no step, but it waits for
the plan to complete, which it never does while steps it will not launch are left: the run
spins without end (seen in CI: a backfill hung on one such run after PostgreSQL came back).
Here the task that raised reaches the loop as a revoked one, which the loop knows how to
end: the step is marked in an unknown state, its downstream steps are abandoned, its pool
slot is freed (Dagster frees a slot on a step's success or failure event, which never came)
so that the run's other steps can start, they run, and the run fails with the workers'
errors, as dagster-celery meant to.

What belongs here: that wrapper of a step's task (``StepTask``), the executor that uses it
(``GuardedCeleryExecutor``) and its definition (``guarded_celery_executor``, dagster-celery's
config schema and name). What stays out: the Celery settings and which executor a job gets
(``executor.py``), starting workers (``cluster/``).

Imported only when Celery is configured: ``dagster-celery`` is an optional extra. It leans
on dagster-celery's private ``_submit_task`` and loop (pinned with Dagster in pyproject).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from celery.exceptions import TaskRevokedError
from dagster import executor, multiple_process_executor_requirements
from dagster._core.errors import DagsterSubprocessError, DagsterUnknownStepStateError
from dagster._core.execution.retries import RetryMode
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

Submit = Callable[..., Any]  # dagster-celery's step_execution_fn: (app, context, step, queue, priority, state)


class StepTask:
    """A step's Celery task (an ``AsyncResult``) as the loop reads it, except that a task which
    raised is recorded in ``raised``, its step's pool slot freed (``free_slot``) and read as
    revoked (see the module docstring)."""

    def __init__(
        self, result: Any, step_key: str, raised: dict[str, SerializableErrorInfo], free_slot: Callable[[], None]
    ) -> None:
        self._result = result
        self._step_key = step_key
        self._raised = raised
        self._free_slot = free_slot

    def ready(self) -> bool:
        return self._result.ready()

    def revoke(self) -> None:
        self._result.revoke()

    def get(self) -> Any:
        try:
            return self._result.get()
        except TaskRevokedError:
            raise
        except Exception as exc:  # whatever the worker raised, as Celery hands it back
            self._raised[self._step_key] = serializable_error_info_from_exc_info(sys.exc_info())
            with contextlib.suppress(Exception):
                # Best effort: storage that cannot free it fails the run's next claim, which ends the run too.
                self._free_slot()
            raise TaskRevokedError(f"the task of step {self._step_key} raised {type(exc).__name__}") from exc


class GuardedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, its tasks read through ``StepTask``."""

    def __init__(self, *args: Any, submit: Submit = _submit_task, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._submit = submit

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        raised: dict[str, SerializableErrorInfo] = {}

        def submit(app: Any, context: Any, step: Any, queue: str, priority: int, known_state: Any) -> StepTask:
            def free_slot() -> None:
                context.instance.event_log_storage.free_concurrency_slot_for_step(context.run_id, step.key)

            result = self._submit(app, context, step, queue, priority, known_state)
            return StepTask(result, step.key, raised, free_slot)

        try:
            yield from core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)
        except DagsterUnknownStepStateError:
            if not raised:
                raise
            # The error dagster-celery raises for tasks that raised, with their errors.
            errors = "\n".join(f"[{key}]: {error.to_string()}" for key, error in raised.items())
            raise DagsterSubprocessError(
                f"During celery execution errors occurred in workers:\n{errors}",
                subprocess_error_infos=list(raised.values()),
            ) from None


@executor(name="celery", config_schema=CELERY_CONFIG, requirements=multiple_process_executor_requirements())
def guarded_celery_executor(init_context: Any) -> GuardedCeleryExecutor:
    """dagster-celery's ``celery_executor`` (same name and config), built on ``GuardedCeleryExecutor``."""
    config = init_context.executor_config
    return GuardedCeleryExecutor(
        broker=config.get("broker"),
        backend=config.get("backend"),
        config_source=config.get("config_source"),
        include=config.get("include"),
        retries=RetryMode.from_config(config["retries"]),
    )
