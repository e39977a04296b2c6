"""A Redis server (Debian's ``redis-server``) on a loopback port: the Celery workers' broker and result store.

What belongs here: starting it in a folder (no persistence: a broker for tests and demos),
its URL, stopping it. What stays out: Celery (``workers.py``).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bml_assets.cluster.services import ServiceUnavailable, wait_for_port

INSTALL_HINT = "Debian: apt-get install redis-server"


def start(folder: Path, port: int) -> str:
    """Start ``redis-server`` daemonised on 127.0.0.1:``port`` (pid in ``folder/redis.pid``); return its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceUnavailable(f"Redis is not installed: no redis-server ({INSTALL_HINT})")
    folder.mkdir(parents=True, exist_ok=True)
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--daemonize", "yes"]
    args += ["--pidfile", str(folder / "redis.pid"), "--logfile", str(folder / "redis.log")]
    args += ["--save", "", "--appendonly", "no", "--protected-mode", "yes"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        raise ServiceUnavailable(f"redis-server failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    wait_for_port(port, what="redis-server")
    return f"redis://127.0.0.1:{port}"


def stop(folder: Path, *, timeout: float = 20.0) -> None:
    """Stop the server whose pid is in ``folder/redis.pid`` (if it is still redis-server) and wait for it."""
    try:
        pid = int((folder / "redis.pid").read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return  # never started, or gone
    if b"redis-server" not in command:
        return  # a stale pid file: that number is another process now
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
