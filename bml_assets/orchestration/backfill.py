"""The drivers behind the ``bml`` commands: backfill planning and execution through
Dagster, and the small operations of the other commands.

What belongs here, as plain functions the CLI calls:

- the backfill: scan the range (``lake/scan.py``, every dataset), sweep the stray
  temporary files it found (``repair.sweep``), turn what the scan found into targets
  (``repair.py``, plus the days never built), skip the days a symbol was not listed,
  order them, cap them by ``--max-missing-hours``; execute the plan with the real
  ``MINUTE_VIEW_JOB`` in-process, one run per partition (a failed partition does not
  stop the others), and summarise;
- the scan command's report: the range's scan, the Vision cache's stray files, and
  the sweep when asked;
- the state: checking the lake root, creating the ledger (``init-state``);
- the symbol universe: ``exchangeInfo`` → the ledger's ``symbols`` table;
- one hot-poll pass (``run-once``) and the per-symbol watermark report.

What stays out: argument parsing, progress bars and exit codes (``cli.py``), what
counts as a problem in the lake (``lake/scan.py``), which partitions repair what
(``repair.py``), and how a partition is built (the assets). Re-running a plan is
idempotent because the lake is: a rebuilt partition whose bytes did not change is
not rewritten (same content hash).

Commit races: a run that loses a partition's compare-and-swap to another writer
(another ``run-once`` or backfill process, a sensor's run) is run again, at most
``MAX_RUN_ATTEMPTS`` times in all. The retry is the whole run, here, because
resolving the conflict means rebuilding on what the winner committed: the stream
assets re-read the committed table as their incremental base and the minute view
re-joins them. The IO manager cannot rebuild a table, and a Dagster retry policy
would also re-run failures that no retry can fix (bad input).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from bml_assets.domain.minutes import day_of_ms
from bml_assets.domain.provenance import provisional_streams
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings, validate_symbol
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger, SymbolRecord, SymbolSync
from bml_assets.storage.store import StoreNotWritable

HOURS_PER_DAY = 24
NOT_BUILT = "not_built"
DEFAULT_CHUNK_DAYS = 30
# Tag of the runs a backfill launches (visible in the UI with DAGSTER_HOME set).
BACKFILL_TAG = "bml/backfill"
# Per-partition warnings (e.g. "no hot snapshots for a past day") would bury the progress:
# the command reports failures itself; the full logs are in the run (DAGSTER_HOME).
RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
MINUTE_DATASET = MINUTE_VIEW.name
# Runs of one partition when each loses a commit race (see the module docstring).
MAX_RUN_ATTEMPTS = 3


class CommandError(Exception):
    """A problem the user can fix (unknown symbol, a lake root that cannot be written…)."""


class UnknownSymbol(CommandError):
    pass


class LakeRootNotWritable(CommandError):
    pass


def utc_today() -> dt.date:
    """This machine's UTC date: the ``today`` of ``scan`` and of backfills."""
    return dt.datetime.now(dt.UTC).date()


def years_back(years: int, *, today: dt.date | None = None) -> tuple[dt.date, dt.date]:
    """From ``years`` years before yesterday, to yesterday (29 February → 28 February)."""
    if years < 1:
        raise ValueError(f"--years must be at least 1, not {years}")
    end = (today or utc_today()) - dt.timedelta(days=1)
    try:
        start = end.replace(year=end.year - years)
    except ValueError:
        start = end.replace(year=end.year - years, day=28)
    return start, end


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


# --------------------------------------------------------------------------- state


def check_lake(lake: Lake) -> str:
    """Create the lake's root if needed and prove it is writable; a clear error otherwise.
    Returns the root's canonical location."""
    try:
        return lake.store.ensure_writable()
    except StoreNotWritable as exc:
        raise LakeRootNotWritable(
            f"the lake root {exc.root} is not writable ({exc.reason}); set BML_LAKE_ROOT to a folder you can "
            "write, or fix its permissions"
        ) from None


@dataclass(frozen=True)
class StateInfo:
    lake_root: str
    ledger_url: str
    schema_version: int
    tables: tuple[str, ...]
    symbols_synced: int


def init_state(settings: Settings) -> StateInfo:
    """Create the lake root and every ledger table (symbols included); idempotent."""
    root = check_lake(Lake.at(settings.lake_root))
    ledger = Ledger(settings.state_url)
    try:
        ledger.init()
        synced = len(ledger.symbols())  # also creates the symbols table
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
    check_lake(Lake.at(settings.lake_root))
    ledger = Ledger(settings.state_url)
    ledger.init()
    return ledger


