"""Data quality (SPEC §6): the blocking rules of every stored table and the reported
rules of the minute view, as pandera schemas derived from the column registry.

What belongs here: ``blocking_rules(dataset)``, the one factory that derives a
table's blocking rules from its declaration in the column registry — names and
types in order, the time column unique and sorted (on whole minutes, inside the
day, as declared), HARD columns not NULL (the minute view), OHLC consistency, one
rule per value domain — as pandera schemas (tables are ≤ 1440 rows per day);
``judge_blocking``, which judges them once on a table and keeps the outcomes as a
``BlockingVerdict`` bound to that very table — first with a vectorised pyarrow pass
whose tests are each at least as strict as their rule (a clean table then passes
without pandera, whose fixed cost per schema dominated a hot commit), and with the
pandera rules themselves whenever that pass has any doubt, so they alone judge and
name a failure; ``enforce_blocking``, which the IO
manager calls before the rename (a Dagster blocking check runs only after the
write), judging the table unless a verdict about it is at hand, and whose error
names the rule, the value, the minute and where the row came from; ``check_source_rows``, the same
domain declarations checked vectorised with pyarrow on raw source rows that are
aggregated before they are stored (a day of aggTrades holds up to ~7 M rows); the
minute view's reported rules. What stays out: the declarations themselves
(``domain/schema.py``), formulas (``features/``), I/O (where a row came from is
asked of a ``locate`` callable its builder provides) and Dagster (the asset check
factory is ``defs/checks.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import numpy as np
import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.domain.minutes import DAY_MS, MINUTE_MS, MINUTES_PER_DAY, day_start_ms, floor_minute_ms, ms_to_datetime
from bml_assets.domain.provenance import Provenance
from bml_assets.domain.schema import (
    BOOL,
    EPOCH_MS,
    F64,
    HARD_COLUMNS,
    I64,
    METRICS_COLUMNS,
    MINUTE_VIEW,
    PROVENANCE_STREAMS,
    SLOW_COLUMNS,
    TIMESTAMP,
    ColumnClass,
    Dataset,
    Domain,
    SourceRows,
)
from bml_assets.domain.streams import Stream

REL_TOLERANCE = 1e-9
MAX_PRICE_DEVIATION = 0.05  # mark and index within 5 % of close
MAX_LISTED_FAILURES = 50  # offending minutes shown in check metadata
MAX_FAILURES_IN_ERROR = 5  # per rule, in an error text (each may re-read a source file)

_PANDAS_DTYPES: dict[pa.DataType, Any] = {
    TIMESTAMP: pd.DatetimeTZDtype("ms", "UTC"),
    I64: pd.Int64Dtype(),
    F64: pd.Float64Dtype(),
    BOOL: pd.BooleanDtype(),  # the live table's coverage flags
}

# Where a row came from: (minute, column) -> e.g. "https://…/BTCUSDT-1m-2024-01-02.zip,
# data row 6", or None when its builder cannot say.
RowLocator = Callable[[dt.datetime, str], str | None]


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas with nullable dtypes, so NULL stays NULL and ints stay ints.

    A float NaN stays NaN, distinct from NULL (pandas' own conversion would make it
    NULL): NaN is a bad value, never a missing one.
    """
    frame = table.to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype(), pa.bool_(): pd.BooleanDtype()}.get,
        ignore_metadata=True,
    )
    for name, column in zip(table.column_names, table.columns, strict=True):
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
            frame[name] = pd.arrays.FloatingArray(
                values.fill_null(0.0).to_numpy(zero_copy_only=False),
                values.is_null().to_numpy(zero_copy_only=False),
            )
    return frame


def dataset_schema(dataset: Dataset, *, hard_not_null: bool = True) -> pdr.DataFrameSchema:
    """The pandera model of a table's names, order and types, generated from the registry.

    ``hard_not_null=False`` leaves NULLs alone: the NULL rule of HARD columns is
    reported separately, so one fault is not counted twice.
    """
    return pdr.DataFrameSchema(
        {
            c.name: pdr.Column(
                _PANDAS_DTYPES[c.type],
                nullable=not (hard_not_null and c.klass is ColumnClass.HARD),
                description=c.description or str(c.domain),
            )
            for c in dataset.columns
        },
        strict=True,
        ordered=True,
        name=dataset.name,
    )


def minute_view_schema(*, hard_not_null: bool = True) -> pdr.DataFrameSchema:
    return dataset_schema(MINUTE_VIEW, hard_not_null=hard_not_null)


