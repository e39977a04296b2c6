"""A Redis server (Debian's ``redis-server``) on a loopback port: the Celery workers' broker and result store.

What belongs here: starting it in a folder (no persistence: a broker for tests and demos),
its URL, stopping it. What stays out: Celery (``workers.py``).
"""

from __future__ import annotations

import shutil
import subprocess
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


def pid(folder: Path) -> int | None:
    try:
        return int((folder / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None
