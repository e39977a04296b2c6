"""Orphaned runs: runs whose end Dagster never recorded, and what they still hold.

A step of the ``binance_rest`` pool claims a slot in the instance's storage and gives it
back when its end is recorded. A run that dies before that — its process killed, or its
orchestration cut off by PostgreSQL going away (a restart) — stays STARTED and keeps its
slots: Dagster leaves a dead run's claimed slots alone, because its executor may still
be running steps elsewhere, and only its run-monitoring daemon frees them, for runs it
launched itself. bml's commands run their runs in process, so nobody would, and every
later run would wait for the pool forever (seen: two runs failed on a PostgreSQL
restart held all 8 slots of a cluster's pool).

What belongs here: the tags that name a run's attempt and the process that orchestrates
it (host, pid and the process's start time, so a reused pid is not taken for the same
process), releasing a run that did not succeed (marked FAILURE when its own failure
could not be written, its slots freed), waiting for the instance's storage while it is
unreachable, whether an error means that storage went away, and sweeping the runs whose
orchestrating process on this host is gone.

What stays out: running runs and deciding to run one again (``runner.py``), the
wording of a failure for a person (``runner.plain_cause``), runs launched by the
daemon (Dagster's run monitoring watches those; they carry no ``bml/orchestrator`` tag).
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

ATTEMPT_TAG: Final = "bml/attempt"  # one run of a partition; unique, so a run that raised can be found
ORCHESTRATOR_TAG: Final = "bml/orchestrator"  # "<host>:<pid>:<start ticks>" of the process following the run

# psycopg2's words for a PostgreSQL server that is down, or that went away mid-transaction (a
# restart), and the error classes that carry them.
PG_DOWN: Final = re.compile(r'connection to server at "([^"]+)"(?: \([^)]*\))?, port (\d+) failed')
PG_GONE: Final = re.compile(
    r"server closed the connection unexpectedly|terminating connection due to administrator command"
    r"|the database system is (?:starting up|shutting down|in recovery mode)"
    # dagster-postgres's own words once its connection retries (≈ 2 s) are spent
    r"|too many retries for DB (?:connection|creation)"
)
# How long a command waits for its Dagster storage to come back before it gives up on a run.
STORAGE_WAIT_S: Final = 300.0
_RETRY_EVERY_S: Final = 2.0


def storage_lost(text: str) -> bool:
    """Whether an error's text says the PostgreSQL server could not be reached or went away."""
    return PG_DOWN.search(text) is not None or PG_GONE.search(text) is not None


def error_text(exc: BaseException) -> str:
    """An exception's message and those of its causes (``raise … from``, or the context), for
    ``storage_lost``: Dagster wraps the driver's error in its own."""
    seen: list[str] = []
    error: BaseException | None = exc
    while error is not None and len(seen) < 10:
        seen.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return "\n".join(seen)


def storage_loss(text: str) -> str:
    """What ``storage_lost`` found, in a few words: which server, and down or gone."""
    if found := PG_DOWN.search(text):
        return f"PostgreSQL at {found.group(1)}:{found.group(2)} cannot be reached"
    return "the PostgreSQL server went away (restarted?)"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    None when there is no such process; "" where there is no ``/proc``."""
    stat = Path(f"/proc/{pid}/stat")
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        text = stat.read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()[19]


def this_process() -> str:
    """The ``bml/orchestrator`` tag of this process."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def process_gone(orchestrator: str) -> bool:
    """Whether the process a ``bml/orchestrator`` tag names is known to be gone: it ran on
    this host and no process with its pid and start time is alive. A process on another
    host is never judged from here."""
    host, _, rest = orchestrator.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    now = _start_ticks(int(pid))
    return now is None or (bool(now) and bool(ticks) and now != ticks)


def _release_now(instance: Any, run: Any, why: str) -> None:
    if not run.is_finished:
        instance.report_run_failed(run, message=why)
    if instance.event_log_storage.supports_global_concurrency_limits:  # not the in-memory storage
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)


def release(
    instance: Any,
    attempt: str,
    why: str,
    *,
    wait_s: float = STORAGE_WAIT_S,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """The run tagged ``attempt``, which did not succeed, marked FAILURE with ``why`` when its
    own failure was not recorded, and its pool slots freed. While the storage is unreachable
    it is tried again every 2 s for ``wait_s``. Returns None when done (or when the run was
    never created), else why it could not be."""
    from dagster import RunsFilter

    deadline = time.monotonic() + wait_s
    while True:
        try:
            for run in instance.get_runs(filters=RunsFilter(tags={ATTEMPT_TAG: attempt})):
                _release_now(instance, run, why)
            return None
        except Exception as exc:  # the storage's driver errors: any of them, worded by the caller
            if not storage_lost(error_text(exc)) or time.monotonic() >= deadline:
                return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        sleep(_RETRY_EVERY_S)


def sweep(instance: Any) -> list[str]:
    """Release every unfinished run whose orchestrating process on this host is gone (a
    command killed with SIGKILL mid-run): marked FAILURE, its pool slots freed. Returns
    their run ids."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    released = []
    for run in instance.get_runs(filters=RunsFilter(statuses=unfinished)):
        orchestrator = run.tags.get(ORCHESTRATOR_TAG)
        if orchestrator and process_gone(orchestrator):
            pid = orchestrator.split(":")[1]
            _release_now(instance, run, f"the process that ran it (pid {pid} on this host) is gone: killed?")
            released.append(run.run_id)
    return released
