"""``dagster dev`` (web UI + daemon: schedules and sensors) as a child process (``bml run-daemon``),
with the live collector (``bml live-collect`` for ``BML_SYMBOLS``) beside it.

What belongs here: checking the lake root before the start, finding the ``dagster``
command and the workspace file, the notes the user needs before the start, running
it in its own process group with Ctrl-C / SIGTERM forwarded once, and its end as an
exit code; keeping the collector running next to it (``CollectorSupervisor``: restarted
with backoff whenever it ends, every end reported, stopped with the same signal when
dagster stops). What stops them both is dagster's end: the collector never outlives it.
What stays out: the definitions it serves (``definitions.py``), the collector itself
(``live/``, reached only through its command line), and printing (``cli.py``: the
reports go to a callback).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.orchestration.errors import CommandError
from bml_assets.orchestration.runner import dagster_home
from bml_assets.orchestration.state import check_lake

# The repository's workspace file, when bml runs from a checkout.
PROJECT_WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
# dagster dev exits non-zero when interrupted; an asked-for stop is a clean end.
STOPPED_CODES = (0, -signal.SIGINT, -signal.SIGTERM, 130, 143)
# The collector's restarts: 1 s doubling to 60 s (jittered), back to 1 s after a run of 60 s.
RESTART_MIN_S: Final = 1.0
RESTART_MAX_S: Final = 60.0
STABLE_AFTER_S: Final = 60.0
STOP_TIMEOUT_S: Final = 30.0  # then it is killed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DaemonLaunch:
    command: tuple[str, ...]
    notes: tuple[str, ...] = ()  # for the user, before the start
    collector: tuple[str, ...] | None = None  # the live collector's command; None: not started
    dagster_home: str | None = None  # the one instance, shared with the CLI (runner.dagster_home)


def collector_command() -> tuple[str, ...]:
    """``bml live-collect`` with this Python (for ``BML_SYMBOLS``, from the same environment)."""
    script = Path(sys.executable).with_name("bml")
    base = (str(script),) if script.is_file() else (sys.executable, "-m", "bml_assets.cli")
    return (*base, "live-collect")


def daemon_launch(
    settings: Settings, host: str, port: int, workspace: Path | None = None, *, live: bool = True
) -> DaemonLaunch:
    """The ``dagster dev`` command for ``host:port`` and the workspace (``workspace``, else
    ./workspace.yaml, else the project's, else the ``bml_assets.definitions`` module), and
    the live collector's command unless ``live`` is False."""
    check_lake(Lake.from_settings(settings))
    dagster = Path(sys.executable).with_name("dagster")
    executable = str(dagster) if dagster.is_file() else shutil.which("dagster")
    if executable is None:
        raise CommandError(
            "the `dagster` command is not installed next to this Python; pip install dagster dagster-webserver"
        )
    command = [str(executable), "dev", "--host", host, "--port", str(port)]
    found = workspace or next((p for p in (Path("workspace.yaml"), PROJECT_WORKSPACE) if p.is_file()), None)
    command += ["-w", str(found.resolve())] if found else ["-m", "bml_assets.definitions"]
    home = dagster_home(settings)
    notes = [f"Dagster instance: {home} (the one the bml commands use; DAGSTER_HOME overrides it)"]
    collector = collector_command() if live else None
    if collector is not None:
        notes.append(
            f"the live collector runs beside it for {','.join(settings.symbols)} (BML_SYMBOLS); --no-live leaves it out"
        )
    return DaemonLaunch(tuple(command), tuple(notes), collector, str(home))


def run_daemon(launch: DaemonLaunch, report: Callable[[str], None] | None = None) -> int:
    """Run the command (and the collector beside it) until it ends; 0 when it ended cleanly or
    as asked (Ctrl-C, SIGTERM), else 1. ``report`` gets a line for each start and end of the
    collector (default: the log)."""
    # Its own process group, so a Ctrl-C reaches dagster once: forwarded from here. The
    # handlers are installed before the start: a signal ignored here (a background job of a
    # script) would otherwise stay ignored in dagster too, and it could not be stopped.
    children: list[subprocess.Popen[bytes]] = []
    received: list[int] = []
    supervisor = CollectorSupervisor(launch.collector, report or log.warning) if launch.collector is not None else None

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if children and children[0].poll() is None:
            children[0].send_signal(signum)
        if supervisor is not None:
            supervisor.pass_on(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        env = os.environ.copy()
        if launch.dagster_home is not None:
            env["DAGSTER_HOME"] = launch.dagster_home
        children.append(subprocess.Popen(list(launch.command), env=env, process_group=0))
        if received:  # asked to stop while it was starting
            children[0].send_signal(received[-1])
        elif supervisor is not None:
            supervisor.start()
        code = children[0].wait()
    finally:
        if supervisor is not None:
            supervisor.stop(received[-1] if received else signal.SIGTERM)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for child in children:
            if child.poll() is None:
                child.terminate()
                try:
                    child.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    child.kill()
    return 0 if code in STOPPED_CODES else 1


class CollectorSupervisor:
    """Keeps ``command`` running in its own process group until ``stop``: whenever it ends, for
    whatever reason, the end is reported and it is started again after a jittered backoff
    (``min_s`` doubling to ``max_s``, back to ``min_s`` once a run lasted ``stable_after_s``).
    ``report`` gets one line per start, end and stop."""

    def __init__(
        self,
        command: Sequence[str],
        report: Callable[[str], None],
        *,
        min_s: float = RESTART_MIN_S,
        max_s: float = RESTART_MAX_S,
        stable_after_s: float = STABLE_AFTER_S,
        rng: random.Random | None = None,
    ) -> None:
        self.command = tuple(command)
        self.report = report
        self.min_s = min_s
        self.max_s = max_s
        self.stable_after_s = stable_after_s
        self._rng = rng if rng is not None else random.Random()
        self._stopping = threading.Event()
        self._lock = threading.RLock()  # pass_on() may run in a handler while the main thread holds it
        self._child: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None
        self.starts = 0
        self.ends: list[int] = []  # exit codes of the runs that ended on their own
        self._ended: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self._thread = threading.Thread(target=self._keep_running, name="bml-live-collector", daemon=True)
        self._thread.start()

    def _keep_running(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    child = subprocess.Popen(list(self.command), env=os.environ.copy(), process_group=0)
                except OSError as exc:
                    child = None
                    problem = f"could not be started: {exc}"
                else:
                    self._child = child
                    self.starts += 1
            if child is not None:
                self.report(f"live collector started (pid {child.pid}): {' '.join(self.command)}")
                code = child.wait()
                if self._stopping.is_set():
                    return
                self.ends.append(code)
                self._ended.append(child)
                problem = f"ended with exit code {code}"
            ran = time.monotonic() - started
            failures = 0 if ran >= self.stable_after_s else failures + 1
            delay = min(self.max_s, self.min_s * 2 ** max(0, failures - 1)) * self._rng.uniform(0.5, 1.0)
            self.report(f"live collector {problem} after {ran:.1f} s; restarting in {delay:.1f} s")
            self._stopping.wait(delay)

    def pass_on(self, signum: int) -> None:
        """Stop restarting and pass ``signum`` on (from a signal handler: does not wait)."""
        self._stopping.set()
        with self._lock:
            child = self._child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def stop(self, signum: int = signal.SIGTERM, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Stop it (``signum``, then a kill after ``timeout_s``) and wait; the exit code of the
        run it stopped (None: none was running)."""
        self.pass_on(signum)
        with self._lock:
            child = self._child
        code = None
        if child is not None and child not in self._ended:
            try:
                code = child.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
                code = child.wait()
            self.report(f"live collector stopped (exit code {code})")
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        return code
