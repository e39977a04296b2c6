"""The hot and warm bands end to end, against the replay server with a market clock.

The clock is fixed and moved by the tests, so nothing depends on the wall clock.
REST and Vision serve one synthetic market, so the REST-built view of a day must
equal the Vision-built view of the same minutes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    ExecuteInProcessResult,
    PartitionKeyRange,
    RunRequest,
    build_sensor_context,
)

from bml_assets.days import rest_days
from bml_assets.definitions import HOT_JOB, MINUTE_VIEW_JOB, build_definitions
from bml_assets.defs.assets.streams import BAND_TAG, HOT_BAND, NOT_BEFORE_TAG
from bml_assets.defs.resources import Resources, resources_for
from bml_assets.defs.sensors import HOT_DAY_TAG
from bml_assets.demo import QUIET
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.settings import Settings
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .conftest import failure_text

# After bookTicker ended on Vision: book columns come only from the hot snapshots.
HOT_DAY = dt.date(2024, 6, 3)
T = dt.datetime(2024, 6, 3, tzinfo=dt.UTC)
DOWNTIME = ((600, 3),)  # 10:00-10:02


def at(hh: int, mm: int, ss: int = 0, day: dt.datetime = T) -> dt.datetime:
    return day + dt.timedelta(hours=hh, minutes=mm, seconds=ss)


@dataclass
class HotLake:
    root: Path
    server: ReplayServer
    clock: MarketClock
    settings: Settings
    instance: DagsterInstance
    market: SyntheticMarket

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.settings.state_url)

    @property
    def lake(self) -> Lake:
        return Lake.at(self.root)

    def resources(self) -> Resources:
        return resources_for(self.settings)

    @property
    def defs(self):
        return build_definitions(self.settings)

    def run(self, job: str, day: dt.date, tags: dict[str, str] | None = None) -> ExecuteInProcessResult:
        return self.defs.resolve_job_def(job).execute_in_process(
            partition_key=partition_key("BTCUSDT", day),
            instance=self.instance,
            raise_on_error=False,
            run_config=QUIET,
            tags=tags or {},
        )

    def poll(self, day: dt.date = HOT_DAY) -> ExecuteInProcessResult:
        return self.run(HOT_JOB, day, {BAND_TAG: HOT_BAND})

    def view(self, day: dt.date = HOT_DAY):
        path = self.root / "futures/um/minute/symbol=BTCUSDT" / f"date={day.isoformat()}" / "part.parquet"
        return pq.read_table(path)


def hot_settings(root: Path, base_url: str, **fields: object) -> Settings:
    """A lake at ``root`` served by the replay server at ``base_url`` (Vision and REST)."""
    return Settings(
        symbols=("BTCUSDT",),
        start_date=dt.date(2024, 1, 1),
        lake_root=root,
        vision_base_url=base_url,
        rest_base_url=base_url,
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture
def hot(tmp_path: Path) -> Iterator[HotLake]:
    market = SyntheticMarket(
        MarketConfig(seed=21, trades_per_day=6000, downtime={("BTCUSDT", dt.date(2024, 6, 4)): DOWNTIME})
    )
    clock = MarketClock.fixed(at(10, 30, 20))
    with ReplayServer(market=market, clock=clock) as server, DagsterInstance.ephemeral() as instance:
        root = tmp_path / "lake"
        settings = hot_settings(root, server.base_url, safety_lag_minutes=1)
        yield HotLake(root, server, clock, settings, instance, market)


def test_hot_poll_commits_closed_minutes_only_and_advances_the_watermark(hot: HotLake) -> None:
    # 10:30:20 with a 1-minute lag: 10:28 is the last minute closed for a full minute.
    assert hot.poll().success
    view = hot.view()
    assert view.num_rows == 629  # 00:00 … 10:28
    assert view.column("timestamp")[-1].as_py() == at(10, 28)
    assert hot.ledger.get_watermark("BTCUSDT") == at(10, 28)
    # The forming minute (10:30) and the one inside the lag (10:29) are not there.
    hot.clock.set(at(10, 35, 5))
    assert hot.poll().success
    later = hot.view()
    assert later.num_rows == 634 and hot.ledger.get_watermark("BTCUSDT") == at(10, 33)
    assert later.slice(0, 629).equals(view)  # committed minutes never change


def test_rest_built_minutes_equal_the_vision_built_day(hot: HotLake, tmp_path: Path) -> None:
    hot.clock.set(at(12, 0, 30))
    assert hot.poll().success
    rest_view = hot.view()
    assert rest_view.num_rows == 719
    # Two days later Vision has published the day: build it from Vision in another lake.
    hot.clock.set(at(0, 0, 0, day=T + dt.timedelta(days=2)))
    other = HotLake(
        tmp_path / "vision_lake",
        hot.server,
        hot.clock,
        hot_settings(tmp_path / "vision_lake", hot.server.base_url),
        hot.instance,
        hot.market,
    )
    # as the sensors' runs do, follow the exchange's clock (REST stands in for the monthly funding file)
    assert other.run(MINUTE_VIEW_JOB, HOT_DAY, {BAND_TAG: "catch-up"}).success
    vision_view = other.view().slice(0, 719)
    ledger = other.ledger.get_partition("minute", "BTCUSDT", HOT_DAY)
    assert ledger is not None and ledger.provenance["klines"]["status"] == "vision"
    same = [
        "open", "high", "low", "close", "volume_btc", "volume_usdt", "trade_count", "vwap_1m",
        "taker_buy_vol_btc", "taker_buy_vol_usdt", "net_taker_vol_btc", "count_buy_trades", "count_sell_trades",
        "vol_buy_whale_btc", "vol_sell_whale_btc", "vol_buy_retail_btc", "vol_sell_retail_btc", "whale_trade_count",
        "realized_vol_1m", "max_trade_size_btc", "transact_time", "mark_price_open", "mark_price_close",
        "index_price_open", "index_price_close", "premium_index", "funding_rate", "next_funding_time",
        "oi_value_usdt", "top_trader_ls_ratio_acct", "global_ls_ratio_acct",
    ]  # fmt: skip
    for column in same:
        assert rest_view.column(column).equals(vision_view.column(column)), column
    # Hot-only fields: one poll, in the minute it was taken (12:00, not committed yet) — none in the view.
    assert rest_view.column("predicted_funding").null_count == 719


def test_each_poll_lands_its_snapshot_in_its_own_minute(hot: HotLake) -> None:
    assert hot.poll().success  # snapshot at 10:30:20 → minute 10:30, not committed yet
    hot.clock.set(at(10, 33, 0))
    assert hot.poll().success  # 10:33:00 → minute 10:33 (committable once 10:35 has passed)
    hot.clock.set(at(10, 36, 30))
    assert hot.poll().success
    view = hot.view().to_pandas().set_index("timestamp")
    predicted = view["predicted_funding"].dropna()
    assert [t.strftime("%H:%M") for t in predicted.index] == ["10:30", "10:33"]
    # Book columns from the snapshots: 10:30 and 10:33 have their own; 10:31 is filled from 10:30's.
    assert not np.isnan(view.loc[at(10, 30), "micro_price_close"])
    assert np.isnan(view.loc[at(10, 31), "micro_price_close"])
    assert view.loc[at(10, 31), "avg_spread_usdt"] == view.loc[at(10, 30), "avg_spread_usdt"]
    # Before the first poll there is no book at all: nothing is stamped backwards.
    assert np.isnan(view.loc[at(10, 29), "avg_spread_usdt"])


def test_missing_minutes_hold_the_watermark_then_become_source_gaps(hot: HotLake) -> None:
    day = HOT_DAY + dt.timedelta(days=1)
    day_t = T + dt.timedelta(days=1)
    hot.clock.set(at(10, 3, 30, day=day_t))
    assert hot.poll(day).success
    assert hot.ledger.get_watermark("BTCUSDT") is None or hot.ledger.get_watermark("BTCUSDT") == at(9, 59, day=day_t)
    assert hot.view(day).column("timestamp")[-1].as_py() == at(9, 59, day=day_t)
    hot.clock.set(at(10, 5, 30, day=day_t))  # 10:03 arrives: 10:00-10:02 are holes before it
    assert hot.poll(day).success
    # 10:00 has had its 3 minutes (a source gap now); 10:01 has not: the watermark waits there.
    assert hot.ledger.get_watermark("BTCUSDT") == at(10, 0, day=day_t)
    # 10:06:10: 10:00 and 10:01 are past their re-query minutes; 10:02 is asked for again.
    hot.clock.set(at(10, 6, 10, day=day_t))
    hot.server.clear_rest_log()
    assert hot.poll(day).success
    starts = sorted(int(e.params["startTime"]) for e in hot.server.rest_log if e.path == "/fapi/v1/klines")
    assert starts == [int(at(10, 2, day=day_t).timestamp() * 1000)]
    hot.clock.set(at(10, 8, 0, day=day_t))
    assert hot.poll(day).success
    view = hot.view(day)
    assert view.column("timestamp")[-1].as_py() == at(10, 6, day=day_t)
    assert view.num_rows == 607 - 3
    record = hot.ledger.get_partition("minute", "BTCUSDT", day)
    assert record is not None
    assert [g["minute"][11:16] for g in record.source_gaps] == ["10:00", "10:01", "10:02"]


def test_a_crash_mid_commit_loses_and_doubles_nothing(hot: HotLake, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hot.poll().success
    hot.clock.set(at(10, 40, 10))
    real_replace = os.replace

    def crash_on_minute_view(src, dst):
        if "/minute/" in str(dst):
            raise OSError("simulated crash while committing the minute view")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_on_minute_view)
    assert not hot.poll().success  # stream tables moved on, the minute view did not
    assert hot.view().num_rows == 629 and hot.ledger.get_watermark("BTCUSDT") == at(10, 28)
    monkeypatch.setattr(os, "replace", real_replace)
    assert hot.poll().success
    view = hot.view()
    assert view.num_rows == 639 and hot.ledger.get_watermark("BTCUSDT") == at(10, 38)
    trades = hot.market.agg_trades("BTCUSDT", HOT_DAY).to_pandas()
    start = int(T.timestamp() * 1000)
    closed = trades[trades["transact_time"] < start + 639 * 60_000]
    # Every trade counted once: the day's buy+sell counts equal the market's individual trades.
    total = int(view.column("count_buy_trades").to_numpy().sum() + view.column("count_sell_trades").to_numpy().sum())
    assert total == int((closed["last_trade_id"] - closed["first_trade_id"] + 1).sum())


def test_a_past_day_from_rest_never_uses_the_current_snapshot(hot: HotLake) -> None:
    past = HOT_DAY - dt.timedelta(days=1)
    hot.clock.set(at(18, 0, 0))  # the exchange is at 18:00 on HOT_DAY
    # Vision has not published the past day yet: it is built from REST (the warm band).
    hot.server.faults.add(FaultRule("missing", f"{past.isoformat()}.zip"))
    assert hot.run(MINUTE_VIEW_JOB, past, {BAND_TAG: "catch-up"}).success
    view = hot.view(past).to_pandas()
    record = hot.ledger.get_partition("minute", "BTCUSDT", past)
    assert record is not None and record.provenance["klines"]["status"] == "rest"
    assert view.shape == (1440, 58)
    assert view["predicted_funding"].isna().all()  # never polled live
    assert view["avg_spread_usdt"].isna().all() and view["micro_price_close"].isna().all()
    # Open interest at 23:59 is the 23:55 snapshot of that day, not today's 18:00 value.
    snap = hot.market.metrics("BTCUSDT", past).to_pandas().set_index("snapshot_time")
    day_start = int(dt.datetime.combine(past, dt.time(), dt.UTC).timestamp() * 1000)
    assert view["oi_contracts"].iloc[-1] == snap.loc[day_start + 1435 * 60_000, "sum_open_interest"]
    now_oi = hot.resources().rest.client().open_interest("BTCUSDT")["openInterest"]
    assert float(now_oi) not in set(view["oi_contracts"].dropna())


def test_a_rest_built_day_is_promoted_when_vision_publishes_it(hot: HotLake) -> None:
    past = HOT_DAY - dt.timedelta(days=1)
    hot.clock.set(at(18, 0, 0))
    hot.server.faults.add(FaultRule("missing", f"{past.isoformat()}.zip"))
    assert hot.run(MINUTE_VIEW_JOB, past, {BAND_TAG: "catch-up"}).success
    rest_hash = hot.ledger.get_partition("minute", "BTCUSDT", past).content_hash  # type: ignore[union-attr]
    hot.server.faults.clear()  # Vision now publishes the day
    defs = hot.defs
    sensor = defs.resolve_sensor_def("vision_promotion_sensor")
    with build_sensor_context(instance=hot.instance, resources=hot.resources().by_key(), definitions=defs) as context:
        requests = list(sensor(context))
    run_requests = [r for r in requests if hasattr(r, "partition_key")]
    assert [r.partition_key for r in run_requests] == [partition_key("BTCUSDT", past)]
    promoted = hot.run(MINUTE_VIEW_JOB, past, dict(run_requests[0].tags))
    assert promoted.success
    checks = {e.check_name: e for e in promoted.get_asset_check_evaluations()}
    assert checks["promotion_matches_rest"].partition == partition_key("BTCUSDT", past)
    assert checks["promotion_matches_rest"].passed
    assert checks["promotion_matches_rest"].metadata["facts"].value["minutes_compared"] == 1440
    record = hot.ledger.get_partition("minute", "BTCUSDT", past)
    assert record is not None
    assert record.provenance["klines"]["status"] == "vision"
    assert "promoted from REST to Vision: aggTrades, indexPriceKlines, klines" in (record.message or "")
    # REST and Vision serve one market: the promoted file is byte-identical, only its sources changed.
    assert record.content_hash == rest_hash


def test_a_hot_polled_day_is_promoted_and_its_snapshots_are_not_provisional(hot: HotLake) -> None:
    from bml_assets.domain.provenance import provisional_streams

    assert hot.poll().success
    record = hot.ledger.get_partition("minute", "BTCUSDT", HOT_DAY)
    assert record is not None and record.provenance["snapshots"]["status"] == "polled"
    assert "snapshots" not in provisional_streams(record.provenance)
    hot.clock.set(at(1, 0, 0, day=T + dt.timedelta(days=2)))  # Vision now has HOT_DAY
    defs = hot.defs
    sensor = defs.resolve_sensor_def("vision_promotion_sensor")
    with build_sensor_context(instance=hot.instance, resources=hot.resources().by_key(), definitions=defs) as context:
        requests = [r for r in sensor(context) if hasattr(r, "partition_key")]
    assert [r.partition_key for r in requests] == [partition_key("BTCUSDT", HOT_DAY)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (FaultRule("malformed_json", "/fapi/v1/klines"), "/fapi/v1/klines"),
        (FaultRule("ban_418", "/fapi/v1/aggTrades", retry_after_s=600), "banned"),
    ],
    ids=["malformed_json", "ban_418_mid_day"],
)
def test_bad_rest_answers_fail_clearly_and_keep_committed_minutes(hot: HotLake, rule: FaultRule, expected: str) -> None:
    assert hot.poll().success
    before = hot.view()
    hot.clock.set(at(10, 40, 10))
    hot.server.faults.add(rule)
    result = hot.poll()
    assert not result.success
    assert expected in failure_text(result), failure_text(result)
    assert hot.view().equals(before)
    assert hot.ledger.get_watermark("BTCUSDT") == at(10, 28)


def test_a_ban_stops_the_next_run_before_it_sends_anything(hot: HotLake) -> None:
    assert hot.poll().success
    hot.server.faults.add(FaultRule("ban_418", "/fapi/v1/klines", times=1, retry_after_s=600))
    hot.clock.set(at(10, 40, 10))
    assert not hot.poll().success
    sent = len(hot.server.rest_log)
    again = hot.poll()  # a new run (another process in production): the ban is in the state database
    assert not again.success
    assert "banned until" in failure_text(again)
    assert len(hot.server.rest_log) == sent  # nothing reached the exchange


def _evaluate_hot_sensor(hot: HotLake, settings: Settings, cursor: str | None) -> tuple[list[RunRequest], str | None]:
    defs = build_definitions(settings)
    sensor = defs.resolve_sensor_def("hot_poll_sensor")
    with build_sensor_context(
        instance=hot.instance, resources=resources_for(settings).by_key(), definitions=defs, cursor=cursor
    ) as context:
        out = list(sensor(context))
        return [r for r in out if isinstance(r, RunRequest)], context.cursor


def test_hot_poll_sensor_requests_each_committable_minute_once(hot: HotLake) -> None:
    requests, cursor = _evaluate_hot_sensor(hot, hot.settings, None)
    assert [(r.run_key, r.partition_key_range, r.tags[BAND_TAG]) for r in requests] == [
        (
            "hot:2024-06-03:2024-06-03T10:29:BTCUSDT-BTCUSDT",
            PartitionKeyRange("2024-06-03|BTCUSDT", "2024-06-03|BTCUSDT"),
            "hot",
        )
    ]
    # Launched early; the run waits until 10:29 + 60 s + 1 min lag by the exchange's clock.
    assert requests[0].tags[NOT_BEFORE_TAG] == str(int(at(10, 30).timestamp() * 1000))
    assert json.loads(cursor or "") == {"BTCUSDT": int(at(10, 29).timestamp() * 1000)}
    assert _evaluate_hot_sensor(hot, hot.settings, cursor)[0] == []  # same tick again: nothing new
    hot.clock.set(at(10, 31, 5))
    requests, _ = _evaluate_hot_sensor(hot, hot.settings, cursor)
    assert [r.run_key for r in requests] == ["hot:2024-06-03:2024-06-03T10:30:BTCUSDT-BTCUSDT"]


def test_one_hot_run_polls_every_due_symbol(hot: HotLake) -> None:
    settings = dataclasses.replace(hot.settings, symbols=("BTCUSDT", "ETHUSDT"))
    requests, cursor = _evaluate_hot_sensor(hot, settings, None)
    (request,) = requests  # one run for both symbols, not one per symbol
    assert request.run_key == "hot:2024-06-03:2024-06-03T10:29:BTCUSDT-ETHUSDT"
    assert request.partition_key_range == PartitionKeyRange("2024-06-03|BTCUSDT", "2024-06-03|ETHUSDT")
    assert request.tags[HOT_DAY_TAG] == "2024-06-03"
    assert request.tags["dagster/priority"] == "10"
    assert json.loads(cursor or "") == dict.fromkeys(("BTCUSDT", "ETHUSDT"), int(at(10, 29).timestamp() * 1000))
    # The run the sensor asked for, with its tags: both symbols committed through 10:28.
    result = (
        build_definitions(settings)
        .resolve_job_def(HOT_JOB)
        .execute_in_process(instance=hot.instance, raise_on_error=False, run_config=QUIET, tags=request.tags)
    )
    assert result.success, failure_text(result)
    assert hot.ledger.get_watermark("BTCUSDT") == at(10, 28)
    assert hot.ledger.get_watermark("ETHUSDT") == at(10, 28)
    # A minute later: one run again, for both.
    hot.clock.set(at(10, 31, 5))
    requests, _ = _evaluate_hot_sensor(hot, settings, cursor)
    assert [r.run_key for r in requests] == ["hot:2024-06-03:2024-06-03T10:30:BTCUSDT-ETHUSDT"]


def test_a_day_with_a_hot_run_in_flight_is_asked_again_after_it(hot: HotLake) -> None:
    settings = dataclasses.replace(hot.settings, symbols=("BTCUSDT", "ETHUSDT"))
    hot.instance.add_run(
        DagsterRun(
            job_name=HOT_JOB, run_id="in-flight", status=DagsterRunStatus.STARTED, tags={HOT_DAY_TAG: "2024-06-03"}
        )
    )
    requests, cursor = _evaluate_hot_sensor(hot, settings, None)
    assert requests == []
    assert json.loads(cursor or "") == {}  # nothing marked as asked: the next tick asks
    hot.instance.report_run_canceled(hot.instance.get_run_by_id("in-flight"))
    requests, _ = _evaluate_hot_sensor(hot, settings, cursor)
    assert [r.run_key for r in requests] == ["hot:2024-06-03:2024-06-03T10:29:BTCUSDT-ETHUSDT"]


def test_an_early_launched_run_waits_for_the_exchange_clock(hot: HotLake) -> None:
    import threading

    hot.clock.set(at(10, 29, 58))  # two seconds before 10:28 becomes committable (10:28 + 60 s + 1 min)
    timer = threading.Timer(1.0, lambda: hot.clock.set(at(10, 30, 0)))
    timer.start()
    try:
        result = hot.run(
            HOT_JOB, HOT_DAY, {BAND_TAG: HOT_BAND, NOT_BEFORE_TAG: str(int(at(10, 30).timestamp() * 1000))}
        )
    finally:
        timer.cancel()
    assert result.success
    # Had it not waited, 10:27 would have been the last committable minute.
    assert hot.ledger.get_watermark("BTCUSDT") == at(10, 28)


def test_a_damaged_stream_file_of_the_live_day_is_fetched_again_by_the_next_poll(hot: HotLake) -> None:
    from bml_assets.lake.scan import scan

    hot.clock.set(at(12, 0, 30))
    assert hot.poll().success
    folder = hot.root / "futures/um"
    klines = folder / "klines_1m/symbol=BTCUSDT/date=2024-06-03/part.parquet"
    trade_flow = folder / "trade_flow_1m/symbol=BTCUSDT/date=2024-06-03/part.parquet"
    before = pq.read_table(klines)
    with open(klines, "r+b") as f:
        f.truncate(5000)
    trade_flow.unlink()
    found = scan(hot.lake, hot.ledger, ["BTCUSDT"], HOT_DAY, HOT_DAY, today=HOT_DAY, deep=False)
    assert [(p.dataset, str(p.kind)) for p in found.problems] == [
        ("trade_flow_1m", "file_missing"),
        ("klines_1m", "unreadable"),
    ]
    # The damaged files are no cursor: the poll fetches the day again and replaces them.
    hot.clock.set(at(12, 5, 30))
    result = hot.poll()
    assert result.success, failure_text(result)
    after = pq.read_table(klines)
    assert after.num_rows > before.num_rows and after.slice(0, before.num_rows).equals(before)
    assert trade_flow.is_file()
    assert scan(hot.lake, hot.ledger, ["BTCUSDT"], HOT_DAY, HOT_DAY, today=HOT_DAY).clean


def _spoiled(build, column: str, value: float, time_column: str, after: dt.datetime):  # type: ignore[no-untyped-def]
    """``build`` (a REST day builder) whose rows after ``after`` get ``value`` in ``column``."""

    def spoil(*args, **kwargs):  # type: ignore[no-untyped-def]
        data = build(*args, **kwargs)
        table = data.table
        times = table.column(time_column).to_pylist()
        values = [value if t > after else v for t, v in zip(times, table.column(column).to_pylist(), strict=True)]
        i = table.schema.get_field_index(column)
        return dataclasses.replace(data, table=table.set_column(i, column, pa.array(values, pa.float64())))

    return spoil


@pytest.mark.parametrize(
    ("builder", "dataset", "column", "value", "time_column", "after", "refusal"),
    [
        (
            "kline_day",
            "klines_1m",
            "high",
            float("inf"),
            "timestamp",
            at(10, 28),  # the last committed minute
            "klines_1m BTCUSDT 2024-06-03: not committed — blocking rule 'prices_positive_finite' failed "
            "(1 failure): high = inf at minute 2024-06-03T10:29:00+00:00",
        ),
        (
            "hot_snapshot_day",
            "hot_snapshots",
            "mark_price",
            0.0,
            "observation_time",
            at(10, 30, 20),  # the last committed poll
            "hot_snapshots BTCUSDT 2024-06-03: not committed — blocking rule 'prices_positive_finite' failed "
            "(1 failure): mark_price = 0.0 at minute 2024-06-03T10:31:20",
        ),
    ],
    ids=["klines_new_minute", "hot_snapshot_new_poll"],
)
def test_a_bad_value_in_a_new_hot_minute_is_refused_and_nothing_moves(
    hot: HotLake,
    monkeypatch: pytest.MonkeyPatch,
    builder: str,
    dataset: str,
    column: str,
    value: float,
    time_column: str,
    after: dt.datetime,
    refusal: str,
) -> None:
    """An incremental hot commit is judged as strictly as a whole day: a bad value in the
    minute it adds is refused, named (table, rule, value, minute), and neither that table,
    nor the minute view, nor the watermark moves."""
    assert hot.poll().success  # 00:00 … 10:28, judged and committed
    ledger = hot.ledger
    rows = {name: ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in (dataset, "minute")}
    files = {name: hot.lake.sha256(name, "BTCUSDT", HOT_DAY) for name in rows}
    assert all(r is not None and r.content_hash == files[name] for name, r in rows.items())
    monkeypatch.setattr(rest_days, builder, _spoiled(getattr(rest_days, builder), column, value, time_column, after))
    hot.clock.set(at(10, 31, 20))
    result = hot.poll()
    assert not result.success
    assert refusal in failure_text(result), failure_text(result)
    assert {name: ledger.get_partition(name, "BTCUSDT", HOT_DAY) for name in rows} == rows
    assert {name: hot.lake.sha256(name, "BTCUSDT", HOT_DAY) for name in rows} == files
    assert ledger.get_watermark("BTCUSDT") == at(10, 28)
    assert hot.view().num_rows == 629
