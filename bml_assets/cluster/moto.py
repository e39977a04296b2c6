"""moto's S3 server (``moto_server``, from ``moto[server]``) as the local S3 endpoint: it implements conditional writes.

PLACEHOLDER until the S3 helper's module lands: start(port, log) and create_bucket(endpoint, bucket).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from bml_assets.cluster.services import executable, wait_for_port


def start(port: int, log: Path) -> subprocess.Popen:
    binary = executable("moto_server", hint="pip install 'moto[server]'")
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [binary, "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    wait_for_port(port, what="moto_server", alive=proc)
    return proc


def create_bucket(endpoint: str, bucket: str) -> None:
    import boto3

    boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=bucket)
