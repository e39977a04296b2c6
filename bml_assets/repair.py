"""Gap repair over years: a sensor that rebuilds what the consistency scan finds wrong,
and a job that runs the full scan on demand.

What belongs here: turning a ``ScanReport`` (``lake/scan.py``) into partitions to
rebuild, the ``repair_sensor`` that walks the lake window by window and requests
those rebuilds, and the ``lake_scan_job`` that reports a scan as op metadata.
What stays out: the scan itself, the build (the minute view job the sensor
targets), and the wiring into the Definitions (``definitions.py``).

Every problem kind is repaired the same way: the minute view partition is rebuilt
through the ordinary job, which writes and records it atomically (a ``provisional``
day is promoted by the rebuild). Minutes the ledger records as confirmed source
gaps are not problems, so a day whose only absent minutes are exchange downtime is
never requested again.

The sensor, per tick (at most every ``minimum_interval_seconds``):

1. reads its cursor ``{"day", "after", "sweep"}``: where the window starts, the last
   (day, symbol) already handled inside it, and how many times it has wrapped;
2. scans ``window_days`` days from there (all symbols, ``deep=False``: one ledger
   query plus one ``os.stat`` per partition; Vision is not asked);
3. requests up to ``max_runs_per_tick`` rebuilds, oldest first, skipping partitions
   that already have a queued or running run (any job: one ``get_runs`` query per
   tick, by the ``dagster/partition`` tag);
4. moves the cursor past what it handled: to the next window when the window is
   done, else to the last partition requested. After yesterday it wraps to
   ``start`` and the sweep number grows.

Run keys are ``repair:{partition}:{kind}:{hash}`` where the hash covers the sweep
number and every problem (kind and detail) of the partition. Dagster drops a run
request whose key it has seen, so within a sweep a partition is requested at most
once per distinct problem, and a repair that cannot succeed (the source really lacks
the data) is retried once per sweep, not every tick.
"""

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    JobDefinition,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)

from bml_assets.lake.scan import Problem, ScanReport, scan
from bml_assets.partitions import partition_key
from bml_assets.resources import BmlResource
from bml_assets.sources.vision import NotPublished, Stream, VisionClient

REPAIR_TAG: Final = "bml/repair"
PARTITION_NAME_TAG: Final = "dagster/partition"  # set by Dagster on a single-partition run
REPAIR_SWEEP_TAG: Final = "bml/repair-sweep"
REPAIR_INTERVAL_S: Final = 300
IN_FLIGHT_STATUSES: Final = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
)
MAX_TABLE_ROWS: Final = 200
"""Problems shown in the scan job's markdown table (the counts cover all of them)."""

TodayFn = Callable[[BmlResource], dt.date]
ListingDates = Mapping[str, dt.date] | Callable[[BmlResource], Mapping[str, dt.date]]
"""First trading day per symbol: fixed, or read per evaluation (e.g. from the ledger's symbol table)."""


def _listing(listing_dates: ListingDates | None, bml: BmlResource) -> Mapping[str, dt.date] | None:
    return listing_dates(bml) if callable(listing_dates) else listing_dates


def repair_targets(report: ScanReport) -> list[tuple[str, dt.date]]:
    """The (symbol, day) partitions to rebuild, oldest first: every problem kind is
    repaired by rebuilding the minute view partition (a ``provisional`` day is promoted)."""
    return report.partitions()


def exchange_today(bml: BmlResource) -> dt.date:
    """Today (UTC) by the exchange's clock, as the other sensors see it; the local
    clock when the exchange cannot be asked (the scan then judges by the host)."""
    from bml_assets.assets.rest_days import ExchangeNow  # the assets package is heavy; import when used

    try:
        return ExchangeNow(bml.rest().server_time_ms(), 0).today
    except Exception:
        return dt.datetime.now(dt.UTC).date()


def vision_klines_published(vision: VisionClient) -> Callable[[str, dt.date], bool]:
    """``vision_published`` for ``scan``: whether Vision has the day's klines (its CHECKSUM)."""

    def published(symbol: str, day: dt.date) -> bool:
        try:
            vision.checksum(vision.daily_url(Stream.KLINES, symbol, day))
        except NotPublished:
            return False
        return True

    return published


