"""The bounded Vision cache: least recently used zips of committed, complete partitions go;
what an uncommitted or incomplete partition needs, or what was used within the hour, stays."""

from __future__ import annotations

import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

from bml_assets.defs.repair import trim_vision_cache
from bml_assets.lake.cache_policy import MIN_IDLE_S, eviction_plan
from bml_assets.lake.ledger import Ledger, PartitionRecord
from bml_assets.sources.vision import VisionClient, cached_zips, evict_cached

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
BASE = "http://127.0.0.1:9"
HOUR = 3600


def put(client: VisionClient, name: str, size: int, used_hours_ago: float) -> tuple[str, str]:
    """A cache entry as ``VisionClient`` lays it out (``<sha256>.zip`` and its sidecar), last
    used ``used_hours_ago`` before NOW."""
    url = f"{BASE}/data/futures/um/daily/klines/BTCUSDT/1m/{name}.zip"
    sha = (name.encode().hex() * 64)[:64]
    entry = client.entry_dir(url)
    entry.mkdir(parents=True)
    (entry / f"{sha}.zip").write_bytes(b"z" * size)
    sidecar = entry / f"{sha}.json"
    sidecar.write_text(json.dumps({"url": url, "sha256": sha, "bytes": size, "fetched_at": NOW.isoformat()}))
    t = NOW.timestamp() - used_hours_ago * HOUR
    os.utime(sidecar, (t, t))
    return url, sha


def commit(ledger: Ledger, day: int, files: list[tuple[str, str]], *, incomplete: bool = False) -> None:
    ledger.commit_partition(
        PartitionRecord(
            dataset="klines_1m",
            symbol="BTCUSDT",
            day=date(2024, 3, day),
            status="committed",
            committed_at=NOW,
            path=f"futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-{day:02d}/part.parquet",
            row_count=1440,
            content_hash=f"{day:064x}",
            provenance={"klines": {"status": "vision", "files": [{"url": u, "sha256": s} for u, s in files]}},
            missing_streams=[{"stream": "metrics", "reason": "REST down"}] if incomplete else [],
        ),
        expected_content_hash=None,
    )


def test_trim_evicts_least_recently_used_zips_of_complete_partitions_only(tmp_path: Path) -> None:
    client = VisionClient(BASE, tmp_path / "cache")
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    ledger.init()
    old_done = put(client, "old-done", 100, used_hours_ago=3)
    newer_done = put(client, "newer-done", 100, used_hours_ago=2)
    for_incomplete = put(client, "incomplete", 100, used_hours_ago=9)
    put(client, "uncommitted", 100, used_hours_ago=9)
    in_use = put(client, "in-use", 100, used_hours_ago=0.2)
    commit(ledger, 1, [old_done])
    commit(ledger, 2, [newer_done, in_use])
    commit(ledger, 3, [for_incomplete], incomplete=True)

    plan = eviction_plan(cached_zips(client.cache_dir), ledger, max_bytes=250, now=NOW.timestamp())
    assert (plan.total_bytes, plan.files) == (500, 5)
    assert [z.url for z in plan.evict] == [old_done[0], newer_done[0]]
    assert (plan.needed_bytes, plan.recent_bytes, plan.bytes_after) == (200, 100, 300)

    trimmed = trim_vision_cache(client.cache_dir, ledger, max_bytes=250, now=NOW)
    assert len(trimmed.evict) == 2
    left = sorted(z.url.rsplit("/", 1)[1] for z in cached_zips(client.cache_dir))
    assert left == ["in-use.zip", "incomplete.zip", "uncommitted.zip"]
    assert not client.entry_dir(old_done[0]).exists()  # the emptied URL folder goes too


def test_within_the_bound_nothing_goes_and_the_ledger_is_not_read(tmp_path: Path) -> None:
    client = VisionClient(BASE, tmp_path / "cache")
    put(client, "a", 100, used_hours_ago=5)

    class Unread:
        def partitions(self, *a: object, **k: object) -> list[object]:
            raise AssertionError("the ledger was read")

    plan = eviction_plan(cached_zips(client.cache_dir), Unread(), max_bytes=100, now=NOW.timestamp())  # type: ignore[arg-type]
    assert plan.evict == [] and plan.total_bytes == 100


def test_a_zip_used_after_the_plan_is_kept(tmp_path: Path) -> None:
    client = VisionClient(BASE, tmp_path / "cache")
    put(client, "a", 100, used_hours_ago=5)
    (planned,) = cached_zips(client.cache_dir)
    sidecar = planned.path.with_suffix(".json")
    os.utime(sidecar, (NOW.timestamp(), NOW.timestamp()))  # a fetch hit it meanwhile
    assert evict_cached(planned, unused_since=planned.last_used) is False
    assert planned.path.is_file()
    assert NOW.timestamp() - planned.last_used > MIN_IDLE_S
