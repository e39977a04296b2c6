"""Data quality of the minute view (SPEC §6): pandera rules and the Dagster check factory.

What belongs here: the rules, each declared once as data (name, blocking or
reported, a pandera schema or a small function returning offending minutes); the
pandera schema derived from the column registry; ``enforce_blocking`` (called by
the IO manager before the rename, because a Dagster blocking check runs only
after the write); and ``check_result``, the one factory that turns a rule's
failure cases into ``AssetCheckResult`` metadata. What stays out: formulas
(``features/``) and I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pandera.pandas as pdr
import pyarrow as pa
from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec, MetadataValue

from bml_assets.schema import (
    F64,
    HARD_COLUMNS,
    I64,
    MINUTE_COLUMNS,
    MINUTE_SCHEMA,
    TIMESTAMP,
)

MINUTES_PER_DAY = 1440
REL_TOLERANCE = 1e-9
MAX_PRICE_DEVIATION = 0.05  # mark and index within 5 % of close
MAX_LISTED_FAILURES = 50  # offending minutes shown in check metadata
SLOW_COLUMNS = (
    "avg_spread_usdt",
    "bid_ask_imbalance",
    "avg_bid_depth",
    "avg_ask_depth",
    "spread_pct",
    "oi_contracts",
    "oi_value_usdt",
    "top_trader_ls_ratio_acct",
    "global_ls_ratio_acct",
)
# Streams whose provenance every partition must name (SPEC §6 "source provenance").
PROVENANCE_STREAMS = (
    "klines",
    "markPriceKlines",
    "indexPriceKlines",
    "premiumIndexKlines",
    "aggTrades",
    "bookTicker",
    "metrics",
    "fundingRate",
)

_PANDAS_DTYPES: dict[pa.DataType, Any] = {
    TIMESTAMP: pd.DatetimeTZDtype("ms", "UTC"),
    I64: pd.Int64Dtype(),
    F64: pd.Float64Dtype(),
}


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Arrow → pandas with nullable dtypes, so NULL stays NULL and ints stay ints."""
    return table.to_pandas(
        types_mapper={pa.int64(): pd.Int64Dtype(), pa.float64(): pd.Float64Dtype()}.get,
        ignore_metadata=True,
    )


def minute_view_schema(*, hard_not_null: bool = True) -> pdr.DataFrameSchema:
    """The pandera model of the 58 columns, generated from the registry.

    ``hard_not_null=False`` checks names, order and types only: the NULL rule is
    reported separately, so one fault is not counted twice.
    """
    return pdr.DataFrameSchema(
        {
            c.name: pdr.Column(
                _PANDAS_DTYPES[c.type],
                nullable=not (hard_not_null and c.name in HARD_COLUMNS),
                description=c.description,
            )
            for c in MINUTE_COLUMNS
        },
        strict=True,
        ordered=True,
        name="minute_view",
    )


@dataclass(frozen=True)
class Evidence:
    """Everything the rules look at for one partition."""

    day: dt.date
    frame: pd.DataFrame
    closed_day: bool
    trade_flow: pd.DataFrame | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict)
    source_gaps: Sequence[Mapping[str, Any]] = ()
    # The REST-built view this Vision build replaces (a promotion), else None.
    replaced_rest_view: pd.DataFrame | None = None


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

    def run(self, evidence: Evidence) -> Outcome:
        failures, facts = self.evaluate(evidence)
        return Outcome(self, failures.empty, failures, facts)

    @property
    def spec_kwargs(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "blocking": self.blocking}


_NO_FAILURES = pd.DataFrame({"minute": pd.Series(dtype="object"), "column": [], "value": []})


def _pandera_failures(schema: pdr.DataFrameSchema, ev: Evidence) -> pd.DataFrame:
    """Run a pandera schema lazily; its failure cases become (minute, column, value) rows."""
    frame = ev.frame
    try:
        schema.validate(frame, lazy=True)
    except pdr.errors.SchemaErrors as err:
        cases = err.failure_cases
        minutes = [
            frame["timestamp"].iloc[int(i)].isoformat()
            if isinstance(i, (int, float)) and not pd.isna(i) and 0 <= int(i) < len(frame)
            else None
            for i in cases["index"]
        ]
        return pd.DataFrame(
            {
                "minute": minutes,
                "column": cases["column"].astype(str),
                "value": [f"{c}: {v}" for c, v in zip(cases["check"], cases["failure_case"], strict=True)],
            }
        )
    return _NO_FAILURES


def _rows(minutes: pd.Series, column: str, values: pd.Series) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "minute": [m.isoformat() for m in minutes],
            "column": column,
            "value": [str(v) for v in values],
        }
    )


