"""Every trade-derived column of whole days, through Dagster, against an independent oracle.

The oracle is written here with plain pandas and exact decimals from the synthetic
market's own trades, snapshots and metrics — not with the code under test. The days
cover headerless files (2021), a month end, a day whose first minute has no book
snapshot (seeded from the day before), and both metrics label conventions.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from .conftest import Lake

HEADERLESS_BOOK_SEED_DAY = dt.date(2021, 3, 16)  # first snapshot at 00:01:00.268
MONTH_END = dt.date(2021, 3, 31)
OLD_LABELS = dt.date(2026, 6, 24)
NEW_LABELS = dt.date(2026, 6, 25)


def _view(lake: Lake, day: dt.date) -> pd.DataFrame:
    result = lake.materialize("BTCUSDT", day)
    assert result.success
    frame = pq.read_table(lake.minute_path("BTCUSDT", day)).to_pandas()
    frame.index = frame["timestamp"].map(lambda t: int(t.timestamp() * 1000))
    return frame


def _trade_oracle(trades: pd.DataFrame) -> pd.DataFrame:
    rows = {}
    for minute, g in trades.groupby(trades["transact_time"] // 60_000 * 60_000):
        notional = [Decimal(repr(p)) * Decimal(repr(q)) for p, q in zip(g["price"], g["quantity"], strict=True)]
        whale = np.array([n >= 100_000 for n in notional])
        retail = np.array([n <= 1_000 for n in notional])
        buy = ~g["is_buyer_maker"].to_numpy()
        n_trades = (g["last_trade_id"] - g["first_trade_id"] + 1).to_numpy()
        qty = g["quantity"].to_numpy()
        prices = g.sort_values(["transact_time", "agg_trade_id"])["price"].to_numpy()
        rows[minute] = {
            "transact_time": int(g["transact_time"].max()),
            "max_trade_size_btc": float(qty.max()),
            "count_buy_trades": int(n_trades[buy].sum()),
            "count_sell_trades": int(n_trades[~buy].sum()),
            "vol_buy_whale_btc": float(qty[buy & whale].sum()),
            "vol_sell_whale_btc": float(qty[~buy & whale].sum()),
            "vol_buy_retail_btc": float(qty[buy & retail].sum()),
            "vol_sell_retail_btc": float(qty[~buy & retail].sum()),
            "whale_trade_count": int(whale.sum()),
            "realized_vol_1m": math.sqrt(float(np.sum(np.diff(np.log(prices)) ** 2))) if len(prices) > 1 else 0.0,
        }
    return pd.DataFrame.from_dict(rows, orient="index")


@pytest.mark.parametrize("day", [HEADERLESS_BOOK_SEED_DAY, MONTH_END, NEW_LABELS], ids=str)
def test_trade_columns_of_every_minute_match_the_oracle(lake: Lake, market, day: dt.date) -> None:
    view = _view(lake, day)
    oracle = _trade_oracle(market.agg_trades("BTCUSDT", day).to_pandas())
    assert len(view) == 1440
    quiet = view.index.difference(oracle.index)
    assert len(quiet) > 0  # minutes without trades exist in the synthetic market
    for column in oracle.columns:
        got = view.loc[oracle.index, column].astype(float).to_numpy()
        # ln(p_i/p_{i-1}) and ln p_i − ln p_{i-1} differ in the last bits: 1e-9 for the volatility.
        rtol = 1e-9 if column == "realized_vol_1m" else 1e-12
        assert np.allclose(got, oracle[column].astype(float).to_numpy(), rtol=rtol, atol=0), column
        if column == "transact_time":
            assert view.loc[quiet, column].isna().all()
        else:
            assert (view.loc[quiet, column] == 0).all(), column
    # Whale and retail buckets are both used on every tested day.
    assert oracle["vol_buy_whale_btc"].sum() > 0 and oracle["vol_sell_retail_btc"].sum() > 0
    # Klines columns straight from the klines file of the market.
    klines = market.klines("BTCUSDT", day).to_pandas().set_index("open_time")
    assert (view["trade_count"] == klines.loc[view.index, "count"]).all()
    traded = klines["volume"] > 0
    assert np.allclose(
        view.loc[klines.index[traded], "vwap_1m"], (klines["quote_volume"] / klines["volume"])[traded], rtol=1e-15
    )
    assert (view.loc[klines.index[~traded], "vwap_1m"] == klines.loc[~traded, "close"]).all()


def test_book_columns_are_seeded_from_the_previous_day(lake: Lake, market) -> None:
    day = HEADERLESS_BOOK_SEED_DAY
    view = _view(lake, day)
    previous = market.book_ticker("BTCUSDT", day - dt.timedelta(days=1)).to_pandas()
    last = previous.sort_values(["transaction_time", "update_id"]).iloc[-1]
    first = view.iloc[0]
    assert first["micro_price_close"] is None or math.isnan(first["micro_price_close"])  # no snapshot in 00:00
    assert first["avg_spread_usdt"] == pytest.approx(last["best_ask_price"] - last["best_bid_price"], rel=1e-12)
    assert first["avg_bid_depth"] == last["best_bid_qty"]
    assert first["avg_ask_depth"] == last["best_ask_qty"]
    # The 00:01 minute has its own snapshots: their mean spread.
    book = market.book_ticker("BTCUSDT", day).to_pandas()
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    in_01 = book[(book["transaction_time"] >= start + 60_000) & (book["transaction_time"] < start + 120_000)]
    assert len(in_01) > 0
    assert view.iloc[1]["avg_spread_usdt"] == pytest.approx(
        (in_01["best_ask_price"] - in_01["best_bid_price"]).mean(), rel=1e-12
    )


@pytest.mark.parametrize("day", [OLD_LABELS, NEW_LABELS], ids=["labels_up_to_2026_06_24", "labels_from_2026_06_25"])
def test_metrics_land_on_the_minute_their_snapshot_was_taken(lake: Lake, market, day: dt.date) -> None:
    view = _view(lake, day)
    snapshots = pd.concat(
        [market.metrics("BTCUSDT", day - dt.timedelta(days=1)).to_pandas(), market.metrics("BTCUSDT", day).to_pandas()]
    ).set_index("snapshot_time")
    start = int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp() * 1000)
    # minute → the snapshot instant it must show (latest taken before the minute's end)
    expected = {0: 0, 4: 0, 5: 5, 9: 5, 754: 750, 1439: 1435}
    for minute, snap in expected.items():
        row = view.loc[start + minute * 60_000]
        taken = snapshots.loc[start + snap * 60_000]
        assert row["oi_contracts"] == taken["sum_open_interest"], minute
        assert row["oi_value_usdt"] == taken["sum_open_interest_value"], minute
        assert row["top_trader_ls_ratio_acct"] == taken["count_toptrader_long_short_ratio"], minute
        assert row["global_ls_ratio_acct"] == taken["count_long_short_ratio"], minute
    # the snapshot taken at the next midnight never reaches this day (no look-ahead)
    assert view["oi_contracts"].iloc[-1] != snapshots.loc[start + 1440 * 60_000, "sum_open_interest"]
