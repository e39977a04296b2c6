"""Schedules and sensors: keeping today current, and promoting REST-built days to Vision.

What belongs here: when runs are requested and with which deterministic run
keys and cursors. What stays out: what a run does (the assets) and how the
exchange is reached (``resources.py``, ``days/``).

No ``from __future__ import annotations``: Dagster reads the resource parameters'
annotations at definition time.

- ``hot_poll_sensor``: every few seconds asks the exchange's clock which minutes are
  closed plus the safety lag; for the symbols with a committable minute past their
  watermark, requests ONE run per day (today's, or the day after a lagging watermark
  when catching up) over the symbol range from the first to the last of them in the
  partition order (a multi-partition range: ``dagster/asset_partition_range_*`` tags;
  a symbol inside the range with nothing new is polled too, which commits nothing
  new). At 50 symbols that is one run a minute instead of fifty. The run key is (day,
  committable-until minute, range), so a tick that repeats itself adds nothing; the
  cursor remembers per symbol what was asked, and a day with a hot run in flight is
  asked again by the next tick after it ends.
- ``vision_promotion_sensor``: a bounded number of REST-built (provisional) days
  per tick, round-robin by cursor; when Vision has published the day's klines,
  requests a rebuild, keyed by the klines file's sha256.
- ``live_collector_sensor``: reads the ledger's ``live_1m`` rows of today and yesterday;
  reports each new commit of the live collector as a runless materialization of
  ``live_1m`` (its minutes, last minute, covered ranges), and the collector's state
  (running, or which symbols have had no minute for 3 minutes) as an observation
  whenever it changes. The cursor keeps the content hash seen per partition and the
  last state.
"""

import datetime as dt
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from dagster import (
    AssetMaterialization,
    AssetObservation,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from bml_assets.days.clock import ExchangeNow
from bml_assets.defs.assets.live import ASSET_KEY as LIVE_ASSET_KEY
from bml_assets.defs.assets.live import LiveDay, live_health
from bml_assets.defs.assets.streams import BAND_TAG, HOT_BAND, NOT_BEFORE_TAG, PROMOTION_TAG
from bml_assets.defs.resources import BuildResource, LedgerResource, RestResource, VisionResource
from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms, day_start, ms_to_datetime
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.provenance import provisional_streams
from bml_assets.domain.schema import LIVE_1M, MINUTE_VIEW
from bml_assets.domain.streams import DAILY_STREAMS, Stream
from bml_assets.lake.ledger import Ledger
from bml_assets.sources.vision import NotPublished, VisionClient

HOT_POLL_INTERVAL_S = 5
# Launch a hot run this early: a run process takes seconds to start, and the run
# waits (NOT_BEFORE_TAG) until the exchange's clock makes its minute committable.
HOT_LAUNCH_LEAD_MS = 15_000
HOT_RUN_PRIORITY = 10
PROMOTION_INTERVAL_S = 300
# Dagster's run tags of a partition range (what a single-run backfill sets; not exported publicly).
ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"
PROMOTIONS_PER_TICK = 5


def hot_targets(ledger: Ledger, symbols: tuple[str, ...], now: ExchangeNow) -> dict[str, dt.date]:
    """Per symbol, the day whose next minute after the watermark is committable now."""
    targets: dict[str, dt.date] = {}
    today_start = day_start(now.today)
    for symbol in symbols:
        watermark = ledger.get_watermark(symbol)
        following = today_start if watermark is None else watermark + dt.timedelta(minutes=1)
        if datetime_to_ms(following) < now.closed_end_ms:
            targets[symbol] = following.date()
    return targets


@dataclass(frozen=True)
class HotRun:
    """One hot-poll run: ``day`` for the symbols ``first`` … ``last`` of the partition order."""

    day: dt.date
    first: str
    last: str
    symbols: tuple[str, ...]  # every symbol the range covers, due or not

    @property
    def range_tags(self) -> dict[str, str]:
        return {
            ASSET_PARTITION_RANGE_START_TAG: partition_key(self.first, self.day),
            ASSET_PARTITION_RANGE_END_TAG: partition_key(self.last, self.day),
        }


def hot_runs(due: Mapping[str, dt.date], symbols: tuple[str, ...]) -> list[HotRun]:
    """One run per day over the due symbols: the range from the first to the last of them
    in ``symbols`` (the partition order; Dagster takes a range of a multi-partition as the
    product of its dimensions' ranges, so the symbols between are in it too)."""
    runs: list[HotRun] = []
    for day in sorted(set(due.values())):
        positions = [i for i, s in enumerate(symbols) if due.get(s) == day]
        covered = symbols[positions[0] : positions[-1] + 1]
        runs.append(HotRun(day, covered[0], covered[-1], covered))
    return runs


IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]
# On every hot-poll run: the day it polls (one run per day in flight at a time).
HOT_DAY_TAG = "bml/hot_day"


def _hot_run_in_flight(context: SensorEvaluationContext, job_name: str, day: dt.date) -> bool:
    runs = context.instance.get_runs(
        filters=RunsFilter(job_name=job_name, statuses=IN_FLIGHT, tags={HOT_DAY_TAG: day.isoformat()}), limit=1
    )
    return bool(runs)


