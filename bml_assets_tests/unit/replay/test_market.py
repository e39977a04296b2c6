"""The synthetic market behind the replay server (bml_assets.replay.market) and the
Vision files it publishes (bml_assets.replay.vision_archive).

Expected numbers are written out; the pinned ("golden") rows come from numpy's
seeded generators and would change with a numpy release that changes them.
"""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from bml_assets.domain.streams import Stream
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.render import csv_bytes
from bml_assets.replay.vision_archive import vision_file

DAY = date(2024, 1, 2)
TODAY = date(2026, 7, 1)
MARKET = SyntheticMarket(MarketConfig(today=TODAY))


def _csv_lines(market: SyntheticMarket, stream: str, symbol: str, period: date) -> list[str]:
    file = vision_file(market, stream, symbol, period)
    assert file is not None, (stream, symbol, period)
    return csv_bytes(file.columns(), header=file.header).decode().splitlines()


# --- determinism ------------------------------------------------------------------


def test_golden_rows_of_a_btc_day() -> None:
    assert _csv_lines(MARKET, "aggTrades", "BTCUSDT", DAY)[:4] == [
        "agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker",
        "9462001,52138.5,0.703,18261661,18261661,1704153607966,true",
        "9462002,52146.4,0.335,18261662,18261662,1704153622311,false",
        "9462003,52161.8,0.027,18261663,18261663,1704153625072,false",
    ]
    assert _csv_lines(MARKET, "klines", "BTCUSDT", DAY)[1] == (
        "1704153600000,52138.5,52176.5,52138.5,52176.5,1.128,1704153659999,58817.8976,7,0.425,22164.5321,0"
    )


def test_same_inputs_same_data_in_any_order() -> None:
    a = SyntheticMarket(MarketConfig(today=TODAY))
    b = SyntheticMarket(MarketConfig(today=TODAY))
    days = [DAY + timedelta(days=i) for i in range(3)]
    first = {d: csv_bytes(vision_file(a, "aggTrades", "ETHUSDT", d).columns(), header=True) for d in days}
    # The other market sees the days backwards, with other symbols in between.
    for d in reversed(days):
        b.klines("SOLUSDT", d)
        assert csv_bytes(vision_file(b, "aggTrades", "ETHUSDT", d).columns(), header=True) == first[d]
    other_seed = SyntheticMarket(MarketConfig(seed=8, today=TODAY))
    assert csv_bytes(vision_file(other_seed, "aggTrades", "ETHUSDT", DAY).columns(), header=True) != first[DAY]


# --- aggTrades ------------------------------------------------------------------


def test_agg_trade_ids_run_on_across_days() -> None:
    day1 = MARKET.agg_trades("BTCUSDT", DAY).to_pydict()
    day2 = MARKET.agg_trades("BTCUSDT", DAY + timedelta(days=1)).to_pydict()
    # Default listing 2019-09-08: 2024-01-02 is day 1577, 6000 aggTrades a day.
    assert day1["agg_trade_id"][0] == 9_462_001 and day1["agg_trade_id"][-1] == 9_468_000
    assert day2["agg_trade_id"][0] == 9_468_001
    ids = day1["agg_trade_id"] + day2["agg_trade_id"]
    assert ids == list(range(9_462_001, 9_474_001))
    # Individual trade ids are contiguous too, within and across days.
    firsts = day1["first_trade_id"] + day2["first_trade_id"]
    lasts = day1["last_trade_id"] + day2["last_trade_id"]
    assert all(nxt == last + 1 for last, nxt in zip(lasts, firsts[1:], strict=False))
    assert {last - first + 1 for first, last in zip(firsts, lasts, strict=True)} == {1, 2, 3, 4, 5}
    # The last trade of a day is exactly where the next day opens.
    assert day1["price"][-1] == day2["price"][0]


