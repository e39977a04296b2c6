"""The lake's coverage: per symbol and day, what the ledger says of the minute view.

What belongs here: ``DayState`` (a day's state as a person reads it: committed, provisional,
incomplete, not listed, not published, missing), ``coverage`` (pure: the states of a window of
symbols × days from the ledger's minute-view rows, with each symbol's committed ranges folded
and its missing, incomplete and provisional days), and ``read_coverage`` (one ledger query, the
window defaulting to the first committed day .. ``today``). ``bml coverage`` prints it and the
coverage sensor (``defs/coverage.py``) draws it.

What stays out: drawing and files (the heatmap is drawn at the edge, ``defs/coverage.py``),
Dagster, and what a damaged file is (the scan, ``scan.py``: coverage trusts the ledger, it does
not read the lake's files).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bml_assets.domain.partitions import day_ranges
from bml_assets.domain.provenance import provisional_streams
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.lake.ledger import Ledger, PartitionRecord


class DayState(StrEnum):
    """A (symbol, day) of the minute view as the ledger has it; the order is the heatmap's legend."""

    COMMITTED = "committed"  # complete and final (from Vision, or REST where Vision has a hole)
    PROVISIONAL = "provisional"  # committed from REST; rebuilt once Vision publishes the day
    INCOMPLETE = "incomplete"  # committed, but a stream that can be filled is still missing
    NOT_LISTED = "not_listed"  # the symbol did not trade that day: nothing to build
    NOT_PUBLISHED = "not_published"  # nothing published for it yet
    MISSING = "missing"  # no row: never built


def day_state(record: PartitionRecord) -> DayState:
    """The state of one minute-view ledger row."""
    if record.status == "committed":
        if record.incomplete:
            return DayState.INCOMPLETE
        if provisional_streams(record.provenance):
            return DayState.PROVISIONAL
        return DayState.COMMITTED
    return DayState(record.status)


@dataclass(frozen=True)
class SymbolCoverage:
    symbol: str
    committed: tuple[tuple[dt.date, dt.date], ...]  # committed days (any kind) folded into ranges
    missing: tuple[dt.date, ...]
    incomplete: tuple[dt.date, ...]
    provisional: tuple[dt.date, ...]
    not_listed: tuple[dt.date, ...]
    not_published: tuple[dt.date, ...]

    @property
    def committed_days(self) -> int:
        return sum((b - a).days + 1 for a, b in self.committed)

    def to_row(self) -> dict[str, Any]:
        def days(values: Sequence[dt.date]) -> list[str]:
            return [d.isoformat() for d in values]

        return {
            "symbol": self.symbol,
            "committed_days": self.committed_days,
            "committed_ranges": [[a.isoformat(), b.isoformat()] for a, b in self.committed],
            "missing_days": len(self.missing),  # a fresh window is mostly missing: its days folded
            "missing_ranges": [[a.isoformat(), b.isoformat()] for a, b in day_ranges(self.missing)],
            "incomplete_days": days(self.incomplete),
            "provisional_days": days(self.provisional),
            "not_listed_days": days(self.not_listed),
            "not_published_days": days(self.not_published),
        }


@dataclass(frozen=True)
class Coverage:
    """The states of ``symbols`` × ``start..end`` (inclusive); a day without a row is ``MISSING``."""

    start: dt.date
    end: dt.date
    symbols: tuple[str, ...]
    states: dict[str, dict[dt.date, DayState]] = field(default_factory=dict)

    @property
    def days(self) -> list[dt.date]:
        return [self.start + dt.timedelta(days=i) for i in range((self.end - self.start).days + 1)]

    def state(self, symbol: str, day: dt.date) -> DayState:
        return self.states.get(symbol, {}).get(day, DayState.MISSING)

    def counts(self) -> dict[str, int]:
        """How many (symbol, day) cells are in each state, every state named (0 included)."""
        out = {s.value: 0 for s in DayState}
        for symbol in self.symbols:
            for day in self.days:
                out[self.state(symbol, day).value] += 1
        return out

    def symbol(self, symbol: str) -> SymbolCoverage:
        by_state: dict[DayState, list[dt.date]] = {s: [] for s in DayState}
        for day in self.days:
            by_state[self.state(symbol, day)].append(day)
        committed = by_state[DayState.COMMITTED] + by_state[DayState.PROVISIONAL] + by_state[DayState.INCOMPLETE]
        return SymbolCoverage(
            symbol=symbol,
            committed=tuple(day_ranges(committed)),
            missing=tuple(by_state[DayState.MISSING]),
            incomplete=tuple(by_state[DayState.INCOMPLETE]),
            provisional=tuple(by_state[DayState.PROVISIONAL]),
            not_listed=tuple(by_state[DayState.NOT_LISTED]),
            not_published=tuple(by_state[DayState.NOT_PUBLISHED]),
        )

    def per_symbol(self) -> list[SymbolCoverage]:
        return [self.symbol(s) for s in self.symbols]

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "symbols": [s.to_row() for s in self.per_symbol()],
            "counts": self.counts(),
        }


def coverage(records: Iterable[PartitionRecord], symbols: Sequence[str], start: dt.date, end: dt.date) -> Coverage:
    """The coverage of ``symbols`` × ``start..end`` from minute-view ledger rows (others ignored)."""
    if end < start:
        raise ValueError(f"the window is reversed: {start.isoformat()} is after {end.isoformat()}")
    wanted = set(symbols)
    states: dict[str, dict[dt.date, DayState]] = {s: {} for s in symbols}
    for r in records:
        if r.dataset == MINUTE_VIEW.name and r.symbol in wanted and start <= r.day <= end:
            states[r.symbol][r.day] = day_state(r)
    return Coverage(start, end, tuple(symbols), states)


def read_coverage(
    ledger: Ledger,
    symbols: Sequence[str],
    *,
    today: dt.date,
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> Coverage:
    """``coverage`` of ``symbols`` (the configured ones plus any the ledger has rows of, when
    empty) from one ledger query; the window defaults to the first day the ledger has a row of
    any of them .. ``today``."""
    rows = ledger.partitions(MINUTE_VIEW.name, symbols or None, start, end)
    names = tuple(dict.fromkeys([*symbols, *sorted({r.symbol for r in rows})])) if not symbols else tuple(symbols)
    first = start or min((r.day for r in rows), default=today)
    last = end or max(today, first)
    return coverage(rows, names, first, last)