def build_hot_poll_sensor(symbols: tuple[str, ...], *, job_name: str) -> SensorDefinition:
    @sensor(
        name="hot_poll_sensor",
        job_name=job_name,
        minimum_interval_seconds=HOT_POLL_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description="Keeps today's partitions current: one run for every symbol with a new committable minute.",
    )
    def hot_poll_sensor(
        context: SensorEvaluationContext, ledger: LedgerResource, rest: RestResource, build: BuildResource
    ):
        lag = build.safety_lag_minutes
        # What will be committable a launch-lead from now: the run waits for it.
        now = ExchangeNow(rest.client().server_time_ms() + HOT_LAUNCH_LEAD_MS, lag)
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        due = {
            symbol: day
            for symbol, day in hot_targets(ledger.ledger(), symbols, now).items()
            if cursor.get(symbol) != now.closed_end_ms  # not asked for everything committable now yet
        }
        until = ms_to_datetime(now.closed_end_ms).strftime("%Y-%m-%dT%H:%M")
        requested = False
        for run in hot_runs(due, symbols):
            if _hot_run_in_flight(context, job_name, run.day):
                continue  # one poll of a day at a time; the next tick asks again
            yield RunRequest(
                run_key=f"hot:{run.day.isoformat()}:{until}:{run.first}-{run.last}",
                tags={
                    **run.range_tags,
                    HOT_DAY_TAG: run.day.isoformat(),
                    BAND_TAG: HOT_BAND if run.day == now.today else "catch-up",
                    NOT_BEFORE_TAG: str(now.closed_end_ms + lag * MINUTE_MS),
                    # ahead of repairs and backfills in the run queue
                    "dagster/priority": str(HOT_RUN_PRIORITY),
                },
            )
            for symbol in run.symbols:
                if due.get(symbol) == run.day:
                    cursor[symbol] = now.closed_end_ms
            requested = True
        context.update_cursor(json.dumps(cursor, sort_keys=True))
        if not requested:
            yield SkipReason(f"nothing new committable before {ms_to_datetime(now.closed_end_ms).isoformat()}")

    return hot_poll_sensor


def _published_on_vision(vision: VisionClient, symbol: str, day: dt.date, streams: list[str]) -> dict[str, str]:
    """The sha256 of each provisional stream's Vision file that is published by now."""
    published: dict[str, str] = {}
    for name in streams:
        stream = Stream(name)
        url = (
            vision.monthly_url(stream, symbol, day.year, day.month)
            if stream not in DAILY_STREAMS
            else vision.daily_url(stream, symbol, day)
        )
        try:
            published[name] = vision.checksum(url)
        except NotPublished:
            continue
    return published


def build_vision_promotion_sensor(*, job_name: str) -> SensorDefinition:
    @sensor(
        name="vision_promotion_sensor",
        job_name=job_name,
        minimum_interval_seconds=PROMOTION_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description="Rebuilds REST-built (provisional) days from Vision once Vision publishes them.",
    )
    def vision_promotion_sensor(
        context: SensorEvaluationContext, ledger: LedgerResource, vision: VisionResource, rest: RestResource
    ):
        today = ExchangeNow(rest.client().server_time_ms(), 0).today
        candidates = [
            r
            for r in ledger.ledger().partitions(dataset=MINUTE_VIEW.name, status="committed")
            if r.day < today and provisional_streams(r.provenance)
        ]
        candidates.sort(key=lambda r: (r.day, r.symbol))
        after = context.cursor or ""
        ordered = [r for r in candidates if f"{r.day}|{r.symbol}" > after] + [
            r for r in candidates if f"{r.day}|{r.symbol}" <= after
        ]
        checked = 0
        for record in ordered[:PROMOTIONS_PER_TICK]:
            checked += 1
            context.update_cursor(f"{record.day}|{record.symbol}")
            published = _published_on_vision(
                vision.client(), record.symbol, record.day, provisional_streams(record.provenance)
            )
            if not published:
                continue
            yield RunRequest(
                run_key=f"promote:{partition_key(record.symbol, record.day)}:"
                + ",".join(f"{s}={sha[:16]}" for s, sha in sorted(published.items())),
                partition_key=partition_key(record.symbol, record.day),
                tags={PROMOTION_TAG: "vision"},
            )
        if not checked:
            yield SkipReason("no provisional (REST-built) days")

    return vision_promotion_sensor


LIVE_SENSOR_INTERVAL_S = 30


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def build_live_collector_sensor(
    symbols: tuple[str, ...], *, clock_ms: Callable[[], int] = _wall_clock_ms
) -> SensorDefinition:
    """``clock_ms``: the local clock the collector's last minutes are judged by (tests fix it)."""

    @sensor(
        name="live_collector_sensor",
        minimum_interval_seconds=LIVE_SENSOR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        asset_selection=[LIVE_ASSET_KEY],
        description="Reports the live collector's commits to live_1m, and whether it is running.",
    )
    def live_collector_sensor(context: SensorEvaluationContext, ledger: LedgerResource):
        now_ms = clock_ms()
        today = dt.datetime.fromtimestamp(now_ms / 1000, dt.UTC).date()
        records = ledger.ledger().partitions(LIVE_1M, symbols, today - dt.timedelta(days=1), today, status="committed")
        days = [LiveDay.of(r) for r in records]
        cursor: dict = json.loads(context.cursor) if context.cursor else {}
        seen: dict[str, str] = cursor.get("seen", {})
        events: list = [
            AssetMaterialization(LIVE_ASSET_KEY, partition=d.key, metadata=d.metadata())
            for d in days
            if d.content_hash is not None and seen.get(d.key) != d.content_hash
        ]
        health = live_health(days, symbols, now_ms)
        summary = health.summary()
        if summary != cursor.get("state"):
            events.append(
                AssetObservation(
                    LIVE_ASSET_KEY,
                    metadata={
                        "collector": "running" if health.running else "not running",
                        "state": summary,
                        "stale_symbols": sorted(health.stale),
                    },
                )
            )
        context.update_cursor(
            json.dumps(
                {"seen": {d.key: d.content_hash for d in days if d.content_hash}, "state": summary}, sort_keys=True
            )
        )
        if not events:
            return SkipReason(summary)
        return SensorResult(asset_events=events)

    return live_collector_sensor