def test_agg_trades_shape_of_a_day() -> None:
    t = MARKET.agg_trades("BTCUSDT", DAY).to_pydict()
    times = t["transact_time"]
    start = 1_704_153_600_000  # 2024-01-02 00:00 UTC
    assert all(start <= x < start + 86_400_000 for x in times)
    assert times == sorted(times)
    assert sum(1 for a, b in itertools.pairwise(times) if a == b) > 100  # shared milliseconds
    sides = t["is_buyer_maker"]
    assert 0.3 < sum(sides) / len(sides) < 0.7
    # On the grids: 0.1 price tick, 0.001 lot.
    assert all(Decimal(repr(p)) % Decimal("0.1") == 0 for p in t["price"])
    assert all(Decimal(repr(q)) % Decimal("0.001") == 0 and q > 0 for q in t["quantity"])
    notional = [Decimal(repr(p)) * Decimal(repr(q)) for p, q in zip(t["price"], t["quantity"], strict=True)]
    whale = sum(1 for n in notional if n >= 100_000)
    retail = sum(1 for n in notional if n <= 1_000)
    assert whale >= 30 and retail >= 1000


def test_exact_boundary_notionals_appear_on_some_days() -> None:
    # 2^5·5^6 ticks = 50 000.0: days whose prices cross it get trades of exactly
    # 50 000 × 2 = 100 000 and 50 000 × 0.02 = 1 000.
    hits = set()
    for i in range(60):
        t = MARKET.agg_trades("BTCUSDT", date(2024, 1, 1) + timedelta(days=i)).to_pydict()
        for p, q in zip(t["price"], t["quantity"], strict=True):
            n = Decimal(repr(p)) * Decimal(repr(q))
            if n in (Decimal(100_000), Decimal(1_000)):
                hits.add(n)
    assert hits == {Decimal(100_000), Decimal(1_000)}


def test_other_symbols_have_their_own_price_and_grid() -> None:
    eth = MARKET.agg_trades("ETHUSDT", DAY).column("price").to_pylist()
    assert 3_000 * 0.6 < eth[0] < 3_000 * 1.45
    assert all(Decimal(repr(p)) % Decimal("0.01") == 0 for p in eth)
    made_up = MARKET.agg_trades("ZZTOPUSDT", DAY)
    assert made_up.num_rows == 6000 and min(made_up.column("price").to_pylist()) > 0
    with pytest.raises(ValueError, match="invalid symbol"):
        MARKET.agg_trades("btc-usdt", DAY)


# --- klines ----------------------------------------------------------------------


def test_empty_minutes_repeat_the_previous_close() -> None:
    k = MARKET.klines("BTCUSDT", DAY).to_pydict()
    assert len(k["open_time"]) == 1440
    empty = [i for i, c in enumerate(k["count"]) if c == 0]
    assert 15 <= len(empty) <= 120  # a few percent
    for i in empty:
        previous = (
            k["close"][i - 1] if i else MARKET.agg_trades("BTCUSDT", DAY - timedelta(days=1))["price"][-1].as_py()
        )
        assert k["open"][i] == k["high"][i] == k["low"][i] == k["close"][i] == previous
        assert k["volume"][i] == k["quote_volume"][i] == k["taker_buy_volume"][i] == 0
    assert all(c - o == 59_999 for o, c in zip(k["open_time"], k["close_time"], strict=True))
    assert set(k["ignore"]) == {0}


