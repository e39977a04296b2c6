"""The backfill: scan a range, plan the rebuilds, run them through Dagster, scan again.

What belongs here: ``run_backfill``, the whole loop behind ``bml backfill-range``
and ``backfill-years``, as a stream of events the caller shows: check the range,
open the workspace, keep the symbols that traded in it, scan it chunk by chunk
(``scans.py``, every dataset), sweep the stray temporary files the scan found
(not in a dry run), plan (``plan.py``; a dry run ends with its estimate, ``estimate.py``), execute the plan with the real
``MINUTE_VIEW_JOB`` through the run helper (``runner.py``): ranged runs of one
symbol's consecutive days (``run_batches``), ``workers`` of them at once in worker
processes, each opening the same persistent Dagster instance; a ranged run that
fails is run again partition by partition, so a failed partition names its own
cause and does not stop the others. Then report to Dagster, as runless
materializations, the partitions the ledger has and Dagster does not (one state:
the UI shows what the lake holds), scan again, and end with what remains. Also
``execute_plan`` on its own and the summary's text.

What stays out: progress bars, printing and exit codes (``cli.py``), what counts
as a problem (``lake/scan.py``), which partitions repair what (``defs/repair.py``),
how a partition is built (the assets), and how a run is executed (``runner.py``).
Re-running a backfill is idempotent because the lake is: a rebuilt partition whose
bytes did not change is not rewritten (same content hash).
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import Any

from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.orchestration.console import console_logging
from bml_assets.orchestration.estimate import BackfillEstimate, estimate_plan, record_rate
from bml_assets.orchestration.plan import (
    DEFAULT_CHUNK_DAYS,
    BackfillPlan,
    Target,
    chunks,
    plan_backfill,
    run_batches,
    symbols_in_range,
    targets_from_reports,
    unplanned_problems,
)
from bml_assets.orchestration.runner import PartitionRunner, RunOutcome, check_worker_partitions, in_process
from bml_assets.orchestration.scans import cache_strays, check_range, remaining_problems, scan_span, sweep_strays
from bml_assets.orchestration.state import Workspace, open_workspace, utc_today
from bml_assets.sources.http import Traffic, traffic
from bml_assets.sources.vision import VisionClient

# Tag of the runs a backfill launches (visible in the UI).
BACKFILL_TAG = "bml/backfill"
# Days of one symbol per run (the assets' multi_run backfill policy uses the same number).
PARTITIONS_PER_RUN = 30
UNIVERSE_NOT_SYNCED = (
    "note: the symbol universe is not synced (`bml symbols sync`): listing dates are unknown, "
    "days before a listing are found out by the build and recorded as not listed"
)


@dataclass(frozen=True)
class PartitionOutcome:
    """One partition of the plan, built (or not): an event of the backfill."""

    symbol: str
    day: dt.date
    ok: bool
    status: str  # the ledger's status after the run, or "missing"
    rewritten: bool  # the file's bytes changed (written anew, or repaired)
    seconds: float
    error: str | None = None
    detail: str | None = field(default=None, compare=False)  # the whole error chain (``--verbose``)
    # Received over HTTP and REST weight spent by its run (a ranged run's, shared out by its days).
    bytes_received: int = 0
    rest_weight: int = 0


def _shares(total: int, parts: int) -> list[int]:
    """``total`` cut into ``parts`` whole shares that add up to it (the remainder on the first)."""
    each, rest = divmod(total, parts)
    return [each + rest] + [each] * (parts - 1) if parts else []


def _file_hash(lake: Lake, symbol: str, day: dt.date) -> str | None:
    try:
        return lake.sha256(MINUTE_VIEW.name, symbol, day)
    except OSError:
        return None


def _run_batch(runner: PartitionRunner, batch: Sequence[Target], tags: Mapping[str, str]) -> list[RunOutcome]:
    """Run one batch (one symbol's consecutive days): one ranged run when the runner can and
    the batch has several days; when that run fails (not interrupted), each day again on its
    own, so each failure names its own cause and the good days are built. One outcome per day."""
    run_range = getattr(runner, "run_range", None)
    ranged = None
    if len(batch) > 1 and run_range is not None:
        ranged = run_range(batch[0].symbol, batch[0].day, batch[-1].day, tags)
        if ranged.ok or ranged.interrupted:
            return [ranged] * len(batch)
    outcomes: list[RunOutcome] = []
    for target in batch:
        outcomes.append(runner.run(target.symbol, target.day, tags))
        if outcomes[-1].interrupted:
            break
    if ranged is not None:  # what the failed ranged run's steps downloaded counts too
        first = outcomes[0]
        outcomes[0] = replace(first, traffic_elsewhere=first.traffic_elsewhere + ranged.traffic_elsewhere)
    return outcomes


# The run helper of a worker process, opened once by ``_worker_start``.
_WORKER: dict[str, Any] = {}


def _exit_with_parent(parent: int, *, every_s: float = 0.25) -> None:
    """End this worker when the ``bml`` process that started it is gone (killed with SIGKILL,
    it cannot stop its pool): an orphan would wait on the pool's queue forever, or go on
    building what nobody asked for any more. Every commit is atomic, so leaving mid-run loses
    at most the partition being built; the next backfill builds it."""
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def _worker_start(settings: Settings, symbols: tuple[str, ...], first_day: dt.date) -> None:
    import threading
    import warnings

    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="exit-with-parent", daemon=True).start()
    console_logging()

    from bml_assets.definitions import MINUTE_VIEW_JOB

    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")
    stack = ExitStack()
    _WORKER["runner"] = stack.enter_context(
        # The parent swept the instance's orphaned runs once, before starting the workers.
        in_process(settings, MINUTE_VIEW_JOB, symbols=symbols, first_day=first_day, sweep=False)
    )
    _WORKER["stack"] = stack  # closed when the process ends


def _worker_run(batch: tuple[Target, ...], tags: dict[str, str]) -> tuple[list[RunOutcome], Traffic]:
    """A batch run in this worker, and the HTTP traffic it cost (counted by the one client here)."""
    before = traffic()
    try:
        return _run_batch(_WORKER["runner"], batch, tags), traffic() - before
    except KeyboardInterrupt:
        return [RunOutcome(False, 1, "interrupted", interrupted=True)], traffic() - before


def execute_plan(
    plan: BackfillPlan,
    settings: Settings,
    *,
    tag: str | None = None,
    runner: PartitionRunner | None = None,
    workers: int = 1,
    partitions_per_run: int = PARTITIONS_PER_RUN,
) -> Iterator[PartitionOutcome]:
    """Run ``MINUTE_VIEW_JOB`` for the planned partitions; yield each outcome as its run ends.

    The plan is cut into runs of one symbol's consecutive days (``run_batches``: at most
    ``partitions_per_run``; 1 is a run per partition). ``workers`` > 1 runs that many at
    once, each in a worker process of its own with the real definitions and the persistent
    instance (``runner`` must then be None); else they run here, through ``runner``
    (default: ``runner.in_process`` over the real definitions). A plan of one run runs here
    whatever ``workers`` says: a worker process would import everything and open the
    definitions and the instance a second time (2-5 s on 2 cores) with nothing to share.
    Before the workers start, the runs a killed command of this host left unfinished are
    released (``runner.release_orphans``). A failed partition is reported and the others
    run. An interrupt (Ctrl-C) stops the plan: the interrupted partitions are yielded as
    failed, then ``KeyboardInterrupt`` is raised. Committed partitions stay; a re-run goes on.
    """
    if not plan.partitions:
        return
    if workers > 1 and runner is not None:
        raise ValueError("a runner of this process cannot be shared by worker processes: pass workers=1")
    tags = {BACKFILL_TAG: tag or f"{plan.start.isoformat()}..{plan.end.isoformat()}"}
    batches = run_batches(plan.partitions, per_run=partitions_per_run, workers=workers)
    lake = Lake.from_settings(settings)
    with ExitStack() as stack:
        ledger = stack.enter_context(Ledger(settings.state_url))

        def outcomes_of(
            batch: Sequence[Target], before: list[str | None], began: float, runs: list[RunOutcome], spent: Traffic
        ):
            seconds = (time.monotonic() - began) / len(batch)  # a ranged run's time, shared by its days
            for run in {id(r): r for r in runs}.values():  # a ranged run's outcome repeats per day
                spent += run.traffic_elsewhere
            received = _shares(spent.bytes_received, len(batch))
            weights = _shares(spent.rest_weight, len(batch))
            for i, (target, hash_before, run) in enumerate(zip(batch, before, runs, strict=False)):
                after = ledger.get_partition(MINUTE_VIEW.name, target.symbol, target.day)
                yield PartitionOutcome(
                    symbol=target.symbol,
                    day=target.day,
                    ok=run.ok,
                    status=after.status if after is not None else "missing",
                    rewritten=_file_hash(lake, target.symbol, target.day) not in (hash_before, None),
                    seconds=seconds,
                    error="interrupted" if run.interrupted else run.error,
                    detail=run.detail,
                    bytes_received=received[i],
                    rest_weight=weights[i],
                )
            if any(run.interrupted for run in runs) or len(runs) < len(batch):
                raise KeyboardInterrupt

        def hashes(batch: Sequence[Target]) -> list[str | None]:
            return [_file_hash(lake, t.symbol, t.day) for t in batch]

        if workers <= 1 or len(batches) == 1:
            if runner is None:
                from bml_assets.definitions import MINUTE_VIEW_JOB

                runner = stack.enter_context(
                    in_process(settings, MINUTE_VIEW_JOB, symbols=plan.symbols, first_day=plan.start)
                )
            for batch in batches:
                before, began, sent = hashes(batch), time.monotonic(), traffic()
                runs = _run_batch(runner, batch, tags)
                yield from outcomes_of(batch, before, began, runs, traffic() - sent)
            return

        import multiprocessing

        from bml_assets.orchestration.runner import dagster_instance, release_orphans
        from bml_assets.sources.rest import REST_POOL

        # Created here, once: workers opening a new SQLite instance at the same moment both
        # stamp its schema version, and the instance cannot be opened again. The REST pool's
        # row too, when it has none: two runs creating it at once on PostgreSQL fail one run
        # (Dagster catches the unique violation, but PostgreSQL has already aborted the
        # transaction, so its fallback UPDATE fails too).
        with dagster_instance(settings) as instance:
            release_orphans(instance)
            storage = instance.event_log_storage
            if storage.supports_global_concurrency_limits and REST_POOL not in storage.get_concurrency_keys():
                storage.initialize_concurrency_limit_to_default(REST_POOL)
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(batches)),
            mp_context=multiprocessing.get_context("spawn"),  # no fork of a process holding Dagster's threads
            initializer=_worker_start,
            initargs=(settings, plan.symbols, plan.start),
        )
        stack.callback(pool.shutdown, wait=True, cancel_futures=True)
        pending: dict[Future[tuple[list[RunOutcome], Traffic]], tuple[tuple[Target, ...], list[str | None], float]] = {}
        for batch in batches:
            pending[pool.submit(_worker_run, batch, tags)] = (batch, hashes(batch), time.monotonic())
        try:
            while pending:
                done, _ = wait(pending, return_when="FIRST_COMPLETED")
                for future in sorted(done, key=lambda f: pending[f][2]):
                    batch, before, began = pending.pop(future)
                    try:
                        runs, spent = future.result()
                    except BrokenProcessPool as exc:
                        runs, spent = [RunOutcome(False, 0, f"the worker process died: {exc}")] * len(batch), Traffic()
                    yield from outcomes_of(batch, before, began, runs, spent)
        except KeyboardInterrupt:
            for future in pending:
                future.cancel()
            raise


def _asset_names() -> dict[str, str]:
    """Dataset name → the asset that builds it (the minute view's asset has a name of its own)."""
    from bml_assets.days.streams import STREAM_TABLES
    from bml_assets.defs.assets.minute_view import ASSET_NAME

    return {MINUTE_VIEW.name: ASSET_NAME, **{t.dataset.name: t.dataset.name for t in STREAM_TABLES}}


def report_unknown_partitions(settings: Settings, symbols: Sequence[str], start: dt.date, end: dt.date) -> int:
    """Report to the Dagster instance (``runner.dagster_instance``), as runless materializations,
    every committed partition of ``symbols`` in ``start..end`` that the ledger has and Dagster
    has no materialization of (built by an older backfill with another instance, or by the
    live collector's rebuild): the UI then shows the lake as it is. Returns how many."""
    from dagster import AssetKey, AssetMaterialization, MetadataValue

    from bml_assets.domain.partitions import partition_key
    from bml_assets.orchestration.runner import dagster_instance

    names = _asset_names()
    with Ledger(settings.state_url) as ledger:
        rows = [
            r
            for r in ledger.partitions(symbols=symbols, start=start, end=end, status="committed")
            if r.dataset in names
        ]
    if not rows:
        return 0
    reported = 0
    with dagster_instance(settings) as instance:
        known: dict[str, set[str]] = {}
        for row in rows:
            name = names[row.dataset]
            if name not in known:
                known[name] = set(instance.get_materialized_partitions(AssetKey(name)))
            key = partition_key(row.symbol, row.day)
            if key in known[name]:
                continue
            instance.report_runless_asset_event(
                AssetMaterialization(
                    asset_key=AssetKey(name),
                    partition=key,
                    description="committed in the lake's ledger (reported by bml backfill-range)",
                    metadata={
                        "path": MetadataValue.path(row.path or ""),
                        "dagster/row_count": row.row_count or 0,
                        "content_hash": row.content_hash or "",
                    },
                )
            )
            reported += 1
    return reported


def size_text(n: int) -> str:
    """Bytes for a person: B below a KiB, KiB below a MiB, else MiB with one decimal (a small
    backfill's downloads are not "0.0 MiB")."""
    if n < 1024:
        return f"{n} B"
    if n < 1023.5 * 1024:  # rounds to 1024 KiB beyond: say 1.0 MiB
        return f"{n / 1024:.0f} KiB"
    return f"{n / (1 << 20):.1f} MiB"


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
    received, weight = sum(o.bytes_received for o in outcomes), sum(o.rest_weight for o in outcomes)
    if outcomes:
        out.append(f"traffic: {size_text(received)} received, REST weight {weight}")
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


# --------------------------------------------------------------------------- the events of a backfill


@dataclass(frozen=True)
class Note:
    """A line for the user: the universe not synced, a symbol not listed in the range, a sweep."""

    text: str

    def lines(self) -> list[str]:
        return [self.text]


@dataclass(frozen=True)
class Scanning:
    """The range's scan begins: these chunks, in order (one ``Scanned`` follows per chunk)."""

    spans: tuple[tuple[dt.date, dt.date], ...]


@dataclass(frozen=True)
class Scanned:
    """One chunk of the range scanned."""

    span: tuple[dt.date, dt.date]


@dataclass(frozen=True)
class Planned:
    plan: BackfillPlan
    dry_run: bool

    def lines(self) -> list[str]:
        """The plan's text; a run leaves out the partition list (a dry run is for reading it)."""
        lines = self.plan.lines()
        return lines if self.dry_run else [line for line in lines if not line.startswith("  ")]


@dataclass(frozen=True)
class Estimated:
    """A dry run's estimate of the plan: download size, REST weight, time (``estimate.py``)."""

    estimate: BackfillEstimate

    def lines(self) -> list[str]:
        return self.estimate.lines()


@dataclass(frozen=True)
class Building:
    """The plan's partitions are about to be built (one ``PartitionOutcome`` follows per partition)."""

    plan: BackfillPlan


@dataclass(frozen=True)
class Interrupted:
    """The last event when the process was interrupted while building: what was committed stays."""

    done: int  # partitions built successfully before the interrupt
    planned: int


@dataclass(frozen=True)
class Finished:
    """The last event of a backfill that ran to its end."""

    plan: BackfillPlan | None  # None: no symbol traded in the range
    outcomes: tuple[PartitionOutcome, ...] = ()
    remaining: tuple[Any, ...] = ()  # problems of the final scan (a dry run: those the plan leaves)
    dry_run: bool = False

    @property
    def clean(self) -> bool:
        """Nothing left to do: every partition built and the final scan clean (a dry run: nothing planned)."""
        if self.plan is None:
            return True
        if self.dry_run:
            return not self.plan.partitions and not self.remaining
        return not self.remaining and all(o.ok for o in self.outcomes)

    def lines(self) -> list[str]:
        """The summary (none for a dry run, whose plan said it all, nor when there was nothing to scan)."""
        if self.plan is None or self.dry_run:
            return []
        out = summary_lines(self.outcomes, self.remaining)
        if self.plan.cap_reached:
            out.append(
                f"cap reached: {len(self.plan.left_out)} partition(s) were left for a later run (--max-missing-hours)"
            )
        return out


BackfillEvent = Note | Scanning | Scanned | Planned | Estimated | Building | PartitionOutcome | Interrupted | Finished


# --------------------------------------------------------------------------- the loop


def _scan_chunks(
    ws: Workspace, spans: Sequence[tuple[dt.date, dt.date]], symbols: Sequence[str]
) -> Generator[BackfillEvent, None, list[Any]]:
    """Scan ``spans`` one by one, an event after each; returns the reports."""
    yield Scanning(tuple(spans))
    reports = []
    for a, b in spans:
        reports.append(scan_span(ws, a, b, symbols=symbols))
        yield Scanned((a, b))
    return reports


def _build(
    plan: BackfillPlan,
    settings: Settings,
    runner: PartitionRunner | None,
    workers: int,
    partitions_per_run: int,
) -> Generator[BackfillEvent, None, list[PartitionOutcome] | None]:
    """Execute the plan, an event per partition; returns the outcomes, or None when interrupted."""
    outcomes: list[PartitionOutcome] = []
    if not plan.partitions:
        return outcomes
    yield Building(plan)
    try:
        for outcome in execute_plan(
            plan, settings, runner=runner, workers=workers, partitions_per_run=partitions_per_run
        ):
            outcomes.append(outcome)
            yield outcome
    except KeyboardInterrupt:
        yield Interrupted(sum(o.ok for o in outcomes), len(plan.partitions))
        return None
    return outcomes


def run_backfill(
    settings: Settings,
    start: dt.date,
    end: dt.date,
    *,
    symbols: Sequence[str] | None = None,
    max_missing_hours: int | None = None,
    chunk_days: int = DEFAULT_CHUNK_DAYS,
    dry_run: bool = False,
    today: dt.date | None = None,
    runner: PartitionRunner | None = None,
    workers: int | None = None,
    partitions_per_run: int = PARTITIONS_PER_RUN,
) -> Iterator[BackfillEvent]:
    """Scan ``start..end``, rebuild every partition the scan finds wrong or missing, scan again.

    ``symbols``: default ``BML_SYMBOLS``; ``today``: default this machine's UTC date;
    ``runner``: the run helper (default: the real definitions in-process);
    ``workers``: runs at once (default: this machine's cores; 1 with a ``runner``);
    ``partitions_per_run``: days of one symbol per run (1: a run per partition). Errors a
    user can fix (``BadRequest``: a reversed range, one after today, an unknown
    symbol; ``CommandError``) are raised before any work. The last event is
    ``Finished`` (``clean`` says whether anything remains), or ``Interrupted`` when the
    process was interrupted while building (earlier, the ``KeyboardInterrupt`` itself
    propagates).
    """
    today = today or utc_today()
    check_range(start, end, today, settings.start_date)
    if runner is None:
        check_worker_partitions(settings, symbols or settings.symbols, start)
    ws = open_workspace(settings, symbols, today=today)
    try:
        if not ws.universe:
            yield Note(UNIVERSE_NOT_SYNCED)
        scan_symbols, notes = symbols_in_range(ws, start, end)
        for note in notes:
            yield Note(note)
        if not scan_symbols:
            yield Finished(None, dry_run=dry_run)
            return
        reports = yield from _scan_chunks(ws, chunks(start, end, chunk_days), scan_symbols)
        if not dry_run:
            # Stray temporary files of killed writers: swept before building (always; see README).
            reports[0].strays += cache_strays(ws)
            swept = sweep_strays(ws, reports)
            if swept.removed or swept.left or swept.restated:
                yield Note(swept.summary())
        plan = plan_backfill(
            targets_from_reports(reports),
            start=start,
            end=end,
            symbols=scan_symbols,
            listings=ws.listings,
            max_missing_hours=max_missing_hours,
            chunk_days=chunk_days,
        )
        yield Planned(plan, dry_run)
        if dry_run:
            yield Estimated(
                estimate_plan(
                    plan,
                    ws.ledger,
                    VisionClient(settings.vision_base_url, settings.cache_dir),
                    lake=ws.lake,
                    today=today,
                    budget_per_min=settings.rest_weight_budget,
                )
            )
            yield Finished(plan, remaining=tuple(unplanned_problems(ws, reports, plan)), dry_run=True)
            return
        if workers is None:
            workers = 1 if runner is not None else (os.cpu_count() or 1)
        began = time.monotonic()
        outcomes = yield from _build(plan, settings, runner, workers, partitions_per_run)
        if outcomes is None:
            return
        if any(o.ok for o in outcomes):  # the rate a later dry run estimates its time by (not of failures)
            record_rate(ws.ledger, len(outcomes), time.monotonic() - began, workers)
        reported = report_unknown_partitions(settings, scan_symbols, start, end) if runner is None else 0
        if reported:
            yield Note(f"reported {reported} partition(s) the ledger has and Dagster did not to Dagster")
        final = scan_span(ws, start, end, symbols=scan_symbols)
        yield Finished(plan, tuple(outcomes), tuple(remaining_problems(ws, [final])))
    finally:
        ws.close()
