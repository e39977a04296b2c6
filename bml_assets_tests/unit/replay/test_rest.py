"""The REST logic without sockets: RestApi answers at a fixed market clock, the
rate limiter (429, 418 ban) on an injected wall clock, and the fault kinds' reach."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from bml_assets.domain.streams import Stream
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.columns import fmt_units
from bml_assets.replay.faults import FaultKind, FaultRule, FaultSet
from bml_assets.replay.market import KLINE_STREAMS, MarketConfig, SyntheticMarket, day_ms
from bml_assets.replay.rest.endpoints import RestApi, next_funding_time
from bml_assets.replay.rest.limits import RateLimiter, endpoint_weight
from bml_assets.replay.rest.service import RestService

D = date(2024, 3, 5)
D_MS = day_ms(D)  # 1709596800000
NOW = D_MS + (10 * 60 + 30) * 60_000 + 20_000  # D 10:30:20.000 = 1709634620000
DOWNTIME_DAY = date(2024, 3, 4)
NEW_LISTING = date(2024, 3, 3)
KLINE_PATHS = {
    Stream.KLINES: "/fapi/v1/klines",
    Stream.MARK_PRICE_KLINES: "/fapi/v1/markPriceKlines",
    Stream.INDEX_PRICE_KLINES: "/fapi/v1/indexPriceKlines",
    Stream.PREMIUM_INDEX_KLINES: "/fapi/v1/premiumIndexKlines",
}


@pytest.fixture(scope="module")
def market() -> SyntheticMarket:
    return SyntheticMarket(
        MarketConfig(
            seed=7,
            trades_per_day=100_000,
            listing_dates={"NEWUSDT": NEW_LISTING},
            downtime={("BTCUSDT", DOWNTIME_DAY): ((600, 3),)},
        )
    )


@pytest.fixture(scope="module")
def clock() -> MarketClock:
    return MarketClock.fixed(NOW)


@pytest.fixture(scope="module")
def module_api(market: SyntheticMarket, clock: MarketClock) -> RestApi:
    return RestApi(market, clock)


@pytest.fixture
def api(module_api: RestApi, clock: MarketClock) -> Iterator[RestApi]:
    clock.set(NOW)
    yield module_api
    clock.set(NOW)


def get(api: RestApi, path: str, **params: Any) -> Any:
    response = api.handle(path, {k: str(v) for k, v in params.items()})
    assert response.status == 200, response.body
    return response.json()


def error(api: RestApi, path: str, **params: Any) -> tuple[int, int]:
    response = api.handle(path, {k: str(v) for k, v in params.items()})
    body = response.json()
    return response.status, body["code"]


def kline_rows(market: SyntheticMarket, symbol: str, day: date, kind: Stream) -> list[list[Any]]:
    """The market's (Vision's) kline rows as the exchange would print them."""
    columns = market.kline_columns(symbol, day, kind)
    rows = []
    for i in range(len(columns[0].values)):
        row: list[Any] = []
        for c in columns:
            v = int(c.values[i])
            row.append(v if c.decimals is None and c.name != "ignore" else fmt_units(v, c.decimals or 0))
        rows.append(row)
    return rows


# --- klines ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KLINE_STREAMS)
def test_klines_of_a_closed_day_are_the_vision_rows(api: RestApi, market: SyntheticMarket, kind: Stream) -> None:
    day = D - timedelta(days=1)
    key = "pair" if kind is Stream.INDEX_PRICE_KLINES else "symbol"
    rest = get(api, KLINE_PATHS[kind], **{key: "BTCUSDT"}, interval="1m", startTime=day_ms(day), limit=1500)
    expected = kline_rows(market, "BTCUSDT", day, kind)
    # 1440 minutes less 3 of downtime (10:00-10:02), then today's first 63 minutes.
    assert len(expected) == 1437
    assert rest[:1437] == expected
    assert rest[1437][0] == D_MS and len(rest) == 1500
    assert [r[0] for r in rest[598:601]] == [day_ms(day) + m * 60_000 for m in (598, 599, 603)]


def test_running_minute_is_incomplete(api: RestApi, market: SyntheticMarket) -> None:
    rows = get(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=3)
    minute = D_MS + 630 * 60_000  # 10:30
    assert [r[0] for r in rows] == [minute - 120_000, minute - 60_000, minute]
    closed = kline_rows(market, "BTCUSDT", D, Stream.KLINES)
    assert rows[:2] == closed[628:630]  # closed minutes: exactly Vision
    last = rows[2]
    assert closed[630][5] == "12.778" and closed[630][8] == 102  # the whole 10:30 minute
    assert last[5] == "7.561" and last[8] == 31  # its first 20 s
    assert last[6] == minute + 59_999
    t = market.trade_arrays("BTCUSDT", D)
    seen = (t.transact_time >= minute) & (t.transact_time <= NOW)
    assert seen.sum() == 18
    assert Decimal(last[5]) == Decimal(int(t.quantity[seen].sum())) / 1000
    assert last[8] == int((t.last_trade_id[seen] - t.first_trade_id[seen] + 1).sum())
    assert Decimal(last[4]) == Decimal(int(t.price[seen][-1])) / 10  # close = last trade so far
    assert Decimal(last[1]) == Decimal(int(t.price[seen][0])) / 10
    assert Decimal(last[9]) <= Decimal(last[5])


def test_running_minute_converges_to_vision(api: RestApi, market: SyntheticMarket, clock: MarketClock) -> None:
    minute = D_MS + 630 * 60_000
    clock.set(minute + 59_999)
    for kind, path in KLINE_PATHS.items():
        key = "pair" if kind is Stream.INDEX_PRICE_KLINES else "symbol"
        last = get(api, path, **{key: "BTCUSDT"}, interval="1m", limit=1)[0]
        assert last == kline_rows(market, "BTCUSDT", D, kind)[630], kind
    clock.set(minute)  # the minute's first millisecond: mark open = close so far
    mark = get(api, "/fapi/v1/markPriceKlines", symbol="BTCUSDT", interval="1m", limit=1)[0]
    assert mark[0] == minute and Decimal(mark[2]) >= Decimal(mark[4]) >= Decimal(mark[3])


def test_klines_windows_and_parameters(api: RestApi) -> None:
    default = get(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m")
    assert len(default) == 500 and default[-1][0] == D_MS + 630 * 60_000
    window = get(
        api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=D_MS + 60_000, endTime=D_MS + 300_000
    )
    assert [r[0] for r in window] == [D_MS + m * 60_000 for m in range(1, 6)]
    tail = get(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", endTime=D_MS + 300_000, limit=2)
    assert [r[0] for r in tail] == [D_MS + 240_000, D_MS + 300_000]
    future = get(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=NOW + 60_000)
    assert future == []
    # Nothing before listing: the first kline of NEWUSDT is its listing day's 00:00.
    new = get(api, "/fapi/v1/klines", symbol="NEWUSDT", interval="1m", startTime=0, limit=2)
    assert [r[0] for r in new] == [day_ms(NEW_LISTING), day_ms(NEW_LISTING) + 60_000]
    assert error(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="5m") == (400, -1120)
    assert error(api, "/fapi/v1/klines", symbol="BTCUSDT") == (400, -1102)
    assert error(api, "/fapi/v1/klines", interval="1m") == (400, -1102)
    assert error(api, "/fapi/v1/indexPriceKlines", symbol="BTCUSDT", interval="1m") == (400, -1102)  # pair=
    assert error(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit=1501) == (400, -1130)
    assert error(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", limit="x") == (400, -1100)
    assert error(api, "/fapi/v1/klines", symbol="BTCUSDT", interval="1m", startTime=2, endTime=1) == (400, -1023)


@pytest.mark.parametrize(("limit", "weight"), [(None, 5), (1, 1), (99, 1), (100, 2), (499, 2), (500, 5), (1000, 5)])
def test_kline_weights(limit: int | None, weight: int) -> None:
    params = {} if limit is None else {"limit": str(limit)}
    for path in KLINE_PATHS.values():
        assert endpoint_weight(path, params) == weight
    assert endpoint_weight("/fapi/v1/klines", {"limit": "1001"}) == 10
    assert endpoint_weight("/fapi/v1/klines", {"limit": "1500"}) == 10


def test_other_weights() -> None:
    assert endpoint_weight("/fapi/v1/aggTrades", {}) == 20
    assert endpoint_weight("/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"}) == 2
    for path in (
        "/fapi/v1/time",
        "/fapi/v1/ping",
        "/fapi/v1/exchangeInfo",
        "/fapi/v1/premiumIndex",
        "/fapi/v1/openInterest",
        "/fapi/v1/fundingRate",
        "/futures/data/openInterestHist",
        "/futures/data/topLongShortAccountRatio",
        "/futures/data/globalLongShortAccountRatio",
    ):
        assert endpoint_weight(path, {}) == 1, path


# --- aggTrades -------------------------------------------------------------------------------


def test_agg_trades_paging_by_from_id_sees_every_trade_once(api: RestApi, market: SyntheticMarket) -> None:
    t = market.trade_arrays("BTCUSDT", D)
    minute = D_MS + 257 * 60_000  # 04:17, where 9 aggTrades share one millisecond
    ms, counts = np.unique(t.transact_time, return_counts=True)
    assert int(counts[ms == 1_709_612_274_210][0]) >= 8
    in_minute = t.agg_trade_id[(t.transact_time >= minute) & (t.transact_time < minute + 60_000)]
    seen: list[int] = []
    from_id = int(in_minute[0])
    while from_id <= int(in_minute[-1]):
        page = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=from_id, limit=7)
        assert len(page) == 7
        seen.extend(row["a"] for row in page)
        from_id = page[-1]["a"] + 1
    seen = [a for a in seen if a <= int(in_minute[-1])]
    assert seen == in_minute.tolist()  # each id once, in order, none missing
    one_ms = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=1_709_612_274_210, endTime=1_709_612_274_210)
    assert len(one_ms) == int(counts[ms == 1_709_612_274_210][0])
    assert {row["T"] for row in one_ms} == {1_709_612_274_210}


def test_agg_trade_fields_and_day_boundary(api: RestApi, market: SyntheticMarket) -> None:
    prev = market.trade_arrays("BTCUSDT", D - timedelta(days=1))
    last_id = int(prev.agg_trade_id[-1])
    page = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=last_id, limit=3)
    assert [row["a"] for row in page] == [last_id, last_id + 1, last_id + 2]
    assert page[0]["T"] < D_MS <= page[1]["T"]
    assert set(page[0]) == {"a", "p", "q", "f", "l", "T", "m"}
    assert page[1]["f"] == page[0]["l"] + 1
    assert page[0]["p"] == fmt_units(int(prev.price[-1]), 1) and page[0]["q"] == fmt_units(int(prev.quantity[-1]), 3)
    assert isinstance(page[0]["m"], bool)


def test_agg_trades_window_rule_and_now(api: RestApi, market: SyntheticMarket) -> None:
    start = D_MS + 9 * 3_600_000
    assert error(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=start, endTime=start + 3_600_000) == (
        400,
        -1127,
    )
    inside = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=start, endTime=start + 3_599_999, limit=1000)
    assert len(inside) == 1000 and all(start <= r["T"] < start + 3_600_000 for r in inside)
    assert error(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=5, startTime=start) == (400, -1128)
    assert error(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=1001) == (400, -1130)
    # Never a trade after now, whichever way it is asked for.
    t = market.trade_arrays("BTCUSDT", D)
    visible = t.agg_trade_id[t.transact_time <= NOW]
    latest = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", limit=5)
    assert [r["a"] for r in latest] == visible[-5:].tolist()
    window = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", startTime=NOW - 10_000, endTime=NOW + 600_000)
    assert window and max(r["T"] for r in window) <= NOW
    paged = get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=int(visible[-2]), limit=10)
    assert [r["a"] for r in paged] == visible[-2:].tolist()
    assert get(api, "/fapi/v1/aggTrades", symbol="BTCUSDT", fromId=int(visible[-1]) + 1) == []


# --- live snapshots ---------------------------------------------------------------------------


def test_snapshots_move_with_the_clock_and_repeat(api: RestApi, market: SyntheticMarket, clock: MarketClock) -> None:
    paths = ("/fapi/v1/premiumIndex", "/fapi/v1/openInterest", "/fapi/v1/ticker/bookTicker")
    first = [get(api, p, symbol="BTCUSDT") for p in paths]
    assert first[0]["markPrice"] == "72402.06" and first[0]["indexPrice"] == "72418.21"
    assert first[0]["nextFundingTime"] == D_MS + 16 * 3_600_000 == next_funding_time(NOW)
    assert first[0]["time"] == NOW and first[0]["lastFundingRate"] == "-0.00005635"
    assert first[1] == {"symbol": "BTCUSDT", "openInterest": "116861.542", "time": NOW}
    assert first[2]["time"] <= NOW and first[2]["bidPrice"] == "72428.7"
    # The mark price is the running mark kline's close so far.
    mark = get(api, "/fapi/v1/markPriceKlines", symbol="BTCUSDT", interval="1m", limit=1)[0]
    index = get(api, "/fapi/v1/indexPriceKlines", pair="BTCUSDT", interval="1m", limit=1)[0]
    assert (first[0]["markPrice"], first[0]["indexPrice"]) == (mark[4], index[4])
    # A fresh API on the same market says the same (deterministic).
    assert [RestApi(market, clock).handle(p, {"symbol": "BTCUSDT"}).json() for p in paths] == first
    clock.advance(6 * 3_600_000)  # 16:30:20
    later = [get(api, p, symbol="BTCUSDT") for p in paths]
    for a, b in zip(first, later, strict=True):
        assert a != b
    assert later[0]["nextFundingTime"] == D_MS + 24 * 3_600_000
    assert later[1]["openInterest"] == "131656.320"


def test_open_interest_is_the_latest_snapshot(api: RestApi, market: SyntheticMarket) -> None:
    instants, values = market.metrics_day("BTCUSDT", D)
    k = int(np.searchsorted(instants, NOW, "right")) - 1
    assert instants[k] == D_MS + 630 * 60_000
    oi = get(api, "/fapi/v1/openInterest", symbol="BTCUSDT")["openInterest"]
    assert oi == fmt_units(int(values["sum_open_interest"][k]), 3)
    hist = get(api, "/futures/data/openInterestHist", symbol="BTCUSDT", period="5m", limit=1)
    assert hist[0]["sumOpenInterest"] == oi and hist[0]["timestamp"] == D_MS + 630 * 60_000


def test_predicted_funding_differs_from_settled(api: RestApi, market: SyntheticMarket) -> None:
    rates = {c.name: c for c in market.funding_columns("BTCUSDT", D)}["last_funding_rate"].values
    settled = {fmt_units(int(r), 8) for r in rates}
    # Every 15 minutes over 6 hours.
    predicted = {api.predicted_funding_units("BTCUSDT", NOW + k * 900_000) for k in range(24)}
    assert len(predicted) == 24
    assert not {fmt_units(p, 8) for p in predicted} & settled


# --- funding and histories -----------------------------------------------------------------------


def test_funding_rate_is_the_vision_month(api: RestApi, market: SyntheticMarket) -> None:
    february = market.funding("BTCUSDT", 2024, 2).to_pylist()
    assert len(february) == 87  # 29 days × 3
    rest = get(api, "/fapi/v1/fundingRate", symbol="BTCUSDT", startTime=day_ms(date(2024, 2, 1)), limit=87)
    assert [r["fundingTime"] for r in rest] == [row["calc_time"] for row in february]
    assert [Decimal(r["fundingRate"]) for r in rest] == [Decimal(str(row["last_funding_rate"])) for row in february]
    assert rest[0]["fundingTime"] % 1000 != 0 or rest[1]["fundingTime"] % 1000 != 0  # jittered ms kept
    # The default is the latest 100 settled by now: up to D 08:00.
    latest = get(api, "/fapi/v1/fundingRate", symbol="BTCUSDT")
    assert len(latest) == 100 and latest[-1]["fundingTime"] // 1000 == (D_MS + 8 * 3_600_000) // 1000
    assert all(r["fundingTime"] <= NOW for r in latest)
    assert [r["fundingTime"] for r in latest] == sorted(r["fundingTime"] for r in latest)
    assert error(api, "/fapi/v1/fundingRate", symbol="BTCUSDT", limit=1001) == (400, -1130)


@pytest.mark.parametrize(
    ("path", "column"),
    [
        ("/futures/data/openInterestHist", None),
        ("/futures/data/topLongShortAccountRatio", "count_toptrader_long_short_ratio"),
        ("/futures/data/globalLongShortAccountRatio", "count_long_short_ratio"),
    ],
)
def test_hist_rows_are_the_metrics_values(api: RestApi, market: SyntheticMarket, path: str, column: str | None) -> None:
    day = D - timedelta(days=1)
    metrics = market.metrics("BTCUSDT", day).to_pylist()
    rest = get(api, path, symbol="BTCUSDT", period="5m", startTime=day_ms(day), limit=500)
    # From D-1 00:00 (the snapshot that closes D-2's file) up to now, D 10:30.
    assert len(rest) == 415 and rest[-1]["timestamp"] == D_MS + 630 * 60_000
    by_time = {r["timestamp"]: r for r in rest}
    assert len(metrics) == 288
    for row in metrics:
        got = by_time[row["snapshot_time"]]
        if column is None:
            assert float(got["sumOpenInterest"]) == row["sum_open_interest"]
            assert float(got["sumOpenInterestValue"]) == row["sum_open_interest_value"]
            assert set(got) == {"symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp"}
        else:
            assert float(got["longShortRatio"]) == row[column]
            assert Decimal(got["longAccount"]) + Decimal(got["shortAccount"]) == 1
            assert set(got) == {"symbol", "longShortRatio", "longAccount", "shortAccount", "timestamp"}


def test_hist_window_is_the_last_30_days(api: RestApi) -> None:
    path = "/futures/data/openInterestHist"
    cutoff = NOW - 30 * 86_400_000
    first = get(api, path, symbol="BTCUSDT", period="5m", startTime=cutoff - 86_400_000, limit=2)
    assert [r["timestamp"] for r in first] == [1_707_042_900_000, 1_707_043_200_000]  # 2024-02-04 10:35, 10:40
    assert first[0]["timestamp"] >= cutoff > first[0]["timestamp"] - 300_000
    assert get(api, path, symbol="BTCUSDT", period="5m", endTime=cutoff - 1) == []
    latest = get(api, path, symbol="BTCUSDT", period="5m")
    assert len(latest) == 30 and latest[-1]["timestamp"] == D_MS + 630 * 60_000
    assert error(api, path, symbol="BTCUSDT", period="15m") == (400, -1120)
    assert error(api, path, symbol="BTCUSDT") == (400, -1102)
    assert error(api, path, symbol="BTCUSDT", period="5m", limit=501) == (400, -1130)


# --- depth -------------------------------------------------------------------------------------------


def test_depth_answers_the_book_with_binance_fields_and_limits(api: RestApi) -> None:
    full = get(api, "/fapi/v1/depth", symbol="BTCUSDT", limit=1000)
    assert list(full) == ["lastUpdateId", "E", "T", "bids", "asks"]
    assert full["E"] == NOW and NOW - 320 < full["T"] <= NOW  # the last update is at most 320 ms old
    assert get(api, "/fapi/v1/depth", symbol="BTCUSDT") == {
        **full,
        "bids": full["bids"][:500],
        "asks": full["asks"][:500],
    }
    five = get(api, "/fapi/v1/depth", symbol="BTCUSDT", limit=5)
    assert (five["bids"], five["asks"]) == (full["bids"][:5], full["asks"][:5])
    best_bid, best_ask = Decimal(full["bids"][0][0]), Decimal(full["asks"][0][0])
    assert best_ask - best_bid in (Decimal("0.1"), Decimal("0.2"), Decimal("0.3"))  # one to three ticks
    assert all(Decimal(q) > 0 for _, q in full["bids"] + full["asks"])
    for bad in (0, 7, 1001, 5000):
        assert error(api, "/fapi/v1/depth", symbol="BTCUSDT", limit=bad) == (400, -1130)
    assert error(api, "/fapi/v1/depth", limit=5) == (400, -1102)
    assert error(api, "/fapi/v1/depth", symbol="SOLUSDT", limit=5) == (400, -1121)


def test_depth_of_a_replayed_symbol_comes_from_the_override(market: SyntheticMarket, clock: MarketClock) -> None:
    answers: list[tuple[str, int, int]] = []

    def recorded(symbol: str, now: int, limit: int) -> dict[str, Any] | None:
        answers.append((symbol, now, limit))
        return {"lastUpdateId": 1, "E": now, "T": now, "bids": [], "asks": []} if symbol == "XYZUSDT" else None

    api = RestApi(market, clock, depth_override=recorded)
    assert get(api, "/fapi/v1/depth", symbol="XYZUSDT", limit=10)["lastUpdateId"] == 1  # outside the universe
    assert get(api, "/fapi/v1/depth", symbol="BTCUSDT", limit=10)["lastUpdateId"] > 1
    assert answers == [("XYZUSDT", NOW, 10), ("BTCUSDT", NOW, 10)]


@pytest.mark.parametrize(("limit", "weight"), [(None, 10), (5, 2), (50, 2), (100, 5), (500, 10), (1000, 20)])
def test_depth_weights(limit: int | None, weight: int) -> None:
    params = {"symbol": "BTCUSDT"} if limit is None else {"symbol": "BTCUSDT", "limit": str(limit)}
    assert endpoint_weight("/fapi/v1/depth", params) == weight


# --- symbols and exchangeInfo -----------------------------------------------------------------------


def test_unknown_symbols(api: RestApi, clock: MarketClock) -> None:
    assert error(api, "/fapi/v1/premiumIndex", symbol="btcusdt") == (400, -1121)
    assert error(api, "/fapi/v1/klines", symbol="X", interval="1m") == (400, -1121)
    clock.set(day_ms(NEW_LISTING) - 1)  # not listed yet
    assert error(api, "/fapi/v1/openInterest", symbol="NEWUSDT") == (400, -1121)
    clock.set(day_ms(NEW_LISTING))
    assert get(api, "/fapi/v1/openInterest", symbol="NEWUSDT")["symbol"] == "NEWUSDT"
    assert get(api, "/fapi/v1/ticker/bookTicker", symbol="NEWUSDT")["symbol"] == "NEWUSDT"
    assert get(api, "/fapi/v1/premiumIndex", symbol="NEWUSDT")["symbol"] == "NEWUSDT"
    assert api.handle("/fapi/v1/nothing", {}).status == 404


def test_exchange_info(api: RestApi) -> None:
    info = get(api, "/fapi/v1/exchangeInfo")
    assert info["rateLimits"][0] == {
        "rateLimitType": "REQUEST_WEIGHT",
        "interval": "MINUTE",
        "intervalNum": 1,
        "limit": 2400,
    }
    symbols = {s["symbol"]: s for s in info["symbols"]}
    assert sorted(symbols) == ["BTCUSDT", "ETHUSDT", "NEWUSDT"]
    assert symbols["NEWUSDT"]["onboardDate"] == 1_709_424_000_000  # 2024-03-03
    assert symbols["BTCUSDT"]["onboardDate"] == 1_567_900_800_000  # 2019-09-08
    assert {(s["contractType"], s["status"], s["pair"] == s["symbol"]) for s in symbols.values()} == {
        ("PERPETUAL", "TRADING", True)
    }


def test_configured_universe() -> None:
    market = SyntheticMarket(MarketConfig(symbols=("BTCUSDT", "SOLUSDT"), trades_per_day=1000))
    api = RestApi(market, MarketClock.fixed(NOW))
    assert [s["symbol"] for s in api.handle("/fapi/v1/exchangeInfo", {}).json()["symbols"]] == ["BTCUSDT", "SOLUSDT"]
    assert error(api, "/fapi/v1/openInterest", symbol="ETHUSDT") == (400, -1121)
    assert get(api, "/fapi/v1/openInterest", symbol="SOLUSDT")["symbol"] == "SOLUSDT"
    with pytest.raises(ValueError):
        MarketConfig(symbols=("bad symbol",))


# --- rate limits ---------------------------------------------------------------------------------------


class FakeWall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_weight_429_then_418_ban_then_free(market: SyntheticMarket) -> None:
    wall = FakeWall(1_000_040.0)  # 20 s into a 60-s window (windows turn on multiples of 60)
    limiter = RateLimiter(50, 60.0, ban_after=2, ban_s=90.0)
    service = RestService(RestApi(market, MarketClock.fixed(NOW, wall=wall)), limiter, wall)
    agg = {"symbol": "BTCUSDT", "limit": "1"}

    def call(path: str = "/fapi/v1/aggTrades", ip: str = "10.0.0.1") -> tuple[int, str, str | None]:
        r = service.request(ip, path, agg)
        return r.status, r.headers["X-MBX-USED-WEIGHT-1M"], r.headers.get("Retry-After")

    assert call() == (200, "20", None)
    assert call() == (200, "40", None)
    assert call() == (429, "40", "40")  # 40 s to the window's end
    assert call("/fapi/v1/time") == (429, "40", "40")  # limited: even a light request
    banned = service.request("10.0.0.1", "/fapi/v1/time", {})
    assert banned.status == 418 and banned.headers["Retry-After"] == "90"
    assert banned.json() == {
        "code": -1003,
        "msg": "Way too much request weight used; IP banned until 1000130000. "
        "Please use WebSocket Streams for live updates to avoid bans.",
    }
    assert call("/fapi/v1/time", ip="10.0.0.2") == (200, "1", None)  # other IPs are not affected
    wall.t += 60  # a new window, but still banned
    assert call("/fapi/v1/time") == (418, "0", "30")
    wall.t += 30
    assert call("/fapi/v1/time") == (200, "1", None)
    assert [(e.status, e.weight) for e in service.log if e.path == "/fapi/v1/aggTrades"] == [
        (200, 20),
        (200, 20),
        (429, 0),
    ]
    assert sum(e.weight for e in service.log) == 20 + 20 + 1 + 1


def test_weight_window_resets_on_the_minute(market: SyntheticMarket) -> None:
    wall = FakeWall(1_000_019.5)
    service = RestService(RestApi(market, MarketClock.fixed(NOW)), RateLimiter(2400, 60.0), wall)
    used = [
        service.request("ip", "/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": str(n)})
        for n in (99, 100, 1000, 1500)
    ]
    assert [r.headers["X-MBX-USED-WEIGHT-1M"] for r in used] == ["1", "3", "8", "18"]
    wall.t = 1_000_020.0  # 1 000 020 = 16 667 × 60: a new window
    r = service.request("ip", "/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"})
    assert r.headers["X-MBX-USED-WEIGHT-1M"] == "2"
    bad = service.request("ip", "/fapi/v1/klines", {"symbol": "NOPE!", "interval": "1m"})
    assert bad.status == 400 and bad.headers["X-MBX-USED-WEIGHT-1M"] == "7"  # errors are charged


def test_funding_rate_request_limit(market: SyntheticMarket) -> None:
    wall = FakeWall(3_000_000.0)  # a multiple of 300: a fresh 5-minute window
    limiter = RateLimiter(2400, 60.0, funding_limit=3, funding_window_s=300.0)
    service = RestService(RestApi(market, MarketClock.fixed(NOW)), limiter, wall)
    params = {"symbol": "BTCUSDT", "limit": "1"}
    statuses = [service.request("ip", "/fapi/v1/fundingRate", params).status for _ in range(4)]
    assert statuses == [200, 200, 200, 429]
    assert service.request("ip", "/fapi/v1/time", {}).status == 200  # weight is fine
    wall.t += 300
    assert service.request("ip", "/fapi/v1/fundingRate", params).status == 200


# --- fault kinds --------------------------------------------------------------------------------------


def test_fault_kinds_reach_their_paths() -> None:
    faults = FaultSet()
    faults.add(FaultRule("malformed_json", "", times=1))
    faults.add(FaultRule("bad_symbol", "", times=1))
    faults.add(FaultRule("corrupt_zip", "", times=1))
    vision = "/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
    assert faults.decide(vision).kind is FaultKind.CORRUPT_ZIP  # REST-only kinds pass Vision by
    faults.clear()
    faults.add(FaultRule("corrupt_zip", "", times=1))
    faults.add(FaultRule("rate_limit_429", "", times=1, retry_after_s=7))
    decision = faults.decide("/fapi/v1/klines")  # zip kinds pass REST by
    assert decision.kind is FaultKind.RATE_LIMIT_429 and decision.rule is not None
    assert decision.rule.retry_after_s == 7
    assert FaultRule.from_json({"kind": "ban_418", "path_contains": "x", "retry_after_s": 30}).retry_after_s == 30
    with pytest.raises(ValueError):
        FaultRule("ban_418", "x", retry_after_s=-1)
