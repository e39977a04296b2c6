"""Fixtures of the lake tests: the ledger URL, on SQLite and on PostgreSQL.

Tests taking ``url`` (or a ``ledger`` fixture built on it) run on SQLite and on a real
PostgreSQL server: the one ``BML_TEST_POSTGRES_URL`` names (a scratch database), else one
started for the test session (``bml_assets/cluster/postgres.py``; skipped, saying
why, where PostgreSQL is not installed; the session fixture ``postgres_url`` is in
``bml_assets_tests/conftest.py``). The ledger tables in it, and the version table of their
migrations, are dropped before each test.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from bml_assets.lake.ledger import metadata
from bml_assets.lake.migrations import VERSION_TABLE

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture
def empty_postgres_url(postgres_url: str) -> str:
    """The session's PostgreSQL with no ledger in it: its tables and the version table of their
    migrations dropped (a test of another file may have left them, at any revision)."""
    engine = sa.create_engine(postgres_url)
    metadata.drop_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP TABLE IF EXISTS {VERSION_TABLE}"))
    engine.dispose()
    return postgres_url


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lake' / '_state' / 'ledger.sqlite'}"
    return request.getfixturevalue("empty_postgres_url")
