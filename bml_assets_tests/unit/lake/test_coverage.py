"""The lake's coverage (lake/coverage.py) from real ledger rows: each day's state, the committed
ranges folded, missing / incomplete / provisional / not-listed days, and the default window."""

from __future__ import annotations

import datetime as dt

import pytest

from bml_assets.lake.coverage import DayState, coverage, read_coverage
from bml_assets.lake.ledger import Ledger, PartitionRecord

NOW = dt.datetime(2024, 3, 20, 12, tzinfo=dt.UTC)
BTC, ETH = "BTCUSDT", "ETHUSDT"
REST = "https://fapi.binance.com"


def day(n: int) -> dt.date:
    return dt.date(2024, 3, n)


def put(ledger: Ledger, symbol: str, n: int, *, status: str = "committed", rest: bool = False, missing: bool = False):
    committed = status == "committed"
    ledger.commit_partition(
        PartitionRecord(
            dataset="minute",
            symbol=symbol,
            day=day(n),
            status=status,  # type: ignore[arg-type]
            committed_at=NOW,
            path=f"futures/um/minute/symbol={symbol}/date=2024-03-{n:02d}/part.parquet" if committed else None,
            row_count=1440 if committed else None,
            content_hash=f"{n:064x}" if committed else None,
            provenance={"klines": {"status": "rest", "base_url": REST}} if rest else {"klines": {"status": "vision"}},
            missing_streams=[{"stream": "metrics", "reason": "REST down"}] if missing else [],
            message=None if committed else "not listed that day",
        ),
        expected_content_hash=None,
    )


@pytest.fixture
def ledger(url: str) -> Ledger:
    opened = Ledger(url)
    opened.init()
    yield opened
    opened.close()


def test_states_ranges_and_missing_days_of_each_symbol(ledger: Ledger) -> None:
    for n in (2, 3, 4, 7, 8):
        put(ledger, BTC, n)
    put(ledger, BTC, 5, missing=True)  # committed, a fillable stream missing
    put(ledger, BTC, 9, rest=True)  # REST-built: provisional
    put(ledger, ETH, 1, status="not_listed")
    put(ledger, ETH, 2, status="not_listed")
    put(ledger, ETH, 3)
    put(ledger, "SOLUSDT", 3)  # not asked for: left out

    cov = read_coverage(ledger, (BTC, ETH), today=day(10), start=day(1), end=day(10))
    btc, eth = cov.per_symbol()
    # Committed of any kind (final, incomplete, provisional) folded: 2..5 and 7..9.
    assert btc.committed == ((day(2), day(5)), (day(7), day(9)))
    assert btc.committed_days == 7
    assert btc.missing == (day(1), day(6), day(10))
    assert btc.incomplete == (day(5),) and btc.provisional == (day(9),) and btc.not_listed == ()
    assert eth.committed == ((day(3), day(3)),)
    assert eth.not_listed == (day(1), day(2))
    assert eth.missing == tuple(day(n) for n in range(4, 11))
    assert cov.state(BTC, day(5)) is DayState.INCOMPLETE
    assert cov.state(BTC, day(9)) is DayState.PROVISIONAL
    assert cov.state(ETH, day(1)) is DayState.NOT_LISTED
    assert cov.counts() == {
        "committed": 6,
        "provisional": 1,
        "incomplete": 1,
        "not_listed": 2,
        "not_published": 0,
        "missing": 10,
    }
    row = btc.to_row()
    assert row["committed_ranges"] == [["2024-03-02", "2024-03-05"], ["2024-03-07", "2024-03-09"]]
    assert row["missing_days"] == 3
    assert row["missing_ranges"] == [
        ["2024-03-01", "2024-03-01"],
        ["2024-03-06", "2024-03-06"],
        ["2024-03-10", "2024-03-10"],
    ]
    assert row["incomplete_days"] == ["2024-03-05"] and row["provisional_days"] == ["2024-03-09"]


def test_the_window_defaults_to_the_first_row_and_today(ledger: Ledger) -> None:
    put(ledger, ETH, 4)
    put(ledger, BTC, 6)
    cov = read_coverage(ledger, (BTC, ETH), today=day(8))
    assert (cov.start, cov.end) == (day(4), day(8))
    assert cov.symbol(BTC).missing == (day(4), day(5), day(7), day(8))
    # No rows at all: a window of today alone, every symbol missing it.
    empty = read_coverage(ledger, ("XRPUSDT",), today=day(8))
    assert (empty.start, empty.end) == (day(8), day(8)) and empty.counts()["missing"] == 1


def test_a_reversed_window_is_refused() -> None:
    with pytest.raises(ValueError, match="reversed"):
        coverage([], (BTC,), day(5), day(4))