def test_downtime_has_no_rows_of_any_kind() -> None:
    market = SyntheticMarket(MarketConfig(today=TODAY, downtime={("BTCUSDT", DAY): ((600, 30), (1430, 50))}))
    start = 1_704_153_600_000
    down = {start + m * 60_000 for m in [*range(600, 630), *range(1430, 1440)]}
    for kind in ("klines", "markPriceKlines", "indexPriceKlines", "premiumIndexKlines"):
        open_times = market.klines("BTCUSDT", DAY, kind).column("open_time").to_pylist()
        assert len(open_times) == 1400 and not down & set(open_times), kind
    minutes = {(t - start) // 60_000 for t in market.agg_trades("BTCUSDT", DAY).column("transact_time").to_pylist()}
    assert not minutes & {*range(600, 630), *range(1430, 1440)}
    book = {(t - start) // 60_000 for t in market.book_ticker("BTCUSDT", DAY).column("transaction_time").to_pylist()}
    assert not book & {*range(600, 630), *range(1430, 1440)}
    assert market.agg_trades("BTCUSDT", DAY).num_rows == 6000  # the day's count is fixed


def test_mark_index_premium_follow_the_trade_close() -> None:
    close = np.array(MARKET.klines("BTCUSDT", DAY).column("close").to_pylist())
    series = {
        kind: MARKET.klines("BTCUSDT", DAY, kind).to_pydict()
        for kind in ("markPriceKlines", "indexPriceKlines", "premiumIndexKlines")
    }
    for kind, k in series.items():
        o, h, lo, c = (np.array(k[x]) for x in ("open", "high", "low", "close"))
        assert (lo <= np.minimum(o, c)).all() and (np.maximum(o, c) <= h).all(), kind
        assert set(k["volume"]) == set(k["quote_volume"]) == set(k["count"]) == {0}
    for kind in ("markPriceKlines", "indexPriceKlines"):
        c = np.array(series[kind]["close"])
        assert (np.abs(c / close - 1) <= 0.003).all(), kind
    mark, index = np.array(series["markPriceKlines"]["close"]), np.array(series["indexPriceKlines"]["close"])
    premium = np.array(series["premiumIndexKlines"]["close"])
    assert (np.abs(premium) <= 0.001).all()
    assert np.corrcoef(premium, (mark - index) / index)[0, 1] > 0.9


# --- bookTicker ---------------------------------------------------------------------


def test_book_ticker_snapshots() -> None:
    b = MARKET.book_ticker("BTCUSDT", DAY).to_pydict()
    n = len(b["update_id"])
    assert 3 * 1440 * 0.9 < n < 3 * 1440 * 1.1
    assert all(x < y for x, y in zip(b["update_id"], b["update_id"][1:], strict=False))
    assert all(bid < ask for bid, ask in zip(b["best_bid_price"], b["best_ask_price"], strict=True))
    assert 0 < sum(1 for q in b["best_bid_qty"] + b["best_ask_qty"] if q == 0) < n * 0.02
    assert all(0 <= e - t <= 3 for t, e in zip(b["transaction_time"], b["event_time"], strict=True))
    covered = {(t - 1_704_153_600_000) // 60_000 for t in b["transaction_time"]}
    assert 1300 < len(covered) < 1440  # some minutes have no snapshot
    trade_close = MARKET.klines("BTCUSDT", DAY).column("close").to_pylist()
    assert abs(b["best_bid_price"][-1] / trade_close[-1] - 1) < 0.001


# --- metrics -------------------------------------------------------------------------

OLD_FIRST = "2026-06-24 00:05:00,BTCUSDT,148176.499,9482992040.393058,1.669225,1.253006,1.199396,0.993932"
# The snapshot taken at 2026-06-25 00:00 (last row of the 06-24 file).
AT_0625_0000 = "BTCUSDT,143054.026,9198978789.962624,1.434870,0.920299,1.602539,0.787666"
# The snapshot taken at 2026-06-25 00:05 (first row of the 06-25 file, labelled 00:00).
AT_0625_0005 = "BTCUSDT,143334.084,9216897406.139164,1.435278,0.922025,1.608483,0.752321"


def test_metrics_label_conventions() -> None:
    old = _csv_lines(MARKET, "metrics", "BTCUSDT", date(2026, 6, 24))
    new = _csv_lines(MARKET, "metrics", "BTCUSDT", date(2026, 6, 25))
    assert (
        old[0]
        == new[0]
        == (
            "create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
            "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio"
        )
    )
    assert len(old) == len(new) == 289
    assert old[1] == OLD_FIRST
    assert old[-1] == "2026-06-25 00:00:00," + AT_0625_0000
    assert new[1] == "2026-06-25 00:00:00," + AT_0625_0005
    assert new[-1].startswith("2026-06-25 23:55:00,BTCUSDT,")


def test_same_snapshot_instant_same_values_under_either_convention() -> None:
    # The same day written with the new labels: a row labelled T − 5 min holds what
    # the old file's row labelled T holds.
    moved = SyntheticMarket(MarketConfig(today=TODAY, metrics_new_labels_from=date(2026, 6, 24)))
    old = _csv_lines(MARKET, "metrics", "BTCUSDT", date(2026, 6, 24))[1:]
    new = _csv_lines(moved, "metrics", "BTCUSDT", date(2026, 6, 24))[1:]
    assert new[0].startswith("2026-06-24 00:00:00,") and new[-1].startswith("2026-06-24 23:55:00,")
    assert [r.split(",", 1)[1] for r in old] == [r.split(",", 1)[1] for r in new]
    table = MARKET.metrics("BTCUSDT", date(2026, 6, 24)).to_pydict()
    assert table["snapshot_time"][-1] == 1_782_345_600_000  # 2026-06-25 00:00 UTC


# --- funding ---------------------------------------------------------------------------


def test_funding_settlements_every_8h_with_jitter() -> None:
    lines = _csv_lines(MARKET, "fundingRate", "BTCUSDT", date(2024, 1, 1))
    assert lines[:3] == [
        "calc_time,funding_interval_hours,last_funding_rate",
        "1704067200002,8,-0.00021983",
        "1704096000007,8,-0.00018781",
    ]
    rows = [line.split(",") for line in lines[1:]]
    assert len(rows) == 93  # 31 days × 3
    calc = [int(r[0]) for r in rows]
    jitter = [c % 28_800_000 for c in calc]
    assert all(0 <= j <= 10 for j in jitter) and len(set(jitter)) > 5
    snapped = [c - j for c, j in zip(calc, jitter, strict=True)]
    assert snapped[0] == 1_704_067_200_000  # 2024-01-01 00:00
    assert all(b - a == 28_800_000 for a, b in itertools.pairwise(snapped))
    assert {r[1] for r in rows} == {"8"}
    assert all(len(r[2].split(".")[1]) == 8 and abs(Decimal(r[2])) <= Decimal("0.0005") for r in rows)


def test_funding_starts_at_listing() -> None:
    market = SyntheticMarket(MarketConfig(today=TODAY, listing_dates={"NEWUSDT": date(2024, 1, 20)}))
    calc = market.funding("NEWUSDT", 2024, 1).column("calc_time").to_pylist()
    assert len(calc) == 36 and calc[0] - calc[0] % 28_800_000 == 1_705_708_800_000  # 2024-01-20 00:00
    assert vision_file(market, "fundingRate", "NEWUSDT", date(2023, 12, 1)) is None
    assert vision_file(market, "fundingRate", "NEWUSDT", date(2024, 1, 1)) is not None


# --- publication -------------------------------------------------------------------------


def test_before_listing_and_from_today_nothing_is_published() -> None:
    market = SyntheticMarket(MarketConfig(today=date(2024, 1, 10), listing_dates={"NEWUSDT": date(2024, 1, 5)}))
    for stream in ("klines", "markPriceKlines", "aggTrades", "bookTicker", "metrics"):
        assert vision_file(market, stream, "NEWUSDT", date(2024, 1, 4)) is None, stream
        assert vision_file(market, stream, "NEWUSDT", date(2024, 1, 5)) is not None, stream
        assert vision_file(market, stream, "NEWUSDT", date(2024, 1, 9)) is not None, stream
        assert vision_file(market, stream, "NEWUSDT", date(2024, 1, 10)) is None, stream
    assert market.agg_trades("NEWUSDT", date(2024, 1, 4)).num_rows == 0
    assert market.agg_trades("NEWUSDT", date(2024, 1, 5)).column("agg_trade_id")[0].as_py() == 1
    # A month is published once it is over.
    assert vision_file(market, "fundingRate", "BTCUSDT", date(2024, 1, 1)) is None
    assert vision_file(market, "fundingRate", "BTCUSDT", date(2023, 12, 1)) is not None
    assert vision_file(market, "aggTrades", "btcusdt", date(2024, 1, 2)) is None


def test_only_the_universe_is_published() -> None:
    # Default universe: BTCUSDT, ETHUSDT and the symbols given a listing date.
    market = SyntheticMarket(MarketConfig(today=TODAY, listing_dates={"NEWUSDT": date(2024, 1, 1)}))
    assert market.universe() == ("BTCUSDT", "ETHUSDT", "NEWUSDT")
    for stream in ("klines", "indexPriceKlines", "aggTrades", "bookTicker", "metrics", "fundingRate"):
        assert vision_file(market, stream, "NEWUSDT", DAY) is not None, stream
        assert vision_file(market, stream, "SOLUSDT", DAY) is None, stream
    assert not market.is_known_symbol("SOLUSDT") and market.is_known_symbol("ETHUSDT")
    # A configured universe replaces the default one.
    sol_only = SyntheticMarket(MarketConfig(today=TODAY, symbols=("SOLUSDT",)))
    assert sol_only.universe() == ("SOLUSDT",)
    assert vision_file(sol_only, "klines", "SOLUSDT", DAY) is not None
    assert vision_file(sol_only, "klines", "BTCUSDT", DAY) is None
    # The data itself is a function of any valid name: only publication is gated.
    assert sol_only.agg_trades("BTCUSDT", DAY).num_rows == 6000
    with pytest.raises(ValueError, match="listing_dates names symbols missing from symbols: NEWUSDT"):
        MarketConfig(symbols=("BTCUSDT",), listing_dates={"NEWUSDT": DAY})


def test_real_today_is_the_default() -> None:
    market = SyntheticMarket()
    assert market.today() == datetime.now(UTC).date()
    assert vision_file(market, "klines", "BTCUSDT", market.today()) is None
    assert vision_file(market, "klines", "BTCUSDT", market.today() - timedelta(days=1)) is not None


def test_book_ticker_ends_after_2024_03_30() -> None:
    assert vision_file(MARKET, Stream.BOOK_TICKER, "BTCUSDT", date(2024, 3, 30)) is not None
    assert vision_file(MARKET, Stream.BOOK_TICKER, "BTCUSDT", date(2024, 3, 31)) is None


@pytest.mark.parametrize(
    ("stream", "day", "header"),
    [
        ("klines", date(2022, 5, 31), False),
        ("klines", date(2022, 6, 1), True),
        ("premiumIndexKlines", date(2022, 5, 31), False),
        ("markPriceKlines", date(2022, 6, 1), True),
        ("aggTrades", date(2022, 8, 10), False),
        ("aggTrades", date(2022, 8, 11), True),
        ("bookTicker", date(2020, 1, 1), True),
        ("metrics", date(2020, 1, 1), True),
        ("fundingRate", date(2020, 1, 1), True),
    ],
)
def test_header_rows_by_date(stream: str, day: date, header: bool) -> None:
    file = vision_file(MARKET, stream, "BTCUSDT", day)
    assert file is not None and file.header is header
    first = csv_bytes(file.columns(), header=file.header).split(b",", 1)[0]
    assert first.isdigit() is not header


def test_shuffled_and_duplicated_files_hold_the_same_rows() -> None:
    plain = _csv_lines(MARKET, "aggTrades", "BTCUSDT", DAY)
    messy = _csv_lines(
        SyntheticMarket(MarketConfig(today=TODAY, shuffle_and_duplicate=True)), "aggTrades", "BTCUSDT", DAY
    )
    assert messy[0] == plain[0]
    assert messy != plain and sorted(set(messy[1:])) == sorted(plain[1:])
    assert len(messy) - len(plain) == 3  # 6000 // 2000 duplicates
    ids = [int(r.split(",")[0]) for r in messy[1:]]
    assert any(b < a for a, b in itertools.pairwise(ids))
