"""What the build of a run's partitions works with: ``DayContext``.

What belongs here: ``DayContext``, a plain object holding the run's clients (ledger,
lake, Vision fetcher, REST client), the run's clock and band, the settings' knobs,
and what it reads from the lake for a build (the synced universe, the committed
table of a partition, the hot band's incremental cursor); the errors a stream build
may stop with. What stays out: Dagster (``defs/assets`` builds a ``DayContext``
from its resources and the run's tags), choosing sources (``choice.py``) and the
day builders (``vision_days.py``, ``rest_days.py``).
"""

from __future__ import annotations

from dataclasses import replace

import pyarrow as pa

from bml_assets.days.clock import ExchangeNow, run_clock
from bml_assets.days.partition_data import PartitionData
from bml_assets.days.vision_days import StreamFetcher
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import Provenance
from bml_assets.domain.schema import HOT_SNAPSHOTS, Dataset
from bml_assets.lake.lake import Lake, PartitionNotFound, PartitionUnreadable, SchemaMismatch
from bml_assets.lake.ledger import Ledger, SymbolRecord
from bml_assets.sources.rest import HttpError, RestBanned, RestClient, RestError

# What a REST fill can still fail with after the client's own retries: a fillable
# BACKFILL stream is then missing (the partition incomplete), not the run failed.
FILL_ERRORS = (HttpError, RestError, RestBanned)


class StreamFillFailed(RuntimeError):
    """A HARD stream that neither Vision nor REST could give: the run stops, nothing is published."""


class DayContext:
    """The clients, clock and knobs of one run's builds.

    ``hot``: a hot-poll run (REST only: Vision never has today). ``exchange_clock``:
    the run follows the exchange's clock (REST server time; runs the sensors request),
    so a replayed market with a clock of its own is served like the real one; runs
    started by hand or by a backfill use this machine's UTC clock and call REST for a
    day Vision is expected to have only for what Vision lacks (a missing or short
    file, SPEC §8). ``not_before_ms``: the exchange instant the run waits for (it was
    launched early to hide process start-up).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        lake: Lake,
        vision: StreamFetcher,
        rest: RestClient,
        run_id: str,
        hot: bool = False,
        exchange_clock: bool = False,
        not_before_ms: int | None = None,
        safety_lag_minutes: int,
        max_ffill_minutes: int,
    ) -> None:
        self.ledger = ledger
        self.lake = lake
        self.vision = vision
        self.rest = rest
        self.run_id = run_id
        self.hot = hot
        self.exchange_clock = exchange_clock
        self.not_before_ms = not_before_ms
        self.safety_lag_minutes = safety_lag_minutes
        self.max_ffill_minutes = max_ffill_minutes
        self._universe: dict[str, SymbolRecord] | None = None
        # The committed content each incremental cursor was read from (None: nothing committed).
        self.bases: dict[tuple[str, SymbolDay], str | None] = {}

    def now(self) -> ExchangeNow:
        """The clock of this run (see the class docstring), read once per run."""
        return run_clock(
            self.run_id,
            self.rest,
            exchange_clock=self.exchange_clock,
            not_before_ms=self.not_before_ms,
            lag_minutes=self.safety_lag_minutes,
        )

    def listing(self, symbol: str) -> SymbolRecord | None:
        """The symbol's row of the synced universe, if ``bml symbols sync`` ran."""
        if self._universe is None:
            self._universe = self.ledger.symbols()
        return self._universe.get(symbol)

    def rest_weight_spent(self) -> int:
        """Weight this process's REST client has sent so far (the run's steps share it)."""
        return self.rest.weight_spent

    def committed(self, dataset: Dataset, sd: SymbolDay) -> PartitionData | None:
        """The committed table of the partition with its recorded provenance, as it is."""
        record = self.ledger.get_partition(dataset.name, sd.symbol, sd.day)
        if record is None or record.status != "committed":
            return None
        table = self.lake.read(dataset, sd.symbol, sd.day)
        return PartitionData(table, record.provenance)

    def existing(self, dataset: Dataset, sd: SymbolDay) -> pa.Table | None:
        """The committed table of the partition, the incremental cursor of the hot band.
        What it was (its content hash) is remembered: the commit must still find it.

        A file that is gone or damaged (the scan reports it) is no cursor: the day is
        fetched again from the start and replaces it. Except a past day's hot snapshots:
        polled live, they exist nowhere else, so that error stands (a human decides). A
        file of an older schema that only lacks nullable columns is a cursor (they read
        as NULL): the commit of the extended table rewrites it in the current schema."""
        record = self.ledger.get_partition(dataset.name, sd.symbol, sd.day)
        self.bases[(dataset.name, sd)] = record.content_hash if record is not None else None
        if record is None or record.status != "committed":
            return None
        if Provenance.of(record.provenance).any_vision():
            return None  # a complete Vision table is replaced, never extended from REST
        try:
            return self.lake.read(dataset, sd.symbol, sd.day)
        except (PartitionNotFound, PartitionUnreadable, SchemaMismatch):
            if dataset is HOT_SNAPSHOTS and sd.day != self.now().today:
                raise
            return None

    def based(self, dataset: Dataset, sd: SymbolDay, data: PartitionData) -> PartitionData:
        """``data`` marked as incremental, naming its base, when it was built on the
        committed table (``existing``); else as it is."""
        key = (dataset.name, sd)
        if key not in self.bases or data.table is None:
            return data
        return replace(data, incremental=True, base_content_hash=self.bases[key])
