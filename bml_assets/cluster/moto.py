"""moto's S3 server (``moto_server``, from ``moto[server]``) on a loopback port: the S3 endpoint of the local cluster.

What belongs here: starting the ``moto_server`` of this environment (the venv's own, else
the one on PATH) on 127.0.0.1 and waiting until it answers, for the cluster (``start``,
stopped with its process group) or for one block (``moto_server``: tests, benchmarks);
creating a bucket. ``MotoUnavailable`` says why it could not be had. What stays out: what
is stored in the buckets, and the other services.

moto keeps everything in memory and checks no signature: any credentials do. It honours
``If-None-Match``/``If-Match`` on PUT (and ``If-Match`` on DELETE), which the lake's commit
relies on; ``S3Store.ensure_writable`` proves it on every start.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from bml_assets.cluster.services import ServiceUnavailable, executable, free_port, stop_group, wait_for_port

START_TIMEOUT_S: Final = 30.0
# moto accepts any credentials; boto3 and pyarrow need some to sign with.
CREDENTIALS: Final = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


class MotoUnavailable(ServiceUnavailable):
    """No moto server can be started here (the reason is the message)."""


def start(port: int, log: Path, *, timeout: float = START_TIMEOUT_S) -> subprocess.Popen:
    """``moto_server`` on 127.0.0.1:``port`` in a process group of its own, logging to ``log``
    (moto logs every request: a file, not a pipe nobody drains); returns once it answers."""
    try:
        binary = executable("moto_server", hint="pip install 'moto[server]', part of bml-assets[cluster]")
    except ServiceUnavailable as exc:
        raise MotoUnavailable(str(exc)) from None
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, what="moto_server", timeout=timeout, alive=process)
    except ServiceUnavailable as exc:
        stop_group(process.pid)
        raise MotoUnavailable(f"{exc} (log: {log})") from None
    return process


@contextmanager
def moto_server(*, timeout: float = START_TIMEOUT_S) -> Iterator[str]:
    """moto's S3 server for the duration of the block; yields its endpoint URL (``http://127.0.0.1:<port>``)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bml-moto-") as folder:
        process = start(port, Path(folder) / "moto.log", timeout=timeout)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_group(process.pid)


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
    ).create_bucket(Bucket=bucket)
