"""The state a command works on: the lake root, the ledger, the symbols asked for, and
the per-symbol watermark report.

What belongs here: checking the lake root (created, writable), creating the ledger
(``init-state``), opening it for a command (its version is checked there), the
symbols a command works on (asked for, else ``BML_SYMBOLS``; each known to the
settings or the synced universe), the ``Workspace`` of a scan or a backfill
(settings, ledger, symbols, their listings, today), the watermark report
(``show-watermark``) and the coverage report (``bml coverage``: ``lake/coverage.py`` over the
symbols and range a command is given).

What stays out: syncing the symbol universe and the listing rules (``symbols.py``),
scanning (``scans.py``), planning and running (``plan.py``, ``backfill.py``, ``hot.py``),
and printing (``cli.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bml_assets.domain.provenance import provisional_streams
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger, SymbolRecord
from bml_assets.orchestration.errors import LakeRootNotWritable, UnknownSymbol
from bml_assets.storage.store import StoreNotWritable


def utc_today() -> dt.date:
    """This machine's UTC date: the ``today`` of scans and of backfills."""
    return dt.datetime.now(dt.UTC).date()


def check_lake(lake: Lake) -> str:
    """Create the lake's root if needed and prove it is writable (an object store: that it
    honours conditional writes too); a clear error otherwise. Returns the root's canonical
    location."""
    try:
        return lake.store.ensure_writable()
    except StoreNotWritable as exc:
        hint = (
            "check BML_LAKE_ROOT, BML_S3_ENDPOINT_URL and the AWS credentials"
            if "://" in exc.root
            else "set BML_LAKE_ROOT to a folder you can write, or fix its permissions"
        )
        raise LakeRootNotWritable(f"the lake root {exc.root} is not writable ({exc.reason}); {hint}") from None


@dataclass(frozen=True)
class StateInfo:
    lake_root: str
    ledger_url: str
    schema_version: int
    tables: tuple[str, ...]
    symbols_synced: int


def init_state(settings: Settings) -> StateInfo:
    """Create the lake root and every ledger table (symbols included); idempotent."""
    root = check_lake(Lake.from_settings(settings))
    ledger = Ledger(settings.state_url)
    try:
        ledger.init()
        synced = len(ledger.symbols())
        return StateInfo(
            lake_root=root,
            ledger_url=ledger.display_url,
            schema_version=ledger.schema_version(),
            tables=("partitions", "source_files", "watermark", "ledger_meta", "symbols"),
            symbols_synced=synced,
        )
    finally:
        ledger.close()


def open_ledger(settings: Settings) -> Ledger:
    """The ledger, initialised (``LedgerVersionError`` surfaces here), after checking the lake root."""
    check_lake(Lake.from_settings(settings))
    ledger = Ledger(settings.state_url)
    ledger.init()
    return ledger


def resolve_symbols(
    requested: Sequence[str] | None, configured: Sequence[str], universe: Mapping[str, SymbolRecord]
) -> tuple[str, ...]:
    """The symbols to work on: ``requested`` (default: ``configured``), each known to
    ``BML_SYMBOLS`` or to the synced universe; ``UnknownSymbol`` otherwise."""
    symbols = tuple(requested) if requested else tuple(configured)
    unknown = [s for s in symbols if s not in configured and s not in universe]
    if unknown:
        where = f"BML_SYMBOLS ({','.join(configured)})"
        if universe:
            where += f" nor in the {len(universe)} synced USD-M perpetuals"
            hint = "check the spelling, or run `bml symbols sync` if it was listed recently"
        else:
            where += " and the symbol universe was never synced"
            hint = "run `bml symbols sync` to load the exchange's symbols, or add it to BML_SYMBOLS"
        names = ", ".join(unknown)
        raise UnknownSymbol(f"unknown symbol {names}: not in {where}; {hint}")
    return symbols


@dataclass
class Workspace:
    """What a scan or backfill command works on: settings, the ledger, the symbols and their listings."""

    settings: Settings
    ledger: Ledger
    symbols: tuple[str, ...]
    universe: dict[str, SymbolRecord]
    today: dt.date = field(default_factory=utc_today)

    @property
    def listings(self) -> dict[str, SymbolRecord]:
        return {s: r for s, r in self.universe.items() if s in self.symbols}

    @property
    def listing_dates(self) -> dict[str, dt.date] | None:
        dates = {s: r.onboard_date for s, r in self.listings.items() if r.onboard_date is not None}
        return dates or None

    @property
    def lake(self) -> Lake:
        return Lake.from_settings(self.settings)

    def close(self) -> None:
        self.ledger.close()


def open_workspace(settings: Settings, requested: Sequence[str] | None, *, today: dt.date | None = None) -> Workspace:
    """The ledger opened (``open_ledger``) and the symbols resolved (``resolve_symbols``); close it when done."""
    ledger = open_ledger(settings)
    try:
        universe = ledger.symbols()
        symbols = resolve_symbols(requested, settings.symbols, universe)
    except Exception:
        ledger.close()
        raise
    return Workspace(settings=settings, ledger=ledger, symbols=symbols, universe=universe, today=today or utc_today())


def watermark_report(settings: Settings, symbol: str | None = None) -> list[dict[str, Any]]:
    """Per symbol (``BML_SYMBOLS`` plus any the ledger knows, or just ``symbol``): the watermark,
    committed partitions, first/last committed day, provisional (REST-built) and not-listed days."""
    ledger = open_ledger(settings)
    try:
        rows = ledger.partitions(dataset=MINUTE_VIEW.name)
        marks = ledger.watermarks()
        universe = ledger.symbols()
    finally:
        ledger.close()
    if symbol is not None:
        if symbol not in marks and all(r.symbol != symbol for r in rows):
            resolve_symbols((symbol,), settings.symbols, universe)  # unknown anywhere: a clear error
        symbols: list[str] = [symbol]
    else:
        symbols = list(dict.fromkeys([*settings.symbols, *sorted({r.symbol for r in rows} | set(marks))]))
    report = []
    for s in symbols:
        mine = [r for r in rows if r.symbol == s]
        committed = [r.day for r in mine if r.status == "committed"]
        provisional = [r.day for r in mine if r.status == "committed" and provisional_streams(r.provenance)]
        not_listed = [r.day for r in mine if r.status == "not_listed"]
        mark = marks.get(s)
        report.append(
            {
                "symbol": s,
                "watermark": mark.isoformat() if mark else None,
                "committed_partitions": len(committed),
                "first_committed_day": min(committed).isoformat() if committed else None,
                "last_committed_day": max(committed).isoformat() if committed else None,
                "provisional_days": [d.isoformat() for d in provisional],
                "not_listed_days": [d.isoformat() for d in not_listed],
            }
        )
    return report


def coverage_report(
    settings: Settings,
    symbols: Sequence[str] | None = None,
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    today: dt.date | None = None,
) -> Any:
    """``lake.coverage.read_coverage`` of ``symbols`` (default ``BML_SYMBOLS``, each known) over
    ``start..end`` (default: the first day the ledger has a row of them .. today), the range
    checked like a scan's (``BadRequest``)."""
    from bml_assets.lake.coverage import read_coverage
    from bml_assets.orchestration.scans import check_range

    today = today or utc_today()
    if start is not None or end is not None:
        check_range(start or settings.start_date, end or today, today, settings.start_date)
    ledger = open_ledger(settings)
    try:
        resolved = resolve_symbols(symbols, settings.symbols, ledger.symbols())
        return read_coverage(ledger, resolved, today=today, start=start, end=end)
    finally:
        ledger.close()
