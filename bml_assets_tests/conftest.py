"""Shared test fixtures: where the real Binance files are, and skipping without them; a
PostgreSQL server for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bml_assets_tests.services.postgres import PostgresUnavailable, postgres_server

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "real"


@pytest.fixture
def real_fixtures() -> Path:
    """The folder of real Binance files (../shared/fixtures/real); skips the test without it."""
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real Binance fixtures not found at {REAL_FIXTURES} (../shared is absent)")
    return REAL_FIXTURES


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL URL for the session: ``BML_TEST_POSTGRES_URL`` (a scratch database) when
    set, else a server started for it (``services/postgres.py``); skips, saying why, where
    PostgreSQL cannot be had. (The lake tests' conftest has its own of the same name.)"""
    given = os.environ.get("BML_TEST_POSTGRES_URL", "")
    if given:
        yield given
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")
