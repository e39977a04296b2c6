"""Fixtures of the lake tests: the ledger URL, on SQLite and on PostgreSQL.

Tests taking ``url`` (or a ``ledger`` fixture built on it) run on SQLite and on a real
PostgreSQL server: the one ``BML_TEST_POSTGRES_URL`` names (a scratch database), else one
started for the test session (``bml_assets_tests/services/postgres.py``; skipped, saying
why, where PostgreSQL is not installed). The ledger tables in it, and the version table of
their migrations, are dropped before each test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from bml_assets.lake.ledger import metadata
from bml_assets.lake.migrations import VERSION_TABLE
from bml_assets_tests.services.postgres import PostgresUnavailable, postgres_server

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    given = os.environ.get("BML_TEST_POSTGRES_URL", "")
    if given:
        yield given
        return
    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL for the ledger tests: {exc}")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lake' / '_state' / 'ledger.sqlite'}"
    postgres = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(postgres)
    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    engine.dispose()
    return postgres
