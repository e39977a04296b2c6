"""moto's S3 server on a free loopback port, for tests, benchmarks and demos of an ``s3://`` lake.

What belongs here: starting the ``moto_server`` of this environment (the venv's own, else
the one on PATH) as a subprocess on 127.0.0.1, waiting until it answers, and stopping it;
``MotoUnavailable`` says why it could not be had. What stays out: buckets and what is
stored in them (the caller creates them through boto3 or the store), and the other
services of the cluster.

moto keeps everything in memory and checks no signature: any credentials do. It honours
``If-None-Match``/``If-Match`` on PUT (and ``If-Match`` on DELETE), which is what the
lake's commit relies on; ``S3Store.ensure_writable`` proves it on every start.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

START_TIMEOUT_S: Final = 30.0


class MotoUnavailable(RuntimeError):
    """No moto server can be started here (the reason is the message)."""


def moto_server_binary() -> str:
    """The ``moto_server`` beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("moto_server")
    if found:
        return found
    raise MotoUnavailable("no moto_server (pip install 'moto[server]', part of bml-assets[cluster])")


def free_port() -> int:
    """A TCP port free on 127.0.0.1 at this moment."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer: the server is up
    except OSError:
        return False


@contextmanager
def moto_server(*, timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """moto's S3 server for the duration of the block; yields its endpoint URL
    (``http://127.0.0.1:<port>``). ``MotoUnavailable`` when it is missing or does not
    answer within ``timeout`` seconds."""
    binary, port = moto_server_binary(), free_port()
    url = f"http://127.0.0.1:{port}"
    # moto logs every request to stderr: a file, not a pipe nobody would drain.
    log = tempfile.TemporaryFile()
    try:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    except OSError as exc:
        log.close()
        raise MotoUnavailable(f"cannot start moto_server: {exc}") from exc
    try:
        deadline = time.monotonic() + timeout
        while not _answers(url):
            if process.poll() is not None:
                log.seek(0)
                error = log.read().decode(errors="replace")
                raise MotoUnavailable(f"moto_server exited with {process.returncode}: {error.strip()[-500:]}")
            if time.monotonic() >= deadline:
                raise MotoUnavailable(f"moto_server did not answer at {url} within {timeout:g} s")
            time.sleep(0.1)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
