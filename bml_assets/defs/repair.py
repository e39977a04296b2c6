"""Gap repair over years: a sensor that rebuilds what the consistency scan finds wrong
and sweeps the stray files it meets, and a job that runs the full scan on demand.

What belongs here: turning a ``ScanReport`` (``lake/scan.py``) into partitions to
rebuild (with the backoff of incomplete partitions), sweeping the report's stray
temporary files and re-recording the stat of intact files, the ``repair_sensor``
that walks the lake window by window and does both, and the ``lake_scan_job`` that
reports a scan as op metadata. What stays out: the scan itself, the build (the
minute view job the sensor targets), and the wiring into the Definitions
(``definitions.py``).

Every problem kind, in every dataset, is repaired the same way: the (symbol, day)
is rebuilt through the minute view job, whose selection holds the stream assets
upstream of the view, so a damaged stream table is rewritten with the view; each
commit is atomic and recorded (a ``provisional`` day is promoted by the rebuild).
Minutes the ledger records as confirmed source gaps are not problems, so a day whose
only absent minutes are exchange downtime is never requested again. Two exceptions:

- ``incomplete`` (SPEC §8): a partition still lacking a fillable stream is retried
  with a bounded backoff, not before ``committed_at + min(INCOMPLETE_RETRY_BASE ×
  2^(builds-1), INCOMPLETE_RETRY_CAP)``: a day REST cannot complete yet is not rebuilt
  every tick, yet is retried forever, at least every cap;
- the hot snapshots (``NOT_REBUILT_DATASETS``) are polled live and exist nowhere
  else: a rebuild cannot fetch them again, it would fail on the damaged file or
  re-commit what it read. Their problems are reported, never requested.

Sweeping (the sensor each tick, ``bml scan --sweep``, ``bml backfill-range``, the
scan job with ``sweep: true``): a commit's temporary file is removed under its
partition's lock, taken without waiting (a busy lock is a live commit: its file is
left); a Vision cache ``*.part`` only when untouched for ``VISION_TEMP_STALE_S``. An
intact file whose size or mtime the ledger does not know gets them re-recorded
(``commit.refresh_file_stat``, at most ``MAX_RESTATS_PER_TICK`` per tick).

The sensor, per tick (at most every ``minimum_interval_seconds``):

0. checks every committed file of the lake against the size and mtime its commit
   recorded (``scan.damaged_files``: one lean ledger read and one stat per
   file, a footer and hash only for a changed file) and requests the damaged
   partitions, up to ``max_runs_per_tick`` of them, each once per sweep (their run
   keys ride in the cursor): a file deleted, emptied or truncated anywhere is
   rebuilt by the next tick's request, not when the walk reaches its window;
1. reads its cursor ``{"day", "after", "sweep"}``: where the window starts, the last
   (day, symbol) already handled inside it, and how many times it has wrapped;
2. scans ``window_days`` days from there (all symbols, all datasets, ``deep=False``:
   one ledger query, one listing and one stat per partition folder, a footer
   only for a file whose stat changed; Vision is not asked);
3. sweeps the window's stray files, and the Vision cache buckets of this window (the
   256 first-level folders are spread over the windows of a sweep);
4. requests up to ``max_runs_per_tick`` rebuilds, oldest first, skipping partitions
   that already have a queued or running run (any job: one ``get_runs`` query per
   tick, by the ``dagster/partition`` tag) and incomplete ones not yet due;
5. moves the cursor past what it handled: to the next window when the window is
   done, else to the last partition requested. After yesterday it wraps to
   ``start`` and the sweep number grows.

Run keys are ``repair:{partition}:{kind}:{hash}`` where the hash covers the sweep
number and every problem (dataset, kind and detail) of the partition. Dagster drops
a run request whose key it has seen, so within a sweep a partition is requested at
most once per distinct problem, and a repair that cannot succeed (the source really
lacks the data) is retried once per sweep, not every tick. An incomplete partition's
detail counts its builds, so each retry the backoff allows gets a new key.
"""

import datetime as dt
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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