# --------------------------------------------------------------------------- symbols


def _ms_date(value: Any) -> dt.date | None:
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return None
    if ms <= 0:
        return None
    return day_of_ms(ms)


# exchangeInfo gives perpetuals a deliveryDate far in the future (2100-12-25): not a delisting.
_FAR_FUTURE = dt.date(2100, 1, 1)


def perpetual_symbols(exchange_info: Mapping[str, Any], *, now: dt.datetime | None = None) -> list[SymbolRecord]:
    """The USD-M PERPETUAL symbols of an ``exchangeInfo`` answer, as ledger records.

    ``onboardDate`` gives the first listed day. A symbol that no longer trades
    (status other than ``TRADING``) gets a delist date when exchangeInfo says when
    it stopped (``deliveryDate`` in the past): its last trading day.
    """
    stamp = now or dt.datetime.now(dt.UTC)
    records: list[SymbolRecord] = []
    for entry in exchange_info.get("symbols") or []:
        if not isinstance(entry, Mapping) or entry.get("contractType") != "PERPETUAL":
            continue
        symbol = entry.get("symbol")
        try:
            validate_symbol(symbol)  # type: ignore[arg-type]
        except ValueError:
            continue  # a name that cannot be a path part is not ours to store
        status = str(entry.get("status") or "UNKNOWN")
        delist = None
        if status != "TRADING":
            delivery = _ms_date(entry.get("deliveryDate"))
            if delivery is not None and delivery < _FAR_FUTURE and delivery <= stamp.date():
                delist = delivery
        records.append(
            SymbolRecord(
                symbol=symbol,  # type: ignore[arg-type]
                onboard_date=_ms_date(entry.get("onboardDate")),
                status=status,
                delist_date=delist,
                updated_at=stamp,
            )
        )
    return records


@dataclass(frozen=True)
class SymbolsSyncResult:
    perpetuals: int
    trading: int
    not_trading: int
    delisted_with_date: int
    sync: SymbolSync
    ledger_url: str
    symbols: tuple[str, ...] = ()


def sync_symbols(settings: Settings) -> SymbolsSyncResult:
    """exchangeInfo (REST, ``BML_REST_BASE_URL``) → the ledger's ``symbols`` table."""
    from bml_assets.sources.rest import RestClient

    ledger = open_ledger(settings)
    try:
        rest = RestClient(
            settings.rest_base_url, state_url=settings.state_url, weight_budget=settings.rest_weight_budget
        )
        records = perpetual_symbols(rest.exchange_info())
        sync = ledger.upsert_symbols(records)
        return SymbolsSyncResult(
            perpetuals=len(records),
            trading=sum(r.trading for r in records),
            not_trading=sum(not r.trading for r in records),
            delisted_with_date=sum(r.delist_date is not None for r in records),
            sync=sync,
            ledger_url=ledger.display_url,
            symbols=tuple(r.symbol for r in records),
        )
    finally:
        ledger.close()


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


# --------------------------------------------------------------------------- the plan


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

    def lines(self) -> list[str]:
        """The plan as text: what a dry run prints."""
        span = f"{self.start.isoformat()}..{self.end.isoformat()}"
        out = [
            f"plan: {len(self.partitions)} partition(s) to build ({self.hours} h) "
            f"in {span} for {', '.join(self.symbols) or '-'}"
        ]
        out += [f"  {t.symbol:<12} {t.day.isoformat()}  {', '.join(t.reasons) or NOT_BUILT}" for t in self.partitions]
        for s in self.skipped:
            out.append(f"skipped: {s.symbol} {show_ranges(s.days)} ({len(s.days)} day(s)): {s.reason}")
        if self.left_out:
            out.append(
                f"cap reached: --max-missing-hours {self.max_missing_hours} allows {self.hours} h; "
                f"{len(self.left_out)} more partition(s) ({HOURS_PER_DAY * len(self.left_out)} h) left for a later run"
            )
        return out


def _not_listed_reason(record: SymbolRecord, day: dt.date) -> str | None:
    if record.onboard_date is not None and day < record.onboard_date:
        return f"before its listing on {record.onboard_date.isoformat()}"
    if record.delist_date is not None and day > record.delist_date:
        return f"after its last trading day {record.delist_date.isoformat()} ({record.status})"
    return None


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
        reason = _not_listed_reason(record, day) if record is not None else None
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