# --------------------------------------------------------------------------- the sensor


def _cursor(text: str | None, start: dt.date) -> tuple[dt.date, str, int]:
    """(window start, last handled "day|symbol" inside the window or "", sweep)."""
    if not text:
        return start, "", 0
    try:
        data = json.loads(text)
        return dt.date.fromisoformat(data["day"]), str(data.get("after", "")), int(data.get("sweep", 0))
    except (ValueError, KeyError, TypeError):
        return start, "", 0  # an unreadable cursor restarts the sweep


def _dump_cursor(day: dt.date, after: str, sweep: int) -> str:
    return json.dumps({"day": day.isoformat(), "after": after, "sweep": sweep}, sort_keys=True)


def _run_key(key: str, problems: list[Problem], sweep: int) -> str:
    text = "\n".join([str(sweep), *(f"{p.kind}:{p.detail}" for p in problems)])
    return f"repair:{key}:{problems[0].kind}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _in_flight(context: SensorEvaluationContext, keys: Iterable[str]) -> set[str]:
    """Partition keys among ``keys`` that have a queued or running run (any job)."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    runs = context.instance.get_runs(RunsFilter(statuses=list(IN_FLIGHT_STATUSES), tags={PARTITION_NAME_TAG: wanted}))
    return {r.tags.get(PARTITION_NAME_TAG, "") for r in runs}


def build_repair_sensor(
    symbols: tuple[str, ...],
    start: dt.date,
    *,
    job_name: str,
    max_runs_per_tick: int = 10,
    window_days: int = 31,
    listing_dates: ListingDates | None = None,
    today: TodayFn | None = None,
) -> SensorDefinition:
    """The ``repair_sensor`` over ``symbols`` from ``start`` to yesterday (see the module doc).

    ``today`` (tests) replaces the exchange's clock; ``listing_dates`` (a mapping, or a
    callable of the resource asked once per tick) spares the days before a symbol's listing.
    """
    if max_runs_per_tick < 1 or window_days < 1:
        raise ValueError("max_runs_per_tick and window_days must be at least 1")
    today_of = today or exchange_today

    @sensor(
        name="repair_sensor",
        job_name=job_name,
        minimum_interval_seconds=REPAIR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Walks the lake {window_days} days per tick, checking the ledger against the files, and rebuilds "
            f"partitions that are missing, damaged, outdated or incomplete (at most {max_runs_per_tick} per tick)."
        ),
    )
    def repair_sensor(context: SensorEvaluationContext, bml: BmlResource):
        yesterday = today_of(bml) - dt.timedelta(days=1)
        if yesterday < start:
            context.update_cursor(_dump_cursor(start, "", 0))
            yield SkipReason(f"no closed day since {start.isoformat()} yet")
            return
        window_start, after, sweep = _cursor(context.cursor, start)
        if window_start < start or window_start > yesterday:
            window_start, after, sweep = start, "", sweep + 1
        window_end = min(window_start + dt.timedelta(days=window_days - 1), yesterday)
        settings = bml.settings()
        report = scan(
            settings.lake_root,
            bml.ledger(),
            symbols,
            window_start,
            window_end,
            today=yesterday + dt.timedelta(days=1),
            deep=False,
            listing_dates=_listing(listing_dates, bml),
        )
        by_partition: dict[str, list[Problem]] = {}
        for problem in report.problems:  # sorted by (day, symbol, kind)
            position = f"{problem.day.isoformat()}|{problem.symbol}"
            if position > after:
                by_partition.setdefault(position, []).append(problem)
        ordered = list(by_partition)
        busy = _in_flight(context, (partition_key(ps[0].symbol, ps[0].day) for ps in by_partition.values()))
        requested = 0
        resume_after = ""
        for i, position in enumerate(ordered):
            if requested == max_runs_per_tick:
                resume_after = ordered[i - 1]
                break
            problems = by_partition[position]
            key = partition_key(problems[0].symbol, problems[0].day)
            if key in busy:
                context.log.info(f"repair: {key} already has a queued or running run; left to it")
                continue
            yield RunRequest(
                run_key=_run_key(key, problems, sweep),
                partition_key=key,
                tags={REPAIR_TAG: str(problems[0].kind), REPAIR_SWEEP_TAG: str(sweep)},
            )
            requested += 1
        if resume_after:
            # The cap was reached inside the window: the next tick goes on from there.
            context.update_cursor(_dump_cursor(window_start, resume_after, sweep))
        else:
            context.update_cursor(_dump_cursor(window_end + dt.timedelta(days=1), "", sweep))
        if not requested:
            yield SkipReason(
                f"{window_start.isoformat()}..{window_end.isoformat()}: {report.checked} partitions checked, "
                f"{len(ordered)} with problems, none to request"
            )

    return repair_sensor


# --------------------------------------------------------------------------- the scan job


class ScanConfig(Config):
    """``start``/``end``: ISO days, inclusive (default: the first partition day / yesterday);
    ``symbols``: default all; ``deep``: read the files (default) or only stat them;
    ``check_vision``: ask Vision whether REST-built days are published; ``today``:
    override the exchange's clock (ISO day)."""

    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    deep: bool = True
    check_vision: bool = True
    today: str | None = None