from bml_assets.days.clock import ExchangeNow
from bml_assets.defs.resources import LakeResource, LedgerResource, RestResource, VisionResource
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.schema import DATASETS, HOT_SNAPSHOTS, LIVE_1M
from bml_assets.domain.streams import Stream
from bml_assets.lake.cache_policy import EvictionPlan, eviction_plan
from bml_assets.lake.commit import refresh_file_stat, sweep_temp_files
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.lake.scan import (
    Problem,
    ProblemKind,
    ScanReport,
    StrayFile,
    damaged_files,
    outside_strays,
    scan,
)
from bml_assets.sources.vision import (
    VISION_TEMP_STALE_S,
    NotPublished,
    VisionClient,
    cached_zips,
    evict_cached,
    stale_cache_files,
)
from bml_assets.storage.store import local_stat

REPAIR_TAG: Final = "bml/repair"
PARTITION_NAME_TAG: Final = "dagster/partition"  # set by Dagster on a single-partition run
REPAIR_SWEEP_TAG: Final = "bml/repair-sweep"
REPAIR_FOUND_TAG: Final = "bml/repair-found"
"""How the problem was found: the whole-lake file check, or the window walk."""
FOUND_BY_FILE_CHECK: Final = "file_check"
FOUND_BY_WALK: Final = "walk"
REPAIR_INTERVAL_S: Final = 300
IN_FLIGHT_STATUSES: Final = (
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
)
MAX_TABLE_ROWS: Final = 200
"""Problems shown in the scan job's markdown table (the counts cover all of them)."""

INCOMPLETE_RETRY_BASE: Final = dt.timedelta(minutes=30)
"""First retry of an incomplete partition: long enough for a REST hiccup to pass."""
INCOMPLETE_RETRY_CAP: Final = dt.timedelta(days=1)
"""Longest wait between retries: a stream that cannot be filled today is asked again daily."""
NOT_REBUILT_DATASETS: Final = frozenset({HOT_SNAPSHOTS.name, LIVE_1M.name})
"""Datasets a minute-view build does not make (polled or collected live; ``live_1m`` is rebuilt
from its spool by ``bml live-rebuild``): reported, never rebuilt here."""
MAX_RESTATS_PER_TICK: Final = 200
"""Re-recorded file stats per tick (a hash and a ledger write each); the rest waits."""
CACHE_BUCKETS: Final = tuple(f"{i:02x}" for i in range(256))
"""First-level folders of the Vision cache (``sources.vision.VisionClient``)."""

TodayFn = Callable[[RestResource], dt.date]
ClockFn = Callable[[], dt.datetime]
ListingDates = Mapping[str, dt.date] | Callable[[Ledger], Mapping[str, dt.date]]
"""First trading day per symbol: fixed, or read per evaluation (e.g. from the ledger's symbol table)."""


def _listing(listing_dates: ListingDates | None, ledger: Ledger) -> Mapping[str, dt.date] | None:
    return listing_dates(ledger) if callable(listing_dates) else listing_dates


def incomplete_retry_at(problem: Problem) -> dt.datetime | None:
    """When an ``incomplete`` partition may be rebuilt again: ``committed_at`` plus
    ``INCOMPLETE_RETRY_BASE`` doubled per build in a row that ended incomplete, capped
    at ``INCOMPLETE_RETRY_CAP``. None for any other problem (due at once)."""
    if problem.kind != ProblemKind.INCOMPLETE or problem.committed_at is None:
        return None
    builds = max(problem.incomplete_builds, 1)
    # 2**(builds-1) overflows a timedelta long after the cap is reached: stop doubling there.
    wait = INCOMPLETE_RETRY_BASE * 2 ** min(builds - 1, 32)
    return problem.committed_at + min(wait, INCOMPLETE_RETRY_CAP)


def _due(problem: Problem, now: dt.datetime | None) -> bool:
    if problem.dataset in NOT_REBUILT_DATASETS:
        return False
    retry_at = incomplete_retry_at(problem)
    return now is None or retry_at is None or retry_at <= now


