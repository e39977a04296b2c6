"""dagster-celery's executor with one change: a step whose Celery task raised ends the run.

dagster-celery's loop (``core_celery_execution_loop``) records a task that raised (not a
failed step: the task itself, e.g. the worker's Dagster storage cut off by a PostgreSQL
restart before the step could report) and from then on launches no step, but it waits for
the plan to complete, which it never does while steps it will not launch are left: the run
spins without end (seen in CI: a backfill hung on one such run after PostgreSQL came back).
Here the task that raised reaches the loop as a revoked one, which the loop knows how to
end: the step is marked in an unknown state and its downstream steps are abandoned; the
worker's error is logged to the run and the step's pool slot freed (Dagster frees a slot on
a step's success or failure event, which never came), so the run's other steps start and
run (unlike dagster-celery's intent, which was to launch no more: the rerun of the partition
does their work again), and the run fails with the workers' errors, as dagster-celery meant.
Celery hands back only the worker's outermost exception (type and message), so those errors
carry no cause chain.

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
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from celery.exceptions import TaskRevokedError
from dagster import executor, multiple_process_executor_requirements
from dagster._core.errors import DagsterSubprocessError, DagsterUnknownStepStateError
from dagster._core.execution.retries import RetryMode
from dagster._utils.error import SerializableErrorInfo, serializable_error_info_from_exc_info
from dagster_celery.core_execution_loop import core_celery_execution_loop
from dagster_celery.executor import CELERY_CONFIG, CeleryExecutor, _submit_task

Submit = Callable[..., Any]  # dagster-celery's step_execution_fn: (app, context, step, queue, priority, state)
# Freeing a dead step's pool slot: tries, 2 s apart (a PostgreSQL restart takes seconds).
FREE_ATTEMPTS: Final = 15
FREE_EVERY_S: Final = 2.0


class StepTask:
    """A step's Celery task (an ``AsyncResult``) as the loop reads it, except that a task which
    raised is recorded in ``raised`` and read as revoked (see the module docstring). Nothing
    else happens here: the loop catches whatever ``get`` raises, and anything but a revoked
    task would put it back into its endless wait."""

    def __init__(self, result: Any, step_key: str, raised: dict[str, SerializableErrorInfo]) -> None:
        self._result = result
        self._step_key = step_key
        self._raised = raised

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
            raise TaskRevokedError(f"the task of step {self._step_key} raised {type(exc).__name__}") from exc


class GuardedCeleryExecutor(CeleryExecutor):
    """dagster-celery's executor, its tasks read through ``StepTask``; after each event of the
    loop, the steps whose task raised are logged and their pool slots freed."""

    def __init__(
        self,
        *args: Any,
        submit: Submit = _submit_task,
        free_attempts: int = FREE_ATTEMPTS,
        sleep: Callable[[float], None] = time.sleep,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._submit = submit
        self._free_attempts = free_attempts
        self._sleep = sleep

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[Any]:
        raised: dict[str, SerializableErrorInfo] = {}
        handled: set[str] = set()

        def submit(app: Any, context: Any, step: Any, queue: str, priority: int, known_state: Any) -> StepTask:
            return StepTask(self._submit(app, context, step, queue, priority, known_state), step.key, raised)

        loop = core_celery_execution_loop(plan_context, execution_plan, step_execution_fn=submit)
        try:
            # Here, between two events, the loop is paused outside its own error handling: what
            # raises here ends the run (the loop's "revoked" event follows a task's get() at once,
            # so a slot is freed before the loop next looks for steps to launch).
            for event in loop:
                yield event
                for key in raised.keys() - handled:
                    handled.add(key)
                    plan_context.log.error(f"The Celery task of step {key} raised: {raised[key].to_string()}")
                    self._free_slot(plan_context, key, raised)
        except DagsterUnknownStepStateError as exc:
            if not raised:
                raise
            raise _workers_failed(raised, f"\n{exc}") from None
        finally:
            # Closing a loop left mid-way frees its pending pool claims, which fails too while the
            # storage is away: the error the run ends with is the one raised above.
            with contextlib.suppress(Exception):
                loop.close()

    def _free_slot(self, plan_context: Any, step_key: str, raised: dict[str, SerializableErrorInfo]) -> None:
        """Free the pool slot of ``step_key`` (Dagster frees it on a step's success or failure
        event, which never came), tried ``free_attempts`` times 2 s apart; past that the run
        ends at once with the workers' errors: left claimed, the slot would keep the run's
        other steps of that pool waiting forever."""
        storage = plan_context.instance.event_log_storage
        for attempt in range(1, self._free_attempts + 1):
            try:
                storage.free_concurrency_slot_for_step(plan_context.run_id, step_key)
                return
            except Exception as exc:  # the storage's errors: the server may be restarting
                if attempt == self._free_attempts:
                    raise _workers_failed(
                        raised, f"\nthe pool slot of step {step_key} could not be freed: {exc}"
                    ) from exc
                self._sleep(FREE_EVERY_S)


def _workers_failed(raised: dict[str, SerializableErrorInfo], more: str) -> DagsterSubprocessError:
    """The error dagster-celery raises for tasks that raised (with their errors), and ``more``."""
    errors = "\n".join(f"[{key}]: {error.to_string()}" for key, error in raised.items())
    return DagsterSubprocessError(
        f"During celery execution errors occurred in workers:\n{errors}{more}",
        subprocess_error_infos=list(raised.values()),
    )


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