def problems_markdown(report: ScanReport, limit: int = MAX_TABLE_ROWS) -> str:
    lines = ["| symbol | date | kind | detail | minutes |", "| --- | --- | --- | --- | --- |"]
    for p in report.problems[:limit]:
        minutes = ", ".join(p.minutes[:5]) + (" …" if len(p.minutes) > 5 else "")
        cells = [p.symbol, p.day.isoformat(), str(p.kind), p.detail, minutes]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if len(report.problems) > limit:
        lines.append(f"\n{len(report.problems) - limit} more problems not shown")
    if not report.problems:
        lines.append("| — | — | — | clean | — |")
    return "\n".join(lines)


def scan_metadata(report: ScanReport) -> dict[str, Any]:
    targets = repair_targets(report)
    return {
        "clean": report.clean,
        "checked": report.checked,
        "problems": len(report.problems),
        "partitions_to_repair": len(targets),
        "by_kind": MetadataValue.json(report.by_kind()),
        "problem_table": MetadataValue.md(problems_markdown(report)),
        "range": f"{report.start}..{report.end}",
        "deep": report.deep,
    }


def build_scan_job(
    symbols: tuple[str, ...],
    start: dt.date,
    *,
    job_name: str = "lake_scan_job",
    listing_dates: ListingDates | None = None,
    today: TodayFn | None = None,
) -> JobDefinition:
    """A job of one op that scans the lake and reports (never fails on) its problems."""
    today_of = today or exchange_today

    @op(
        name="scan_lake",
        out=Out(Nothing),
        description="Consistency scan of the minute view: ledger against files, per symbol × day.",
    )
    def scan_lake(context: OpExecutionContext, config: ScanConfig, bml: BmlResource):
        now = dt.date.fromisoformat(config.today) if config.today else today_of(bml)
        first = dt.date.fromisoformat(config.start) if config.start else start
        last = dt.date.fromisoformat(config.end) if config.end else now - dt.timedelta(days=1)
        chosen = tuple(config.symbols) if config.symbols else symbols
        vision_published = None
        if config.check_vision:
            ask = vision_klines_published(bml.vision())

            def vision_published(symbol: str, day: dt.date) -> bool:
                try:
                    return ask(symbol, day)
                except Exception as exc:  # Vision unreachable: report what can be judged
                    context.log.warning(f"cannot ask Vision about {symbol} {day}: {exc}")
                    return False

        report = scan(
            bml.settings().lake_root,
            bml.ledger(),
            chosen,
            first,
            last,
            today=now,
            vision_published=vision_published,
            deep=config.deep,
            listing_dates=_listing(listing_dates, bml),
        )
        context.log.info(
            f"scan {first}..{last}, {len(chosen)} symbols: {report.checked} partitions checked, "
            f"{len(report.problems)} problems {report.by_kind()}"
        )
        yield Output(None, metadata=scan_metadata(report))

    @job(name=job_name, description="Scan the lake for missing, damaged or outdated partitions and report them.")
    def lake_scan_job():
        scan_lake()

    return lake_scan_job