def repair_targets(report: ScanReport, *, now: dt.datetime | None = None) -> list[tuple[str, dt.date]]:
    """The (symbol, day) partitions to rebuild, oldest first: every problem of every dataset
    is repaired by rebuilding the partition through the minute view job (a ``provisional``
    day is promoted), except problems of ``NOT_REBUILT_DATASETS`` and, given ``now``,
    ``incomplete`` partitions whose backoff has not run out (``incomplete_retry_at``)."""
    due = {(p.symbol, p.day) for p in report.problems if _due(p, now)}
    return [sd for sd in report.partitions() if sd in due]


@dataclass
class Sweep:
    """What a sweep did: stray files ``removed``, those ``left`` (a live writer holds the
    partition's lock, or the cache file is fresh again), and files whose stat was re-recorded."""

    removed: list[Path] = field(default_factory=list)
    left: list[Path] = field(default_factory=list)
    restated: list[tuple[str, str, dt.date]] = field(default_factory=list)

    def summary(self) -> str:
        text = f"swept {len(self.removed)} stray temporary file(s)"
        if self.left:
            text += f", left {len(self.left)} (a live writer may own them)"
        if self.restated:
            text += f"; re-recorded the size and mtime of {len(self.restated)} intact file(s)"
        return text


def sweep(
    strays: Sequence[StrayFile],
    *,
    lake: Lake,
    now: dt.datetime,
    ledger: Ledger | None = None,
    restat: Sequence[tuple[str, str, dt.date]] = (),
    max_restats: int | None = None,
) -> Sweep:
    """Remove ``strays`` (a scan's) safely, and re-record the stat of the ``restat`` files.

    A lake temporary goes under its partition's lock (``commit.sweep_temp_files``: every
    temporary of that folder, as the next commit would); a busy lock leaves it. A Vision
    cache file goes only if it is still untouched for ``VISION_TEMP_STALE_S`` before ``now``.
    """
    done = Sweep()
    partitions: dict[tuple[str, str, dt.date], list[Path]] = {}
    for stray in strays:
        if stray.dataset is None or stray.symbol is None or stray.day is None:
            st = local_stat(stray.path)
            if st is None:
                continue
            if st.mtime_ns / 1e9 > now.timestamp() - VISION_TEMP_STALE_S:
                done.left.append(stray.path)  # written again since the scan: a live download
                continue
            stray.path.unlink(missing_ok=True)
            done.removed.append(stray.path)
        else:
            partitions.setdefault((stray.dataset, stray.symbol, stray.day), []).append(stray.path)
    for (dataset, symbol, day), paths in partitions.items():
        removed = sweep_temp_files(lake, DATASETS[dataset], symbol, day)
        if removed is None:
            done.left += paths
        else:
            done.removed += removed
    if ledger is not None:
        for dataset, symbol, day in list(restat)[:max_restats]:
            if refresh_file_stat(lake, ledger, DATASETS[dataset], symbol, day):
                done.restated.append((dataset, symbol, day))
    return done


def trim_vision_cache(cache_dir: Path, ledger: Ledger, *, max_bytes: int, now: dt.datetime) -> EvictionPlan:
    """Bring the Vision cache within ``max_bytes``: the zips ``lake.cache_policy`` names go,
    least recently used first (one used since the plan is kept). Returns the plan, its
    ``evict`` reduced to what was removed."""
    plan = eviction_plan(cached_zips(cache_dir), ledger, max_bytes=max_bytes, now=now.timestamp())
    plan.evict = [z for z in plan.evict if evict_cached(z, unused_since=z.last_used)]
    return plan


def trim_summary(plan: EvictionPlan) -> str:
    mib = 1 << 20
    return (
        f"Vision cache: evicted {len(plan.evict)} file(s), {plan.evict_bytes / mib:.1f} MiB; "
        f"{plan.bytes_after / mib:.1f} MiB of {plan.max_bytes / mib:.1f} MiB left"
        + (
            f" ({plan.needed_bytes / mib:.1f} MiB still needed by uncommitted or incomplete partitions)"
            if plan.bytes_after > plan.max_bytes
            else ""
        )
    )


