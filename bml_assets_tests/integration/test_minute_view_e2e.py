"""The cold path end to end: replay server → Vision client → assets → atomic lake → ledger → checks."""

from __future__ import annotations

import datetime as dt
import hashlib
import math

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from bml_assets import quality
from bml_assets.days import minute_view
from bml_assets.domain.schema import MINUTE_SCHEMA, MINUTE_VIEW

from .conftest import DAY, DOWNTIME_DAY, LISTING, Lake


def _checks(result) -> dict[str, bool]:
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_partition_lands_at_spec_path_with_1440_rows_and_passing_checks(lake: Lake) -> None:
    result = lake.materialize("BTCUSDT", DAY)
    assert result.success
    path = lake.minute_path("BTCUSDT", DAY)
    table = pq.read_table(path)
    assert (table.num_rows, table.num_columns) == (1440, 58)
    assert table.schema.remove_metadata().equals(MINUTE_SCHEMA), table.schema
    record = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert record is not None and record.status == "committed"
    assert record.content_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record.row_count == 1440
    checks = _checks(result)
    # 17 blocking rules (4 structural, 13 value domains), 10 reported, the lake scan
    assert len(checks) == 28 and all(checks.values()), checks
    # Every stream names its source file and hash.
    assert record.provenance["klines"]["status"] == "vision"
    assert len(record.provenance["klines"]["files"][0]["sha256"]) == 64
    assert record.provenance["fundingRate"]["status"] == "vision"
    assert len(record.provenance["fundingRate"]["files"]) == 2  # the 1st: February seeds it


