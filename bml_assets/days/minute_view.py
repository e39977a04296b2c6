"""The minute view's day: from the day's per-stream tables to the table its commit publishes.

What belongs here: deciding what an unavailable HARD stream means for the day; where
a live day's grid ends (closed minutes plus the safety lag, never past a missing
minute not yet confirmed as a source gap); calling the pure join
(``features/minute_view.py``); naming the source gaps and the fillable streams the day
still lacks (SPEC §8: the partition is then committed incomplete,
``missing_streams``); the watermark its commit may move to; and judging it: the
evidence for SPEC §6's rules and every rule run once, the blocking verdict kept on the
data for the commit. What stays out: formulas (``features/``), the rules
(``quality.py``), the commit (``lake/commit.py``, through the IO manager) and Dagster
(``defs/assets/minute_view.py`` reports the outcomes as asset checks).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.days.clock import ExchangeNow
from bml_assets.days.context import DayContext
from bml_assets.days.partition_data import PartitionData
from bml_assets.days.rest_days import GAP_CONFIRM_MINUTES
from bml_assets.days.streams import STREAM_TABLES
from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms, day_bounds_ms, ms_to_datetime
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import Provenance
from bml_assets.domain.schema import (
    BOOK_TICKER,
    DATASETS,
    FUNDING,
    HARD_DATASETS,
    HOT_SNAPSHOTS,
    INDEX_PRICE_KLINES,
    KLINES,
    LIVE_1M,
    MARK_PRICE_KLINES,
    METRICS,
    MINUTE_VIEW,
    PREMIUM_INDEX_KLINES,
    TRADE_FLOW,
)
from bml_assets.domain.streams import Stream
from bml_assets.features.hot_snapshots import book_from_snapshots, open_interest_observations, predicted_funding_minutes
from bml_assets.features.metrics import combine_observations
from bml_assets.features.minute_view import build_minute_view
from bml_assets.quality import REPORTED_RULES, Evidence, Outcome, judge_blocking, to_frame

# Every stream table is an input, named (and keyed) by its dataset name; so is the live
# collector's table, written outside Dagster runs (absent when no collector ran).
UPSTREAMS = (*(t.dataset for t in STREAM_TABLES), LIVE_1M)


class HardStreamsDisagree(RuntimeError):
    """Some HARD streams of a day are listed and others say the symbol is not: nothing is published."""


def _provenance(inputs: Mapping[str, PartitionData]) -> Provenance:
    merged = Provenance()
    for data in inputs.values():
        merged = merged | data.provenance
    return merged


def missing_streams(inputs: Mapping[str, PartitionData]) -> list[dict[str, str]]:
    """The fillable streams the day lacks, wholly or in part, and why (SPEC §8): every
    input stream whose provenance carries an ``incomplete`` reason (``choice.py``)."""
    return sorted(
        (
            {"stream": stream, "reason": reason}
            for data in inputs.values()
            for stream, reason in data.provenance.incomplete().items()
        ),
        key=lambda m: m["stream"],
    )


def _gap_reason(missing: tuple[str, ...], provenance: Provenance) -> str:
    if len(missing) == len(HARD_DATASETS):
        return "absent from every source"

    def looked_in(name: str) -> str:
        stream = DATASETS[name].stream
        p = provenance.get(stream) if stream is not None else None
        rest = p is not None and (p.is_rest or p.repaired is not None)
        return f"{name} ({'Vision and REST' if rest else 'its source'})"

    return "absent from " + ", ".join(looked_in(name) for name in missing)


def unavailable_day(sd: SymbolDay, inputs: Mapping[str, PartitionData]) -> PartitionData | None:
    """The day has no minute view when a HARD stream has no file: say why, or raise
    ``HardStreamsDisagree``."""
    hard = {d.name: inputs[d.name] for d in HARD_DATASETS}
    missing = {name: d for name, d in hard.items() if not d.available}
    if not missing:
        return None
    if len(missing) == len(hard):
        first = hard[HARD_DATASETS[0].name]
        status = "not_listed" if all(d.status == "not_listed" for d in hard.values()) else "not_published"
        return PartitionData.unavailable(status, first.message or status, _provenance(inputs))  # type: ignore[arg-type]
    if any(d.status == "not_published" for d in missing.values()):
        # Vision publishes each stream on its own schedule: wait for the rest.
        message = f"minute view {sd} waits for " + "; ".join(str(d.message) for d in missing.values())
        return PartitionData.unavailable("not_published", message, _provenance(inputs))
    raise HardStreamsDisagree(
        f"minute view {sd}: HARD streams disagree — "
        + "; ".join(f"{name}: {d.status} ({d.message})" for name, d in missing.items())
        + f"; present: {', '.join(sorted(set(hard) - set(missing)))}. Nothing was published."
    )


def _is_live_source(inputs: Mapping[str, PartitionData]) -> bool:
    """True when a HARD stream came from REST: the day may still be forming."""
    return any(inputs[d.name].provenance.is_rest(stream) for d in HARD_DATASETS for stream in inputs[d.name].provenance)


def live_grid_end(sd: SymbolDay, inputs: Mapping[str, PartitionData], now: ExchangeNow) -> dt.datetime | None:
    """Where a REST-built day's committable minutes end (exclusive), or None for the whole day.

    Stops at the last minute closed plus the safety lag, and before any missing
    minute not yet confirmed as a source gap (so the watermark never passes it).
    """
    start, day_end = day_bounds_ms(sd.day)
    end = now.end_ms(sd.day)
    # Never past what the stream steps fetched: in a multi-process run they may have
    # read the clock earlier than this step.
    for d in HARD_DATASETS:
        for p in inputs[d.name].provenance.values():
            if p.is_rest and p.through is not None:
                end = min(end, datetime_to_ms(p.through))
    present: np.ndarray | None = None
    for d in HARD_DATASETS:
        table = inputs[d.name].table
        assert table is not None
        ms = pc.cast(table.column("timestamp"), pa.int64()).to_numpy()
        present = ms if present is None else np.intersect1d(present, ms)
    grid = np.arange(start, end, MINUTE_MS, dtype=np.int64)
    missing = grid[~np.isin(grid, present if present is not None else [])]
    confirm_ms = (1 + now.lag_minutes + GAP_CONFIRM_MINUTES) * MINUTE_MS
    unconfirmed = missing[missing + confirm_ms > now.now_ms]
    if len(unconfirmed):
        end = min(end, int(unconfirmed[0]))
    return None if end == day_end else ms_to_datetime(end)


def _with_snapshots(inputs: Mapping[str, PartitionData], sd: SymbolDay) -> dict[str, Any]:
    """Book, open interest and predicted funding from the hot snapshots, where there are some."""
    snaps = inputs[HOT_SNAPSHOTS.name].table
    book = inputs[BOOK_TICKER.name].table
    metrics = inputs[METRICS.name].table
    if snaps is None or snaps.num_rows == 0:
        return {"book": book, "metrics": metrics, "predicted_funding": None}
    if book is None:
        book = book_from_snapshots(snaps, sd.day, source=f"hot snapshots {sd}")
    oi = open_interest_observations(snaps)
    metrics = oi if metrics is None else combine_observations([metrics, oi])
    return {"book": book, "metrics": metrics, "predicted_funding": predicted_funding_minutes(snaps, sd.day)}


def _live_table(inputs: Mapping[str, PartitionData]) -> pa.Table | None:
    """The live collector's minutes of the day, when it recorded any."""
    live = inputs.get(LIVE_1M.name)
    return live.table if live is not None else None


