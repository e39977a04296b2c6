"""Scans as the commands run them: a range of a workspace, its problems on listed days,
and the sweep of the stray files found.

What belongs here: the check of a range a command is given (in order, not after
today), ``lake.scan.scan`` over a span of the workspace (today and the
listing dates filled in), the problems left once days a symbol did not trade are
dropped, the Vision cache's stray files, sweeping the strays of reports
(``repair.sweep``), and the ``scan`` command's whole run (``scan_range``).

What stays out: what counts as a problem (``lake/scan.py``), how a stray file is
removed safely (``defs/repair.py``), planning (``plan.py``), and the report's text
and JSON (``cli.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.orchestration.errors import BadRequest
from bml_assets.orchestration.state import Workspace, open_workspace, utc_today
from bml_assets.orchestration.symbols import not_listed_reason


def check_range(start: dt.date, end: dt.date, today: dt.date, first_day: dt.date | None = None) -> None:
    """A range a command can work on: in order, inside the partition set (from ``first_day``,
    ``BML_START_DATE``, to ``today``); ``BadRequest`` naming the option and the valid days otherwise."""
    valid = f"valid days are {first_day.isoformat() if first_day else '…'}..{today.isoformat()}"
    if start > today:
        raise BadRequest(f"--start {start.isoformat()} is after today ({today.isoformat()} UTC): {valid}")
    if end < start:
        raise BadRequest(f"the range is reversed: --start {start.isoformat()} is after --end {end.isoformat()}")
    if end > today:
        raise BadRequest(
            f"--end {end.isoformat()} is after today ({today.isoformat()} UTC): nothing to build yet; {valid}"
        )
    if first_day is not None and start < first_day:
        raise BadRequest(
            f"--start {start.isoformat()} is before the first partition day {first_day.isoformat()} "
            f"(BML_START_DATE): {valid}"
        )


def check_day(day: dt.date, today: dt.date, first_day: dt.date, *, option: str) -> None:
    """One day a command is given (``option``): inside the partition set, ``BadRequest`` otherwise."""
    valid = f"valid days are {first_day.isoformat()} (BML_START_DATE)..{today.isoformat()} (today UTC)"
    if day > today:
        raise BadRequest(f"{option} {day.isoformat()} is after today: {valid}")
    if day < first_day:
        raise BadRequest(f"{option} {day.isoformat()} is before the first partition day: {valid}")


def scan_span(
    ws: Workspace, start: dt.date, end: dt.date, *, symbols: Sequence[str] | None = None, deep: bool = True
) -> Any:
    """``lake.scan.scan`` over ``start..end`` (the workspace's today; listing dates when synced)."""
    from bml_assets.lake.scan import scan

    return scan(
        ws.lake,
        ws.ledger,
        list(symbols if symbols is not None else ws.symbols),
        start,
        end,
        today=ws.today,
        listing_dates=ws.listing_dates,
        deep=deep,
    )


def remaining_problems(ws: Workspace, reports: Iterable[Any]) -> list[Any]:
    """The problems of ``reports`` on days the symbol traded (days it was not listed are not problems)."""
    listings = ws.listings
    out = []
    for report in reports:
        for p in report.problems:
            record = listings.get(p.symbol)
            day = getattr(p, "day", None)
            if record is not None and isinstance(day, dt.date) and not_listed_reason(record, day):
                continue
            out.append(p)
    return out


def listed_scan(ws: Workspace, start: dt.date, end: dt.date, *, deep: bool = True) -> Any:
    """``scan_span`` over the workspace's symbols, without problems on days a symbol did not trade."""
    report = scan_span(ws, start, end, deep=deep)
    report.problems = remaining_problems(ws, [report])
    return report


def _count(minutes: Any) -> int:
    if minutes is None:
        return 0
    if isinstance(minutes, int):
        return minutes
    try:
        return len(minutes)
    except TypeError:
        return 0


def problem_rows(report: Any) -> list[dict[str, Any]]:
    """The scan's problems as plain rows: kind, dataset, symbol, day, detail, minutes (a count)."""
    rows = []
    for p in report.problems:
        day = getattr(p, "day", None)
        rows.append(
            {
                "kind": str(p.kind),
                "dataset": getattr(p, "dataset", MINUTE_VIEW.name),
                "symbol": p.symbol,
                "day": day.isoformat() if isinstance(day, dt.date) else day,
                "detail": p.detail,
                "minutes": _count(getattr(p, "minutes", None)),
            }
        )
    return rows


def cache_strays(ws: Workspace) -> list[Any]:
    """The Vision cache's stale temporary files (the whole cache)."""
    from bml_assets.lake.scan import outside_strays
    from bml_assets.sources.vision import stale_cache_files

    return outside_strays(stale_cache_files(ws.settings.cache_dir, now=dt.datetime.now(dt.UTC)))


def sweep_strays(ws: Workspace, reports: Sequence[Any]) -> Any:
    """Remove the stray files of ``reports`` and re-record the stat of their intact files
    (``repair.sweep``); the swept files leave each report's ``strays``. Returns the ``Sweep``."""
    from bml_assets.defs.repair import Sweep, sweep

    total = Sweep()
    for report in reports:
        done = sweep(
            report.strays,
            lake=ws.lake,
            now=dt.datetime.now(dt.UTC),
            ledger=ws.ledger,
            restat=report.restat,
        )
        total.removed += done.removed
        total.left += done.left
        total.restated += done.restated
        report.strays = [f for f in report.strays if f.path in done.left]
    return total


@dataclass(frozen=True)
class RangeScan:
    """What the ``scan`` command found: the report (problems on listed days, the partition
    folders' and the Vision cache's stray files) and, when asked, the sweep."""

    start: dt.date
    end: dt.date
    today: dt.date
    symbols: tuple[str, ...]
    deep: bool
    report: Any
    swept: Any = None  # the ``Sweep``, when sweeping was asked for

    @property
    def clean(self) -> bool:
        return bool(self.report.clean)


def scan_range(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    symbols: Sequence[str] | None = None,
    *,
    deep: bool = True,
    sweep: bool = False,
    today: dt.date | None = None,
) -> RangeScan:
    """Scan every dataset over ``start..end`` for ``symbols`` (default ``BML_SYMBOLS``), add the
    Vision cache's stray files, and sweep the strays found when ``sweep``."""
    today = today or utc_today()
    check_range(start, end, today, settings.start_date)
    ws = open_workspace(settings, symbols, today=today)
    try:
        report = listed_scan(ws, start, end, deep=deep)
        report.strays += cache_strays(ws)
        swept = sweep_strays(ws, [report]) if sweep else None
    finally:
        ws.close()
    return RangeScan(start, end, today, ws.symbols, deep, report, swept)
