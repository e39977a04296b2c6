"""Schedules and sensors: keeping today current, and promoting REST-built days to Vision.

What belongs here: when runs are requested and with which deterministic run
keys and cursors. What stays out: what a run does (the assets) and how the
exchange is reached (``resources.py``, ``days/``).

No ``from __future__ import annotations``: Dagster reads the resource parameters'
annotations at definition time.

- ``hot_poll_sensor``: every few seconds, per symbol, asks the exchange's clock
  which minutes are closed plus the safety lag; when a minute past the symbol's
  watermark has become committable, requests a run of the partition that holds
  it (today's, or the day after the watermark when catching up). The run key is
  (symbol, day, committable-until minute), so a tick that repeats itself adds
  nothing, and the cursor remembers what was asked.
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
from collections.abc import Callable

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


IN_FLIGHT = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING, DagsterRunStatus.STARTED]


def _run_in_flight(context: SensorEvaluationContext, key: str) -> bool:
    runs = context.instance.get_runs(filters=RunsFilter(statuses=IN_FLIGHT, tags={"dagster/partition": key}), limit=1)
    return bool(runs)


def build_hot_poll_sensor(symbols: tuple[str, ...], *, job_name: str) -> SensorDefinition:
    @sensor(
        name="hot_poll_sensor",
        job_name=job_name,
        minimum_interval_seconds=HOT_POLL_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description="Keeps today's partitions current: one run per symbol when a new minute is committable.",
    )
    def hot_poll_sensor(
        context: SensorEvaluationContext, ledger: LedgerResource, rest: RestResource, build: BuildResource
    ):
        lag = build.safety_lag_minutes
        # What will be committable a launch-lead from now: the run waits for it.
        now = ExchangeNow(rest.client().server_time_ms() + HOT_LAUNCH_LEAD_MS, lag)
        cursor: dict[str, int] = json.loads(context.cursor) if context.cursor else {}
        requested = False
        for symbol, day in hot_targets(ledger.ledger(), symbols, now).items():
            if cursor.get(symbol) == now.closed_end_ms:
                continue  # already asked for everything committable now
            if _run_in_flight(context, partition_key(symbol, day)):
                continue  # one poll of a partition at a time; the next tick asks again
            until = ms_to_datetime(now.closed_end_ms).strftime("%Y-%m-%dT%H:%M")
            yield RunRequest(
                run_key=f"hot:{symbol}:{day.isoformat()}:{until}",
                partition_key=partition_key(symbol, day),
                tags={
                    BAND_TAG: HOT_BAND if day == now.today else "catch-up",
                    NOT_BEFORE_TAG: str(now.closed_end_ms + lag * MINUTE_MS),
                    # ahead of repairs and backfills in the run queue
                    "dagster/priority": str(HOT_RUN_PRIORITY),
                },
            )
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