@dataclass(frozen=True)
class Evidence:
    """Everything the rules look at for one partition."""

    day: dt.date
    frame: pd.DataFrame
    closed_day: bool
    trade_flow: pd.DataFrame | None = None
    # Given as a ``Provenance`` or in its JSON form, held as a ``Provenance``.
    provenance: Provenance = field(default_factory=Provenance)
    source_gaps: Sequence[Mapping[str, Any]] = ()
    # The REST-built view this Vision build replaces (a promotion), else None.
    replaced_rest_view: pd.DataFrame | None = None
    # The column that names each row's minute (or instant) in failures.
    time_column: str = "timestamp"

    def __post_init__(self) -> None:
        object.__setattr__(self, "provenance", Provenance.of(self.provenance))


@dataclass(frozen=True)
class Outcome:
    rule: Rule
    passed: bool
    failures: pd.DataFrame  # columns: minute, column, value
    facts: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    blocking: bool
    evaluate: Callable[[Evidence], tuple[pd.DataFrame, Mapping[str, Any]]]
    # Failures read "column = value" (a bad value); else "column <value>" (a statement).
    shows_values: bool = True
    # The facts of a pass, from the table alone (a blocking rule that the vectorised pass,
    # ``_certainly_clean``, finds holding is not run).
    clean_facts: Callable[[pa.Table], Mapping[str, Any]] = lambda table: {}

    def run(self, evidence: Evidence) -> Outcome:
        failures, facts = self.evaluate(evidence)
        return Outcome(self, failures.empty, failures, facts)

    @property
    def spec_kwargs(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "blocking": self.blocking}


NO_FAILURES = pd.DataFrame({"minute": pd.Series(dtype="object"), "column": [], "value": []})


def _minute_at(frame: pd.DataFrame, time_column: str, i: Any) -> str | None:
    if isinstance(i, (int, float, np.integer)) and not pd.isna(i) and 0 <= int(i) < len(frame):
        t = frame[time_column].iloc[int(i)]
        return None if pd.isna(t) else t.isoformat()
    return None


def _check_and_case(check: Any, case: Any) -> str:
    return f"{check}: {case}"


def _case(check: Any, case: Any) -> str:
    return str(case)


