"""``bml cache``: the Vision cache's size, files and least recently used zip; ``--trim`` evicts
the zips of committed, complete partitions, idle for an hour, down to BML_VISION_CACHE_MAX_BYTES."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bml_assets.replay.server import ReplayServer
from bml_assets.sources.vision import cached_zips

from .test_cli_e2e import Bml, ok
from .test_cli_e2e import server as cli_server  # noqa: F401  (the module's replay server fixture)


@pytest.fixture
def bml(tmp_path: Path, cli_server: ReplayServer) -> Iterator[Bml]:  # noqa: F811
    yield Bml(tmp_path, cli_server)


def test_cache_shows_and_trims(bml: Bml) -> None:
    ok(bml("backfill-range", "--start", "2024-01-02", "--end", "2024-01-02", "--symbols", "BTCUSDT"))
    cache_dir = bml.lake / "_cache" / "vision"
    zips = cached_zips(cache_dir)
    total = sum(z.bytes for z in zips)
    assert len(zips) >= 5 and total > 0

    shown = ok(bml("cache")).stdout
    assert f"in {len(zips)} file(s)" in shown and "bound 2048.0 MiB" in shown
    assert "oldest: last used" in shown and "would evict" not in shown

    # Used just now: a zero bound evicts nothing within the hour.
    kept = ok(bml("cache", "--trim", BML_VISION_CACHE_MAX_BYTES="0")).stdout
    assert "evicted 0 file(s)" in kept and len(cached_zips(cache_dir)) == len(zips)

    # Two hours later (sidecars aged): every zip the committed day names goes.
    old = time.time() - 7200
    for z in zips:
        os.utime(z.path.with_suffix(".json"), (old, old))
    preview = ok(bml("cache", BML_VISION_CACHE_MAX_BYTES="0")).stdout
    assert "--trim would evict" in preview and len(cached_zips(cache_dir)) == len(zips)
    trimmed = ok(bml("cache", "--trim", BML_VISION_CACHE_MAX_BYTES="0")).stdout
    assert "evicted" in trimmed
    assert cached_zips(cache_dir) == []
    # The lake is untouched, and a rebuild downloads again what it needs.
    assert bml.minute_path("BTCUSDT", "2024-01-02").is_file()
