"""Where the minute view job's steps run: in the run's own process, or on Celery workers (SPEC §10).

What belongs here: ``backfill_executor(settings)`` and the Celery executor's config block
(``celery_config``), which the workers must be started with too (``cluster/workers.py``
writes it into their ``-y`` file). What stays out: starting workers (``cluster/``), the
hot job's executor (always in-process: it must finish within its minute), the Celery
executor's loop (``celery_executor.py``: dagster-celery's, guarded against a run that
never ends).

The Celery settings (``CELERY_SETTINGS``): a step is acknowledged only when it ends and
given back to the broker when the process running it dies, so a worker killed mid-step
loses no step; another worker runs it again, and the commit's compare-and-swap makes the
second run safe. One step at a time per worker process: a long day build must not hold
a second step hostage.
"""

from collections.abc import Mapping
from typing import Any

from dagster import ExecutorDefinition, in_process_executor

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import Settings, SettingsError, variable

CELERY_SETTINGS: Mapping[str, object] = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
}


def celery_config(broker: Any, backend: Any) -> dict[str, Any]:
    """The Celery executor's config (the ``execution.config`` block of the workers' file)."""
    return {"broker": broker, "backend": backend, "config_source": dict(CELERY_SETTINGS)}


def backfill_executor(settings: Settings) -> ExecutorDefinition:
    """In-process, or the Celery workers of ``BML_CELERY_BROKER_URL``. A URL with a password
    is passed by its variable's name, so that it is read where the run starts and never
    stored with the run's config."""
    celery = settings.celery
    if celery is None:
        return in_process_executor
    from bml_assets.defs.celery_executor import guarded_celery_executor

    broker_var = variable("celery_broker_url")
    backend_var = variable("celery_backend_url") if settings.celery_backend_url else broker_var

    def source(url: str, var: str) -> object:
        if redact_url(url) == url:
            return url
        if var in settings.dotenv_only:
            # Dagster and every worker read it from their own environment, where a .env line is not.
            raise SettingsError(
                f"{var} holds credentials and is set only in .env: the Celery executor reads it from the "
                "environment of the run's process and of every worker (so that it is never stored with a "
                "run); export it instead"
            )
        return {"env": var}

    config = celery_config(source(celery["broker"], broker_var), source(celery["backend"], backend_var))
    return guarded_celery_executor.configured(config, name="celery")
