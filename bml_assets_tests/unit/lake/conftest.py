"""Fixtures of the lake tests: the ledger URL, on SQLite and optionally PostgreSQL.

Tests taking ``url`` (or a ``ledger`` fixture built on it) run on SQLite, and
on PostgreSQL too when ``BML_TEST_POSTGRES_URL`` names a scratch database (e.g.
``postgresql+psycopg://postgres@/scratch?host=/tmp/pg``): the ledger tables in it
are dropped before each test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa

from bml_assets.lake.ledger import metadata

POSTGRES_URL = os.environ.get("BML_TEST_POSTGRES_URL", "")


# PostgreSQL is opt-in, so an ordinary run has no skip noise.
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'lake' / '_state' / 'ledger.sqlite'}"
    engine = sa.create_engine(POSTGRES_URL)
    metadata.drop_all(engine)
    engine.dispose()
    return POSTGRES_URL
