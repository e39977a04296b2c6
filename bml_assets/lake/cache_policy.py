"""Which verified Vision zips may leave the cache: the bounded cache's eviction policy.

What belongs here: judging cache entries against the ledger and a size bound
(``BML_VISION_CACHE_MAX_BYTES``): a zip may go only when a committed, complete partition
names it (its URL and sha256) in its provenance — the lake holds what was built from it
and its ledger row says it was verified — and no partition that still lacks a stream
(``incomplete``, a rebuild will read its files again) names it; and only when it has not
been used for ``MIN_IDLE_S`` (a build in progress touches what it reads). Among those,
least recently used first, until the cache fits. A zip no committed partition names (a
download for a partition not committed yet, a day whose build failed) is never evicted.

What stays out: the cache's layout, listing and removal (``sources/vision.py``: the
caller passes its entries in and removes what the plan names), and when to trim (the
repair sensor each tick, ``bml cache --trim``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from bml_assets.lake.ledger import Ledger

MIN_IDLE_S: Final = 3600
"""A zip used this recently is kept whatever the bound: a run building from it may still be
reading it, or about to read it again (a monthly file serves every day of its month)."""


class CacheEntry(Protocol):
    """What the policy needs of a cache entry (``sources.vision.CachedZip`` has it)."""

    @property
    def url(self) -> str: ...
    @property
    def sha256(self) -> str: ...
    @property
    def bytes(self) -> int: ...
    @property
    def last_used(self) -> float: ...


@dataclass
class EvictionPlan:
    """What a trim would do: the cache's size and files, what goes (least recently used
    first), and what stays for which reason."""

    total_bytes: int
    files: int
    max_bytes: int
    evict: list[Any] = field(default_factory=list)
    needed_bytes: int = 0  # named by no committed partition, or by an incomplete one
    recent_bytes: int = 0  # evictable but used within MIN_IDLE_S

    @property
    def evict_bytes(self) -> int:
        return sum(e.bytes for e in self.evict)

    @property
    def bytes_after(self) -> int:
        return self.total_bytes - self.evict_bytes


def _files_of(provenance: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for entry in provenance.values():
        if isinstance(entry, Mapping):
            for f in entry.get("files") or ():
                if isinstance(f, Mapping) and f.get("url") and f.get("sha256"):
                    yield str(f["url"]), str(f["sha256"])


def built_from(ledger: Ledger) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(url, sha256) of the Vision files committed complete partitions were built from, and
    of those an incomplete partition was built from (kept: its rebuild reads them again)."""
    done: set[tuple[str, str]] = set()
    needed: set[tuple[str, str]] = set()
    for record in ledger.partitions(status="committed"):
        (needed if record.incomplete else done).update(_files_of(record.provenance))
    return done - needed, needed


def eviction_plan(entries: Iterable[CacheEntry], ledger: Ledger, *, max_bytes: int, now: float) -> EvictionPlan:
    """The zips to remove so the cache fits ``max_bytes`` (see the module doc); the ledger is
    read only when the cache is over the bound. ``now``: seconds since the epoch."""
    listed = sorted(entries, key=lambda e: e.last_used)
    plan = EvictionPlan(sum(e.bytes for e in listed), len(listed), max_bytes)
    if plan.total_bytes <= max_bytes:
        return plan
    evictable, _ = built_from(ledger)
    over = plan.total_bytes - max_bytes
    for entry in listed:
        if (entry.url, entry.sha256) not in evictable:
            plan.needed_bytes += entry.bytes
        elif now - entry.last_used < MIN_IDLE_S:
            plan.recent_bytes += entry.bytes
        elif over > 0:
            plan.evict.append(entry)
            over -= entry.bytes
    return plan
