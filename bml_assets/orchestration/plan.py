"""The backfill's plan: which partitions to (re)build, in which order, within which cap.

What belongs here: day ranges (``--years`` back from yesterday, chunks of a range;
consecutive days folded for display come from ``domain.partitions``), the symbols that traded in a range, the
targets the scan reports ask for (``repair.py``'s targets of every dataset plus the
days never built), and ``plan_backfill``: filter (range, symbols, listed days),
order (chunk, symbol, day) and cap (``--max-missing-hours``), with the plan's text;
``run_batches``: the plan cut into runs (one symbol's consecutive days each).

What stays out: scanning (``scans.py``), running the plan (``backfill.py``), which
problems repair what (``defs/repair.py``), and the listing rules (``symbols.py``).
Everything here is pure but ``targets_from_reports``'s import of the repair rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bml_assets.domain.partitions import show_ranges
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.lake.ledger import SymbolRecord
from bml_assets.orchestration.scans import remaining_problems
from bml_assets.orchestration.state import Workspace, utc_today
from bml_assets.orchestration.symbols import listed_span, not_listed_reason

HOURS_PER_DAY = 24
NOT_BUILT = "not_built"
DEFAULT_CHUNK_DAYS = 30


def years_back(
    years: int, *, today: dt.date | None = None, first_day: dt.date | None = None
) -> tuple[dt.date, dt.date]:
    """From ``years`` years before yesterday, to yesterday (29 February → 28 February); not
    before ``first_day`` (``BML_START_DATE``, the partition set's first day) when given."""
    if years < 1:
        raise ValueError(f"--years must be at least 1, not {years}")
    end = (today or utc_today()) - dt.timedelta(days=1)
    try:
        start = end.replace(year=end.year - years)
    except ValueError:
        start = end.replace(year=end.year - years, day=28)
    if first_day is not None and start < first_day <= end:
        start = first_day
    return start, end


def chunks(start: dt.date, end: dt.date, chunk_days: int) -> list[tuple[dt.date, dt.date]]:
    """``start..end`` cut into inclusive spans of at most ``chunk_days`` days."""
    out = []
    a = start
    while a <= end:
        b = min(end, a + dt.timedelta(days=chunk_days - 1))
        out.append((a, b))
        a = b + dt.timedelta(days=1)
    return out


@dataclass(frozen=True, order=True)
class Target:
    """A partition to (re)build and the problem kinds the scan found in it."""

    symbol: str
    day: dt.date
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class SkippedDays:
    """Days of one symbol left alone because it did not trade then."""

    symbol: str
    days: tuple[dt.date, ...]
    reason: str


@dataclass(frozen=True)
class BackfillPlan:
    start: dt.date
    end: dt.date
    symbols: tuple[str, ...]
    partitions: tuple[Target, ...]
    left_out: tuple[Target, ...] = ()
    skipped: tuple[SkippedDays, ...] = ()
    max_missing_hours: int | None = None
    chunk_days: int = DEFAULT_CHUNK_DAYS

    @property
    def hours(self) -> int:
        return HOURS_PER_DAY * len(self.partitions)

    @property
    def cap_reached(self) -> bool:
        return bool(self.left_out)

    @property
    def keys(self) -> list[tuple[str, dt.date]]:
        return [(t.symbol, t.day) for t in self.partitions]

    def partition_lines(self) -> list[str]:
        """The partitions folded: per symbol and reason, its days as ranges and their number (a
        line each, so 2 000 partitions of a fresh range are a line per symbol)."""
        groups: dict[tuple[str, str], list[dt.date]] = {}
        for t in self.partitions:
            groups.setdefault((t.symbol, ", ".join(t.reasons) or NOT_BUILT), []).append(t.day)
        order = {s: i for i, s in enumerate(self.symbols)}
        return [
            f"  {symbol:<12} {show_ranges(days)}  {reason} ({len(days)} day(s))"
            for (symbol, reason), days in sorted(groups.items(), key=lambda kv: (order.get(kv[0][0], 0), min(kv[1])))
        ]

    def lines(self) -> list[str]:
        """The plan as text: what a dry run prints."""
        span = f"{self.start.isoformat()}..{self.end.isoformat()}"
        out = [
            f"plan: {len(self.partitions)} partition(s) to build ({self.hours} h) "
            f"in {span} for {', '.join(self.symbols) or '-'}"
        ]
        out += self.partition_lines()
        for s in self.skipped:
            out.append(f"skipped: {s.symbol} {show_ranges(s.days)} ({len(s.days)} day(s)): {s.reason}")
        if self.left_out:
            out.append(
                f"cap reached: --max-missing-hours {self.max_missing_hours} allows {self.hours} h; "
                f"{len(self.left_out)} more partition(s) ({HOURS_PER_DAY * len(self.left_out)} h) left for a later run"
            )
        return out


def plan_backfill(
    targets: Iterable[Target | tuple[str, dt.date]],
    *,
    start: dt.date,
    end: dt.date,
    symbols: Sequence[str],
    listings: Mapping[str, SymbolRecord] | None = None,
    max_missing_hours: int | None = None,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
) -> BackfillPlan:
    """Order, filter and cap the partitions to rebuild.

    - Targets outside ``start..end`` or ``symbols`` are ignored; duplicates merge their reasons.
    - Days a symbol was not listed (before its onboard date, after its delist date,
      as far as ``listings`` knows) are skipped without work.
    - Order: the range is worked through in chunks of ``chunk_days`` days from
      ``start``, oldest first; inside a chunk, symbol by symbol (in ``symbols``
      order), day by day — so every symbol advances together and one symbol's
      days run back to back.
    - Cap: every partition counts ``HOURS_PER_DAY`` hours; planning stops before
      the partition that would take the total over ``max_missing_hours``; the rest
      is ``left_out``.
    """
    if end < start:
        raise ValueError(f"the range is reversed: {start.isoformat()} is after {end.isoformat()}")
    if chunk_days < 1:
        raise ValueError(f"chunk_days must be at least 1, not {chunk_days}")
    if max_missing_hours is not None and max_missing_hours < 0:
        raise ValueError(f"max_missing_hours must not be negative, not {max_missing_hours}")
    listings = listings or {}
    order = {s: i for i, s in enumerate(symbols)}
    merged: dict[tuple[str, dt.date], set[str]] = {}
    for target in targets:
        t = target if isinstance(target, Target) else Target(target[0], target[1])
        if t.symbol not in order or not (start <= t.day <= end):
            continue
        merged.setdefault((t.symbol, t.day), set()).update(t.reasons)
    skipped: dict[tuple[str, str], list[dt.date]] = {}
    wanted: list[Target] = []
    for (symbol, day), reasons in merged.items():
        record = listings.get(symbol)
        reason = not_listed_reason(record, day) if record is not None else None
        if reason is not None:
            skipped.setdefault((symbol, reason), []).append(day)
        else:
            wanted.append(Target(symbol, day, tuple(sorted(reasons))))
    wanted.sort(key=lambda t: ((t.day - start).days // chunk_days, order[t.symbol], t.day))
    planned, left_out = wanted, []
    if max_missing_hours is not None:
        fits = max_missing_hours // HOURS_PER_DAY
        planned, left_out = wanted[:fits], wanted[fits:]
    return BackfillPlan(
        start=start,
        end=end,
        symbols=tuple(symbols),
        partitions=tuple(planned),
        left_out=tuple(left_out),
        skipped=tuple(
            SkippedDays(symbol, tuple(sorted(days)), reason)
            for (symbol, reason), days in sorted(skipped.items(), key=lambda kv: (order[kv[0][0]], min(kv[1])))
        ),
        max_missing_hours=max_missing_hours,
        chunk_days=chunk_days,
    )


def symbols_in_range(ws: Workspace, start: dt.date, end: dt.date) -> tuple[tuple[str, ...], list[str]]:
    """The workspace's symbols that traded in ``start..end`` (as far as the synced universe
    knows), and a note for each one left out or only partly listed."""
    listings = ws.listings
    kept: list[str] = []
    notes: list[str] = []
    span_text = f"{start.isoformat()}..{end.isoformat()}"
    for symbol in ws.symbols:
        span = listed_span(symbol, start, end, listings)
        record = listings.get(symbol)
        if span is None and record is not None:
            if record.onboard_date is not None and end < record.onboard_date:
                why = f"before its listing on {record.onboard_date.isoformat()}"
            else:
                why = f"after its last trading day {record.delist_date} ({record.status})"
            notes.append(f"{symbol}: {span_text} is {why}: nothing to do")
            continue
        if span is not None and span != (start, end):
            notes.append(f"{symbol}: listed only {span[0].isoformat()}..{span[1].isoformat()} of {span_text}")
        kept.append(symbol)
    return tuple(kept), notes


def _reason(problem: Any) -> str:
    """A problem's kind, prefixed with its dataset when that is a stream table."""
    dataset = getattr(problem, "dataset", MINUTE_VIEW.name)
    return str(problem.kind) if dataset == MINUTE_VIEW.name else f"{dataset}:{problem.kind}"


def targets_from_reports(reports: Iterable[Any]) -> list[Target]:
    """What the scans ask to rebuild: ``repair_targets`` of each report (every dataset; an
    incomplete partition at once, without the sensor's backoff), plus the days never built."""
    from bml_assets.defs.repair import repair_targets

    reasons: dict[tuple[str, dt.date], set[str]] = {}
    for report in reports:
        kinds: dict[tuple[str, dt.date], set[str]] = {}
        for p in report.problems:
            day = getattr(p, "day", None)
            if isinstance(day, dt.date):
                kinds.setdefault((p.symbol, day), set()).add(_reason(p))
        for symbol, day in repair_targets(report):
            reasons.setdefault((symbol, day), set()).update(kinds.get((symbol, day), set()))
        for key, found in kinds.items():
            if NOT_BUILT in found:
                reasons.setdefault(key, set()).update(found)
    return [Target(s, d, tuple(sorted(r))) for (s, d), r in sorted(reasons.items())]


def unplanned_problems(ws: Workspace, reports: Iterable[Any], plan: BackfillPlan) -> list[Any]:
    """Problems on listed days that the plan does not rebuild (left out by the cap)."""
    planned = set(plan.keys)
    return [p for p in remaining_problems(ws, reports) if (p.symbol, p.day) not in planned]


def run_batches(partitions: Sequence[Target], *, per_run: int, workers: int = 1) -> list[tuple[Target, ...]]:
    """The partitions cut into runs, in plan order: each run is one symbol's consecutive
    days, at most ``per_run`` of them, and no longer than needed to give each of ``workers``
    parallel workers a run (30 days of one symbol on 2 workers: 2 runs of 15)."""
    if per_run < 1 or workers < 1:
        raise ValueError(f"per_run and workers must be at least 1, not {per_run} and {workers}")
    size = max(1, min(per_run, -(-len(partitions) // workers)))
    batches: list[list[Target]] = []
    for t in partitions:
        last = batches[-1][-1] if batches else None
        if (
            last is not None
            and last.symbol == t.symbol
            and t.day == last.day + dt.timedelta(days=1)
            and len(batches[-1]) < size
        ):
            batches[-1].append(t)
        else:
            batches.append([t])
    return [tuple(b) for b in batches]
