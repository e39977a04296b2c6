"""Orphaned runs: runs whose end Dagster never recorded, and what they still hold.

A step of the ``binance_rest`` pool claims a slot in the instance's storage and gives it
back when its end is recorded. A run that dies before that — its process killed, or its
orchestration cut off by PostgreSQL going away (a restart) — stays STARTED and keeps its
slots: Dagster leaves a run's claimed slots alone while the run is not finished, because
its executor may still be running steps elsewhere (its run-monitoring daemon frees the
slots of runs that have *finished*). bml's commands run their runs in process, so nobody
would end them, and every later run would wait for the pool forever (seen: two runs
failed on a PostgreSQL restart held all 8 slots of a cluster's pool).

Releasing a run cut off while its steps were on Celery workers does not stop those steps:
dagster-celery revokes tasks only on an interrupt. They run to their end beside the
rerun; the commit's compare-and-swap keeps the lake right, at the cost of the work done
twice (the rerun may also lose a commit race to them, and is then run again).

What belongs here: the tags that name a run's attempt and the process that orchestrates
it (host, PID namespace, pid and the process's start time, so neither a reused pid nor a
container sharing the host's name is taken for the same process), releasing a run that
did not succeed (marked FAILURE when its own failure could not be written, its slots
freed), waiting for the instance's storage while it is unreachable, whether an error
means that storage went away (and those words, short), and sweeping the runs whose
orchestrating process on this host is gone.

What stays out: running runs and deciding to run one again (``runner.py``), the whole
wording of a failure for a person (``runner.plain_cause``), runs launched from a code
location (the daemon, the UI: they have a job origin; a re-execution from the UI copies
the tags of a bml run, so the tags alone do not tell).
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
# "<host>:<pid namespace>:<pid>:<start ticks>" of the process following the run
ORCHESTRATOR_TAG: Final = "bml/orchestrator"

# psycopg2's words for a PostgreSQL server that cannot be reached (a transport failure: not a
# refused password or a missing database, which waiting does not mend), or that went away
# mid-transaction (a restart), over TCP, a Unix socket or TLS.
PG_DOWN: Final = re.compile(
    r'connection to server (?:at "([^"]+)"(?: \([^)]*\))?, port (\d+)|on socket "[^"]+") failed: '
    r"(?:Connection refused|Connection timed out|timeout expired|No route to host|Network is unreachable"
    r"|No such file or directory|could not receive data from server|server closed the connection)"
)
PG_GONE: Final = re.compile(
    r"server closed the connection unexpectedly|terminating connection due to administrator command"
    r"|the database system is (?:starting up|shutting down|in recovery mode)"
    r"|SSL connection has been closed unexpectedly|SSL SYSCALL error: EOF detected|connection already closed"
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
    if (found := PG_DOWN.search(text)) and found.group(1):
        return f"PostgreSQL at {found.group(1)}:{found.group(2)} cannot be reached"
    if found:
        return "PostgreSQL cannot be reached"
    return "PostgreSQL went away or is not accepting connections (restarted?)"


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (``/proc/<pid>/stat`` field 22), or
    None when there is no such process; "" when it cannot be told (no ``/proc``, or a
    ``/proc`` that hides other users' processes: then it is taken as alive)."""
    if not Path("/proc/self/stat").exists():
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return ""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        if Path("/proc/1/stat").exists() or pid == 1:
            return None
        return ""  # hidepid: pid 1 hidden too, so absence says nothing
    except PermissionError:
        return ""
    # The command name (field 2) may hold spaces and parentheses: split after its last ")".
    return text[text.rindex(")") + 2 :].split()[19]


def _pid_namespace() -> str:
    """This process's PID namespace (the inode of ``/proc/self/ns/pid``), "" where unknown:
    containers sharing a host name but not their pids must not judge each other's."""
    try:
        return os.readlink("/proc/self/ns/pid").removeprefix("pid:[").removesuffix("]")
    except OSError:
        return ""


def this_process() -> str:
    """The ``bml/orchestrator`` tag of this process."""
    return f"{socket.gethostname()}:{_pid_namespace()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def process_gone(orchestrator: str) -> bool:
    """Whether the process a ``bml/orchestrator`` tag names is known to be gone: it ran on
    this host, in this PID namespace, and no process with its pid and start time is alive.
    A process elsewhere is never judged from here."""
    parts = orchestrator.split(":")
    if len(parts) != 4 or not parts[2].isdigit():
        return False
    host, namespace, pid, ticks = parts
    if host != socket.gethostname() or namespace != _pid_namespace():
        return False
    now = _start_ticks(int(pid))
    return now is None or (bool(now) and bool(ticks) and now != ticks)


def _ours(run: Any) -> bool:
    """A run a bml command executed itself (no code location's job origin)."""
    return run.remote_job_origin is None


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

    def release_now() -> None:
        for run in instance.get_runs(filters=RunsFilter(tags={ATTEMPT_TAG: attempt})):
            if _ours(run):
                _release_now(instance, run, why)

    return retry_while_lost(release_now, time.monotonic() + wait_s, sleep)


def retry_while_lost(
    call: Callable[[], object], deadline: float, sleep: Callable[[float], None] = time.sleep
) -> str | None:
    """``call`` until it returns, tried again every 2 s while its error says the PostgreSQL
    server went away (``storage_lost``) and ``deadline`` (``time.monotonic``) has not passed.
    None when it returned, else its last error in one line."""
    while True:
        try:
            call()
            return None
        except Exception as exc:  # the driver's errors: any of them, worded by the caller
            if not storage_lost(error_text(exc)) or time.monotonic() >= deadline:
                message = str(exc).strip()
                return f"{type(exc).__name__}: {message.splitlines()[0] if message else ''}"
        sleep(_RETRY_EVERY_S)


def sweep(instance: Any) -> tuple[list[str], list[str]]:
    """Release every unfinished run of a bml command whose orchestrating process on this host
    is gone (a command killed with SIGKILL mid-run): marked FAILURE, its pool slots freed.
    Returns the run ids released, and one line per run that could not be (never raises:
    a command must not die of what an earlier one left)."""
    from dagster import DagsterRunStatus, RunsFilter

    unfinished = [
        DagsterRunStatus.NOT_STARTED,
        DagsterRunStatus.STARTING,
        DagsterRunStatus.STARTED,
        DagsterRunStatus.CANCELING,
    ]
    released: list[str] = []
    failed: list[str] = []
    try:
        runs = instance.get_runs(filters=RunsFilter(statuses=unfinished))
    except Exception as exc:  # the storage's errors: reported, the command goes on
        return released, [f"the unfinished runs could not be listed: {type(exc).__name__}: {exc}"]
    for run in runs:
        orchestrator = run.tags.get(ORCHESTRATOR_TAG)
        if not orchestrator or not _ours(run) or not process_gone(orchestrator):
            continue
        pid = orchestrator.split(":")[2]
        try:
            current = instance.get_run_by_id(run.run_id)  # another command may have released it meanwhile
            if current is not None:
                _release_now(instance, current, f"the process that ran it (pid {pid} on this host) is gone: killed?")
            released.append(run.run_id)
        except Exception as exc:  # as above: one run's failure does not stop the others
            failed.append(f"{run.run_id[:8]}: {type(exc).__name__}: {exc}")
    return released, failed
