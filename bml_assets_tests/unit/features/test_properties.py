"""Property checks (hypothesis) of invariants that hold for any input, on top of the worked examples."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from bml_assets.features.slow_series import asof_fill
from bml_assets.features.trade_flow import trade_flow

DAY = dt.date(2024, 3, 1)
DAY_START = 1_709_251_200_000  # 2024-03-01 00:00 UTC

trades = st.lists(
    st.tuples(
        st.integers(0, 5 * 60_000 - 1),  # ms into the day: five minutes
        st.sampled_from([0.5, 99.0, 100.0, 101.5, 50000.0]),
        st.sampled_from([0.001, 0.5, 2.0, 20.0]),
        st.integers(0, 3),  # extra individual trades in the aggTrade
        st.booleans(),
    ),
    min_size=1,
    max_size=40,
)


def agg_table(rows: list[tuple], order: list[int]) -> pa.Table:
    """aggTrades with ids 0.. in row order and contiguous individual trade ids, taken in ``order``."""
    sizes = [1 + r[3] for r in rows]
    first = [sum(sizes[:i]) for i in range(len(rows))]
    table = pa.table(
        {
            "agg_trade_id": pa.array(range(len(rows)), type=pa.int64()),
            "price": pa.array([r[1] for r in rows], type=pa.float64()),
            "quantity": pa.array([r[2] for r in rows], type=pa.float64()),
            "first_trade_id": pa.array(first, type=pa.int64()),
            "last_trade_id": pa.array([f + s - 1 for f, s in zip(first, sizes, strict=True)], type=pa.int64()),
            "transact_time": pa.array([DAY_START + r[0] for r in rows], type=pa.int64()),
            "is_buyer_maker": pa.array([r[4] for r in rows], type=pa.bool_()),
        }
    )
    return table.take(pa.array(order, type=pa.int64()))


@settings(max_examples=60, deadline=None)
@given(rows=trades, data=st.data())
def test_trade_flow_is_order_free_and_conserves_counts(rows, data):
    order = data.draw(st.permutations(list(range(len(rows)))))
    flow = trade_flow(agg_table(rows, list(range(len(rows)))), DAY, source="p")
    assert flow.equals(trade_flow(agg_table(rows, order), DAY, source="p"))

    f = flow.to_pydict()
    assert sum(f["agg_trade_count"]) == len(rows)
    assert sum(f["count_buy_trades"]) + sum(f["count_sell_trades"]) == sum(1 + r[3] for r in rows)
    for q, buy, sell, whale_b, whale_s, retail_b, retail_s in zip(
        f["quantity_sum"],
        f["taker_buy_qty"],
        f["taker_sell_qty"],
        f["vol_buy_whale_btc"],
        f["vol_sell_whale_btc"],
        f["vol_buy_retail_btc"],
        f["vol_sell_retail_btc"],
        strict=True,
    ):
        assert abs(buy + sell - q) <= 1e-9 * q
        assert whale_b + retail_b <= buy + 1e-9
        assert whale_s + retail_s <= sell + 1e-9
    assert all(v >= 0 for v in f["realized_vol_1m"])
    assert f["timestamp"] == sorted(set(f["timestamp"]))


@settings(max_examples=60, deadline=None)
@given(
    observed=st.lists(st.integers(-30 * 60_000, 30 * 60_000), max_size=15),
    bound=st.integers(0, 10),
)
def test_asof_fill_never_looks_ahead_and_respects_the_bound(observed, bound):
    minutes = np.arange(0, 20 * 60_000, 60_000, dtype=np.int64)
    # each observation's value is its own time: the filled value tells which one was used
    fill = asof_fill(
        minutes,
        np.array(observed, dtype=np.int64),
        {"t": pa.array([float(t) for t in observed], type=pa.float64())},
        max_ffill_minutes=bound,
    )
    for minute, used in zip(minutes.tolist(), fill.columns["t"].to_pylist(), strict=True):
        earlier = [t for t in observed if t < minute + 60_000]
        if used is None:
            assert not earlier or minute - (max(earlier) // 60_000) * 60_000 > bound * 60_000
        else:
            assert used == max(earlier)
            assert used < minute + 60_000
            assert minute - (int(used) // 60_000) * 60_000 <= bound * 60_000
