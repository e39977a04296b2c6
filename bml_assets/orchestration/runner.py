"""The one in-process run helper: a job of the real definitions, run for one partition or a range of days.

What belongs here: the Dagster instance the runs go to (one state: ``DAGSTER_HOME``
when set, else ``{BML_WORK_DIR}/_dagster`` (the lake root when it is local), the instance ``bml run-daemon`` serves),
the resource and the definitions built from the ``Settings`` (with a partition set
that covers what is asked), executing a job for a partition or for one symbol's
consecutive days in one run (a ranged run, like the UI's ``multi_run`` backfill
policy) with tags, running it again when it only lost a commit race, and a run's end
as a ``RunOutcome``: success, the number of runs, the failure as one line a person
can act on (the failed step and the root cause: ``plain_cause``), the whole error
chain for ``--verbose``, whether the process was interrupted, and what its steps
downloaded when they ran in other processes (Celery workers). The backfill
(``backfill.py``) and the hot pass (``hot.py``) both run their partitions through it.

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

PostgreSQL going away (a restart) mid-run: the run fails, or its orchestration breaks off
and it is left STARTED holding its pool slots. Either way the run is released
(``orphans.release``: marked failed, its slots freed, once the server is back: one wait
per outage) and, once the ledger's server answers too (``BML_STATE_URL``, which need not be
Dagster's), run again, at most ``MAX_STORAGE_RERUNS`` times, each logged. The
commit protocol makes the rerun safe: what the first run committed stays, and a commit it
left half done is adopted or replaced after its hash is checked.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from bml_assets.domain.partitions import partition_key
from bml_assets.domain.settings import Settings
from bml_assets.orchestration import orphans
from bml_assets.orchestration.errors import BadRequest
from bml_assets.sources.http import Traffic
from bml_assets.storage.state_db import server_probe

# Per-partition warnings (e.g. "no hot snapshots for a past day") would bury the progress:
# the commands report failures themselves; the full logs are in the run (DAGSTER_HOME).
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
# Runs of one partition when each loses a commit race (see the module docstring).
MAX_RUN_ATTEMPTS = 3
# Runs of one partition again after PostgreSQL went away under them (see the module docstring).
MAX_STORAGE_RERUNS = 3
# How long the release of a run that failed for another reason waits for the storage.
RELEASE_WAIT_S = 10.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunOutcome:
    """How a partition's run(s) ended."""

    ok: bool
    runs: int = 1  # more than one: earlier runs lost a commit race, or PostgreSQL, and were run again
    error: str | None = None  # one line: the failed step and its innermost cause, or the exception
    interrupted: bool = False  # the process was interrupted (Ctrl-C / SIGTERM) inside a step
    # The whole error chain with its tracebacks (``--verbose``); not part of an outcome's identity.
    detail: str | None = field(default=None, compare=False)
    # What the run's steps downloaded in other processes (Celery workers), as their
    # materializations record it; steps run in this process count in its own ``traffic()``.
    traffic_elsewhere: Traffic = field(default_factory=Traffic, compare=False)


class PartitionRunner(Protocol):
    """Runs a job for one (symbol, day) partition, with run tags."""

    def run(self, symbol: str, day: dt.date, tags: Mapping[str, str]) -> RunOutcome: ...


class RangeRunner(PartitionRunner, Protocol):
    """Also runs a job for one symbol's consecutive days ``first..last`` in a single run."""

    def run_range(self, symbol: str, first: dt.date, last: dt.date, tags: Mapping[str, str]) -> RunOutcome: ...


# The instance settings shipped with the project (concurrency pools, run retries), copied
# into a new home so that `dagster dev` and the CLI read the same ones.
PROJECT_INSTANCE_YAML = Path(__file__).resolve().parents[2] / "dagster.yaml"
LAKE_DAGSTER_DIR = "_dagster"


def dagster_home(settings: Settings) -> Path:
    """Where the one Dagster instance lives: ``DAGSTER_HOME`` when set, else
    ``{BML_WORK_DIR}/_dagster`` (the lake root when it is local; created, with the project's dagster.yaml when it has none)."""
    # DAGSTER_HOME is Dagster's own variable, not a BML_* setting: read where the instance is opened.
    home = Path(os.environ["DAGSTER_HOME"]) if os.environ.get("DAGSTER_HOME") else settings.host_dir / LAKE_DAGSTER_DIR
    home = home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists() and PROJECT_INSTANCE_YAML.is_file():
        shutil.copyfile(PROJECT_INSTANCE_YAML, home / "dagster.yaml")
    return home