def _frame_check(name: str, fn: Callable[[pd.DataFrame], pd.Series]) -> pdr.DataFrameSchema:
    return pdr.DataFrameSchema(checks=[pdr.Check(fn, name=name, ignore_na=True)])


# --- blocking rules --------------------------------------------------------


def _schema_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    return _pandera_failures(minute_view_schema(hard_not_null=False), ev), {"columns": len(ev.frame.columns)}


def _timestamps_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    start = pd.Timestamp(ev.day, tz="UTC")
    end = start + pd.Timedelta(days=1)
    ts = ev.frame["timestamp"]
    schema = pdr.DataFrameSchema(
        {
            "timestamp": pdr.Column(
                checks=[
                    pdr.Check.ge(start, name="on_or_after_day_start"),
                    pdr.Check.lt(end, name="before_day_end"),
                    pdr.Check(lambda s: s.dt.second.eq(0) & s.dt.microsecond.eq(0), name="minute_aligned"),
                ],
                unique=True,
                nullable=False,
            )
        }
    )
    failures = _pandera_failures(schema, ev)
    disorder = ts.diff() <= pd.Timedelta(0)
    if disorder.any():
        failures = pd.concat(
            [failures, _rows(ts[disorder], "timestamp", ["not after the previous row"] * int(disorder.sum()))]
        )
    return failures, {"rows": len(ts)}


def _hard_not_null_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    hard = minute_view_schema().select_columns([c for c in HARD_COLUMNS if c in ev.frame])
    failures = _pandera_failures(hard, Evidence(ev.day, ev.frame[list(hard.columns)], ev.closed_day))
    return failures.assign(value="NULL"), {"hard_columns": len(HARD_COLUMNS)}


def _ohlc_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    schema = _frame_check(
        "low ≤ min(open, close) ≤ max(open, close) ≤ high",
        lambda d: (d["low"] <= d[["open", "close"]].min(axis=1)) & (d[["open", "close"]].max(axis=1) <= d["high"]),
    )
    return _pandera_failures(schema, ev), {}


# --- reported rules --------------------------------------------------------


def _row_count_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    facts = {"rows": len(ev.frame), "closed_day": ev.closed_day, "source_gaps": len(ev.source_gaps)}
    if not ev.closed_day or len(ev.frame) == MINUTES_PER_DAY:
        return _NO_FAILURES, facts
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

    return _pandera_failures(_frame_check("low ≤ vwap_1m ≤ high", ok), ev), {}


def _trade_count_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    schema = _frame_check(
        "count_buy_trades + count_sell_trades = trade_count",
        lambda d: (d["count_buy_trades"] + d["count_sell_trades"]) == d["trade_count"],
    )
    return _pandera_failures(schema, ev), {}


def _agg_quantity_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.trade_flow is None:
        return _NO_FAILURES, {"skipped": "no aggTrades for this day"}
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
    schema = _frame_check(
        "taker_buy_vol_btc ≤ volume_btc",
        lambda d: (d["taker_buy_vol_btc"] <= d["volume_btc"]) | _rel_close(d["taker_buy_vol_btc"], d["volume_btc"]),
    )
    return _pandera_failures(schema, ev), {}


def _agg_id_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.trade_flow is None or ev.trade_flow.empty:
        return _NO_FAILURES, {"skipped": "no aggTrades for this day"}
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

    return _pandera_failures(_frame_check("mark and index within 5 % of close", ok), ev), {}


def _slow_null_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    n = max(len(ev.frame), 1)
    rates = {c: round(float(ev.frame[c].isna().sum()) / n, 6) for c in SLOW_COLUMNS}
    # Metrics exist for every futures day Vision publishes them: a NULL there while the
    # stream was available means the forward-fill bound ran out.
    metrics_available = ev.provenance.get("metrics", {}).get("status") == "vision"
    failing = [c for c in SLOW_COLUMNS[5:] if metrics_available and rates[c] > 0]
    rows = [
        _rows(
            ev.frame.loc[ev.frame[c].isna(), "timestamp"],
            c,
            ["NULL after the forward-fill bound"] * int(ev.frame[c].isna().sum()),
        )
        for c in failing
    ]
    return (pd.concat(rows) if rows else _NO_FAILURES), {"null_rate": rates}


def _provenance_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    missing = [s for s in PROVENANCE_STREAMS if s not in ev.provenance]
    return (
        pd.DataFrame({"minute": [None] * len(missing), "column": missing, "value": ["no provenance"] * len(missing)})
        if missing
        else _NO_FAILURES
    ), {"sources": {s: ev.provenance.get(s, {}).get("status", "missing") for s in PROVENANCE_STREAMS}}


