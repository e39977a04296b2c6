"""``dagster dev`` (web UI + daemon: schedules and sensors) as a child process (``bml run-daemon``).

What belongs here: checking the lake root before the start, finding the ``dagster``
command and the workspace file, the notes the user needs before the start, running
it in its own process group with Ctrl-C / SIGTERM forwarded once, and its end as an
exit code. What stays out: the definitions it serves (``definitions.py``) and
printing (``cli.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.orchestration.errors import CommandError
from bml_assets.orchestration.state import check_lake

# The repository's workspace file, when bml runs from a checkout.
PROJECT_WORKSPACE = Path(__file__).resolve().parents[2] / "workspace.yaml"
# dagster dev exits non-zero when interrupted; an asked-for stop is a clean end.
STOPPED_CODES = (0, -signal.SIGINT, -signal.SIGTERM, 130, 143)


@dataclass(frozen=True)
class DaemonLaunch:
    command: tuple[str, ...]
    notes: tuple[str, ...] = ()  # for the user, before the start


def daemon_launch(settings: Settings, host: str, port: int, workspace: Path | None = None) -> DaemonLaunch:
    """The ``dagster dev`` command for ``host:port`` and the workspace (``workspace``, else
    ./workspace.yaml, else the project's, else the ``bml_assets.definitions`` module)."""
    check_lake(Lake.at(settings.lake_root))
    dagster = Path(sys.executable).with_name("dagster")
    executable = str(dagster) if dagster.is_file() else shutil.which("dagster")
    if executable is None:
        raise CommandError(
            "the `dagster` command is not installed next to this Python; pip install dagster dagster-webserver"
        )
    command = [str(executable), "dev", "--host", host, "--port", str(port)]
    found = workspace or next((p for p in (Path("workspace.yaml"), PROJECT_WORKSPACE) if p.is_file()), None)
    command += ["-w", str(found.resolve())] if found else ["-m", "bml_assets.definitions"]
    notes = []
    if not os.environ.get("DAGSTER_HOME"):
        notes.append(
            "note: DAGSTER_HOME is not set: runs and sensor state go to a temporary folder; set it (and copy "
            "dagster.yaml there) to keep them"
        )
    return DaemonLaunch(tuple(command), tuple(notes))


def run_daemon(launch: DaemonLaunch) -> int:
    """Run the command until it ends; 0 when it ended cleanly or as asked (Ctrl-C, SIGTERM), else 1."""
    # Its own process group, so a Ctrl-C reaches dagster once: forwarded from here. The
    # handlers are installed before the start: a signal ignored here (a background job of a
    # script) would otherwise stay ignored in dagster too, and it could not be stopped.
    children: list[subprocess.Popen[bytes]] = []
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        received.append(signum)
        if children and children[0].poll() is None:
            children[0].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        children.append(subprocess.Popen(list(launch.command), env=os.environ.copy(), process_group=0))
        if received:  # asked to stop while it was starting
            children[0].send_signal(received[-1])
        code = children[0].wait()
    finally:
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
