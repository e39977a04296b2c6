"""Celery workers of Dagster's Celery executor (``dagster-celery worker start``), as process groups.

What belongs here: the worker config file, starting a worker and finding its processes.
What stays out: which steps run there and with which Celery settings (``defs/executor.py``).

``dagster-celery worker start -y FILE`` reads only the ``execution.config`` block of FILE;
anything else in it is ignored and the broker silently defaults to ``amqp://guest@localhost``.
So the file holds exactly that block, made by the same ``celery_config`` as the executor's.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from pathlib import Path

import yaml

from bml_assets.cluster.services import executable
from bml_assets.defs.executor import celery_config


def write_config(path: Path, *, broker: str, backend: str) -> Path:
    """The ``-y`` file of ``dagster-celery worker start`` (see the module docstring)."""
    config = {"execution": {"config": celery_config(broker, backend)}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start(name: str, config: Path, env: Mapping[str, str], log: Path, *, concurrency: int = 1) -> subprocess.Popen:
    """One worker named ``name`` (``concurrency`` step processes), in a process group of its own
    so that it and its pool stop together; its output goes to ``log``."""
    command = [
        executable("dagster-celery", hint="pip install 'bml-assets[celery]'"),
        "worker",
        "start",
        "-A",
        "dagster_celery.app",
        "-y",
        str(config),
        "-n",
        name,
        "--",
        f"--concurrency={concurrency}",
        "--pool=prefork",
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    # The worker runs `celery` by name: this environment's bin folder goes first on PATH.
    path = f"{Path(command[0]).parent}{os.pathsep}{env.get('PATH', os.environ.get('PATH', ''))}"
    with open(log, "ab") as out:
        return subprocess.Popen(
            command,
            env={**env, "PATH": path},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def dagster_command() -> str:
    """The ``dagster`` command of this environment."""
    return executable("dagster", hint="pip install dagster")


def pool_processes(worker_pid: int) -> list[int]:
    """The pool processes of a worker: the children of the ``celery`` process that ``dagster-celery``
    (``worker_pid``) starts. Empty while the pool is being replaced (never the ``celery`` process
    itself: killing it takes the whole worker down, not one step)."""
    return [pool for celery in _children(worker_pid) for pool in _children(celery)]


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