def listed_span(
    symbol: str, start: dt.date, end: dt.date, listings: Mapping[str, SymbolRecord]
) -> tuple[dt.date, dt.date] | None:
    """The part of ``start..end`` the symbol traded in (the whole range when unknown), or None."""
    record = listings.get(symbol)
    if record is None:
        return start, end
    first = max(start, record.onboard_date) if record.onboard_date else start
    last = min(end, record.delist_date) if record.delist_date else end
    return (first, last) if first <= last else None


def chunks(start: dt.date, end: dt.date, chunk_days: int) -> list[tuple[dt.date, dt.date]]:
    """``start..end`` cut into inclusive spans of at most ``chunk_days`` days."""
    out = []
    a = start
    while a <= end:
        b = min(end, a + dt.timedelta(days=chunk_days - 1))
        out.append((a, b))
        a = b + dt.timedelta(days=1)
    return out


# --------------------------------------------------------------------------- scanning


def _count(minutes: Any) -> int:
    if minutes is None:
        return 0
    if isinstance(minutes, int):
        return minutes
    try:
        return len(minutes)
    except TypeError:
        return 0


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
        return Lake.at(self.settings.lake_root)

    def close(self) -> None:
        self.ledger.close()


def open_workspace(settings: Settings, requested: Sequence[str] | None) -> Workspace:
    ledger = open_ledger(settings)
    try:
        universe = ledger.symbols()
        symbols = resolve_symbols(requested, settings.symbols, universe)
    except Exception:
        ledger.close()
        raise
    return Workspace(settings=settings, ledger=ledger, symbols=symbols, universe=universe)


def scan_span(
    ws: Workspace, start: dt.date, end: dt.date, *, symbols: Sequence[str] | None = None, deep: bool = True
) -> Any:
    """``lake.scan.scan`` over ``start..end`` (today = this machine's UTC today; listing dates when synced)."""
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


def listed_scan(ws: Workspace, start: dt.date, end: dt.date, *, deep: bool = True) -> Any:
    """``scan_span`` over the workspace's symbols, without problems on days a symbol did not trade."""
    report = scan_span(ws, start, end, deep=deep)
    report.problems = remaining_problems(ws, [report])
    return report


def problem_rows(report: Any) -> list[dict[str, Any]]:
    """The scan's problems as plain rows: kind, dataset, symbol, day, detail, minutes (a count)."""
    rows = []
    for p in report.problems:
        day = getattr(p, "day", None)
        rows.append(
            {
                "kind": str(p.kind),
                "dataset": getattr(p, "dataset", MINUTE_DATASET),
                "symbol": p.symbol,
                "day": day.isoformat() if isinstance(day, dt.date) else day,
                "detail": p.detail,
                "minutes": _count(getattr(p, "minutes", None)),
            }
        )
    return rows


def remaining_problems(ws: Workspace, reports: Iterable[Any]) -> list[Any]:
    """The problems of ``reports`` on days the symbol traded (days it was not listed are not problems)."""
    listings = ws.listings
    out = []
    for report in reports:
        for p in report.problems:
            record = listings.get(p.symbol)
            day = getattr(p, "day", None)
            if record is not None and isinstance(day, dt.date) and _not_listed_reason(record, day):
                continue
            out.append(p)
    return out


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


def unplanned_problems(ws: Workspace, reports: Iterable[Any], plan: BackfillPlan) -> list[Any]:
    """Problems on listed days that the plan does not rebuild (left out by the cap)."""
    planned = set(plan.keys)
    return [p for p in remaining_problems(ws, reports) if (p.symbol, p.day) not in planned]


def _reason(problem: Any) -> str:
    """A problem's kind, prefixed with its dataset when that is a stream table."""
    dataset = getattr(problem, "dataset", MINUTE_DATASET)
    return str(problem.kind) if dataset == MINUTE_DATASET else f"{dataset}:{problem.kind}"


def cache_strays(ws: Workspace) -> list[Any]:
    """The Vision cache's stale temporary files (``lake.scan.stray_cache_files``, the whole cache)."""
    from bml_assets.lake.scan import stray_cache_files

    return stray_cache_files(ws.settings.cache_dir, now=dt.datetime.now(dt.UTC))


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


# --------------------------------------------------------------------------- executing


@contextmanager
def dagster_instance() -> Iterator[Any]:
    """The instance of ``DAGSTER_HOME`` when it is set (runs then show in the UI), else an ephemeral one."""
    from dagster import DagsterInstance

    if os.environ.get("DAGSTER_HOME"):
        with DagsterInstance.get() as instance:
            yield instance
    else:
        with DagsterInstance.ephemeral() as instance:
            yield instance


