"""Shared test fixtures: where the real Binance files are, and skipping without them."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
REAL_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "real"


@pytest.fixture
def real_fixtures() -> Path:
    """The folder of real Binance files (../shared/fixtures/real); skips the test without it."""
    if not REAL_FIXTURES.is_dir():
        pytest.skip(f"real Binance fixtures not found at {REAL_FIXTURES} (../shared is absent)")
    return REAL_FIXTURES