def build_day(
    sd: SymbolDay,
    inputs: Mapping[str, PartitionData],
    *,
    max_ffill_minutes: int,
    grid_end: dt.datetime | None = None,
) -> PartitionData:
    """The joined view of the day up to ``grid_end`` (None: the whole day), with its
    provenance, source gaps and missing streams; or why there is none."""
    unavailable = unavailable_day(sd, inputs)
    if unavailable is not None:
        return unavailable
    view = build_minute_view(
        sd.day,
        klines=inputs[KLINES.name].table,
        mark=inputs[MARK_PRICE_KLINES.name].table,
        index=inputs[INDEX_PRICE_KLINES.name].table,
        premium=inputs[PREMIUM_INDEX_KLINES.name].table,
        trade_flow=inputs[TRADE_FLOW.name].table,
        funding=inputs[FUNDING.name].table,
        max_ffill_minutes=max_ffill_minutes,
        grid_end=grid_end,
        live=_live_table(inputs),
        **_with_snapshots(inputs, sd),
    )
    provenance = _provenance(inputs)
    gaps = [
        {"minute": g.minute.isoformat(), "missing": list(g.missing), "reason": _gap_reason(g.missing, provenance)}
        for g in view.source_gaps
    ]
    return PartitionData(
        view.table,
        provenance,
        source_gaps=gaps,
        warnings=tuple(view.warnings),
        missing_streams=missing_streams(inputs),
    )