def _definitions(settings: Settings, symbols: Iterable[str], first_day: dt.date):
    """The real definitions, with a partition set that covers ``symbols`` from ``first_day``."""
    from bml_assets.definitions import build_definitions

    wide = settings.with_(
        symbols=tuple(dict.fromkeys([*settings.symbols, *symbols])),
        start_date=min(settings.start_date, first_day),
    )
    return build_definitions(wide)


def _interrupted(result: Any) -> bool:
    """Whether a run failed because the process was interrupted (Ctrl-C / SIGTERM inside a step):
    Dagster turns the signal into a step failure, so the caller must stop by itself."""
    for event in result.all_events:
        if event.is_step_failure:
            error = event.step_failure_data.error
            while error is not None:
                if error.cls_name == "DagsterExecutionInterruptedError":
                    return True
                error = error.cause
    return False


def _lost_commit_race(result: Any) -> bool:
    """Whether every failed step of a run failed because another writer committed its
    partition first (``CommitConflict``): then a new run, built on that commit, succeeds."""
    failures = [e for e in result.all_events if e.is_step_failure]
    if not failures:
        return False
    for event in failures:
        error = event.step_failure_data.error
        while error is not None and error.cls_name != "CommitConflict":
            error = error.cause
        if error is None:
            return False
    return True


def _run_partition(job: Any, key: str, instance: Any, tags: Mapping[str, str]) -> tuple[Any, int]:
    """(the last run's result, the number of runs): ``job`` for partition ``key``, run
    again while it only lost commit races, at most ``MAX_RUN_ATTEMPTS`` runs."""
    runs = 0
    while True:
        result = job.execute_in_process(
            partition_key=key, instance=instance, raise_on_error=False, run_config=RUN_CONFIG, tags=dict(tags)
        )
        runs += 1
        if result.success or runs >= MAX_RUN_ATTEMPTS or not _lost_commit_race(result):
            return result, runs


def _run_error(result: Any) -> str:
    """The first failed step and the error that explains it: the innermost cause, not
    Dagster's wrapper ("Error occurred while handling output …")."""
    failures = [e for e in result.all_events if e.is_step_failure]
    if not failures:
        return "run failed"
    error = failures[0].step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    message = (error.message if error is not None else "step failed").strip()
    return f"{failures[0].step_key}: {message}"


def _file_hash(lake: Lake, symbol: str, day: dt.date) -> str | None:
    try:
        return lake.sha256(MINUTE_DATASET, symbol, day)
    except OSError:
        return None


@dataclass(frozen=True)
class PartitionOutcome:
    symbol: str
    day: dt.date
    ok: bool
    status: str  # the ledger's status after the run, or "missing"
    rewritten: bool  # the file's bytes changed (written anew, or repaired)
    seconds: float
    error: str | None = None


def execute_plan(plan: BackfillPlan, settings: Settings, *, tag: str | None = None) -> Iterator[PartitionOutcome]:
    """Run ``MINUTE_VIEW_JOB`` in-process for each planned partition, in order; yield each outcome.

    A failed partition (run failure or exception) is reported and the next one runs.
    An interrupt (Ctrl-C) stops the plan: the interrupted partition is yielded as failed,
    then ``KeyboardInterrupt`` is raised. Committed partitions stay; a re-run goes on.
    """
    if not plan.partitions:
        return
    from bml_assets.definitions import MINUTE_VIEW_JOB
    from bml_assets.domain.partitions import partition_key

    job = _definitions(settings, plan.symbols, plan.start).resolve_job_def(MINUTE_VIEW_JOB)
    lake, ledger = Lake.at(settings.lake_root), Ledger(settings.state_url)
    tags = {BACKFILL_TAG: tag or f"{plan.start.isoformat()}..{plan.end.isoformat()}"}
    with dagster_instance() as instance:
        for target in plan.partitions:
            before = _file_hash(lake, target.symbol, target.day)
            began = time.monotonic()
            error = None
            try:
                result, _ = _run_partition(job, partition_key(target.symbol, target.day), instance, tags)
                ok = bool(result.success)
                if not ok:
                    error = _run_error(result)
                interrupted = not ok and _interrupted(result)
            except Exception as exc:  # one partition's crash must not stop the others
                ok, error, interrupted = False, f"{type(exc).__name__}: {exc}", False
            after = ledger.get_partition(MINUTE_DATASET, target.symbol, target.day)
            yield PartitionOutcome(
                symbol=target.symbol,
                day=target.day,
                ok=ok,
                status=after.status if after is not None else "missing",
                rewritten=_file_hash(lake, target.symbol, target.day) not in (before, None),
                seconds=time.monotonic() - began,
                error="interrupted" if interrupted else error,
            )
            if interrupted:
                raise KeyboardInterrupt