# Instance config keys that choose a storage: a home that sets one keeps it as it is.
_STORAGE_KEYS = ("storage", "run_storage", "event_log_storage", "schedule_storage")


@contextmanager
def dagster_instance(settings: Settings) -> Iterator[Any]:
    """The persistent instance of ``dagster_home(settings)``: the runs show in the UI of
    ``bml run-daemon`` / ``dagster dev`` with the same home. With Dagster's default SQLite
    storage, its event log keeps its connections open (``defs/event_log.py``: the same
    files, ≈ 1 s less per run)."""
    from dagster import DagsterInstance
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.instance.ref import InstanceRef

    from bml_assets.defs.event_log import kept_open_overrides

    home = dagster_home(settings)
    config, custom_class = dagster_instance_config(str(home))
    default_storage = custom_class is None and not any(config.get(k) for k in _STORAGE_KEYS)
    overrides = kept_open_overrides(home) if default_storage else None
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=overrides)) as instance:
        if not default_storage:
            # Dagster's PostgreSQL storage opens a connection per event by default (NullPool),
            # ≈ 4 ms each on loopback, hundreds per run. This process lives for many runs: it
            # keeps one open, as Dagster's webserver does.
            instance.optimize_for_webserver(statement_timeout=0, pool_recycle=3600, max_overflow=4)
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


# Root causes a person can act on, found in the innermost error's text: (pattern, line).
_CONNECTION_REFUSED = re.compile(r"Connection refused|ConnectionRefusedError|\[Errno 111\]")
_GET_URL = re.compile(r"GET (\S+) failed")
_NO_SPACE = re.compile(r"No space left on device(?:: '([^']+)')?")
_BANNED = re.compile(r"(\S+) has banned this IP .* until (\S+ \S+ UTC)")
_CHECKSUM = re.compile(r"(checksum mismatch for \S+?):?(?:\s|$)")


def plain_cause(message: str) -> str:
    """One line that names what went wrong and where: PostgreSQL down or restarted,
    ``connection refused at <url>``,
    ``HTTP 418 (banned) from <host> until <t>``, ``checksum mismatch for <url>``,
    ``No space left on device``; else the message's first line."""
    if orphans.storage_lost(message):
        return f"{orphans.storage_loss(message)}: run the command again when it is back (what was committed stays)"
    if _CONNECTION_REFUSED.search(message):
        url = _GET_URL.search(message)
        return f"connection refused at {url.group(1)}" if url else "connection refused"
    if found := _NO_SPACE.search(message):
        return f"No space left on device ({found.group(1)})" if found.group(1) else "No space left on device"
    if found := _BANNED.search(message):
        return f"HTTP 418 (banned) from {found.group(1)} until {found.group(2)}"
    if found := _CHECKSUM.search(message):
        return found.group(1)
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    return lines[0] if lines else "failed"


def _chain(error: Any) -> Iterator[Any]:
    """An error and its causes (``raise … from``) or, without one, its context, outermost first."""
    while error is not None:
        yield error
        error = error.cause if error.cause is not None else getattr(error, "context", None)


def _run_error(result: Any) -> str:
    """The first failed step and the error that explains it: the root cause in plain words,
    not Dagster's wrapper ("Error occurred while handling output …")."""
    failures = _failures(result)
    if not failures:
        # The run failed outside its steps (its executor, the instance's storage): the run's
        # own failure event says why, when it could be written.
        run_failure = next((e for e in result.all_events if e.is_run_failure), None)
        error = run_failure.job_failure_data.error if run_failure is not None else None
        if error is None:
            return "run failed"
        causes = list(_chain(error))
        return f"run failed: {plain_cause(causes[-1].message)}"
    errors = list(_chain(failures[0].step_failure_data.error))
    message = errors[-1].message if errors else "step failed"
    return f"{failures[0].step_key}: {plain_cause(message)}"


def _run_detail(result: Any) -> str:
    """Every failed step's error chain with its tracebacks (what ``--verbose`` prints)."""
    return "\n".join(f"{e.step_key}:\n{e.step_failure_data.error.to_string()}" for e in _failures(result))


