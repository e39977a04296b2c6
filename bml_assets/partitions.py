"""The partition space, defined once: symbol × UTC date (SPEC §2).

What belongs here: the Dagster partitions definition and the two-way mapping
between a partition key (``"2024-01-01|BTCUSDT"``: Dagster orders the dimensions
by name) and a (symbol, day) pair. What stays out: which partitions exist in the
lake (the ledger knows) and any I/O.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from dagster import (
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from bml_assets.settings import Settings, validate_symbol

DATE_DIM = "date"
SYMBOL_DIM = "symbol"


@dataclass(frozen=True, order=True)
class SymbolDay:
    """One partition: a symbol on a UTC day."""

    symbol: str
    day: dt.date

    @property
    def key(self) -> str:
        return partition_key(self.symbol, self.day)

    def __str__(self) -> str:
        return f"{self.symbol} {self.day.isoformat()}"


def build_partitions_def(settings: Settings) -> MultiPartitionsDefinition:
    """symbol × date, the current UTC day included (``end_offset=1``)."""
    return MultiPartitionsDefinition(
        {
            DATE_DIM: DailyPartitionsDefinition(
                start_date=settings.start_date.isoformat(), end_offset=1, timezone="UTC"
            ),
            SYMBOL_DIM: StaticPartitionsDefinition(list(settings.symbols)),
        }
    )


def partition_key(symbol: str, day: dt.date) -> str:
    return str(MultiPartitionKey({DATE_DIM: day.isoformat(), SYMBOL_DIM: validate_symbol(symbol)}))


def parse_partition_key(key: str | MultiPartitionKey) -> SymbolDay:
    """``"2024-01-01|BTCUSDT"`` (or a MultiPartitionKey) → SymbolDay; a clear error otherwise."""
    if isinstance(key, MultiPartitionKey):
        dims = key.keys_by_dimension
        date_text, symbol = dims[DATE_DIM], dims[SYMBOL_DIM]
    else:
        parts = str(key).split("|")
        if len(parts) != 2:
            raise ValueError(f"partition key {key!r} is not '<YYYY-MM-DD>|<SYMBOL>'")
        date_text, symbol = parts
    try:
        day = dt.date.fromisoformat(date_text)
    except ValueError:
        raise ValueError(f"partition key {key!r}: {date_text!r} is not a date like 2024-01-01") from None
    return SymbolDay(validate_symbol(symbol), day)
