"""5-minute metrics snapshots (open interest, long/short ratios) as observations (``schema.METRICS``).

What belongs here: normalising each metrics row to the instant its snapshot was taken
(the label convention changed with the files of 2026-06-25, SPEC §4), which CSV column
each ``schema.METRICS`` column is read from, and combining several files into one
sorted, unique observation series. What stays out: the as-of join onto minutes
(``slow_series.py``) and the derived ratios 48-50 (``minute_view.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.streams import METRICS_NEW_LABELS_FIRST_DAY
from bml_assets.features.timegrid import ms_to_timestamps, to_ms

METRICS_LABEL_CHANGE = METRICS_NEW_LABELS_FIRST_DAY  # the exchange fact lives with the Vision client
"""First file date whose row labelled T holds the snapshot taken at T + 5 min."""

LABEL_SHIFT_MS = 5 * MINUTE_MS

# ``schema.METRICS`` column <- the metrics CSV column it is read from
CSV_COLUMNS: dict[str, str] = {
    "oi_contracts": "sum_open_interest",
    "oi_value_usdt": "sum_open_interest_value",
    "top_trader_ls_ratio_acct": "count_toptrader_long_short_ratio",
    "global_ls_ratio_acct": "count_long_short_ratio",
}


def label_shift_ms(file_day: dt.date) -> int:
    """What to add to a ``create_time`` label of the file dated ``file_day`` to get the
    instant its snapshot was taken."""
    return LABEL_SHIFT_MS if file_day >= METRICS_LABEL_CHANGE else 0


def metrics_observations(raw: pa.Table, file_day: dt.date) -> pa.Table:
    """The metrics file of ``file_day`` as ``schema.METRICS`` rows stamped with their
    snapshot instant, sorted and unique on it (a repeated instant keeps its last row).

    Empty cells stay NULL; the as-of join treats them as "not observed".
    """
    observed = to_ms(raw.column("create_time")) + label_shift_ms(file_day)
    values = {c.name: raw.column(CSV_COLUMNS[c.name]).cast(c.type) for c in schema.METRICS.value_columns}
    return _sorted_unique(observed, values)


def combine_observations(tables: Iterable[pa.Table]) -> pa.Table:
    """Concatenate ``schema.METRICS`` tables (e.g. the previous day's file and the day's),
    sorted by ``observation_time``; where two rows share an instant, the row from the
    table given LATER in ``tables`` wins (pass files in date order: the later file's row).
    """
    parts = [t.select(schema.METRICS.column_names).cast(schema.METRICS.arrow_schema) for t in tables]
    if not parts:
        return schema.METRICS.arrow_schema.empty_table()
    combined = pa.concat_tables(parts)
    observed = to_ms(combined.column(schema.METRICS.time_column))
    return _sorted_unique(observed, {c.name: combined.column(c.name) for c in schema.METRICS.value_columns})


def _sorted_unique(observed: np.ndarray, values: dict[str, pa.ChunkedArray]) -> pa.Table:
    """Sort by instant (stable) and keep the last row of each instant."""
    order = np.argsort(observed, kind="stable")
    ordered = observed[order]
    keep = np.ones(len(ordered), dtype=bool)
    keep[:-1] = ordered[1:] != ordered[:-1]
    take = pa.array(order[keep])
    arrays = [ms_to_timestamps(ordered[keep])] + [values[c.name].take(take) for c in schema.METRICS.value_columns]
    return pa.Table.from_arrays(arrays, schema=schema.METRICS.arrow_schema)