def exchange_today(rest: RestResource) -> dt.date:
    """Today (UTC) by the exchange's clock, as the other sensors see it; the local
    clock when the exchange cannot be asked (the scan then judges by the host)."""
    try:
        return ExchangeNow(rest.client().server_time_ms(), 0).today
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


MAX_DAMAGED_KEYS: Final = 1000
"""Damaged-file requests a cursor remembers per sweep (the oldest are forgotten first)."""


@dataclass(frozen=True)
class RepairCursor:
    """Where the walk is: the window's first day, the last "day|symbol" handled inside it
    (or ""), the sweep number, and the run keys of damaged files already requested in
    this sweep (so a file a rebuild cannot mend is asked for once per sweep, like any
    other problem, and does not take every tick's runs)."""

    day: dt.date
    after: str = ""
    sweep: int = 0
    damaged: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str | None, start: dt.date) -> "RepairCursor":
        if not text:
            return cls(start)
        try:
            data = json.loads(text)
            return cls(
                dt.date.fromisoformat(data["day"]),
                str(data.get("after", "")),
                int(data.get("sweep", 0)),
                tuple(str(k) for k in data.get("damaged", ())),
            )
        except (ValueError, KeyError, TypeError):
            return cls(start)  # an unreadable cursor restarts the sweep

    def dump(self) -> str:
        data: dict[str, Any] = {"day": self.day.isoformat(), "after": self.after, "sweep": self.sweep}
        if self.damaged:
            data["damaged"] = list(self.damaged[-MAX_DAMAGED_KEYS:])
        return json.dumps(data, sort_keys=True)


def _partition_of(run_key: str) -> str:
    """The partition key inside a ``_run_key`` (``repair:{partition}:{kind}:{hash}``)."""
    return run_key.split(":")[1] if run_key.count(":") >= 3 else ""


def _run_key(key: str, problems: list[Problem], sweep: int) -> str:
    text = "\n".join([str(sweep), *(f"{p.dataset}:{p.kind}:{p.detail}" for p in problems)])
    return f"repair:{key}:{problems[0].kind}:{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def _in_flight(context: SensorEvaluationContext, keys: Iterable[str]) -> set[str]:
    """Partition keys among ``keys`` that have a queued or running run (any job)."""
    wanted = sorted(set(keys))
    if not wanted:
        return set()
    runs = context.instance.get_runs(RunsFilter(statuses=list(IN_FLIGHT_STATUSES), tags={PARTITION_NAME_TAG: wanted}))
    return {r.tags.get(PARTITION_NAME_TAG, "") for r in runs}