def summary_lines(outcomes: Sequence[PartitionOutcome], remaining: Sequence[Any]) -> list[str]:
    """The end of a backfill: what was built, what failed (with the error), what the final scan says."""
    failed = [o for o in outcomes if not o.ok]
    ok = [o for o in outcomes if o.ok]
    counts: dict[str, int] = {}
    for o in ok:
        counts[o.status] = counts.get(o.status, 0) + 1
    rewritten = sum(o.rewritten for o in ok)
    parts = [f"{n} {status}" for status, n in sorted(counts.items())]
    out = [
        f"built {len(ok)} of {len(outcomes)} partition(s)"
        + (f" ({', '.join(parts)}; {rewritten} written, {len(ok) - rewritten} unchanged)" if ok else "")
    ]
    if failed:
        out.append(f"FAILED {len(failed)} partition(s):")
        out += [f"  {o.symbol} {o.day.isoformat()}: {o.error}" for o in failed]
    if remaining:
        kinds: dict[str, int] = {}
        for p in remaining:
            kinds[str(p.kind)] = kinds.get(str(p.kind), 0) + 1
        shown = ", ".join(f"{k}: {n}" for k, n in sorted(kinds.items()))
        out.append(f"final scan: {len(remaining)} problem(s) remain ({shown})")
    else:
        out.append("final scan: clean")
    return out


# --------------------------------------------------------------------------- hot pass and watermarks


@dataclass(frozen=True)
class HotOutcome:
    symbol: str
    day: dt.date | None  # None: nothing committable yet
    band: str | None
    before: dt.datetime | None
    after: dt.datetime | None
    ok: bool
    error: str | None = None
    runs: int = 1  # more than one: earlier runs lost a commit race and were run again


def hot_pass(settings: Settings, symbols: Sequence[str] | None = None) -> Iterator[HotOutcome]:
    """One hot-poll pass: per symbol, ``hot_targets`` at the exchange's clock, then ``HOT_JOB``
    in-process for that partition (band ``hot`` for today, ``catch-up`` for a past day),
    run again if it lost a commit race to another writer (``MAX_RUN_ATTEMPTS``)."""
    from bml_assets.build.clock import ExchangeNow
    from bml_assets.definitions import HOT_JOB
    from bml_assets.defs.assets.streams import BAND_TAG, HOT_BAND
    from bml_assets.defs.sensors import hot_targets
    from bml_assets.domain.partitions import partition_key
    from bml_assets.sources.rest import RestClient

    ledger = open_ledger(settings)
    symbols = tuple(symbols or settings.symbols)
    rest = RestClient(settings.rest_base_url, state_url=settings.state_url, weight_budget=settings.rest_weight_budget)
    try:
        now = ExchangeNow(rest.server_time_ms(), settings.safety_lag_minutes)
    finally:
        rest.close()
    targets = hot_targets(ledger, symbols, now)
    first_day = min([now.today, *targets.values()])
    job = _definitions(settings, symbols, first_day).resolve_job_def(HOT_JOB)
    with dagster_instance() as instance:
        for symbol in symbols:
            before = ledger.get_watermark(symbol)
            day = targets.get(symbol)
            if day is None:
                yield HotOutcome(symbol, None, None, before, before, True)
                continue
            band = HOT_BAND if day == now.today else "catch-up"
            error = None
            runs = 1
            try:
                result, runs = _run_partition(job, partition_key(symbol, day), instance, {BAND_TAG: band})
                ok = bool(result.success)
                if not ok:
                    error = _run_error(result)
                    if _interrupted(result):
                        raise KeyboardInterrupt
            except Exception as exc:
                ok, error = False, f"{type(exc).__name__}: {exc}"
            yield HotOutcome(symbol, day, band, before, ledger.get_watermark(symbol), ok, error, runs)


def watermark_report(settings: Settings, symbol: str | None = None) -> list[dict[str, Any]]:
    """Per symbol (``BML_SYMBOLS`` plus any the ledger knows, or just ``symbol``): the watermark,
    committed partitions, first/last committed day, provisional (REST-built) and not-listed days."""
    ledger = open_ledger(settings)
    try:
        rows = ledger.partitions(dataset=MINUTE_DATASET)
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
