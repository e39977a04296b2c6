"""The btcusdt recording's whole minutes (23:55-23:59) through the live path (replay → parser →
book → aggregation), against a short independent computation over the JSON in this test
(plain loops and its own dict book; none of the module's code)."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest

from bml_assets.live.core import LiveCore
from bml_assets.live.rebuild import feed, recording_lines

FIRST_WHOLE = 1723161300000  # 2024-08-08 23:55 UTC
MINUTES = [FIRST_WHOLE + i * 60_000 for i in range(5)]  # 23:55 … 23:59


def _p95(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def independent(path: Path) -> dict[int, dict[str, Any]]:
    """Per minute of E: the §9 values, computed directly from the recording."""
    out: dict[int, dict[str, Any]] = {}
    bids: dict[str, float] = {}
    asks: dict[str, float] = {}
    snapshot_L = None
    pending: list[dict] = []
    synced = False
    last_depth_minute = None

    def impact() -> float:
        best_bid = max(float(p) for p in bids)
        levels = sorted((float(p), q) for p, q in asks.items())
        spent, base = 0.0, 0.0
        for price, qty in levels:
            if spent + price * qty >= 100_000:
                base += (100_000 - spent) / price
                break
            spent += price * qty
            base += qty
        mid = (best_bid + levels[0][0]) / 2
        return (100_000 / base - mid) / mid

    def apply(d: dict) -> None:
        for side, book in (("b", bids), ("a", asks)):
            for p, q in d[side]:
                if float(q) == 0:
                    book.pop(p, None)
                else:
                    book[p] = float(q)

    with gzip.open(path, "rt") as f:
        for line in f:
            ns, text = line.split(" ", 1)
            msg = json.loads(text)
            if "lastUpdateId" in msg:
                snapshot_L = msg["lastUpdateId"]
                bids = {p: float(q) for p, q in msg["bids"]}
                asks = {p: float(q) for p, q in msg["asks"]}
                usable = [d for d in pending if d["u"] >= snapshot_L]
                assert usable[0]["U"] <= snapshot_L <= usable[0]["u"]
                for d in usable:
                    apply(d)
                synced = True
                continue
            d = msg["data"]
            minute = d["E"] // 60_000 * 60_000
            m = out.setdefault(minute, {"E": [], "arr": [], "eng": [], "net": [], "U": [], "u": [], "bt": []})
            arrival = int(ns) // 1_000_000
            m["E"].append(d["E"])
            m["arr"].append(arrival)
            m["net"].append(arrival - d["E"])
            m["eng"].append(d["E"] - d["T"])
            if d["e"] == "bookTicker":
                m["bt"].append(tuple(float(d[k]) for k in ("b", "B", "a", "A")))
            if d["e"] == "depthUpdate":
                if last_depth_minute is not None and minute > last_depth_minute and synced:
                    out[last_depth_minute]["impact"] = impact()
                last_depth_minute = minute
                m["U"].append(d["U"])
                m["u"].append(d["u"])
                if synced:
                    apply(d)
                else:
                    pending.append(d)
    values = {}
    for minute in MINUTES:
        m = out[minute]
        last_E = max(m["E"])
        b, bq, a, aq = m["bt"][-1]
        n = len(m["bt"])
        values[minute] = {
            "event_time": last_E,
            "arrival_time": m["arr"][m["E"].index(last_E)],
            "latency_engine": _p95(m["eng"]),
            "latency_network": _p95(m["net"]),
            "update_id_start": min(m["U"]),
            "update_id_end": max(m["u"]),
            "micro_price_close": (b * aq + a * bq) / (bq + aq),
            "avg_spread_usdt": sum(t[2] - t[0] for t in m["bt"]) / n,
            "bid_ask_imbalance": sum((t[1] - t[3]) / (t[1] + t[3]) for t in m["bt"]) / n,
            "avg_bid_depth": sum(t[1] for t in m["bt"]) / n,
            "avg_ask_depth": sum(t[3] for t in m["bt"]) / n,
            "spread_pct": sum((t[2] - t[0]) / ((t[2] + t[0]) / 2) for t in m["bt"]) / n,
            "price_impact_100k": m["impact"],
            "counts": (len(m["U"]), n, len(m["E"]) - len(m["U"]) - n),
        }
    return values


def test_the_whole_minutes_of_the_recording_match_an_independent_computation(real_fixtures: Path) -> None:
    path = real_fixtures / "ws" / "btcusdt_20240808.gz"
    core = LiveCore(["BTCUSDT"], families=("public",))  # the recording holds the public streams only
    feed(core, recording_lines(path))
    core.flush()
    rows = {r["timestamp"]: r for r in core.rows["BTCUSDT"]}
    # 23:54 (from 23:54:16) and 00:00 (to 00:00:01) are partial: rows, but nothing covered
    assert sorted(rows) == [FIRST_WHOLE - 60_000, *MINUTES, FIRST_WHOLE + 5 * 60_000]
    for partial in (FIRST_WHOLE - 60_000, FIRST_WHOLE + 5 * 60_000):
        assert rows[partial]["public_covered"] is False and rows[partial]["event_time"] is None
        assert rows[partial]["avg_spread_usdt"] is None and rows[partial]["depth_events"] > 0
    expected = independent(path)
    for minute in MINUTES:
        row, want = rows[minute], expected[minute]
        assert row["public_covered"] is True and row["book_synced"] is True and row["market_covered"] is False
        for name in (
            "event_time",
            "arrival_time",
            "latency_engine",
            "latency_network",
            "update_id_start",
            "update_id_end",
        ):
            assert row[name] == want[name], (minute, name)
        for name in (
            "micro_price_close",
            "avg_spread_usdt",
            "bid_ask_imbalance",
            "avg_bid_depth",
            "avg_ask_depth",
            "spread_pct",
            "price_impact_100k",
        ):
            assert row[name] == pytest.approx(want[name], rel=1e-9, abs=1e-15), (minute, name)
        assert (row["depth_events"], row["book_ticker_events"], row["trade_events"]) == want["counts"]
        # the market family was not recorded: its columns stay NULL, never 0
        assert row["liq_long_count"] is None and row["predicted_funding"] is None
    # a few values written out (the local clock of the recording is ~1.26 s behind the exchange)
    first = rows[FIRST_WHOLE]
    assert (first["event_time"], first["arrival_time"], first["latency_network"]) == (
        1723161359976,
        1723161358706,
        -1259,
    )
    assert (first["update_id_start"], first["update_id_end"]) == (5123111259320, 5123116096874)
