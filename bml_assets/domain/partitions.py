"""The partition space, defined once: symbol × UTC date (SPEC §2).

What belongs here: one partition as a value (``SymbolDay``), consecutive days folded
into ranges (``day_ranges``, ``show_ranges``: ``2024-03-01..2024-03-05, 2024-03-09``), and
the two-way mapping between a partition key (``"2024-01-01|BTCUSDT"``: the date dimension first, as
Dagster orders the dimensions of a multi-partition key by name) and a (symbol,
day) pair. What stays out: the Dagster partitions definition
(``defs/partitions.py``), which partitions exist in the lake (the ledger knows)
and any I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from bml_assets.domain.settings import validate_symbol

DATE_DIM = "date"
SYMBOL_DIM = "symbol"
KEY_SEPARATOR = "|"  # Dagster's separator of multi-partition key dimensions


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


def partition_key(symbol: str, day: dt.date) -> str:
    """``"2024-01-01|BTCUSDT"``: the date, then the symbol (the dimensions by name)."""
    return f"{day.isoformat()}{KEY_SEPARATOR}{validate_symbol(symbol)}"


def parse_partition_key(key: str) -> SymbolDay:
    """``"2024-01-01|BTCUSDT"`` (a Dagster ``MultiPartitionKey`` is such a string) → SymbolDay;
    a clear error otherwise."""
    parts = str(key).split(KEY_SEPARATOR)
    if len(parts) != 2:
        raise ValueError(f"partition key {key!r} is not '<YYYY-MM-DD>|<SYMBOL>'")
    date_text, symbol = parts
    try:
        day = dt.date.fromisoformat(date_text)
    except ValueError:
        raise ValueError(f"partition key {key!r}: {date_text!r} is not a date like 2024-01-01") from None
    return SymbolDay(validate_symbol(symbol), day)


def day_ranges(days: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Consecutive days folded into inclusive (first, last) ranges, in order."""
    ranges: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(days)):
        if ranges and day == ranges[-1][1] + dt.timedelta(days=1):
            ranges[-1] = (ranges[-1][0], day)
        else:
            ranges.append((day, day))
    return ranges


def show_ranges(days: Iterable[dt.date]) -> str:
    parts = [a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in day_ranges(days)]
    return ", ".join(parts) if parts else "-"
