"""What the cluster's services share: a free loopback port, a wait for a port to answer,
stopping a process group, and ``ServiceUnavailable`` (why a service cannot be had here).

What stays out: any one service (``postgres``, ``redis``, ``moto``, ``workers``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path


class ServiceUnavailable(RuntimeError):
    """A service of the local cluster cannot be started here; the message says why and how to fix it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, *, what: str, timeout: float = 60.0, alive: object = None) -> None:
    """Wait until 127.0.0.1:``port`` accepts a connection; ``alive`` (a ``Popen``) failing first ends the wait."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if alive is not None and alive.poll() is not None:  # type: ignore[attr-defined]
            raise ServiceUnavailable(f"{what} exited with status {alive.returncode} before it answered on port {port}")  # type: ignore[attr-defined]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise ServiceUnavailable(f"{what} did not answer on 127.0.0.1:{port} within {timeout:g} s")


def executable(name: str, *, hint: str) -> str:
    """A program of this Python environment (its bin folder first), else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise ServiceUnavailable(f"{name} is not installed ({hint})")
    return found


def stop_group(pid: int, *, timeout: float = 20.0) -> None:
    """SIGTERM the process group ``pid`` leads, then SIGKILL what is left after ``timeout``."""
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        try:  # reap it when it is our child
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
