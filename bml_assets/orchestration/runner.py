"""The one in-process run helper: a job of the real definitions, run for one partition at a time.

What belongs here: the Dagster instance the runs go to, the resource and the
definitions built from the ``Settings`` (with a partition set that covers what is
asked), executing a job for a partition with tags, running it again when it only
lost a commit race, and a run's end as a ``RunOutcome``: success, the number of
runs, the failure as one line (the failed step and the innermost cause), whether
the process was interrupted. The backfill (``backfill.py``) and the hot pass
(``hot.py``) both run their partitions through it.

What stays out: what to run and in which order (the callers), how a partition is
built (the assets), and what an interrupt means to the caller (it decides whether
to stop).

Commit races: a run that loses a partition's compare-and-swap to another writer
(another ``run-once`` or backfill process, a sensor's run) is run again, at most
``MAX_RUN_ATTEMPTS`` times in all. The retry is the whole run, here, because
resolving the conflict means rebuilding on what the winner committed: the stream
assets re-read the committed table as their incremental base and the minute view
re-joins them. The IO manager cannot rebuild a table, and a Dagster retry policy
would also re-run failures that no retry can fix (bad input).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from bml_assets.domain.partitions import partition_key
from bml_assets.domain.settings import Settings

# Per-partition warnings (e.g. "no hot snapshots for a past day") would bury the progress:
# the commands report failures themselves; the full logs are in the run (DAGSTER_HOME).
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# Runs of one partition when each loses a commit race (see the module docstring).
MAX_RUN_ATTEMPTS = 3


@dataclass(frozen=True)
class RunOutcome:
    """How a partition's run(s) ended."""

    ok: bool
    runs: int = 1  # more than one: earlier runs lost a commit race and were run again
    error: str | None = None  # one line: the failed step and its innermost cause, or the exception
    interrupted: bool = False  # the process was interrupted (Ctrl-C / SIGTERM) inside a step


class PartitionRunner(Protocol):
    """Runs a job for one (symbol, day) partition, with run tags."""

    def run(self, symbol: str, day: dt.date, tags: Mapping[str, str]) -> RunOutcome: ...


@contextmanager
def dagster_instance() -> Iterator[Any]:
    """The instance of ``DAGSTER_HOME`` when it is set (runs then show in the UI), else an ephemeral one."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            yield instance
    else:
        with DagsterInstance.ephemeral() as instance:
            yield instance


def _definitions(settings: Settings, symbols: Iterable[str], first_day: dt.date):
    """The real definitions, with a partition set that covers ``symbols`` from ``first_day``."""
    from bml_assets.definitions import build_definitions

    wide = settings.with_(
        symbols=tuple(dict.fromkeys([*settings.symbols, *symbols])),
        start_date=min(settings.start_date, first_day),
    )
    return build_definitions(wide)


def _failures(result: Any) -> list[Any]:
    return [e for e in result.all_events if e.is_step_failure]


def _interrupted(result: Any) -> bool:
    """Whether a run failed because the process was interrupted (Ctrl-C / SIGTERM inside a step):
    Dagster turns the signal into a step failure, so the caller must stop by itself."""
    for event in _failures(result):
        error = event.step_failure_data.error
        while error is not None:
            if error.cls_name == "DagsterExecutionInterruptedError":
                return True
            error = error.cause
    return False


def _lost_commit_race(result: Any) -> bool:
    """Whether every failed step of a run failed because another writer committed its
    partition first (``CommitConflict``): then a new run, built on that commit, succeeds."""
    failures = _failures(result)
    if not failures:
        return False
    for event in failures:
        error = event.step_failure_data.error
        while error is not None and error.cls_name != "CommitConflict":
            error = error.cause
        if error is None:
            return False
    return True


def _run_error(result: Any) -> str:
    """The first failed step and the error that explains it: the innermost cause, not
    Dagster's wrapper ("Error occurred while handling output …")."""
    failures = _failures(result)
    if not failures:
        return "run failed"
    error = failures[0].step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    message = (error.message if error is not None else "step failed").strip()
    return f"{failures[0].step_key}: {message}"


class InProcessRunner:
    """``job`` executed in-process in ``instance``, one run per partition (a ``PartitionRunner``)."""

    def __init__(self, job: Any, instance: Any) -> None:
        self._job = job
        self._instance = instance

    def run(self, symbol: str, day: dt.date, tags: Mapping[str, str]) -> RunOutcome:
        """Run the job for the partition, again while it only lost commit races, at most
        ``MAX_RUN_ATTEMPTS`` runs. An exception becomes a failed outcome: one partition's
        crash must not stop the caller's other partitions."""
        runs = 0
        try:
            while True:
                runs += 1
                result = self._job.execute_in_process(
                    partition_key=partition_key(symbol, day),
                    instance=self._instance,
                    raise_on_error=False,
                    run_config=RUN_CONFIG,
                    tags=dict(tags),
                )
                if result.success:
                    return RunOutcome(True, runs)
                if runs >= MAX_RUN_ATTEMPTS or not _lost_commit_race(result):
                    return RunOutcome(False, runs, _run_error(result), _interrupted(result))
        except Exception as exc:
            return RunOutcome(False, runs, f"{type(exc).__name__}: {exc}")


@contextmanager
def in_process(
    settings: Settings, job_name: str, *, symbols: Iterable[str], first_day: dt.date
) -> Iterator[InProcessRunner]:
    """A runner of the real definitions' ``job_name`` for ``symbols`` from ``first_day``, in
    ``dagster_instance()``; the definitions' resources are built from ``settings``."""
    job = _definitions(settings, symbols, first_day).resolve_job_def(job_name)
    with dagster_instance() as instance:
        yield InProcessRunner(job, instance)