def test_each_table_of_a_build_is_judged_by_its_blocking_rules_once(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The minute view's asset judges its table (with its checks) and the commit trusts that
    verdict; every stream table is judged by its commit."""
    judged: list[str] = []
    original = quality.judge_blocking

    def counted(table, evidence, dataset=MINUTE_VIEW):  # type: ignore[no-untyped-def]
        judged.append(dataset.name)
        return original(table, evidence, dataset)

    monkeypatch.setattr(quality, "judge_blocking", counted)
    monkeypatch.setattr(minute_view, "judge_blocking", counted)
    assert lake.materialize("BTCUSDT", DAY).success
    committed = {r.dataset for r in lake.ledger.partitions(status="committed")}
    assert MINUTE_VIEW.name in committed and len(committed) > 1
    assert sorted(judged) == sorted(committed)


def test_rematerializing_gives_the_same_content_hash(lake: Lake) -> None:
    assert lake.materialize("BTCUSDT", DAY).success
    first = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    before = lake.minute_path("BTCUSDT", DAY).read_bytes()
    assert lake.materialize("BTCUSDT", DAY).success
    second = lake.ledger.get_partition("minute", "BTCUSDT", DAY)
    assert first is not None and second is not None
    assert second.content_hash == first.content_hash
    assert lake.minute_path("BTCUSDT", DAY).read_bytes() == before


def test_values_agree_with_the_synthetic_market(lake: Lake, market) -> None:
    """Columns recomputed here from the market's own trades with plain numpy."""
    assert lake.materialize("BTCUSDT", DAY).success
    view = pq.read_table(lake.minute_path("BTCUSDT", DAY)).to_pandas()
    trades = market.agg_trades("BTCUSDT", DAY).to_pandas()
    trades["minute"] = trades["transact_time"] // 60_000 * 60_000
    notional = trades["price"] * trades["quantity"]
    buy = ~trades["is_buyer_maker"]
    ts_ms = (
        view["timestamp"].astype("int64") // 1_000_000
        if view["timestamp"].dtype.unit == "ns"
        else view["timestamp"].astype("int64")
    )
    by_minute = view.set_index(ts_ms)
    busiest = trades["minute"].value_counts().index[0]
    sel = trades["minute"] == busiest
    row = by_minute.loc[busiest]
    assert row["count_buy_trades"] == int(
        (trades.loc[sel & buy, "last_trade_id"] - trades.loc[sel & buy, "first_trade_id"] + 1).sum()
    )
    assert row["whale_trade_count"] == int((notional[sel] >= 100_000).sum())
    assert row["max_trade_size_btc"] == trades.loc[sel, "quantity"].max()
    prices = trades.loc[sel].sort_values(["transact_time", "agg_trade_id"])["price"].to_numpy()
    expected_rv = math.sqrt(float(np.sum(np.diff(np.log(prices)) ** 2)))
    assert row["realized_vol_1m"] == pytest.approx(expected_rv, rel=1e-12)
    assert row["transact_time"] == trades.loc[sel, "transact_time"].max()
    # Minutes without trades: zeros, vwap = close, transact_time NULL.
    quiet = view[view["trade_count"] == 0]
    assert len(quiet) > 0
    assert (quiet["vwap_1m"] == quiet["close"]).all()
    assert quiet["transact_time"].isna().all()
    assert (quiet["whale_trade_count"] == 0).all()
    # Whale and retail buckets are both used over the day.
    assert view["vol_buy_whale_btc"].sum() > 0 and view["vol_sell_retail_btc"].sum() > 0
    # LIVE columns are NULL on the cold path.
    assert view["event_time"].isna().all() and view["predicted_funding"].isna().all()
    # Funding: a step function known from the first minute (February's last settlement).
    assert view["funding_rate"].notna().all()
    first_minute = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
    assert view["next_funding_time"].iloc[0] == int((first_minute + dt.timedelta(hours=8)).timestamp() * 1000)


def test_exchange_downtime_minutes_are_source_gaps(lake: Lake) -> None:
    result = lake.materialize("BTCUSDT", DOWNTIME_DAY)
    assert result.success
    table = pq.read_table(lake.minute_path("BTCUSDT", DOWNTIME_DAY))
    assert table.num_rows == 1437
    minutes = {t.as_py().strftime("%H:%M") for t in table.column("timestamp")}
    assert not {"10:00", "10:01", "10:02"} & minutes
    record = lake.ledger.get_partition("minute", "BTCUSDT", DOWNTIME_DAY)
    assert record is not None
    assert [g["minute"][11:16] for g in record.source_gaps] == ["10:00", "10:01", "10:02"]
    assert all(g["reason"] == "absent from every source" for g in record.source_gaps)
    checks = _checks(result)
    assert checks["closed_day_has_1440_rows"] is False
    assert all(v for k, v in checks.items() if k != "closed_day_has_1440_rows"), checks


def test_a_date_before_listing_is_not_listed_and_writes_no_file(lake: Lake) -> None:
    day = LISTING - dt.timedelta(days=3)
    result = lake.materialize("ETHUSDT", day)
    assert result.success
    record = lake.ledger.get_partition("minute", "ETHUSDT", day)
    assert record is not None and record.status == "not_listed"
    assert "not listed" in (record.message or "")
    assert "ETHUSDT" in (record.message or "")
    assert not lake.minute_path("ETHUSDT", day).exists()


def test_premium_index_is_from_the_premium_klines(lake: Lake, market) -> None:
    assert lake.materialize("BTCUSDT", DAY).success
    view = pq.read_table(lake.minute_path("BTCUSDT", DAY))
    premium = market.klines("BTCUSDT", DAY, "premiumIndexKlines")
    assert pc.equal(view.column("premium_index"), premium.column("close")).to_pylist() == [True] * 1440


def test_a_synced_listing_date_makes_earlier_days_not_listed_without_requests(lake: Lake, replay) -> None:
    from bml_assets.lake.ledger import SymbolRecord

    lake.ledger.upsert_symbols([SymbolRecord("ETHUSDT", onboard_date=LISTING, status="TRADING")])
    day = LISTING - dt.timedelta(days=30)
    before = len(replay.request_log)
    result = lake.materialize("ETHUSDT", day)
    assert result.success
    record = lake.ledger.get_partition("minute", "ETHUSDT", day)
    assert record is not None and record.status == "not_listed"
    assert "started trading on 2024-02-20 (exchangeInfo)" in (record.message or "")
    assert [p for _, p, _ in replay.request_log[before:] if day.isoformat() in p] == []
