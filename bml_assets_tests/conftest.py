"""Shared test fixtures: where the real Binance files are, and skipping without them; the
services several test folders need (a PostgreSQL server, moto's S3 server and an S3 lake
root in a fresh bucket), each skipped, saying why, where it cannot be had."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bml_assets.cluster.moto import MotoUnavailable, moto_server
from bml_assets.cluster.postgres import PostgresUnavailable, postgres_server

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "real"
# moto checks no signature: any credentials do, but boto3 and pyarrow want some.
TEST_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bml-test",
    "AWS_SECRET_ACCESS_KEY": "bml-test-secret",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture
def real_fixtures() -> Path:
    """The folder of real Binance files (../shared/fixtures/real); skips the test without it."""
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real Binance fixtures not found at {REAL_FIXTURES} (../shared is absent)")
    return REAL_FIXTURES


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the session: ``BML_TEST_POSTGRES_URL`` (a scratch database), else
    one started for it (``bml_assets/cluster/postgres.py``)."""
    given = os.environ.get("BML_TEST_POSTGRES_URL", "")
    if given:
        yield given
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL for the ledger tests: {exc}")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server for the session (``bml_assets/cluster/moto.py``); its endpoint URL."""
    try:
        with moto_server() as url:
            yield url
    except MotoUnavailable as exc:
        pytest.skip(f"no S3 server for the S3 lake tests: {exc}")


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Credentials for moto in the environment (spawned workers inherit them)."""
    for name, value in TEST_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return dict(TEST_AWS_ENV)


@pytest.fixture
def s3_root(moto_endpoint: str, aws_env: dict[str, str]) -> str:
    """``s3://<a fresh bucket>/lake`` on the session's moto server."""
    boto3 = pytest.importorskip("boto3", reason="the S3 lake tests need boto3 (pip install 'bml-assets[s3]')")
    bucket = f"bml-test-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/lake"