def watermark_target(sd: SymbolDay, grid_end: dt.datetime | None) -> dt.datetime | None:
    """The day's last committed grid minute: where its commit may move the symbol's watermark
    (the ledger moves it only when that continues it, in the commit's transaction). None
    when the grid is empty."""
    day_start = dt.datetime.combine(sd.day, dt.time(), dt.UTC)
    last = (grid_end or day_start + dt.timedelta(days=1)) - dt.timedelta(minutes=1)
    return last if last >= day_start else None


@dataclass(frozen=True)
class MinuteViewDay:
    """One day's view and where its grid ends (None: the whole day, a closed day)."""

    data: PartitionData
    grid_end: dt.datetime | None = None


def minute_view_day(ctx: DayContext, sd: SymbolDay, inputs: Mapping[str, PartitionData]) -> MinuteViewDay:
    """The day's view from its stream tables: a day built from REST stops at what the run's
    clock makes committable; a built table carries the watermark its commit may move to."""
    grid_end = None
    if unavailable_day(sd, inputs) is None and _is_live_source(inputs):
        grid_end = live_grid_end(sd, inputs, ctx.now())
    data = build_day(sd, inputs, max_ffill_minutes=ctx.max_ffill_minutes, grid_end=grid_end)
    if data.table is not None:
        data = replace(data, watermark=watermark_target(sd, grid_end))
    return MinuteViewDay(data, grid_end)


def replaced_rest_view(ctx: DayContext, sd: SymbolDay, data: PartitionData) -> pd.DataFrame | None:
    """The committed REST-built view this build replaces with Vision klines (a promotion)."""
    record = ctx.ledger.get_partition(MINUTE_VIEW.name, sd.symbol, sd.day)
    if record is None or record.status != "committed" or not data.provenance.is_vision(Stream.KLINES):
        return None
    if not Provenance.of(record.provenance).is_rest(Stream.KLINES):
        return None
    previous = ctx.existing(MINUTE_VIEW, sd)
    return to_frame(previous) if previous is not None else None


def evidence_for(
    sd: SymbolDay,
    data: PartitionData,
    trade_flow: PartitionData,
    *,
    closed_day: bool,
    replaced_rest_view: pd.DataFrame | None = None,
) -> Evidence:
    assert data.table is not None
    return Evidence(
        replaced_rest_view=replaced_rest_view,
        day=sd.day,
        frame=to_frame(data.table),
        closed_day=closed_day,
        trade_flow=to_frame(trade_flow.table) if trade_flow.table is not None else None,
        provenance=data.provenance,
        source_gaps=data.source_gaps,
    )


@dataclass(frozen=True)
class JudgedDay:
    """A built day with every rule of the minute view run once on it: ``data`` carries the
    blocking verdict (the commit does not run those rules on it again); ``outcomes`` by
    rule name (a wrong arrow schema is the only blocking outcome then)."""

    data: PartitionData
    outcomes: Mapping[str, Outcome]

    @property
    def blocking_failed(self) -> list[Outcome]:
        assert self.data.blocking is not None
        return self.data.blocking.failed


def judge_day(ctx: DayContext, sd: SymbolDay, day: MinuteViewDay, trade_flow: PartitionData) -> JudgedDay:
    """SPEC §6's rules on a built day, each once: the blocking ones (kept as the data's
    verdict) and the reported ones, on one evidence."""
    data = day.data
    assert data.table is not None
    ev = evidence_for(
        sd, data, trade_flow, closed_day=day.grid_end is None, replaced_rest_view=replaced_rest_view(ctx, sd, data)
    )
    verdict = judge_blocking(data.table, ev)
    outcomes = {o.rule.name: o for o in (*verdict.outcomes, *(r.run(ev) for r in REPORTED_RULES))}
    return JudgedDay(replace(data, blocking=verdict), outcomes)