class InProcessRunner:
    """``job`` run from this process in ``instance``: one run per partition, per range of one
    symbol's days (a ``RangeRunner``), or per day over a range of symbols. Its steps run in this
    process, or, when ``job`` is reconstructable (``celery_job``), wherever its executor
    sends them (the Celery workers) while this process follows the run."""

    def __init__(
        self,
        job: Any,
        instance: Any,
        *,
        steps_elsewhere: bool = False,
        ledger_probe: Callable[[], object] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._job = job
        self._instance = instance
        self._steps_elsewhere = steps_elsewhere  # its executor runs the steps in other processes
        # Raises while the ledger's server (BML_STATE_URL) does not answer; None on SQLite.
        self._ledger_probe = ledger_probe
        self._sleep = sleep
        self._orchestrator = orphans.this_process()
        # Attempts whose release failed (the storage stayed away): their slots are still
        # claimed, so they are released before the next run, which would wait for them.
        self._unreleased: list[str] = []
        # One wait for the storage per outage, not one per run: set when a wait starts,
        # cleared when a release goes through. Past it, runs fail as fast as Dagster does.
        self._storage_deadline: float | None = None
        # The ledger's server gets the same wait, not one of its own: set with the storage's
        # (or at its first probe), cleared when it answers or a run succeeds.
        self._ledger_deadline: float | None = None

    def run(self, symbol: str, day: dt.date, tags: Mapping[str, str]) -> RunOutcome:
        """Run the job for the partition, again while it only lost commit races (at most
        ``MAX_RUN_ATTEMPTS`` runs) or PostgreSQL went away under it (``MAX_STORAGE_RERUNS``
        more). An exception becomes a failed outcome: one partition's crash must not stop the
        caller's other partitions."""
        return self._execute(dict(tags), partition_key=partition_key(symbol, day))

    def run_range(self, symbol: str, first: dt.date, last: dt.date, tags: Mapping[str, str]) -> RunOutcome:
        """One run for ``symbol``'s days ``first..last`` (the range tags a single-run backfill
        sets; the assets build ``context.partition_keys``); retried like ``run``."""
        return self._run_between(partition_key(symbol, first), partition_key(symbol, last), tags)

    def run_symbols(self, day: dt.date, first: str, last: str, tags: Mapping[str, str]) -> RunOutcome:
        """One run for ``day`` of the symbols ``first`` … ``last`` in the partition order (the
        hot pass: one run per day for every due symbol); retried like ``run``."""
        return self._run_between(partition_key(first, day), partition_key(last, day), tags)

    def _run_between(self, first_key: str, last_key: str, tags: Mapping[str, str]) -> RunOutcome:
        """One run of the partition range ``first_key`` … ``last_key`` (one partition: a plain run)."""
        from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

        if first_key == last_key:
            return self._execute(dict(tags), partition_key=first_key)
        ranged = {**tags, ASSET_PARTITION_RANGE_START_TAG: first_key, ASSET_PARTITION_RANGE_END_TAG: last_key}
        return self._execute(ranged, partition_key=None)

    def _run_once(self, tags: dict[str, str], partition_key: str | None) -> Any:
        from dagster import execute_job
        from dagster._core.definitions.reconstruct import ReconstructableJob

        if isinstance(self._job, ReconstructableJob):
            if partition_key is not None:
                tags = {**tags, "dagster/partition": partition_key}
            with warnings.catch_warnings():
                # dagster-celery registers its one task again for every run of the process: the
                # same code under the same name, which Celery reports at each run.
                warnings.filterwarnings("ignore", message="Task name 'execute_plan' is already registered")
                return execute_job(self._job, self._instance, run_config=RUN_CONFIG, tags=tags, raise_on_error=False)
        return self._job.execute_in_process(
            partition_key=partition_key, instance=self._instance, raise_on_error=False, run_config=RUN_CONFIG, tags=tags
        )

    def _execute(self, tags: dict[str, str], *, partition_key: str | None) -> RunOutcome:
        from dagster._core.storage.tags import ASSET_PARTITION_RANGE_END_TAG, ASSET_PARTITION_RANGE_START_TAG

        what = (
            partition_key or f"{tags.get(ASSET_PARTITION_RANGE_START_TAG)} … {tags.get(ASSET_PARTITION_RANGE_END_TAG)}"
        )
        runs = race_runs = storage_reruns = 0
        elsewhere = Traffic()
        while True:
            self._release_earlier()
            runs += 1
            attempt = uuid.uuid4().hex
            tagged = {**tags, orphans.ATTEMPT_TAG: attempt, orphans.ORCHESTRATOR_TAG: self._orchestrator}
            result, failed, lost = self._attempt(tagged, partition_key, runs)
            if result is not None and self._steps_elsewhere:
                elsewhere += _traffic_of_steps(result)
            if failed is None:
                self._ledger_deadline = None  # the run reached the ledger
                return RunOutcome(True, runs, traffic_elsewhere=elsewhere)
            failed = replace(failed, traffic_elsewhere=elsewhere)
            # An interrupted command does not wait: its release is tried before the next run, or at exit.
            waits = lost is not None and not failed.interrupted
            if waits:
                log.warning(f"{what}: {orphans.storage_loss(lost)} during its run; waiting for it to release the run")
            unreleased = self._release(attempt, f"bml: {failed.error}", storage_lost=waits)
            if unreleased is not None:
                # Its slots stay claimed: tried again before this runner's next run.
                self._unreleased.append(attempt)
                suffix = "its REST pool slots stay claimed until Dagster's storage answers again"
                return replace(failed, error=f"{failed.error}; {suffix}")
            if waits and storage_reruns < MAX_STORAGE_RERUNS:
                ledger_down = self._await_ledger()
                if ledger_down is not None:
                    return replace(
                        failed,
                        error=f"{failed.error}; the ledger's server (BML_STATE_URL) still does not answer: {ledger_down}",
                    )
                storage_reruns += 1
                log.warning(f"{what}: PostgreSQL is back; running it again")
                continue
            race_runs += 1
            if result is not None and race_runs < MAX_RUN_ATTEMPTS and _lost_commit_race(result):
                continue
            return failed

    def _release(self, attempt: str, why: str, *, storage_lost: bool) -> str | None:
        """``orphans.release`` of ``attempt``: after its storage went away, within this
        outage's one wait (``_storage_deadline``); else with a short one."""
        if storage_lost or self._storage_deadline is not None:
            if self._storage_deadline is None:
                self._storage_deadline = time.monotonic() + orphans.STORAGE_WAIT_S
                if self._ledger_deadline is None:
                    self._ledger_deadline = self._storage_deadline
            wait_s = max(0.0, self._storage_deadline - time.monotonic())
        else:
            wait_s = RELEASE_WAIT_S
        unreleased = orphans.release(self._instance, attempt, why, wait_s=wait_s)
        if unreleased is None:
            self._storage_deadline = None
        return unreleased

    def _await_ledger(self) -> str | None:
        """Wait until the ledger's server answers, within this outage's one wait (the release
        waited for Dagster's storage from the same deadline): the run may have lost the ledger's
        PostgreSQL, which need not be Dagster's. Past the wait, as for the storage, a partition
        fails at the first refused probe until the server answers or a run succeeds. None when
        it answers, else its last error."""
        if self._ledger_probe is None:
            return None
        if self._ledger_deadline is None:
            self._ledger_deadline = time.monotonic() + orphans.STORAGE_WAIT_S
        down = orphans.retry_while_lost(self._ledger_probe, self._ledger_deadline, self._sleep)
        if down is None:
            self._ledger_deadline = None
        return down

    def release_leftovers(self) -> list[str]:
        """Try once more to release what earlier releases could not (``_release_earlier``);
        the attempts still holding slots, for the caller to report."""
        self._release_earlier()
        return list(self._unreleased)

    def _attempt(
        self, tags: dict[str, str], partition_key: str | None, runs: int
    ) -> tuple[Any, RunOutcome | None, str | None]:
        """One run: its result (None when Dagster raised), its failure (None: it succeeded) and,
        when the storage went away under it, the error text that says so."""
        import traceback

        try:
            result = self._run_once(tags, partition_key)
        except Exception as exc:
            text = orphans.error_text(exc)
            lost = text if orphans.storage_lost(text) else None
            error = f"{type(exc).__name__}: {plain_cause(lost or str(exc))}"
            return None, RunOutcome(False, runs, error, detail=traceback.format_exc()), lost
        if result.success:
            return result, None, None
        failed = RunOutcome(False, runs, _run_error(result), _interrupted(result), _run_detail(result))
        return result, failed, next((e.message for e in _errors(result) if orphans.storage_lost(e.message)), None)

    def _release_earlier(self) -> None:
        """Release the runs whose release failed earlier (``_unreleased``), within the
        outage's wait; what still fails is kept for the next run."""
        self._unreleased = [
            attempt
            for attempt in self._unreleased
            if self._release(attempt, "bml: its orchestration was cut off", storage_lost=True) is not None
        ]


def _traffic_of_steps(result: Any) -> Traffic:
    """What a run's steps downloaded, as their materializations record it (``BYTES_KEY``)."""
    from bml_assets.defs.assets.streams import recorded_traffic

    spent = Traffic()
    for event in result.all_events:
        if event.is_step_materialization:
            spent += recorded_traffic(event.event_specific_data.materialization.metadata)
    return spent


def _errors(result: Any) -> Iterator[Any]:
    """Every error a failed run recorded: each failed step's chain and the run's own failure."""
    for event in result.all_events:
        if event.is_step_failure:
            yield from _chain(event.step_failure_data.error)
        elif event.is_run_failure and event.job_failure_data is not None:
            yield from _chain(event.job_failure_data.error)


class _QuietConnectionRetries(logging.Filter):
    """Dagster's PostgreSQL storage logs a warning with a traceback on every connection retry; a
    restart makes dozens. The runner says once what happened (``log``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying failed database connection")


_QUIET_RETRIES = _QuietConnectionRetries()


CODE_LOCATION = ("bml_assets.definitions", "defs")  # pyproject's [tool.dagster] module, and its attribute


def check_worker_partitions(settings: Settings, symbols: Iterable[str], first_day: dt.date) -> None:
    """With Celery workers, each rebuilds the code location from its own ``BML_*`` environment,
    so the partitions asked must be in that partition set (``BML_SYMBOLS`` from
    ``BML_START_DATE``), not only in this command's: else ``BadRequest`` saying so."""
    if settings.celery is None:
        return
    outside = [s for s in dict.fromkeys(symbols) if s not in settings.symbols]
    if outside or first_day < settings.start_date:
        asked = ", ".join(outside) if outside else f"days from {first_day.isoformat()}"
        raise BadRequest(
            f"the Celery workers build their partitions from BML_SYMBOLS={','.join(settings.symbols)} and "
            f"BML_START_DATE={settings.start_date.isoformat()}; {asked} is outside them: set those variables "
            "for the workers and this command alike, and restart the workers"
        )


def celery_job(settings: Settings, job_name: str, *, symbols: Iterable[str], first_day: dt.date) -> Any:
    """``job_name`` of the code location as a reconstructable job, as the Celery workers load it."""
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    check_worker_partitions(settings, symbols, first_day)
    module, attribute = CODE_LOCATION
    return ReconstructableRepository.for_module(module, attribute).get_reconstructable_job(job_name)


def release_orphans(instance: Any) -> None:
    """``orphans.sweep`` of ``instance``, logging what it released and what it could not."""
    released, failed = orphans.sweep(instance)
    if released:
        log.warning(
            f"released {len(released)} run(s) left unfinished by a process of this host that is gone "
            f"({', '.join(r[:8] for r in released)}): marked failed, their REST pool slots freed"
        )
    for line in failed:
        log.warning(f"an unfinished run of a gone process could not be released: {line}")


@contextmanager
def in_process(
    settings: Settings, job_name: str, *, symbols: Iterable[str], first_day: dt.date, sweep: bool = True
) -> Iterator[InProcessRunner]:
    """A runner of the real definitions' ``job_name`` for ``symbols`` from ``first_day``, in
    ``dagster_instance(settings)``; the definitions' resources are built from ``settings``.
    With Celery workers (``BML_CELERY_BROKER_URL``) the job is the code location's own, as the
    workers load it (``celery_job``)."""
    from bml_assets.definitions import MINUTE_VIEW_JOB

    celery = settings.celery is not None and job_name == MINUTE_VIEW_JOB
    if celery:
        job = celery_job(settings, job_name, symbols=symbols, first_day=first_day)
    else:
        job = _definitions(settings, symbols, first_day).resolve_job_def(job_name)
    root = logging.getLogger()
    root.addFilter(_QUIET_RETRIES)
    try:
        with dagster_instance(settings) as instance:
            if sweep:
                release_orphans(instance)
            runner = InProcessRunner(
                job, instance, steps_elsewhere=celery, ledger_probe=server_probe(settings.state_url)
            )
            try:
                yield runner
            finally:
                held = runner.release_leftovers()
                if held:
                    log.warning(
                        f"{len(held)} run(s) still hold REST pool slots (PostgreSQL did not come back): the next "
                        "bml command on this host releases them once it can, or terminate them in the UI"
                    )
    finally:
        root.removeFilter(_QUIET_RETRIES)
