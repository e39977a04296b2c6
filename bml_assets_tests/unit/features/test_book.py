"""book_ticker_minutes: bookTicker snapshots -> one row per minute with snapshots."""

from __future__ import annotations

import datetime as dt

import pytest

from bml_assets.domain import schema
from bml_assets.features.book import SnapshotOutsideDay, book_ticker_minutes
from bml_assets_tests.unit.features.builders import ms, raw_book_ticker, utc

DAY = dt.date(2024, 3, 1)
SOURCE = "BTCUSDT-bookTicker-2024-03-01.csv"

# update_id, bid, bid_qty, ask, ask_qty, transaction_time
A = (1, 100.0, 3.0, 101.0, 1.0, "2024-03-01 10:00:01")
B = (3, 100.0, 0.0, 102.0, 0.0, "2024-03-01 10:00:30")  # zero denominator; the minute's last snapshot
C = (2, 99.0, 1.0, 100.0, 1.0, "2024-03-01 10:00:30")  # same instant as B, smaller update_id
D = (4, 100.0, 2.0, 100.5, 2.0, "2024-03-01 10:01:59.999")


def test_minute_means_leave_zero_denominators_out_of_the_imbalance():
    table = book_ticker_minutes(raw_book_ticker([B, A, D, C]), DAY, source=SOURCE)

    assert table.schema.equals(schema.BOOK_TICKER.arrow_schema)
    first, second = table.to_pylist()
    assert first["timestamp"] == utc("2024-03-01 10:00")
    assert first["snapshot_count"] == 3
    assert first["avg_spread_usdt"] == pytest.approx(4 / 3)  # (1 + 2 + 1) / 3
    assert first["bid_ask_imbalance"] == pytest.approx(0.25)  # mean of 0.5 and 0; B left out
    assert first["avg_bid_depth"] == pytest.approx(4 / 3)  # (3 + 0 + 1) / 3
    assert first["avg_ask_depth"] == pytest.approx(2 / 3)  # (1 + 0 + 1) / 3
    # mean of 1/100.5, 2/101, 1/99.5
    assert first["spread_pct"] == pytest.approx(0.0132674934035067048, rel=1e-12)

    assert second["timestamp"] == utc("2024-03-01 10:01")
    assert second["snapshot_count"] == 1
    assert second["micro_price_close"] == pytest.approx(100.25)  # (100·2 + 100.5·2) / 4
    assert second["avg_spread_usdt"] == pytest.approx(0.5)
    assert second["bid_ask_imbalance"] == 0.0
    assert second["spread_pct"] == pytest.approx(0.00498753117206982544, rel=1e-12)  # 0.5 / 100.25


def test_last_snapshot_is_the_largest_transaction_time_then_update_id():
    first, _ = book_ticker_minutes(raw_book_ticker([B, A, D, C]), DAY, source=SOURCE).to_pylist()

    # B wins over C on update_id; its denominator is 0: no micro price, no imbalance.
    assert first["last_transaction_time"] == ms("2024-03-01 10:00:30")
    assert first["micro_price_close"] is None
    assert first["last_bid_ask_imbalance"] is None
    assert first["last_spread_usdt"] == 2.0
    assert first["last_bid_qty"] == 0.0
    assert first["last_ask_qty"] == 0.0
    assert first["last_spread_pct"] == pytest.approx(0.0198019801980198020, rel=1e-12)  # 2 / 101


def test_micro_price_of_the_last_snapshot():
    # C alone at 10:00:30 after A: C is last.
    (row,) = book_ticker_minutes(raw_book_ticker([A, C]), DAY, source=SOURCE).to_pylist()
    assert row["micro_price_close"] == pytest.approx(99.5)  # (99·1 + 100·1) / 2
    assert row["last_bid_ask_imbalance"] == 0.0
    assert row["last_spread_usdt"] == 1.0
    assert row["last_bid_qty"] == 1.0
    assert row["last_ask_qty"] == 1.0
    assert row["bid_ask_imbalance"] == pytest.approx(0.25)  # (0.5 + 0) / 2
    assert row["micro_price_close"] != pytest.approx(100.75)  # A's micro price


def test_a_minute_of_only_empty_books_has_null_imbalance():
    (row,) = book_ticker_minutes(raw_book_ticker([B]), DAY, source=SOURCE).to_pylist()
    assert row["bid_ask_imbalance"] is None
    assert row["micro_price_close"] is None
    assert row["avg_spread_usdt"] == 2.0
    assert row["avg_bid_depth"] == 0.0


def test_a_snapshot_outside_the_day_names_source_and_row():
    late = (5, 100.0, 1.0, 101.0, 1.0, "2024-03-02 00:00:00")
    with pytest.raises(SnapshotOutsideDay, match=r"bookTicker-2024-03-01\.csv: row 2: transaction_time"):
        book_ticker_minutes(raw_book_ticker([A, late]), DAY, source=SOURCE)


def test_no_snapshots_gives_no_rows():
    table = book_ticker_minutes(raw_book_ticker([]), DAY, source=SOURCE)
    assert table.num_rows == 0
    assert table.schema.equals(schema.BOOK_TICKER.arrow_schema)