def window_buckets(start: dt.date, last: dt.date, window_start: dt.date, window_days: int) -> list[str]:
    """The Vision cache buckets a window sweeps: bucket ``b`` goes with the windows ``i`` of
    ``start..last`` where ``b ≡ i (mod windows)``, so every bucket is swept once per sweep
    and a tick walks about 1/windows of the cache (a small lake: all of it, every tick)."""
    windows = -(-((last - start).days + 1) // window_days)
    index = (window_start - start).days // window_days
    return [b for i, b in enumerate(CACHE_BUCKETS) if i % windows == index % windows]


def earliest_committed_day(ledger: Ledger) -> dt.date | None:
    """The first day of any committed minute view: where a cautious repair walk starts."""
    days = [r.day for r in ledger.partitions(dataset="minute", status="committed")]
    return min(days) if days else None


def _host_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def build_repair_sensor(
    symbols: tuple[str, ...],
    start: dt.date,
    *,
    job_name: str,
    max_runs_per_tick: int = 10,
    window_days: int = 31,
    listing_dates: ListingDates | None = None,
    today: TodayFn | None = None,
    clock: ClockFn | None = None,
    cache_max_bytes: int | None = None,
    cautious: bool = False,
) -> SensorDefinition:
    """The ``repair_sensor`` over ``symbols`` from ``start`` to yesterday (see the module doc).

    ``today`` (tests) replaces the exchange's clock; ``clock`` (tests) this host's, which
    judges the incomplete backoff (``committed_at`` is the host's too) and the age of
    Vision cache files; ``listing_dates`` (a mapping, or a callable of the ledger asked
    once per tick) spares the days before a symbol's listing; ``cache_max_bytes``: the Vision
    cache is trimmed to it each tick (``trim_vision_cache``; None: never). ``cautious`` (the real
    exchange and no explicit ``BML_START_DATE``): the walk starts at the earliest committed day,
    not at ``start``, and with nothing committed it requests nothing and says why.
    """
    if max_runs_per_tick < 1 or window_days < 1:
        raise ValueError("max_runs_per_tick and window_days must be at least 1")
    initial_start = start
    today_of = today or exchange_today
    now_of = clock or _host_now
    first = (
        "from the earliest day already committed (nothing until a partition is; set BML_START_DATE "
        f"to repair from a date: the default {start.isoformat()} against the real exchange would download years)"
        if cautious
        else f"from {start.isoformat()}"
    )

    @sensor(
        name="repair_sensor",
        job_name=job_name,
        minimum_interval_seconds=REPAIR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Walks the lake {window_days} days per tick, checking the ledger against the files, and rebuilds "
            f"partitions of any dataset that are missing, damaged, outdated or incomplete (at most "
            f"{max_runs_per_tick} per tick; incomplete ones with a backoff), {first} to yesterday, and sweeps "
            "stray temporary files"
            + (" and trims the Vision cache to BML_VISION_CACHE_MAX_BYTES." if cache_max_bytes is not None else ".")
        ),
    )
    def repair_sensor(
        context: SensorEvaluationContext,
        lake: LakeResource,
        ledger: LedgerResource,
        vision: VisionResource,
        rest: RestResource,
    ):
        start = initial_start
        if cautious:
            earliest = earliest_committed_day(ledger.ledger())
            if earliest is None:
                yield SkipReason(
                    "nothing committed yet and BML_START_DATE not set: not downloading from "
                    f"{initial_start.isoformat()}; set BML_START_DATE or materialize a partition first"
                )
                return
            start = max(initial_start, earliest)
        yesterday = today_of(rest) - dt.timedelta(days=1)
        if yesterday < start:
            context.update_cursor(RepairCursor(start).dump())
            yield SkipReason(f"no closed day since {start.isoformat()} yet")
            return
        cursor = RepairCursor.parse(context.cursor, start)
        if cursor.day < start or cursor.day > yesterday:
            cursor = RepairCursor(start, "", cursor.sweep + 1)
        window_start, after, sweep_no = cursor.day, cursor.after, cursor.sweep
        window_end = min(window_start + dt.timedelta(days=window_days - 1), yesterday)
        the_lake, the_ledger = lake.lake(), ledger.ledger()
        now = now_of()
        report = scan(
            the_lake,
            the_ledger,
            symbols,
            window_start,
            window_end,
            today=yesterday + dt.timedelta(days=1),
            deep=False,
            listing_dates=_listing(listing_dates, the_ledger),
        )
        cache_strays = outside_strays(
            stale_cache_files(
                Path(vision.cache_dir), now=now, buckets=window_buckets(start, yesterday, window_start, window_days)
            )
        )
        swept = sweep(
            [*report.strays, *cache_strays],
            lake=the_lake,
            now=now,
            ledger=the_ledger,
            restat=report.restat,
            max_restats=MAX_RESTATS_PER_TICK,
        )
        if swept.removed or swept.left or swept.restated:
            context.log.info(f"repair: {swept.summary()}")
        if cache_max_bytes is not None:
            trimmed = trim_vision_cache(Path(vision.cache_dir), the_ledger, max_bytes=cache_max_bytes, now=now)
            if trimmed.evict or trimmed.bytes_after > cache_max_bytes:
                context.log.info(f"repair: {trim_summary(trimmed)}")
        # Damaged files anywhere in the lake come first: the whole-lake pass is one lean
        # ledger read and a stat per file, so a deleted or truncated file is requested by
        # the next tick, not when the walk reaches its window.
        damaged: dict[str, list[Problem]] = {}
        for problem in damaged_files(
            the_lake, the_ledger, symbols=symbols, start=start, today=yesterday + dt.timedelta(days=1)
        ):
            if _due(problem, now):
                damaged.setdefault(f"{problem.day.isoformat()}|{problem.symbol}", []).append(problem)
        due = set(repair_targets(report, now=now))
        # A partition the file check asked for in this sweep is not asked for again by the walk.
        asked_damaged = list(cursor.damaged)
        rebuilt = {_partition_of(k) for k in asked_damaged} | {
            partition_key(ps[0].symbol, ps[0].day) for ps in damaged.values()
        }
        by_partition: dict[str, list[Problem]] = {}
        for problem in report.problems:  # sorted by (day, symbol, kind, dataset)
            position = f"{problem.day.isoformat()}|{problem.symbol}"
            if (
                position > after
                and (problem.symbol, problem.day) in due
                and partition_key(problem.symbol, problem.day) not in rebuilt
            ):
                by_partition.setdefault(position, []).append(problem)
        ordered = list(by_partition)
        busy = _in_flight(
            context, (partition_key(ps[0].symbol, ps[0].day) for ps in [*damaged.values(), *by_partition.values()])
        )

        def request(problems: list[Problem], found: str) -> RunRequest | None:
            key = partition_key(problems[0].symbol, problems[0].day)
            if key in busy:
                context.log.info(f"repair: {key} already has a queued or running run; left to it")
                return None
            return RunRequest(
                run_key=_run_key(key, problems, sweep_no),
                partition_key=key,
                tags={REPAIR_TAG: str(problems[0].kind), REPAIR_SWEEP_TAG: str(sweep_no), REPAIR_FOUND_TAG: found},
            )

        # Their own budget of runs per tick: damage somewhere never starves the walk.
        damaged_requested = 0
        for problems in damaged.values():
            if damaged_requested == max_runs_per_tick:
                break
            run = request(problems, FOUND_BY_FILE_CHECK)
            if run is not None and run.run_key not in asked_damaged:
                asked_damaged.append(run.run_key)
                yield run
                damaged_requested += 1
        requested = 0
        resume_after: str | None = None
        for i, position in enumerate(ordered):
            if requested == max_runs_per_tick:
                resume_after = ordered[i - 1] if i else after
                break
            run = request(by_partition[position], FOUND_BY_WALK)
            if run is not None:
                yield run
                requested += 1
        if resume_after is not None:
            # The cap was reached inside the window: the next tick goes on from there.
            context.update_cursor(RepairCursor(window_start, resume_after, sweep_no, tuple(asked_damaged)).dump())
        else:
            following = RepairCursor(window_end + dt.timedelta(days=1), "", sweep_no, tuple(asked_damaged))
            context.update_cursor(following.dump())
        if not requested and not damaged_requested:
            yield SkipReason(
                f"{window_start.isoformat()}..{window_end.isoformat()}: {report.checked} partitions checked, "
                f"{len(ordered)} to rebuild, none to request ({len(report.problems)} problems; {swept.summary()})"
            )

    return repair_sensor


