"""The column registry as the only list: what is derived from it, its units, its own
consistency check, and that no other module lists its columns or streams again."""

from __future__ import annotations

import ast
from dataclasses import replace
from pathlib import Path

import pyarrow as pa

from bml_assets.domain import schema
from bml_assets.domain.schema import Column, ColumnClass, Unit, column_table_markdown, registry_errors
from bml_assets.domain.streams import Stream
from bml_assets.quality import blocking_rules

PACKAGE = Path(__file__).resolve().parents[3] / "bml_assets"


def test_the_hard_streams_are_those_of_the_hard_columns() -> None:
    assert schema.HARD_STREAMS == (Stream.KLINES, Stream.MARK_PRICE_KLINES, Stream.INDEX_PRICE_KLINES)
    assert [d.name for d in schema.HARD_DATASETS] == ["klines_1m", "mark_price_klines_1m", "index_price_klines_1m"]
    assert [d.name for d in schema.KLINE_DATASETS] == [
        "klines_1m",
        "mark_price_klines_1m",
        "index_price_klines_1m",
        "premium_index_klines_1m",
    ]


def test_the_slow_series_and_what_fills_them() -> None:
    assert schema.SLOW_COLUMNS == (
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
    assert schema.BOOK_COLUMNS == {
        "avg_spread_usdt": "last_spread_usdt",
        "bid_ask_imbalance": "last_bid_ask_imbalance",
        "avg_bid_depth": "last_bid_qty",
        "avg_ask_depth": "last_ask_qty",
        "spread_pct": "last_spread_pct",
    }
    assert schema.METRICS_COLUMNS == {
        "oi_contracts": "oi_contracts",
        "oi_value_usdt": "oi_value_usdt",
        "top_trader_ls_ratio_acct": "top_trader_ls_ratio_acct",
        "global_ls_ratio_acct": "global_ls_ratio_acct",
    }


def test_the_trade_flow_columns_and_which_are_zero_in_a_quiet_minute() -> None:
    assert schema.TRADE_FLOW_COLUMNS == (
        "transact_time",
        "max_trade_size_btc",
        "count_buy_trades",
        "count_sell_trades",
        "vol_buy_whale_btc",
        "vol_sell_whale_btc",
        "vol_buy_retail_btc",
        "vol_sell_retail_btc",
        "whale_trade_count",
        "realized_vol_1m",
    )
    zero = [n for n in schema.TRADE_FLOW_COLUMNS if schema.MINUTE_VIEW.column(n).zero_when_quiet]
    assert zero == list(schema.TRADE_FLOW_COLUMNS[1:])  # transact_time is NULL without trades


def test_the_streams_a_partition_names_and_the_live_columns() -> None:
    assert schema.PROVENANCE_STREAMS == tuple(Stream)
    assert schema.STREAM_COLUMNS[Stream.BOOK_TICKER] == (
        "micro_price_close",
        "avg_spread_usdt",
        "bid_ask_imbalance",
        "avg_bid_depth",
        "avg_ask_depth",
        "spread_pct",
    )
    assert schema.LIVE_COLUMNS == (
        "event_time",
        "arrival_time",
        "latency_engine",
        "latency_network",
        "update_id_start",
        "update_id_end",
        "liq_long_vol_usdt",
        "liq_short_vol_usdt",
        "liq_long_count",
        "liq_short_count",
        "liq_avg_fill_price",
        "liq_unfilled_ratio",
        "price_impact_100k",
        "predicted_funding",
    )
    assert all(schema.MINUTE_VIEW.column(n).source is None for n in schema.LIVE_COLUMNS)


def test_units_agree_with_names_and_types() -> None:
    """ "btc" in a name is the base asset, "usdt" the quote asset (a money amount, or a price
    in quote units); a timestamp is a UTC time; an integer is never a price or a quantity."""
    integer_units = {Unit.EPOCH_MS, Unit.DURATION_MS, Unit.ID, Unit.COUNT, Unit.HOURS}
    for dataset in schema.DATASETS.values():
        for c in dataset.columns:
            where = f"{dataset.name}.{c.name}"
            if c.name.endswith("_btc"):
                assert c.unit is Unit.BASE, where
            if c.name.endswith("_usdt"):
                assert c.unit in {Unit.QUOTE, Unit.PRICE}, where
            if c.type == schema.TIMESTAMP:
                assert c.unit is Unit.INSTANT, where
            if c.type == pa.int64():
                assert c.unit in integer_units, where
    assert schema.MINUTE_VIEW.column("volume_usdt").unit is Unit.QUOTE
    assert schema.MINUTE_VIEW.column("avg_spread_usdt").unit is Unit.PRICE
    assert schema.TRADE_FLOW.column("notional_sum").unit is Unit.QUOTE


def test_the_docs_table_shows_unit_source_and_what_fills_a_slow_series() -> None:
    lines = column_table_markdown().splitlines()
    assert lines[0] == "| # | column | type | class | source | unit | fill rule | domain |"
    assert len(lines) == 2 + len(schema.MINUTE_COLUMNS)
    assert lines[2 + 37] == (
        "| 38 | `avg_spread_usdt` | double | BACKFILL | bookTicker | quote per base | mean over the minute's "
        "bookTicker snapshots; else as-of last snapshot, ffill ≤ BML_MAX_FFILL_MINUTES "
        "(as-of book_ticker_1m.last_spread_usdt) | a price difference: finite, in [-1e+09, 1e+09] |"
    )
    assert lines[2 + 30].startswith("| 31 | `realized_vol_1m` | double | BACKFILL | aggTrades | log return |")
    assert lines[2 + 56].startswith("| 57 | `predicted_funding` | double | LIVE | live | fraction |")


def test_the_schema_check_name_carries_no_column_count() -> None:
    """Dagster keys a check's history by its name: adding a column must not rename it."""
    assert {blocking_rules(d)[0].name for d in schema.DATASETS.values()} == {"schema_columns"}
    assert blocking_rules(schema.FUNDING)[0].description == "the 3 names and types, in order"


def test_the_registry_as_declared_is_consistent() -> None:
    assert registry_errors() == []


def test_registry_errors_name_each_inconsistency() -> None:
    spread = schema.MINUTE_VIEW.column("avg_spread_usdt")
    broken = (
        replace(schema.MINUTE_VIEW.column("timestamp"), klass=ColumnClass.BACKFILL),
        replace(spread, asof="last_spread_bps"),
        Column("book_depth_10", pa.float64(), schema.QUANTITY, Unit.BASE, ColumnClass.BACKFILL, Stream.BOOK_TICKER),
        Column("oi_change", pa.float64(), schema.QUANTITY_DIFFERENCE, Unit.BASE, ColumnClass.BACKFILL),
        Column("trades_x", pa.int64(), schema.COUNT, Unit.COUNT, source=Stream.AGG_TRADES),
    )
    twice = replace(schema.METRICS, columns=schema.METRICS.columns + schema.METRICS.columns[1:2])
    assert registry_errors([twice, schema.BOOK_TICKER, schema.TRADE_FLOW], broken) == [
        "metrics_5m: column 'oi_contracts' is declared twice",
        "minute view: the time column timestamp must be HARD",
        "minute view: avg_spread_usdt is filled as-of from bookTicker.last_spread_bps, which is not declared",
        "minute view: book_depth_10 is copied from the bookTicker table, which has no such column",
        "minute view: oi_change is BACKFILL but names no source stream",
        "minute view: trades_x has no class",
        "minute view: trades_x is copied from the aggTrades table, which has no such column",
    ]


def _string_lists(tree: ast.AST) -> list[tuple[int, list[str]]]:
    """Tuple, list and set literals of 3 or more string constants."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set) and len(node.elts) >= 3:
            if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                out.append((node.lineno, [e.value for e in node.elts]))  # type: ignore[union-attr]
    return out


def test_no_module_lists_minute_view_columns_or_streams_again() -> None:
    """The registry is the only list: a literal of minute-view column names or stream names
    anywhere else is a copy that a new column would leave behind."""
    columns = {c.name for c in schema.MINUTE_COLUMNS}
    streams = {s.value for s in Stream}
    copies = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "domain" or "replay" in path.parts:
            continue  # the declarations; the replay market fakes the exchange's own files
        for line, names in _string_lists(ast.parse(path.read_text(encoding="utf-8"))):
            if set(names) <= columns or set(names) <= streams:
                copies.append(f"{path.relative_to(PACKAGE.parent)}:{line} {names}")
    assert copies == []
