"""The as-of join of slow series onto the minute grid (SPEC §5 "Slow series").

What belongs here: for each minute M, the latest observation taken in or before M
(observation time < M + 60 s), kept while it is at most ``max_ffill_minutes`` old, and
the count of minutes the bound left NULL. Used for the metrics columns (44-47) and for
the book columns (38-42) of minutes without a snapshot. What stays out: what the
observations are (``metrics.py``, ``book.py``) and what is derived from the filled
values (``minute_view.py``).

Age: an observation's age at minute M is M − (the start of the minute it was taken in),
in whole minutes; an observation inside M itself is age 0. A value observed after the
minute is never used (no look-ahead). NULL values are "not observed": each column is
filled from its own latest non-NULL observation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.features.timegrid import ArrayLike, floor_minute, to_ms


@dataclass(frozen=True)
class AsofFill:
    """Filled columns aligned with the minutes, and per column the number of minutes left
    NULL because the latest earlier observation was older than the bound."""

    columns: dict[str, pa.Array]
    stale_minutes: dict[str, int]
    max_ffill_minutes: int

    def warnings(self) -> list[str]:
        """One message per column that the bound left NULL somewhere."""
        return [
            f"{name}: {count} minute(s) left NULL: the latest observation was more than "
            f"{self.max_ffill_minutes} minutes old (BML_MAX_FFILL_MINUTES)"
            for name, count in self.stale_minutes.items()
            if count
        ]


def asof_fill(
    minutes: ArrayLike,
    obs_time: ArrayLike,
    values: Mapping[str, pa.Array | pa.ChunkedArray],
    *,
    max_ffill_minutes: int,
) -> AsofFill:
    """As-of fill each of ``values`` (aligned with ``obs_time``) onto ``minutes``.

    ``minutes`` are minute starts (timestamps or int64 ms), in any order; ``obs_time``
    need not be sorted (equal instants: the later row wins).
    """
    if max_ffill_minutes < 0:
        raise ValueError(f"max_ffill_minutes must be >= 0, got {max_ffill_minutes}")
    minute_ms = to_ms(minutes)
    observed = to_ms(obs_time)
    order = np.argsort(observed, kind="stable")
    observed = observed[order]
    take = pa.array(order, type=pa.int64())

    columns: dict[str, pa.Array] = {}
    stale: dict[str, int] = {}
    for name, column in values.items():
        if len(column) != len(order):
            raise ValueError(f"{name}: {len(column)} values for {len(order)} observation times")
        ordered = column.take(take)
        if isinstance(ordered, pa.ChunkedArray):
            ordered = ordered.combine_chunks()
        columns[name], stale[name] = _fill_one(minute_ms, observed, ordered, max_ffill_minutes)
    return AsofFill(columns=columns, stale_minutes=stale, max_ffill_minutes=max_ffill_minutes)


def _fill_one(
    minute_ms: np.ndarray, observed: np.ndarray, values: pa.Array, max_ffill_minutes: int
) -> tuple[pa.Array, int]:
    present = values.is_valid().to_numpy(zero_copy_only=False)
    times = observed[present]
    kept = values.filter(pa.array(present))
    if len(times) == 0:
        return pa.nulls(len(minute_ms), values.type), 0
    latest = np.searchsorted(times, minute_ms + MINUTE_MS, side="left") - 1
    seen = latest >= 0
    latest = np.where(seen, latest, 0)
    age_minutes = (minute_ms - floor_minute(times[latest])) // MINUTE_MS
    fresh = seen & (age_minutes <= max_ffill_minutes)
    filled = pc.if_else(
        pa.array(fresh, type=pa.bool_()), kept.take(pa.array(latest, type=pa.int64())), pa.scalar(None, values.type)
    )
    return filled, int(np.count_nonzero(seen & ~fresh))
