"""The live collector's table as a Dagster asset it does not run: ``live_1m``.

What belongs here: the ``AssetSpec`` of ``live_1m`` (SPEC §9), partitioned like the minute
view, upstream of it, written by ``bml live-collect`` outside Dagster runs (so Dagster never
materializes it: the lineage shows where the LIVE columns come from, and the IO manager
loads it like any stream table); and what the UI shows about it: ``live_health``, the
collector's state read from the ledger, which the ``live_collector_sensor``
(``defs/sensors.py``) reports as runless asset events. What stays out: the collector
itself (``live/``), and the minute view's use of the table (``days/minute_view.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from dagster import AssetKey, AssetSpec, PartitionsDefinition

from bml_assets.defs.assets.streams import IO_MANAGER_KEY
from bml_assets.defs.io_manager import DATASET_METADATA_KEY
from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import LIVE_1M
from bml_assets.lake.ledger import PartitionRecord

ASSET_KEY = AssetKey(LIVE_1M.name)
GROUP = "sources"
# The collector commits a minute within seconds of its close (``live/core.py``: the grace,
# then the writer thread): three minutes without a new one means it is not running, or
# not receiving.
STALE_AFTER_MS: Final = 3 * MINUTE_MS


def build_live_spec(partitions_def: PartitionsDefinition) -> AssetSpec:
    return AssetSpec(
        ASSET_KEY,
        description=(
            "The live collector's minutes (SPEC §9): the LIVE and book columns from the WebSocket "
            "streams, with coverage per stream family. Written by `bml live-collect` (started by "
            "`bml run-daemon`), never by a Dagster run; the live_collector_sensor reports each commit."
        ),
        partitions_def=partitions_def,
        metadata={DATASET_METADATA_KEY: LIVE_1M.name},
        group_name=GROUP,
        kinds={"parquet"},
    ).with_io_manager_key(IO_MANAGER_KEY)  # the minute view loads it from the lake


@dataclass(frozen=True)
class LiveDay:
    """One committed ``live_1m`` partition as the ledger has it."""

    symbol: str
    day: dt.date
    minutes: int
    last_minute_ms: int | None
    content_hash: str | None
    covered: Mapping[str, Any]  # per family: [first, end) ISO ranges

    @property
    def key(self) -> str:
        return partition_key(self.symbol, self.day)

    @classmethod
    def of(cls, record: PartitionRecord) -> LiveDay:
        live = record.provenance.get("live") or {}
        return cls(
            record.symbol,
            record.day,
            int(record.row_count or 0),
            record.max_ts,
            record.content_hash,
            live.get("covered") or {},
        )

    def metadata(self) -> dict[str, Any]:
        covered = {family: len(ranges) for family, ranges in self.covered.items()}
        last = (
            dt.datetime.fromtimestamp(self.last_minute_ms / 1000, dt.UTC).isoformat()
            if self.last_minute_ms is not None
            else None
        )
        return {
            "minutes": self.minutes,
            "last_minute": last,
            "covered_ranges": self.covered,
            "covered_range_count": covered,
        }


@dataclass(frozen=True)
class LiveHealth:
    """The collector's state for the symbols: ``running`` when every symbol got a minute
    committed within ``STALE_AFTER_MS`` of now; ``stale`` names the others, with their last
    minute (None: none yet)."""

    now_ms: int
    last_minute_ms: Mapping[str, int | None]

    @property
    def stale(self) -> dict[str, int | None]:
        return {
            s: last
            for s, last in self.last_minute_ms.items()
            if last is None or self.now_ms - (last + MINUTE_MS) > STALE_AFTER_MS
        }

    @property
    def running(self) -> bool:
        return bool(self.last_minute_ms) and not self.stale

    def summary(self) -> str:
        def when(ms: int | None) -> str:
            return "never" if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M")

        if self.running:
            return "live collector running: every symbol has a minute committed in the last 3 minutes"
        return "live collector not running or not receiving: " + ", ".join(
            f"{s} last minute {when(ms)}" for s, ms in sorted(self.stale.items())
        )


def live_health(days: Iterable[LiveDay], symbols: Iterable[str], now_ms: int) -> LiveHealth:
    last: dict[str, int | None] = dict.fromkeys(symbols)
    for d in days:
        if d.symbol in last and d.last_minute_ms is not None:
            prev = last[d.symbol]
            last[d.symbol] = d.last_minute_ms if prev is None else max(prev, d.last_minute_ms)
    return LiveHealth(now_ms, last)