def _promotion_rule(ev: Evidence) -> tuple[pd.DataFrame, Mapping[str, Any]]:
    if ev.replaced_rest_view is None:
        return _NO_FAILURES, {"skipped": "not a promotion from REST"}
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
    return (pd.concat(parts) if parts else _NO_FAILURES), facts


BLOCKING_RULES: tuple[Rule, ...] = (
    Rule("schema_58_columns", "the 58 names and types, in order (SPEC §5)", True, _schema_rule),
    Rule(
        "timestamps_unique_sorted_in_day",
        "unique, sorted, minute-aligned timestamps inside the partition's day",
        True,
        _timestamps_rule,
    ),
    Rule("hard_columns_not_null", "no NULL in a HARD column", True, _hard_not_null_rule),
    Rule("ohlc_consistent", "low ≤ min(open, close) ≤ max(open, close) ≤ high", True, _ohlc_rule),
)
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


class BlockingCheckFailed(ValueError):
    """A partition broke a blocking rule; it is not published."""

    def __init__(self, label: str, outcomes: Sequence[Outcome]) -> None:
        self.outcomes = list(outcomes)
        details = "; ".join(
            f"{o.rule.name}: {len(o.failures)} failure(s), e.g. "
            + ", ".join(f"{r.minute} {r.column} {r.value}" for r in o.failures.head(3).itertuples())
            for o in outcomes
        )
        super().__init__(f"{label} not published, blocking checks failed — {details}")


def enforce_blocking(table: pa.Table, day: dt.date, *, label: str) -> None:
    """Raise ``BlockingCheckFailed`` unless every blocking rule holds (called before the rename)."""
    if table.schema.remove_metadata() != MINUTE_SCHEMA.remove_metadata():
        # The arrow schema itself is wrong: pandera would be comparing something else.
        expected = [f"{f.name}:{f.type}" for f in MINUTE_SCHEMA]
        got = [f"{f.name}:{f.type}" for f in table.schema]
        diff = [f"#{i + 1} expected {e} got {g}" for i, (e, g) in enumerate(zip(expected, got, strict=False)) if e != g]
        raise BlockingCheckFailed(
            label,
            [
                Outcome(
                    BLOCKING_RULES[0],
                    False,
                    pd.DataFrame(
                        {
                            "minute": [None],
                            "column": ["schema"],
                            "value": [", ".join(diff[:5]) or f"{len(got)} columns instead of {len(expected)}"],
                        }
                    ),
                )
            ],
        )
    evidence = Evidence(day=day, frame=to_frame(table), closed_day=True)
    failed = [o for o in (r.run(evidence) for r in BLOCKING_RULES) if not o.passed]
    if failed:
        raise BlockingCheckFailed(label, failed)


def evaluate(evidence: Evidence) -> list[Outcome]:
    return [r.run(evidence) for r in ALL_RULES]


def check_specs(asset_key: Any) -> list[AssetCheckSpec]:
    return [AssetCheckSpec(asset=asset_key, **r.spec_kwargs) for r in ALL_RULES]


def check_result(rule: Rule, outcomes_by_partition: Mapping[str, Outcome]) -> AssetCheckResult:
    """The factory: pandera failure cases of one rule, over the run's partitions, as check metadata."""
    failing = {k: o for k, o in outcomes_by_partition.items() if not o.passed}
    frames = [o.failures.assign(partition=k) for k, o in failing.items()]
    cases = pd.concat(frames) if frames else _NO_FAILURES.assign(partition=[])
    metadata: dict[str, Any] = {
        "partitions_checked": len(outcomes_by_partition),
        "partitions_failing": len(failing),
        "failure_count": len(cases),
    }
    if len(cases):
        shown = cases[["partition", "minute", "column", "value"]].head(MAX_LISTED_FAILURES)
        metadata["offending_minutes"] = MetadataValue.md(_markdown_table(shown))
        metadata["offending_minute_list"] = MetadataValue.json(
            sorted({str(m) for m in cases["minute"] if m})[:MAX_LISTED_FAILURES]
        )
    facts = {k: dict(o.facts) for k, o in outcomes_by_partition.items() if o.facts}
    if facts:
        metadata["facts"] = MetadataValue.json(facts)
    return AssetCheckResult(
        check_name=rule.name,
        passed=not failing,
        severity=AssetCheckSeverity.ERROR if rule.blocking else AssetCheckSeverity.WARN,
        metadata=metadata,
        description=rule.description,
    )


def _markdown_table(frame: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(frame.columns) + " |", "|" + " --- |" * len(frame.columns)]
    lines += [
        "| " + " | ".join(str(v).replace("|", "\\|") for v in row) + " |" for row in frame.itertuples(index=False)
    ]
    return "\n".join(lines)