def _pandera_failures(
    schema: pdr.DataFrameSchema,
    ev: Evidence,
    *,
    value: Callable[[Any, Any], str] = _check_and_case,
    frame: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Run a pandera schema lazily on ``frame`` (default: the evidence's); its failure
    cases become (minute, column, value) rows, ``value`` made of (check name, case)."""
    frame = ev.frame if frame is None else frame
    try:
        schema.validate(frame, lazy=True)
    except pdr.errors.SchemaErrors as err:
        cases = err.failure_cases
        return pd.DataFrame(
            {
                "minute": [_minute_at(ev.frame, ev.time_column, i) for i in cases["index"]],
                "column": cases["column"].astype(str),
                "value": [value(c, v) for c, v in zip(cases["check"], cases["failure_case"], strict=True)],
            }
        )
    return NO_FAILURES


def _rows(minutes: pd.Series, column: str, values: Sequence[Any] | pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "minute": [m.isoformat() for m in minutes],
            "column": column,
            "value": [str(v) for v in values],
        }
    )


def _frame_check(name: str, fn: Callable[[pd.DataFrame], pd.Series]) -> pdr.DataFrameSchema:
    return pdr.DataFrameSchema(checks=[pdr.Check(fn, name=name, ignore_na=True)])


def _frame_failures(name: str, fn: Callable[[pd.DataFrame], pd.Series], ev: Evidence) -> pd.DataFrame:
    """The failure cases of the frame-level check ``fn``; pandera (~5-10 ms a call, whatever
    the rows) is asked for them only when ``fn``'s own mask shows a row that does not hold
    (NA counts as holding, as in pandera's verdict, which also skips rows with NULLs)."""
    if bool(pd.Series(fn(ev.frame)).fillna(True).all()):
        return NO_FAILURES
    return _pandera_failures(_frame_check(name, fn), ev)


# --- blocking rules: the factory ---------------------------------------------------


def _schema_rule(dataset: Dataset) -> Rule:
    def evaluate(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
        return _pandera_failures(dataset_schema(dataset, hard_not_null=False), ev), {"columns": len(ev.frame.columns)}

    n = len(dataset.columns)
    spec = " (SPEC §5)" if dataset is MINUTE_VIEW else ""
    # The name carries no count: Dagster keys a check's history by its name, and a column
    # added to the registry must not start a new one.
    return Rule(
        "schema_columns",
        f"the {n} names and types, in order{spec}",
        True,
        evaluate,
        clean_facts=lambda table: {"columns": table.num_columns},
    )


def _time_rule(dataset: Dataset) -> Rule:
    """Unique and sorted times; on whole minutes if the time column's domain says so;
    inside the partition's day when the table holds only that day, else inside the
    domain's range of instants."""
    column = dataset.column(dataset.time_column)
    aligned = column.domain.minute_aligned

    def evaluate(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
        if dataset.within_day:
            start = pd.Timestamp(ev.day, tz="UTC")
            end = start + pd.Timedelta(days=1)
        else:
            start = pd.Timestamp(int(column.domain.low), unit="ms", tz="UTC")
            end = pd.Timestamp(int(column.domain.high), unit="ms", tz="UTC")
        # Each check is named by what it asserts: a failure reads "timestamp not <name>".
        inside = [
            pdr.Check(lambda s: s >= start, name="on or after the day's start" if dataset.within_day else "in 2017+"),
            pdr.Check(lambda s: s < end, name="before the day's end" if dataset.within_day else "before 2100"),
        ]
        if aligned:
            inside.append(pdr.Check(lambda s: s.dt.second.eq(0) & s.dt.microsecond.eq(0), name="on a whole minute"))
        schema = pdr.DataFrameSchema(
            {dataset.time_column: pdr.Column(checks=inside, unique=True, nullable=False)}, name=dataset.name
        )
        ts = ev.frame[dataset.time_column]
        failures = _pandera_failures(
            schema,
            ev,
            frame=ev.frame[[dataset.time_column]],
            value=lambda check, _: f"not {_CHECK_PHRASES.get(str(check), check)}",
        )
        disorder = ts.diff() <= pd.Timedelta(0)
        if disorder.any():
            failures = pd.concat(
                [
                    failures,
                    _rows(ts[disorder], dataset.time_column, ["not after the previous row"] * int(disorder.sum())),
                ]
            )
        return failures, {"rows": len(ts)}

    plural = "timestamps" if dataset.time_column == "timestamp" else f"{dataset.time_column}s"
    where = "inside the partition's day" if dataset.within_day else "in [2017, 2100)"
    return Rule(
        f"{plural}_unique_sorted" + ("_in_day" if dataset.within_day else ""),
        f"unique, sorted{', minute-aligned' if aligned else ''} {dataset.time_column} values {where}",
        True,
        evaluate,
        shows_values=False,
        clean_facts=lambda table: {"rows": table.num_rows},
    )


# pandera's own check names, as what they assert
_CHECK_PHRASES = {"field_uniqueness": "unique", "not_nullable": "NULL-free"}


def _hard_not_null_rule(dataset: Dataset) -> Rule:
    hard = [c.name for c in dataset.columns if c.klass is ColumnClass.HARD]

    def evaluate(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
        schema = dataset_schema(dataset).select_columns([c for c in hard if c in ev.frame])
        failures = _pandera_failures(schema, ev, frame=ev.frame[list(schema.columns)])
        return failures.assign(value="NULL"), {"hard_columns": len(hard)}

    return Rule(
        "hard_columns_not_null",
        "no NULL in a HARD column",
        True,
        evaluate,
        clean_facts=lambda table: {"hard_columns": len(hard)},
    )


def _ohlc_rule(dataset: Dataset) -> Rule:
    def evaluate(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
        parts = []
        for g in dataset.ohlc:
            o, h, lo, c = g.names
            schema = _frame_check(
                f"{lo} ≤ min({o}, {c}) ≤ max({o}, {c}) ≤ {h}",
                lambda d, o=o, h=h, lo=lo, c=c: (d[lo] <= d[[o, c]].min(axis=1)) & (d[[o, c]].max(axis=1) <= d[h]),
            )
            # pandera lists every column of a failing row: one failure per row here, with its four values.
            rows = _failing_rows(schema, ev.frame[list(g.names)])
            if rows:
                bars = ev.frame.iloc[rows]
                parts.append(
                    pd.DataFrame(
                        {
                            "minute": [_minute_at(ev.frame, ev.time_column, i) for i in rows],
                            "column": "/".join(g.names),
                            "value": ["/".join(str(bar[n]) for n in g.names) for _, bar in bars.iterrows()],
                        }
                    )
                )
        return (pd.concat(parts) if parts else NO_FAILURES), {}

    return Rule("ohlc_consistent", "low ≤ min(open, close) ≤ max(open, close) ≤ high", True, evaluate)


def _failing_rows(schema: pdr.DataFrameSchema, frame: pd.DataFrame) -> list[int]:
    try:
        schema.validate(frame, lazy=True)
    except pdr.errors.SchemaErrors as err:
        return sorted({int(i) for i in err.failure_cases["index"] if i is not None and not pd.isna(i)})
    return []


def _in_domain(domain: Domain) -> Callable[[pd.Series], pd.Series]:
    # Comparisons with NaN are false, and both bounds are finite: inf and NaN fail.
    return lambda s: s.between(domain.low, domain.high)


def _domain_rule(dataset: Dataset, domain: Domain, columns: Sequence[str]) -> Rule:
    schema = pdr.DataFrameSchema(
        {
            name: pdr.Column(checks=[pdr.Check(_in_domain(domain), name=domain.rule, ignore_na=True)], nullable=True)
            for name in columns
        },
        name=dataset.name,
    )

    def evaluate(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
        present = [c for c in columns if c in ev.frame]
        if not present:
            return NO_FAILURES, {}
        return _pandera_failures(schema.select_columns(present), ev, value=_case, frame=ev.frame[present]), {}

    return Rule(domain.rule, f"{domain.description}: {', '.join(columns)}", True, evaluate)


@cache
def blocking_rules(dataset: Dataset) -> tuple[Rule, ...]:
    """The blocking rules of ``dataset``, derived from its declaration in the registry.

    In this order: names and types; the time column; HARD columns not NULL (when it
    has HARD columns); one rule per value domain of its other columns, in the order
    the domains first appear; OHLC consistency (when it declares OHLC groups).
    """
    rules = [_schema_rule(dataset), _time_rule(dataset)]
    if any(c.klass is ColumnClass.HARD for c in dataset.columns):
        rules.append(_hard_not_null_rule(dataset))
    by_domain: dict[Domain, list[str]] = {}
    for c in dataset.columns:
        if c.name != dataset.time_column:
            by_domain.setdefault(c.domain, []).append(c.name)
    rules += [_domain_rule(dataset, domain, names) for domain, names in by_domain.items()]
    if dataset.ohlc:
        rules.append(_ohlc_rule(dataset))
    return tuple(rules)


# --- blocking rules: the vectorised pass --------------------------------------------
#
# pandera costs ~2-20 ms per schema whatever the rows (a hot commit of one new minute paid
# ~240 ms per symbol for its ten tables, bench/results.md). A table whose schema is the
# dataset's is first judged here with one pyarrow pass per column, each test at least as
# strict as its rule; only when one finds something do the pandera rules run, to judge
# and name every failure. So a clean table passes without pandera, and a bad value is
# still judged (and refused) by the rules themselves.


def _time_certainly_clean(table: pa.Table, dataset: Dataset, day: dt.date) -> bool:
    """The time rule: no NULL, strictly increasing (so unique and sorted), inside the day
    (or the domain's range), on whole minutes when its domain says so."""
    column = table.column(dataset.time_column)
    if column.null_count:
        return False
    if len(column) == 0:
        return True
    if not pa.types.is_timestamp(column.type) or column.type.unit != "ms":
        return False  # the registry's time columns are ms; anything else is the rules' to judge
    domain = dataset.column(dataset.time_column).domain
    ms = np.asarray(column.cast(pa.int64()).to_numpy(), dtype=np.int64)
    if dataset.within_day:
        low = day_start_ms(day)
        end = low + DAY_MS
    else:
        low, end = int(domain.low), int(domain.high)
    if ms[0] < low or ms[-1] >= end or (len(ms) > 1 and not bool(np.all(np.diff(ms) > 0))):
        return False
    return not domain.minute_aligned or not bool(np.any(ms % MINUTE_MS))


def _values_certainly_clean(table: pa.Table, dataset: Dataset) -> bool:
    """The HARD columns hold no NULL; every other column's values are inside its domain
    (NULLs aside; NaN fails, as in the rule: NaN is never between two bounds)."""
    for c in dataset.columns:
        if c.name == dataset.time_column:
            continue
        values = table.column(c.name)
        if not (
            pa.types.is_floating(values.type) or pa.types.is_integer(values.type) or pa.types.is_boolean(values.type)
        ):
            return False  # a type whose comparison with the bounds is pandas' business
        if c.klass is ColumnClass.HARD and values.null_count:
            return False
        if values.null_count == len(values):
            continue
        if pa.types.is_floating(values.type) and pc.any(pc.is_nan(values)).as_py():
            return False
        bounds = pc.min_max(values)  # NULLs (and NaNs) skipped
        if not (c.domain.low <= bounds["min"].as_py() and bounds["max"].as_py() <= c.domain.high):
            return False
    return True


def _ohlc_certainly_clean(table: pa.Table, dataset: Dataset) -> bool:
    """low ≤ min(open, close) ≤ max(open, close) ≤ high on every row; a NULL in a group
    is left to the rule (whose NULL handling is pandas')."""
    for g in dataset.ohlc:
        columns = [table.column(n) for n in g.names]
        if any(col.null_count for col in columns):
            return False
        o, h, lo, c = (np.asarray(col.to_numpy(), dtype=np.float64) for col in columns)
        if not bool(np.all((lo <= np.minimum(o, c)) & (np.maximum(o, c) <= h))):
            return False
    return True


def _certainly_clean(table: pa.Table, dataset: Dataset, day: dt.date) -> bool:
    """True only when every blocking rule of ``dataset`` holds on ``table`` (whose arrow
    schema is the dataset's): each test is at least as strict as its rule. False means
    "let the rules judge", not that one fails."""
    return (
        _time_certainly_clean(table, dataset, day)
        and _values_certainly_clean(table, dataset)
        and _ohlc_certainly_clean(table, dataset)
    )


# --- raw source rows, vectorised -------------------------------------------------


@dataclass(frozen=True)
class BadRow:
    """One raw source row that breaks a rule: ``index`` is 0-based in the checked batch;
    ``minute`` (ISO) is the minute its time falls in."""

    rule: str
    column: str
    value: Any
    index: int
    minute: str | None


class BadSourceRows(ValueError):
    """Raw source rows that break their domains (``check_source_rows``).

    Raised where the batch was checked, which knows neither the partition nor the
    file; the caller re-raises ``located(label, where)``, which names them and, for
    each row, where it came from (``where(index)``: a URL and data row).
    """

    def __init__(
        self, stream: str, rows: Sequence[BadRow], label: str | None = None, where: Callable[[int], str] | None = None
    ) -> None:
        self.stream = stream
        self.rows = list(rows)
        shown = []
        for r in self.rows:
            at = f" at minute {r.minute}" if r.minute else ""
            origin = f" ({where(r.index)})" if where else f" (row {r.index + 1} of the {stream} batch)"
            shown.append(f"blocking rule {r.rule!r} failed: {r.column} = {r.value}{at}{origin}")
        super().__init__(f"{label or stream}: not committed — " + "; ".join(shown))

    def located(self, label: str, where: Callable[[int], str]) -> BadSourceRows:
        return BadSourceRows(self.stream, self.rows, label, where)


def _bad_indices(mask: pa.Array | pa.ChunkedArray, limit: int) -> list[int]:
    return [int(i) for i in np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))[:limit]]


def check_source_rows(batch: pa.RecordBatch | pa.Table, rows: SourceRows) -> None:
    """Raise ``BadSourceRows`` (the first few offending rows of each rule) unless every
    row of ``batch`` is inside its columns' domains and its ordered pairs hold.

    Vectorised: one min/max (and one NaN test for floats) per column when all is well;
    the offending rows are looked for only when something is out of bounds.
    """
    found: list[tuple[str, str, int, Any]] = []  # rule, column, index, value
    for name, domain in rows.columns:
        values = batch.column(name)
        if len(values) == 0:
            continue
        bounds = pc.min_max(values)  # NULLs and NaNs skipped
        low, high = bounds["min"].as_py(), bounds["max"].as_py()
        has_nan = pa.types.is_floating(values.type) and pc.any(pc.is_nan(values)).as_py()
        if not has_nan and (low is None or (low >= domain.low and high <= domain.high)):
            continue
        inside = pc.and_(pc.greater_equal(values, domain.low), pc.less_equal(values, domain.high))
        outside = pc.invert(pc.fill_null(inside, True))  # NULL is not a domain's business
        found += [(domain.rule, name, i, values[i].as_py()) for i in _bad_indices(outside, MAX_FAILURES_IN_ERROR)]
    for first, second in rows.ordered:
        a, b = batch.column(first), batch.column(second)
        disorder = pc.fill_null(pc.greater(a, b), False)
        if pc.any(disorder).as_py():
            found += [
                (f"{first}_not_after_{second}", f"{first}/{second}", i, f"{a[i].as_py()}/{b[i].as_py()}")
                for i in _bad_indices(disorder, MAX_FAILURES_IN_ERROR)
            ]
    if found:
        times = batch.column(rows.time_column)

        def minute(i: int) -> str | None:
            t = times[i].as_py()
            if not isinstance(t, int) or not (EPOCH_MS.low <= t <= EPOCH_MS.high):
                return None
            return ms_to_datetime(floor_minute_ms(t)).isoformat()

        bad = [BadRow(rule, column, value, i, minute(i)) for rule, column, i, value in found]
        raise BadSourceRows(rows.stream, sorted(bad, key=lambda r: r.index))


# --- reported rules --------------------------------------------------------


def _row_count_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    facts = {"rows": len(ev.frame), "closed_day": ev.closed_day, "source_gaps": len(ev.source_gaps)}
    if not ev.closed_day or len(ev.frame) == MINUTES_PER_DAY:
        return NO_FAILURES, facts
    grid = pd.date_range(pd.Timestamp(ev.day, tz="UTC"), periods=MINUTES_PER_DAY, freq="min")
    missing = grid.difference(pd.DatetimeIndex(ev.frame["timestamp"]))
    return _rows(pd.Series(missing), "timestamp", ["missing minute"] * len(missing)), facts


def _rel_close(a: pd.Series, b: pd.Series) -> pd.Series:
    return (a - b).abs() <= REL_TOLERANCE * pd.concat([a.abs(), b.abs()], axis=1).max(axis=1).clip(lower=1e-300)


def _vwap_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    def ok(d: pd.DataFrame) -> pd.Series:
        lo = (d["vwap_1m"] >= d["low"]) | _rel_close(d["vwap_1m"], d["low"])
        hi = (d["vwap_1m"] <= d["high"]) | _rel_close(d["vwap_1m"], d["high"])
        return lo & hi

    return _frame_failures("low ≤ vwap_1m ≤ high", ok, ev), {}


def _trade_count_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    return _frame_failures(
        "count_buy_trades + count_sell_trades = trade_count",
        lambda d: (d["count_buy_trades"] + d["count_sell_trades"]) == d["trade_count"],
        ev,
    ), {}


def _agg_quantity_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.trade_flow is None:
        return NO_FAILURES, {"skipped": "no aggTrades for this day"}
    qty = ev.trade_flow.set_index("timestamp")["quantity_sum"]
    frame = ev.frame[["timestamp", "volume_btc"]].copy()
    frame["agg_quantity"] = frame["timestamp"].map(qty).fillna(0.0).astype("Float64")
    bad = ~(_rel_close(frame["agg_quantity"], frame["volume_btc"]) | (frame["agg_quantity"] == frame["volume_btc"]))
    values = [
        f"Σ aggTrade quantity {q} ≠ volume_btc {v}"
        for q, v in zip(frame.loc[bad, "agg_quantity"], frame.loc[bad, "volume_btc"], strict=True)
    ]
    return _rows(frame.loc[bad, "timestamp"], "volume_btc", values), {}


def _taker_buy_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    return _frame_failures(
        "taker_buy_vol_btc ≤ volume_btc",
        lambda d: (d["taker_buy_vol_btc"] <= d["volume_btc"]) | _rel_close(d["taker_buy_vol_btc"], d["volume_btc"]),
        ev,
    ), {}


def _agg_id_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.trade_flow is None or ev.trade_flow.empty:
        return NO_FAILURES, {"skipped": "no aggTrades for this day"}
    tf = ev.trade_flow.sort_values("timestamp")
    inside = (tf["last_agg_trade_id"] - tf["first_agg_trade_id"] + 1) != tf["agg_trade_count"]
    across = (tf["first_agg_trade_id"] - tf["last_agg_trade_id"].shift(1)) != 1
    across.iloc[0] = False
    rows = [
        _rows(
            tf.loc[inside, "timestamp"],
            "agg_trade_id",
            ["ids inside the minute are not contiguous"] * int(inside.sum()),
        ),
        _rows(
            tf.loc[across, "timestamp"],
            "agg_trade_id",
            [
                f"jumps from {p} to {f}"
                for p, f in zip(
                    tf["last_agg_trade_id"].shift(1)[across], tf.loc[across, "first_agg_trade_id"], strict=True
                )
            ],
        ),
    ]
    facts = {
        "first_agg_trade_id": int(tf["first_agg_trade_id"].iloc[0]),
        "last_agg_trade_id": int(tf["last_agg_trade_id"].iloc[-1]),
    }
    return pd.concat(rows), facts


def _mark_index_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    def ok(d: pd.DataFrame) -> pd.Series:
        near = lambda c: ((d[c] - d["close"]).abs() / d["close"]) <= MAX_PRICE_DEVIATION  # noqa: E731
        return near("mark_price_close") & near("index_price_close")

    return _frame_failures("mark and index within 5 % of close", ok, ev), {}


def _slow_null_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    n = max(len(ev.frame), 1)
    rates = {c: round(float(ev.frame[c].isna().sum()) / n, 6) for c in SLOW_COLUMNS}
    # Metrics exist for every futures day Vision publishes them: a NULL there while the
    # stream was available means the forward-fill bound ran out.
    metrics_available = ev.provenance.is_vision(Stream.METRICS)
    failing = [c for c in METRICS_COLUMNS if metrics_available and rates[c] > 0]
    rows = [
        _rows(
            ev.frame.loc[ev.frame[c].isna(), "timestamp"],
            c,
            ["NULL after the forward-fill bound"] * int(ev.frame[c].isna().sum()),
        )
        for c in failing
    ]
    return (pd.concat(rows) if rows else NO_FAILURES), {"null_rate": rates}


def _provenance_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    missing = [s.value for s in PROVENANCE_STREAMS if s not in ev.provenance]
    return (
        pd.DataFrame({"minute": [None] * len(missing), "column": missing, "value": ["no provenance"] * len(missing)})
        if missing
        else NO_FAILURES
    ), {"sources": {s.value: str(ev.provenance.status_of(s) or "missing") for s in PROVENANCE_STREAMS}}


def _promotion_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.replaced_rest_view is None:
        return NO_FAILURES, {"skipped": "not a promotion from REST"}
    old = ev.replaced_rest_view.set_index("timestamp")
    new = ev.frame.set_index("timestamp")
    common = new.index.intersection(old.index)
    parts = []
    for column in HARD_COLUMNS:
        if column == "timestamp":
            continue
        a, b = new.loc[common, column].astype("Float64"), old.loc[common, column].astype("Float64")
        bad = ~(_rel_close(a, b) | (a == b)).fillna(False)
        if bad.any():
            parts.append(
                _rows(
                    pd.Series(common[bad.to_numpy()]),
                    column,
                    [f"vision {x} ≠ rest {y}" for x, y in zip(a[bad], b[bad], strict=True)],
                )
            )
    facts = {"minutes_compared": len(common), "rest_only_minutes": len(old.index.difference(new.index))}
    return (pd.concat(parts) if parts else NO_FAILURES), facts


BLOCKING_RULES: tuple[Rule, ...] = blocking_rules(MINUTE_VIEW)
REPORTED_RULES: tuple[Rule, ...] = (
    Rule(
        "closed_day_has_1440_rows", "a closed day holds 1440 minutes (missing ones are listed)", False, _row_count_rule
    ),
    Rule("vwap_within_low_high", "vwap_1m within [low, high]", False, _vwap_rule),
    Rule("buy_sell_counts_add_up", "count_buy_trades + count_sell_trades = trade_count", False, _trade_count_rule),
    Rule(
        "agg_quantity_equals_volume", "Σ aggTrade quantity = volume_btc within 1e-9 relative", False, _agg_quantity_rule
    ),
    Rule("taker_buy_within_volume", "taker_buy_vol_btc ≤ volume_btc", False, _taker_buy_rule),
    Rule("agg_trade_ids_contiguous", "agg_trade_id contiguous across the day", False, _agg_id_rule),
    Rule("mark_index_near_close", "mark and index within 5 % of close", False, _mark_index_rule),
    Rule("slow_series_null_rate", "NULL rate of the slow series (book, open interest, ratios)", False, _slow_null_rule),
    Rule(
        "source_provenance",
        "every stream names its source (vision / rest / live) or why it has none",
        False,
        _provenance_rule,
    ),
    Rule(
        "promotion_matches_rest",
        "a Vision rebuild of a REST-built day agrees with it on HARD columns (1e-9 relative)",
        False,
        _promotion_rule,
    ),
)
ALL_RULES = BLOCKING_RULES + REPORTED_RULES


# --- enforcing ----------------------------------------------------------------


def describe_failures(outcomes: Sequence[Outcome], locate: RowLocator | None = None) -> str:
    """``blocking rule 'X' failed (n failures): high = inf at minute … (where it came from); …``
    for the first few failures of each rule."""
    parts = []
    for o in outcomes:
        shown = []
        for r in o.failures.head(MAX_FAILURES_IN_ERROR).itertuples():
            if r.minute is None or pd.isna(r.minute):
                shown.append(f"{r.column}: {r.value}")
                continue
            where = _where(locate, str(r.minute), str(r.column))
            what = f"{r.column} = {r.value}" if o.rule.shows_values else f"{r.column} {r.value}"
            shown.append(f"{what} at minute {r.minute}" + (f" ({where})" if where else ""))
        more = len(o.failures) - len(shown)
        parts.append(
            f"blocking rule {o.rule.name!r} failed ({len(o.failures)} failure{'s' if len(o.failures) > 1 else ''}): "
            + "; ".join(shown)
            + (f"; and {more} more" if more > 0 else "")
        )
    return " — ".join(parts)


def _where(locate: RowLocator | None, minute: str, column: str) -> str | None:
    if locate is None:
        return None
    try:
        return locate(dt.datetime.fromisoformat(minute), column)
    except Exception as exc:  # naming the row is a courtesy: it must never hide the refusal
        return f"row not located: {exc}"


class BlockingCheckFailed(ValueError):
    """A partition broke a blocking rule; it is not published."""

    def __init__(self, label: str, outcomes: Sequence[Outcome], locate: RowLocator | None = None) -> None:
        self.label = label
        self.outcomes = list(outcomes)
        super().__init__(f"{label}: not committed — {describe_failures(self.outcomes, locate)}")


@dataclass(frozen=True, eq=False)
class BlockingVerdict:
    """The blocking rules of ``dataset`` judged on exactly ``table`` (held by identity) as a
    table of ``day``. The minute view's asset judges its table once, with its checks, and
    hands the verdict to the commit; any other table is judged there (``enforce_blocking``)."""

    dataset: Dataset
    day: dt.date
    table: pa.Table
    outcomes: tuple[Outcome, ...]

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.passed]

    @property
    def passed(self) -> bool:
        return not self.failed

    def covers(self, table: pa.Table, day: dt.date, dataset: Dataset) -> bool:
        """Whether this verdict is about ``table`` itself (not an equal copy), as ``dataset`` on ``day``."""
        return self.table is table and self.day == day and self.dataset is dataset


def judge_blocking(table: pa.Table, evidence: Evidence | dt.date, dataset: Dataset = MINUTE_VIEW) -> BlockingVerdict:
    """Judge every blocking rule of ``dataset`` once on ``table``; ``evidence`` holds its frame
    (``to_frame(table)``) and day, or is only the day (the frame is then made if the rules
    must run). A wrong arrow schema is judged first, alone: pandera would be comparing
    something else. Then the vectorised pass: a table it finds clean passes every rule
    (with their facts); anything else is judged by the rules themselves."""
    rules = blocking_rules(dataset)
    day = evidence.day if isinstance(evidence, Evidence) else evidence
    expected_schema = dataset.arrow_schema
    if table.schema.remove_metadata() != expected_schema.remove_metadata():
        expected = [f"{f.name}:{f.type}" for f in expected_schema]
        got = [f"{f.name}:{f.type}" for f in table.schema]
        diff = [f"#{i + 1} expected {e} got {g}" for i, (e, g) in enumerate(zip(expected, got, strict=False)) if e != g]
        value = ", ".join(diff[:5]) or f"{len(got)} columns instead of {len(expected)}"
        failure = pd.DataFrame({"minute": [None], "column": ["schema"], "value": [value]})
        return BlockingVerdict(dataset, day, table, (Outcome(rules[0], False, failure),))
    if _certainly_clean(table, dataset, day):
        return BlockingVerdict(
            dataset, day, table, tuple(Outcome(r, True, NO_FAILURES, r.clean_facts(table)) for r in rules)
        )
    if not isinstance(evidence, Evidence):
        evidence = Evidence(day=day, frame=to_frame(table), closed_day=True, time_column=dataset.time_column)
    return BlockingVerdict(dataset, day, table, tuple(r.run(evidence) for r in rules))


def enforce_blocking(
    table: pa.Table,
    day: dt.date,
    *,
    label: str,
    dataset: Dataset = MINUTE_VIEW,
    locate: RowLocator | None = None,
    verdict: BlockingVerdict | None = None,
) -> None:
    """Raise ``BlockingCheckFailed`` unless every blocking rule of ``dataset`` holds
    (called before the rename). ``locate`` names where a failing row came from.

    ``verdict``: the rules already judged on this very table (the minute view's asset);
    a verdict about any other table, day or dataset is ignored and the rules run here."""
    if verdict is None or not verdict.covers(table, day, dataset):
        verdict = judge_blocking(table, day, dataset)
    if not verdict.passed:
        raise BlockingCheckFailed(label, verdict.failed, locate)


def evaluate(evidence: Evidence) -> list[Outcome]:
    return [r.run(evidence) for r in ALL_RULES]