# --------------------------------------------------------------------------- the scan job


class ScanConfig(Config):
    """``start``/``end``: ISO days, inclusive (default: the first partition day / yesterday);
    ``symbols``: default all; ``deep``: read the files (default) or only stat them;
    ``check_vision``: ask Vision whether REST-built days are published; ``today``:
    override the exchange's clock (ISO day); ``sweep``: remove the stray temporary files
    found (lake and Vision cache) and re-record the stat of intact files, as the repair
    sensor does (default: only report them)."""

    start: str | None = None
    end: str | None = None
    symbols: list[str] | None = None
    deep: bool = True
    check_vision: bool = True
    today: str | None = None
    sweep: bool = False


def problems_markdown(report: ScanReport, limit: int = MAX_TABLE_ROWS) -> str:
    lines = ["| symbol | date | kind | detail | minutes | dataset |", "| --- | --- | --- | --- | --- | --- |"]
    for p in report.problems[:limit]:
        minutes = ", ".join(p.minutes[:5]) + (" …" if len(p.minutes) > 5 else "")
        cells = [p.symbol, p.day.isoformat(), str(p.kind), p.detail, minutes, p.dataset]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if len(report.problems) > limit:
        lines.append(f"\n{len(report.problems) - limit} more problems not shown")
    if not report.problems:
        lines.append("| — | — | — | clean | — | — |")
    return "\n".join(lines)


