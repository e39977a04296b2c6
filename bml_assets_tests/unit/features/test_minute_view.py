"""build_minute_view: rows, source gaps, every BACKFILL column's fill rule, the 58-column schema."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from bml_assets.domain import schema
from bml_assets.features.book import book_ticker_minutes
from bml_assets.features.funding import funding_settlements, settlements_for_day
from bml_assets.features.metrics import combine_observations, metrics_observations
from bml_assets.features.minute_view import MinuteView, SourceGap, build_minute_view
from bml_assets.features.trade_flow import trade_flow
from bml_assets_tests.unit.features.builders import (
    dataset_table,
    ms,
    raw_agg_trades,
    raw_book_ticker,
    raw_funding,
    raw_metrics,
    utc,
)

DAY = dt.date(2024, 3, 1)
KLINE = (100.0, 102.0, 99.0, 101.0, 2.0, 201.0, 4, 1.5, 150.75)  # o h l c vol qvol count tbv tbqv
MARK = (100.5, 100.8, 100.4, 100.7)
INDEX = (100.4, 100.7, 100.3, 100.6)
TRADE_COLUMNS = (
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
BOOK_COLUMNS = (
    "micro_price_close",
    "avg_spread_usdt",
    "bid_ask_imbalance",
    "avg_bid_depth",
    "avg_ask_depth",
    "spread_pct",
)
METRIC_COLUMNS = (
    "oi_contracts",
    "oi_value_usdt",
    "top_trader_ls_ratio_acct",
    "global_ls_ratio_acct",
    "ls_ratio_divergence",
    "top_trader_long_pct",
    "top_trader_short_pct",
)


def day_minutes(day: dt.date, count: int = 1440) -> list[str]:
    start = dt.datetime(day.year, day.month, day.day)
    return [(start + dt.timedelta(minutes=i)).isoformat(sep=" ") for i in range(count)]


def klines(minutes: list[str], values: tuple = KLINE) -> pa.Table:
    return dataset_table(schema.KLINES, [(m, *values) for m in minutes])


def prices(dataset: schema.Dataset, minutes: list[str], values: tuple) -> pa.Table:
    return dataset_table(dataset, [(m, *values) for m in minutes])


def view(
    minutes: list[str],
    *,
    day: dt.date = DAY,
    grid_end: str | None = None,
    max_ffill_minutes: int = 60,
    **streams,
) -> MinuteView:
    """The view of ``day`` with all three HARD streams on ``minutes`` unless overridden."""
    inputs = {
        "klines": klines(minutes),
        "mark": prices(schema.MARK_PRICE_KLINES, minutes, MARK),
        "index": prices(schema.INDEX_PRICE_KLINES, minutes, INDEX),
        "premium": None,
        "trade_flow": None,
        "book": None,
        "metrics": None,
        "funding": None,
    } | streams
    return build_minute_view(
        day,
        **inputs,
        max_ffill_minutes=max_ffill_minutes,
        grid_end=utc(grid_end) if grid_end else None,
    )


def col(result: MinuteView, name: str) -> list:
    return result.table.column(name).to_pylist()


# --- rows, gaps, schema --------------------------------------------------------------------


def test_a_full_day_has_exactly_the_minute_schema_and_1440_sorted_rows():
    result = view(day_minutes(DAY))

    assert result.table.schema.equals(schema.MINUTE_SCHEMA)
    assert result.table.column_names == [c.name for c in schema.MINUTE_COLUMNS]
    assert result.table.num_rows == 1440
    stamps = col(result, "timestamp")
    assert stamps[0] == utc("2024-03-01 00:00")
    assert stamps[-1] == utc("2024-03-01 23:59")
    assert stamps == sorted(set(stamps))
    assert result.source_gaps == []
    assert result.warnings == []
    for name in schema.LIVE_COLUMNS:
        assert result.table.column(name).null_count == 1440, name
    for name in schema.HARD_COLUMNS:
        assert result.table.column(name).null_count == 0, name


def test_exchange_gap_minutes_are_reported_and_absent():
    everything = day_minutes(DAY)
    down = {"2024-03-01 10:00:00", "2024-03-01 10:01:00", "2024-03-01 10:02:00"}
    kl = [m for m in everything if m not in down | {"2024-03-01 13:00:00"}]
    mk = [m for m in everything if m not in down | {"2024-03-01 12:00:00"}]
    ix = [m for m in everything if m not in down | {"2024-03-01 13:00:00"}]
    result = view(
        everything,
        klines=klines(kl),
        mark=prices(schema.MARK_PRICE_KLINES, mk, MARK),
        index=prices(schema.INDEX_PRICE_KLINES, ix, INDEX),
    )

    all_three = ("klines_1m", "mark_price_klines_1m", "index_price_klines_1m")
    assert result.source_gaps == [
        SourceGap(utc("2024-03-01 10:00"), all_three),
        SourceGap(utc("2024-03-01 10:01"), all_three),
        SourceGap(utc("2024-03-01 10:02"), all_three),
        SourceGap(utc("2024-03-01 12:00"), ("mark_price_klines_1m",)),
        SourceGap(utc("2024-03-01 13:00"), ("klines_1m", "index_price_klines_1m")),
    ]
    assert result.table.num_rows == 1435
    stamps = set(col(result, "timestamp"))
    assert utc("2024-03-01 09:59") in stamps
    assert utc("2024-03-01 10:00") not in stamps
    assert utc("2024-03-01 10:03") in stamps
    assert utc("2024-03-01 12:00") not in stamps
    assert result.table.schema.equals(schema.MINUTE_SCHEMA)


def test_grid_end_limits_a_day_in_progress():
    result = view(day_minutes(DAY, 3), grid_end="2024-03-01 00:05")
    assert col(result, "timestamp") == [utc("2024-03-01 00:00"), utc("2024-03-01 00:01"), utc("2024-03-01 00:02")]
    assert [gap.minute for gap in result.source_gaps] == [utc("2024-03-01 00:03"), utc("2024-03-01 00:04")]


@pytest.mark.parametrize("missing", ["klines", "mark", "index"])
def test_a_missing_hard_stream_is_refused(missing):
    with pytest.raises(ValueError, match=missing):
        view(day_minutes(DAY, 2), **{missing: None})


def test_a_hard_minute_outside_the_day_is_refused():
    with pytest.raises(ValueError, match="2024-03-02"):
        view(["2024-03-01 23:59", "2024-03-02 00:00"])


# --- klines ------------------------------------------------------------------------------------


def test_kline_columns_and_the_zero_volume_minute():
    minutes = ["2024-03-01 00:00", "2024-03-01 00:01"]
    kl = dataset_table(
        schema.KLINES,
        [
            ("2024-03-01 00:00", *KLINE),
            ("2024-03-01 00:01", 101.0, 101.0, 101.0, 101.0, 0.0, 0.0, 0, 0.0, 0.0),
        ],
    )
    result = view(minutes, klines=kl, grid_end="2024-03-01 00:02")

    assert col(result, "open") == [100.0, 101.0]
    assert col(result, "high") == [102.0, 101.0]
    assert col(result, "low") == [99.0, 101.0]
    assert col(result, "close") == [101.0, 101.0]
    assert col(result, "volume_btc") == [2.0, 0.0]
    assert col(result, "volume_usdt") == [201.0, 0.0]
    assert col(result, "trade_count") == [4, 0]
    assert col(result, "taker_buy_vol_btc") == [1.5, 0.0]
    assert col(result, "taker_buy_vol_usdt") == [150.75, 0.0]
    assert col(result, "vwap_1m") == [100.5, 101.0]  # 201 / 2; close when volume is 0
    assert col(result, "avg_trade_size_btc") == [0.5, 0.0]  # 2 / 4; 0 when count is 0
    assert col(result, "net_taker_vol_btc") == [1.0, 0.0]  # 1.5 − 0.5
    assert col(result, "taker_buy_ratio") == [0.75, None]  # NULL when volume is 0


def test_mark_index_and_premium_columns():
    minutes = ["2024-03-01 00:00", "2024-03-01 00:01"]
    premium = dataset_table(schema.PREMIUM_INDEX_KLINES, [("2024-03-01 00:00", 0.0002, 0.0003, 0.0001, 0.00025)])
    result = view(minutes, premium=premium, grid_end="2024-03-01 00:02")

    assert col(result, "mark_price_open") == [100.5, 100.5]
    assert col(result, "mark_price_close") == [100.7, 100.7]
    assert col(result, "index_price_open") == [100.4, 100.4]
    assert col(result, "index_price_close") == [100.6, 100.6]
    assert col(result, "premium_index") == [0.00025, None]  # the minute's close; NULL where it lacks the minute
    assert col(view(minutes, grid_end="2024-03-01 00:02"), "premium_index") == [None, None]


# --- trades ------------------------------------------------------------------------------------


def test_trade_columns_zero_for_a_minute_without_trades():
    flow = trade_flow(
        raw_agg_trades(
            [
                (7, 50000.0, 2.0, 1, 3, "2024-03-01 00:00:05", False),  # taker buy, notional 100 000
                (8, 400.0, 2.5, 4, 4, "2024-03-01 00:00:40", True),  # taker sell, notional 1 000
            ]
        ),
        DAY,
        source="aggTrades.csv",
    )
    result = view(["2024-03-01 00:00", "2024-03-01 00:01"], trade_flow=flow, grid_end="2024-03-01 00:02")

    assert col(result, "transact_time") == [ms("2024-03-01 00:00:40"), None]
    assert col(result, "max_trade_size_btc") == [2.5, 0.0]
    assert col(result, "count_buy_trades") == [3, 0]
    assert col(result, "count_sell_trades") == [1, 0]
    assert col(result, "vol_buy_whale_btc") == [2.0, 0.0]
    assert col(result, "vol_sell_whale_btc") == [0.0, 0.0]
    assert col(result, "vol_buy_retail_btc") == [0.0, 0.0]
    assert col(result, "vol_sell_retail_btc") == [2.5, 0.0]
    assert col(result, "whale_trade_count") == [1, 0]
    realized = col(result, "realized_vol_1m")
    assert realized[0] == pytest.approx(4.8283137373023015, rel=1e-12)  # |ln(400/50000)| = ln 125
    assert realized[1] == 0.0


def test_trade_columns_are_null_without_an_aggtrades_file():
    result = view(["2024-03-01 00:00"], grid_end="2024-03-01 00:01")
    for name in TRADE_COLUMNS:
        assert col(result, name) == [None], name
    assert col(result, "vwap_1m") == [100.5]  # klines-derived columns stay


# --- book ----------------------------------------------------------------------------------------


def book_minutes() -> pa.Table:
    return book_ticker_minutes(
        raw_book_ticker(
            [
                (1, 100.0, 3.0, 101.0, 1.0, "2024-03-01 00:00:10"),
                (2, 100.0, 1.0, 100.5, 3.0, "2024-03-01 00:00:50"),  # the last of 00:00
                (3, 100.0, 0.0, 101.0, 0.0, "2024-03-01 00:04:20"),  # empty book: zero denominator
            ]
        ),
        DAY,
        source="bookTicker.csv",
    )


def test_book_minute_means_then_as_of_fill_within_the_bound():
    minutes = day_minutes(DAY, 6)  # 00:00 … 00:05
    result = view(minutes, book=book_minutes(), max_ffill_minutes=2, grid_end="2024-03-01 00:06")

    # 00:00 own means; 00:01-00:02 the 00:00 last snapshot (ages 1, 2); 00:03 too old;
    # 00:04 own (empty book); 00:05 the 00:04 snapshot, whose imbalance is undefined.
    assert col(result, "micro_price_close") == [100.125, None, None, None, None, None]
    assert col(result, "avg_spread_usdt") == [0.75, 0.5, 0.5, None, 1.0, 1.0]
    assert col(result, "bid_ask_imbalance") == [0.0, -0.5, -0.5, None, None, None]
    assert col(result, "avg_bid_depth") == [2.0, 1.0, 1.0, None, 0.0, 0.0]
    assert col(result, "avg_ask_depth") == [2.0, 3.0, 3.0, None, 0.0, 0.0]
    spread_pct = col(result, "spread_pct")
    assert spread_pct[0] == pytest.approx(0.00746888996414436546, rel=1e-12)  # mean of 1/100.5, 0.5/100.25
    assert spread_pct[1] == pytest.approx(0.00498753117206982544, rel=1e-12)  # 0.5 / 100.25
    assert spread_pct[2] == pytest.approx(0.00498753117206982544, rel=1e-12)
    assert spread_pct[3] is None
    assert spread_pct[4] == pytest.approx(0.00995024875621890547, rel=1e-12)  # 1 / 100.5
    assert spread_pct[5] == pytest.approx(0.00995024875621890547, rel=1e-12)

    assert sorted(result.warnings) == sorted(
        [
            "avg_spread_usdt: 1 minute(s) left NULL: the latest observation was more than 2 minutes old (BML_MAX_FFILL_MINUTES)",
            "bid_ask_imbalance: 2 minute(s) left NULL: the latest observation was more than 2 minutes old (BML_MAX_FFILL_MINUTES)",
            "avg_bid_depth: 1 minute(s) left NULL: the latest observation was more than 2 minutes old (BML_MAX_FFILL_MINUTES)",
            "avg_ask_depth: 1 minute(s) left NULL: the latest observation was more than 2 minutes old (BML_MAX_FFILL_MINUTES)",
            "spread_pct: 1 minute(s) left NULL: the latest observation was more than 2 minutes old (BML_MAX_FFILL_MINUTES)",
        ]
    )


def test_previous_day_book_seeds_the_first_minutes():
    yesterday = book_ticker_minutes(
        raw_book_ticker([(9, 50.0, 1.0, 50.5, 1.0, "2024-02-29 23:59:59")]), dt.date(2024, 2, 29), source="prev.csv"
    )
    result = view(day_minutes(DAY, 2), book=pa.concat_tables([yesterday, book_minutes()]), grid_end="2024-03-01 00:02")
    # 00:00 has its own snapshots; the seed is not used there (nor anywhere: 00:01 follows 00:00)
    assert col(result, "avg_spread_usdt") == [0.75, 0.5]

    only_seed = view(["2024-03-01 00:00"], book=yesterday, grid_end="2024-03-01 00:01")
    assert col(only_seed, "avg_spread_usdt") == [0.5]
    assert col(only_seed, "bid_ask_imbalance") == [0.0]
    assert col(only_seed, "avg_bid_depth") == [1.0]
    assert col(only_seed, "micro_price_close") == [None]


def test_book_columns_are_null_without_booktickers():
    result = view(["2024-03-01 00:00"], grid_end="2024-03-01 00:01")
    for name in BOOK_COLUMNS:
        assert col(result, name) == [None], name


# --- metrics -------------------------------------------------------------------------------------


def test_metrics_across_the_label_change_without_look_ahead():
    day = dt.date(2026, 6, 25)
    old_file = metrics_observations(
        raw_metrics([("2026-06-25 00:00:00", 100.0, 1.0e7, 1.5, 2.0)]), dt.date(2026, 6, 24)
    )  # snapshot of 00:00
    new_file = metrics_observations(
        raw_metrics(
            [
                ("2026-06-25 00:00:00", 200.0, 2.0e7, 3.0, 1.0),  # snapshot of 00:05
                ("2026-06-25 00:05:00", 300.0, 3.0e7, None, 1.0),  # snapshot of 00:10, top ratio empty
            ]
        ),
        day,
    )
    result = view(
        day_minutes(day, 12),
        day=day,
        metrics=combine_observations([old_file, new_file]),
        grid_end="2026-06-25 00:12",
    )

    assert col(result, "oi_contracts") == [100.0] * 5 + [200.0] * 5 + [300.0] * 2
    assert col(result, "oi_value_usdt") == [1.0e7] * 5 + [2.0e7] * 5 + [3.0e7] * 2
    assert col(result, "top_trader_ls_ratio_acct") == [1.5] * 5 + [3.0] * 7  # empty cell: 00:05 value carries on
    assert col(result, "global_ls_ratio_acct") == [2.0] * 5 + [1.0] * 7
    assert col(result, "ls_ratio_divergence") == [-0.5] * 5 + [2.0] * 7
    assert col(result, "top_trader_long_pct") == [0.6] * 5 + [0.75] * 7
    assert col(result, "top_trader_short_pct") == [0.4] * 5 + [0.25] * 7
    assert result.warnings == []


def test_metrics_beyond_the_bound_are_null_with_one_warning_per_column():
    observations = metrics_observations(
        raw_metrics([("2024-03-01 00:00:00", 100.0, 1.0e7, 1.5, None)]), DAY
    )  # global ratio never observed
    result = view(day_minutes(DAY, 6), metrics=observations, max_ffill_minutes=3, grid_end="2024-03-01 00:06")

    assert col(result, "oi_contracts") == [100.0] * 4 + [None] * 2
    assert col(result, "top_trader_ls_ratio_acct") == [1.5] * 4 + [None] * 2
    assert col(result, "global_ls_ratio_acct") == [None] * 6
    assert col(result, "ls_ratio_divergence") == [None] * 6
    assert col(result, "top_trader_long_pct") == [0.6] * 4 + [None] * 2
    assert col(result, "top_trader_short_pct") == [0.4] * 4 + [None] * 2
    assert result.warnings == [
        "oi_contracts: 2 minute(s) left NULL: the latest observation was more than 3 minutes old (BML_MAX_FFILL_MINUTES)",
        "oi_value_usdt: 2 minute(s) left NULL: the latest observation was more than 3 minutes old (BML_MAX_FFILL_MINUTES)",
        "top_trader_ls_ratio_acct: 2 minute(s) left NULL: the latest observation was more than 3 minutes old (BML_MAX_FFILL_MINUTES)",
    ]


def test_metrics_columns_are_null_without_metrics():
    result = view(["2024-03-01 00:00"], grid_end="2024-03-01 00:01")
    for name in METRIC_COLUMNS:
        assert col(result, name) == [None], name


# --- funding -------------------------------------------------------------------------------------


def test_funding_on_the_first_of_a_month():
    day = dt.date(2026, 4, 1)
    history = funding_settlements(
        raw_funding(
            [
                ("2026-03-31 16:00:00.002", 8, 0.0002),
                ("2026-04-01 00:00:00.005", 8, 0.0003),
                ("2026-04-01 08:00:00.001", 8, 0.0004),
            ]
        )
    )
    minutes = day_minutes(day)
    result = view(minutes, day=day, funding=settlements_for_day(history, day))

    rate = col(result, "funding_rate")
    following = col(result, "next_funding_time")
    at = {m: i for i, m in enumerate(minutes)}
    assert rate[at["2026-04-01 00:00:00"]] == 0.0003  # not the previous month's 0.0002
    assert following[at["2026-04-01 00:00:00"]] == ms("2026-04-01 08:00")
    assert rate[at["2026-04-01 07:59:00"]] == 0.0003
    assert rate[at["2026-04-01 08:00:00"]] == 0.0004
    assert following[at["2026-04-01 08:00:00"]] == ms("2026-04-01 16:00")  # 08:00 + 8 h
    assert rate[at["2026-04-01 23:59:00"]] == 0.0004  # a step function: no fill bound
    assert following[at["2026-04-01 23:59:00"]] == ms("2026-04-02 00:00")  # 08:00 + 2 × 8 h
    assert result.table.column("funding_rate").null_count == 0


def test_funding_seeded_by_the_previous_month_and_null_without_history():
    day = dt.date(2026, 5, 1)
    history = funding_settlements(
        raw_funding([("2026-04-30 20:00:00.003", 4, -0.0001), ("2026-05-01 04:00:00.003", 4, 0.0002)])
    )
    minutes = ["2026-05-01 00:00", "2026-05-01 00:01"]
    result = view(minutes, day=day, funding=history, grid_end="2026-05-01 00:02")
    assert col(result, "funding_rate") == [-0.0001, -0.0001]
    assert col(result, "next_funding_time") == [ms("2026-05-01 04:00"), ms("2026-05-01 04:00")]

    without = view(minutes, day=day, grid_end="2026-05-01 00:02")
    assert col(without, "funding_rate") == [None, None]
    assert col(without, "next_funding_time") == [None, None]


def test_live_columns_are_null_even_with_every_stream():
    minutes = ["2024-03-01 00:00"]
    result = view(
        minutes,
        premium=prices(schema.PREMIUM_INDEX_KLINES, minutes, (0.1, 0.1, 0.1, 0.1)),
        trade_flow=trade_flow(
            raw_agg_trades([(1, 100.0, 1.0, 1, 1, "2024-03-01 00:00:01", False)]), DAY, source="a.csv"
        ),
        book=book_minutes(),
        metrics=metrics_observations(raw_metrics([("2024-03-01 00:00:00", 1.0, 1.0, 1.0, 1.0)]), DAY),
        funding=funding_settlements(raw_funding([("2024-02-29 16:00:00.001", 8, 0.0001)])),
        grid_end="2024-03-01 00:01",
    )
    assert result.table.schema.equals(schema.MINUTE_SCHEMA)
    for name in schema.LIVE_COLUMNS:
        assert col(result, name) == [None], name
    for name in schema.BACKFILL_COLUMNS:
        assert result.table.column(name).null_count == 0, name


def live_rows(rows: dict[str, dict]) -> pa.Table:
    """A ``live_1m`` table: per minute, the given columns, every other one NULL (and the
    coverage flags False)."""
    out = []
    for minute, values in rows.items():
        row = []
        for c in schema.LIVE_1M.columns:
            if c.name == "timestamp":
                row.append(minute)
            elif c.type == pa.bool_():
                row.append(values.get(c.name, False))
            else:
                row.append(values.get(c.name))
        out.append(tuple(row))
    return dataset_table(schema.LIVE_1M, out)


def test_live_values_win_over_the_snapshots_and_fill_the_live_columns():
    minutes = day_minutes(DAY, 3)  # 00:00 … 00:02
    live = live_rows(
        {
            # 00:00 both families covered: every §9 column from the collector.
            "2024-03-01 00:00": {
                "public_covered": True,
                "market_covered": True,
                "book_synced": True,
                "event_time": 1709251259950,
                "arrival_time": 1709251259957,
                "latency_engine": 3,
                "latency_network": 7,
                "update_id_start": 1001,
                "update_id_end": 1099,
                "micro_price_close": 100.4,
                "avg_spread_usdt": 0.2,
                "bid_ask_imbalance": 0.25,
                "avg_bid_depth": 5.0,
                "avg_ask_depth": 3.0,
                "spread_pct": 0.002,
                "liq_long_vol_usdt": 2000.0,
                "liq_short_vol_usdt": 0.0,
                "liq_long_count": 1,
                "liq_short_count": 0,
                "liq_avg_fill_price": 100.0,
                "liq_unfilled_ratio": 0.0,
                "price_impact_100k": 0.0004,
                "predicted_funding": 0.0003,
            },
            # 00:01 the public family lost: the collector has only the market columns.
            "2024-03-01 00:01": {
                "market_covered": True,
                "liq_long_vol_usdt": 0.0,
                "liq_short_vol_usdt": 0.0,
                "liq_long_count": 0,
                "liq_short_count": 0,
                "predicted_funding": 0.0002,
            },
            # 00:02 not recorded at all.
        }
    )
    result = view(minutes, book=book_minutes(), live=live, grid_end="2024-03-01 00:03")

    assert col(result, "event_time") == [1709251259950, None, None]
    assert col(result, "arrival_time") == [1709251259957, None, None]
    assert col(result, "latency_engine") == [3, None, None]
    assert col(result, "latency_network") == [7, None, None]
    assert col(result, "update_id_start") == [1001, None, None]
    assert col(result, "update_id_end") == [1099, None, None]
    assert col(result, "price_impact_100k") == [0.0004, None, None]
    assert col(result, "liq_long_vol_usdt") == [2000.0, 0.0, None]
    assert col(result, "liq_long_count") == [1, 0, None]
    assert col(result, "liq_avg_fill_price") == [100.0, None, None]
    assert col(result, "predicted_funding") == [0.0003, 0.0002, None]
    # The book columns: the collector's at 00:00 (over bookTicker's 100.125 / 0.75 / 0.0);
    # at 00:01 and 00:02 the bookTicker table's as-of values stay (see the book test above).
    assert col(result, "micro_price_close") == [100.4, None, None]
    assert col(result, "avg_spread_usdt") == [0.2, 0.5, 0.5]
    assert col(result, "bid_ask_imbalance") == [0.25, -0.5, -0.5]
    assert col(result, "avg_bid_depth") == [5.0, 1.0, 1.0]
    assert col(result, "avg_ask_depth") == [3.0, 3.0, 3.0]
    half_over = pytest.approx(0.00498753117206982544, rel=1e-12)  # 0.5 / 100.25
    assert col(result, "spread_pct") == [0.002, half_over, half_over]
    assert result.table.schema.equals(schema.MINUTE_SCHEMA)


def test_live_minutes_outside_the_grid_are_left_out():
    minutes = day_minutes(DAY, 2)
    live = live_rows({"2024-03-01 00:05": {"market_covered": True, "predicted_funding": 0.0001}})
    result = view(minutes, live=live, grid_end="2024-03-01 00:02")
    assert col(result, "predicted_funding") == [None, None]
    assert result.table.num_rows == 2
