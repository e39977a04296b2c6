"""How much of its day a per-stream table covers, and filling it from a second source.

What belongs here: the minutes of a day a kline table lacks; the minutes whose trade
flow holds fewer individual trades than the klines count (klines ``count`` is the
number of trades, and each aggTrade covers ``last_trade_id - first_trade_id + 1`` of
them, so the two agree minute by minute when the aggTrades are complete); the first
minute with a trade; and merging rows of a second source into a table: the first
source's rows stay where it has them (for klines), or a minute is replaced only by a
fuller one (for trade flow). What stays out: deciding when to ask a second source,
asking it (``days/coverage_fills.py``), and the per-stream formulas (``klines``, ``trade_flow``).
"""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain.minutes import day_bounds_ms
from bml_assets.features.timegrid import minute_grid_ms, to_ms


def missing_minutes(table: pa.Table, day: dt.date) -> np.ndarray:
    """The minutes (epoch ms, ascending) of ``day``'s ``MINUTES_PER_DAY`` that have no row in ``table``."""
    grid = minute_grid_ms(*day_bounds_ms(day))
    return grid[~np.isin(grid, to_ms(table.column("timestamp")))]


def merge_minutes(base: pa.Table, extra: pa.Table) -> pa.Table:
    """``base`` plus the rows of ``extra`` at minutes ``base`` lacks, sorted by minute:
    where both have a minute, ``base``'s row stays (the first source is the truth)."""
    have = pc.cast(base.column("timestamp"), pa.int64())
    fresh = extra.filter(pc.invert(pc.is_in(pc.cast(extra.column("timestamp"), pa.int64()), value_set=have)))
    merged = pa.concat_tables([base, fresh.select(base.column_names).cast(base.schema)])
    return merged.take(pc.sort_indices(merged, [("timestamp", "ascending")]))


def _flow_counts(flow: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(minute ms, individual trades) per trade-flow row."""
    buys = flow.column("count_buy_trades").to_numpy(zero_copy_only=False)
    sells = flow.column("count_sell_trades").to_numpy(zero_copy_only=False)
    return to_ms(flow.column("timestamp")), np.asarray(buys + sells, dtype=np.int64)


def trades_held(flow: pa.Table) -> int:
    """Individual trades the trade flow accounts for over its minutes."""
    return int(_flow_counts(flow)[1].sum())


def trades_counted(klines: pa.Table) -> int:
    """Individual trades the klines count over the day."""
    return int(pc.sum(klines.column("count")).as_py() or 0)


def short_trade_minutes(flow: pa.Table, klines: pa.Table) -> np.ndarray:
    """Minutes (epoch ms, ascending) where the klines count more trades than the trade flow holds."""
    k_minutes = to_ms(klines.column("timestamp"))
    k_counts = np.asarray(klines.column("count").to_numpy(zero_copy_only=False), dtype=np.int64)
    f_minutes, f_counts = _flow_counts(flow)
    held = np.zeros(len(k_minutes), dtype=np.int64)
    at = np.searchsorted(f_minutes, k_minutes)
    found = at < len(f_minutes)
    found[found] = f_minutes[at[found]] == k_minutes[found]
    held[found] = f_counts[at[found]]
    return np.sort(k_minutes[k_counts > held])


def first_traded_minute(klines: pa.Table) -> int | None:
    """The first minute (epoch ms) whose klines count a trade; None when none does."""
    minutes = to_ms(klines.column("timestamp"))
    counts = np.asarray(klines.column("count").to_numpy(zero_copy_only=False), dtype=np.int64)
    traded = minutes[counts > 0]
    return int(traded.min()) if len(traded) else None


def take_fuller_minutes(flow: pa.Table, other: pa.Table, minutes: np.ndarray) -> tuple[pa.Table, int]:
    """``flow`` with each of ``minutes`` replaced by ``other``'s row where that holds more
    trades; the number of minutes replaced. Minutes where ``other`` holds no more stay as
    they are: a source only wins a minute by having more of its trades."""
    f_minutes, f_counts = _flow_counts(flow)
    o_minutes, o_counts = _flow_counts(other)
    held = dict(zip(f_minutes.tolist(), f_counts.tolist(), strict=True))
    wanted = set(np.asarray(minutes, dtype=np.int64).tolist())
    better = [
        i
        for i, (m, c) in enumerate(zip(o_minutes.tolist(), o_counts.tolist(), strict=True))
        if m in wanted and c > held.get(m, 0)
    ]
    if not better:
        return flow, 0
    replaced = o_minutes[better]
    kept = flow.filter(pc.invert(pc.is_in(pc.cast(flow.column("timestamp"), pa.int64()), value_set=pa.array(replaced))))
    merged = pa.concat_tables([kept, other.take(pa.array(better, type=pa.int64())).cast(flow.schema)])
    return merged.take(pc.sort_indices(merged, [("timestamp", "ascending")])), len(better)