def strays_markdown(strays: Sequence[StrayFile], limit: int = MAX_TABLE_ROWS) -> str:
    lines = ["| where | path | bytes | modified |", "| --- | --- | --- | --- |"]
    for f in strays[:limit]:
        lines.append(f"| {f.where} | {f.path} | {f.bytes} | {f.mtime:%Y-%m-%d %H:%M:%S}Z |")
    if len(strays) > limit:
        lines.append(f"\n{len(strays) - limit} more stray files not shown")
    if not strays:
        lines.append("| — | none | — | — |")
    return "\n".join(lines)


def scan_metadata(report: ScanReport, swept: Sweep | None = None) -> dict[str, Any]:
    targets = repair_targets(report)
    metadata: dict[str, Any] = {
        "clean": report.clean,
        "checked": report.checked,
        "files_checked": report.files,
        "problems": len(report.problems),
        "partitions_to_repair": len(targets),
        "by_kind": MetadataValue.json(report.by_kind()),
        "problem_table": MetadataValue.md(problems_markdown(report)),
        "stray_files": len(report.strays),
        "stray_table": MetadataValue.md(strays_markdown(report.strays)),
        "stale_file_stats": len(report.restat),
        "range": f"{report.start}..{report.end}",
        "deep": report.deep,
    }
    if swept is not None:
        metadata["swept"] = swept.summary()
    return metadata


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
        description="Consistency scan of every dataset: ledger against files, per symbol × day; stray files.",
    )
    def scan_lake(
        context: OpExecutionContext,
        config: ScanConfig,
        lake: LakeResource,
        ledger: LedgerResource,
        vision: VisionResource,
        rest: RestResource,
    ):
        now = dt.date.fromisoformat(config.today) if config.today else today_of(rest)
        first = dt.date.fromisoformat(config.start) if config.start else start
        last = dt.date.fromisoformat(config.end) if config.end else now - dt.timedelta(days=1)
        chosen = tuple(config.symbols) if config.symbols else symbols
        vision_published = None
        if config.check_vision:
            ask = vision_klines_published(vision.client())

            def vision_published(symbol: str, day: dt.date) -> bool:
                try:
                    return ask(symbol, day)
                except Exception as exc:  # Vision unreachable: report what can be judged
                    context.log.warning(f"cannot ask Vision about {symbol} {day}: {exc}")
                    return False

        the_lake, the_ledger = lake.lake(), ledger.ledger()
        report = scan(
            the_lake,
            the_ledger,
            chosen,
            first,
            last,
            today=now,
            vision_published=vision_published,
            deep=config.deep,
            listing_dates=_listing(listing_dates, the_ledger),
        )
        moment = _host_now()
        report.strays += outside_strays(stale_cache_files(Path(vision.cache_dir), now=moment))
        swept = None
        if config.sweep:
            swept = sweep(report.strays, lake=the_lake, now=moment, ledger=the_ledger, restat=report.restat)
            context.log.info(swept.summary())
            report.strays = [f for f in report.strays if f.path in swept.left]
        context.log.info(
            f"scan {first}..{last}, {len(chosen)} symbols: {report.checked} partitions checked, "
            f"{len(report.problems)} problems {report.by_kind()}, {len(report.strays)} stray files"
        )
        yield Output(None, metadata=scan_metadata(report, swept))

    @job(name=job_name, description="Scan the lake for missing, damaged or outdated partitions and report them.")
    def lake_scan_job():
        scan_lake()

    return lake_scan_job
