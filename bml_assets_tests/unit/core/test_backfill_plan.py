"""orchestration's planning: targets from a scan, listing days skipped, order, the hours cap, the dry-run text."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bml_assets.domain.partitions import day_ranges
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger, SymbolRecord
from bml_assets.lake.scan import Problem, ProblemKind, ScanReport
from bml_assets.orchestration.errors import UnknownSymbol
from bml_assets.orchestration.plan import (
    BackfillPlan,
    Target,
    chunks,
    plan_backfill,
    symbols_in_range,
    targets_from_reports,
    unplanned_problems,
    years_back,
)
from bml_assets.orchestration.scans import remaining_problems
from bml_assets.orchestration.state import Workspace, resolve_symbols
from bml_assets.orchestration.symbols import listed_span, perpetual_symbols

D = dt.date(2024, 3, 1)
BTC, ETH = "BTCUSDT", "ETHUSDT"


def day(n: int) -> dt.date:
    return D + dt.timedelta(days=n - 1)


def keys(plan: BackfillPlan) -> list[tuple[str, str]]:
    return [(t.symbol, t.day.isoformat()) for t in plan.partitions]


def every(symbols: tuple[str, ...], days: range) -> list[tuple[str, dt.date]]:
    # Deliberately not in plan order: newest day first, symbols reversed.
    return [(s, day(n)) for n in reversed(days) for s in reversed(symbols)]


def test_order_is_chunk_then_symbol_then_day() -> None:
    plan = plan_backfill(every((BTC, ETH), range(1, 6)), start=day(1), end=day(5), symbols=(BTC, ETH), chunk_days=2)
    assert keys(plan) == [
        (BTC, "2024-03-01"), (BTC, "2024-03-02"), (ETH, "2024-03-01"), (ETH, "2024-03-02"),
        (BTC, "2024-03-03"), (BTC, "2024-03-04"), (ETH, "2024-03-03"), (ETH, "2024-03-04"),
        (BTC, "2024-03-05"), (ETH, "2024-03-05"),
    ]  # fmt: skip
    # The symbols' order is the caller's, not the alphabet's.
    plan = plan_backfill(every((BTC, ETH), range(1, 3)), start=day(1), end=day(2), symbols=(ETH, BTC))
    assert keys(plan) == [(ETH, "2024-03-01"), (ETH, "2024-03-02"), (BTC, "2024-03-01"), (BTC, "2024-03-02")]


def test_targets_outside_the_range_or_the_symbols_are_ignored_and_duplicates_merge() -> None:
    targets = [
        Target(BTC, day(2), ("not_built",)),
        Target(BTC, day(2), ("content_hash_mismatch",)),
        (BTC, day(9)),  # after the range
        (ETH, day(2)),  # not asked for
    ]
    plan = plan_backfill(targets, start=day(1), end=day(3), symbols=(BTC,))
    assert plan.partitions == (Target(BTC, day(2), ("content_hash_mismatch", "not_built")),)


@pytest.mark.parametrize(
    ("cap", "planned", "left_out"),
    [
        (None, 4, 0),
        (96, 4, 0),
        (95, 3, 1),  # the 4th day would take it to 96 h
        (72, 3, 1),
        (24, 1, 3),
        (23, 0, 4),
        (0, 0, 4),
    ],
)
def test_the_cap_counts_24_hours_per_day_and_stops_planning(cap: int | None, planned: int, left_out: int) -> None:
    plan = plan_backfill(
        every((BTC, ETH), range(1, 3)), start=day(1), end=day(2), symbols=(BTC, ETH), max_missing_hours=cap
    )
    assert len(plan.partitions) == planned and len(plan.left_out) == left_out
    assert plan.hours == 24 * planned
    assert plan.cap_reached == bool(left_out)
    # The cap keeps the head of the order: what is left out comes after what is planned.
    assert [*plan.partitions, *plan.left_out] == list(
        plan_backfill(every((BTC, ETH), range(1, 3)), start=day(1), end=day(2), symbols=(BTC, ETH)).partitions
    )


def test_days_before_listing_and_after_delisting_are_skipped_without_work() -> None:
    listings = {
        BTC: SymbolRecord(BTC, onboard_date=day(3), status="TRADING"),
        ETH: SymbolRecord(ETH, onboard_date=dt.date(2019, 11, 27), status="SETTLING", delist_date=day(2)),
    }
    plan = plan_backfill(
        every((BTC, ETH), range(1, 5)), start=day(1), end=day(4), symbols=(BTC, ETH), listings=listings
    )
    assert keys(plan) == [(BTC, "2024-03-03"), (BTC, "2024-03-04"), (ETH, "2024-03-01"), (ETH, "2024-03-02")]
    assert [(s.symbol, [d.isoformat() for d in s.days], s.reason) for s in plan.skipped] == [
        (BTC, ["2024-03-01", "2024-03-02"], "before its listing on 2024-03-03"),
        (ETH, ["2024-03-03", "2024-03-04"], "after its last trading day 2024-03-02 (SETTLING)"),
    ]
    # Skipped days cost nothing under the cap.
    capped = plan_backfill(
        every((BTC, ETH), range(1, 5)), start=day(1), end=day(4), symbols=(BTC, ETH), listings=listings,
        max_missing_hours=48,
    )  # fmt: skip
    assert keys(capped) == [(BTC, "2024-03-03"), (BTC, "2024-03-04")]


def test_dry_run_text() -> None:
    listings = {ETH: SymbolRecord(ETH, onboard_date=day(2), status="TRADING")}
    targets = [Target(BTC, day(1), ("content_hash_mismatch",)), *every((BTC, ETH), range(1, 4))]
    plan = plan_backfill(
        targets, start=day(1), end=day(3), symbols=(BTC, ETH), listings=listings, max_missing_hours=100
    )
    assert plan.lines() == [
        "plan: 4 partition(s) to build (96 h) in 2024-03-01..2024-03-03 for BTCUSDT, ETHUSDT",
        # Folded per symbol and reason: a summary, not a line per partition.
        "  BTCUSDT      2024-03-01  content_hash_mismatch (1 day(s))",
        "  BTCUSDT      2024-03-02..2024-03-03  not_built (2 day(s))",
        "  ETHUSDT      2024-03-02  not_built (1 day(s))",
        "skipped: ETHUSDT 2024-03-01 (1 day(s)): before its listing on 2024-03-02",
        "cap reached: --max-missing-hours 100 allows 96 h; 1 more partition(s) (24 h) left for a later run",
    ]
    empty = plan_backfill([], start=day(1), end=day(3), symbols=(BTC,))
    assert empty.lines() == ["plan: 0 partition(s) to build (0 h) in 2024-03-01..2024-03-03 for BTCUSDT"]


def test_a_reversed_range_or_a_bad_chunk_is_refused() -> None:
    with pytest.raises(ValueError, match="reversed"):
        plan_backfill([], start=day(2), end=day(1), symbols=(BTC,))
    with pytest.raises(ValueError, match="chunk_days"):
        plan_backfill([], start=day(1), end=day(1), symbols=(BTC,), chunk_days=0)


def test_targets_from_scan_reports_are_the_repair_targets_plus_not_built_days() -> None:
    report = ScanReport(
        problems=[
            Problem(BTC, day(1), ProblemKind.NOT_BUILT, "no ledger row"),
            Problem(BTC, day(2), ProblemKind.CONTENT_HASH_MISMATCH, "differs"),
            Problem(BTC, day(2), ProblemKind.HARD_NULLS, "NULL", ("2024-03-02T00:00:00+00:00",)),
            Problem(ETH, day(1), ProblemKind.FILE_MISSING, "gone"),
        ],
        checked=4,
    )
    second = ScanReport(problems=[Problem(ETH, day(5), ProblemKind.NOT_BUILT, "no ledger row")], checked=1)
    assert targets_from_reports([report, second]) == [
        Target(BTC, day(1), ("not_built",)),
        Target(BTC, day(2), ("content_hash_mismatch", "hard_nulls")),
        Target(ETH, day(1), ("file_missing",)),
        Target(ETH, day(5), ("not_built",)),
    ]


def test_ranges_chunks_and_years() -> None:
    assert chunks(day(1), day(5), 2) == [(day(1), day(2)), (day(3), day(4)), (day(5), day(5))]
    assert chunks(day(1), day(1), 30) == [(day(1), day(1))]
    assert day_ranges([day(3), day(1), day(2), day(5)]) == [(day(1), day(3)), (day(5), day(5))]
    assert years_back(2, today=dt.date(2026, 3, 1)) == (dt.date(2024, 2, 28), dt.date(2026, 2, 28))
    assert years_back(1, today=dt.date(2024, 3, 1)) == (dt.date(2023, 2, 28), dt.date(2024, 2, 29))
    listing = {BTC: SymbolRecord(BTC, onboard_date=day(3), status="TRADING")}
    assert listed_span(BTC, day(1), day(5), listing) == (day(3), day(5))
    assert listed_span(BTC, day(1), day(2), listing) is None
    assert listed_span(ETH, day(1), day(2), listing) == (day(1), day(2))


def test_symbols_must_be_configured_or_synced() -> None:
    universe = {"SOLUSDT": SymbolRecord("SOLUSDT", onboard_date=day(1), status="TRADING")}
    assert resolve_symbols(None, (BTC,), universe) == (BTC,)
    assert resolve_symbols(("SOLUSDT", BTC), (BTC,), universe) == ("SOLUSDT", BTC)
    with pytest.raises(UnknownSymbol, match=r"XRPUSDT: not in BML_SYMBOLS \(BTCUSDT\) nor in the 1 synced"):
        resolve_symbols(("XRPUSDT",), (BTC,), universe)
    with pytest.raises(UnknownSymbol, match=r"never synced.*bml symbols sync"):
        resolve_symbols(("XRPUSDT",), (BTC,), {})


def test_perpetuals_from_exchange_info() -> None:
    ms = lambda d: int(dt.datetime.combine(d, dt.time(), dt.UTC).timestamp() * 1000)  # noqa: E731
    info = {
        "symbols": [
            {"symbol": BTC, "contractType": "PERPETUAL", "status": "TRADING", "onboardDate": ms(dt.date(2019, 9, 8)),
             "deliveryDate": 4133404800000},
            {"symbol": "OLDUSDT", "contractType": "PERPETUAL", "status": "SETTLING",
             "onboardDate": ms(dt.date(2021, 1, 1)), "deliveryDate": ms(dt.date(2024, 5, 1)) + 3_600_000},
            {"symbol": "GONEUSDT", "contractType": "PERPETUAL", "status": "CLOSE", "onboardDate": ms(day(1)),
             "deliveryDate": 4133404800000},
            {"symbol": "BTCUSDT_240628", "contractType": "CURRENT_QUARTER", "status": "TRADING"},
            {"symbol": "ETHBTC", "contractType": "", "status": "TRADING"},
        ]
    }  # fmt: skip
    now = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    records = {r.symbol: r for r in perpetual_symbols(info, now=now)}
    assert sorted(records) == [BTC, "GONEUSDT", "OLDUSDT"]
    assert records[BTC] == SymbolRecord(BTC, dt.date(2019, 9, 8), "TRADING", None, now)
    assert records["OLDUSDT"].delist_date == dt.date(2024, 5, 1) and not records["OLDUSDT"].trading
    assert records["GONEUSDT"].delist_date is None  # stopped, but exchangeInfo does not say when


def test_days_a_symbol_did_not_trade_are_neither_scanned_nor_problems(tmp_path: Path) -> None:
    universe = {
        BTC: SymbolRecord(BTC, onboard_date=day(3), status="TRADING"),
        ETH: SymbolRecord(ETH, onboard_date=dt.date(2019, 11, 27), status="SETTLING", delist_date=day(2)),
        "SOLUSDT": SymbolRecord("SOLUSDT", onboard_date=day(10), status="TRADING"),
    }
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        ws = Workspace(Settings(symbols=(BTC, ETH)), ledger, (BTC, ETH, "SOLUSDT"), universe, today=day(20))
        kept, notes = symbols_in_range(ws, day(1), day(4))
        assert kept == (BTC, ETH)
        assert notes == [
            "BTCUSDT: listed only 2024-03-03..2024-03-04 of 2024-03-01..2024-03-04",
            "ETHUSDT: listed only 2024-03-01..2024-03-02 of 2024-03-01..2024-03-04",
            "SOLUSDT: 2024-03-01..2024-03-04 is before its listing on 2024-03-10: nothing to do",
        ]
        # The scan knows listing days, not delistings: ETH's days after its last trading day are dropped.
        report = ScanReport(
            problems=[Problem(s, day(n), ProblemKind.NOT_BUILT, "no ledger row") for n in (3, 4) for s in (BTC, ETH)],
            checked=4,
        )
        assert [(p.symbol, p.day) for p in remaining_problems(ws, [report])] == [(BTC, day(3)), (BTC, day(4))]
        plan = plan_backfill(
            targets_from_reports([report]),
            start=day(1),
            end=day(4),
            symbols=kept,
            listings=ws.listings,
            max_missing_hours=24,
        )
        assert keys(plan) == [(BTC, "2024-03-03")]
        assert [(p.symbol, p.day) for p in unplanned_problems(ws, [report], plan)] == [(BTC, day(4))]


def test_the_symbols_table_upserts_and_keeps_unchanged_rows(tmp_path: Path) -> None:
    at = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)
    later = at + dt.timedelta(days=1)
    with Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}") as ledger:
        assert ledger.symbols() == {}
        first = ledger.upsert_symbols(
            [SymbolRecord(BTC, day(1), "TRADING", updated_at=at), SymbolRecord(ETH, day(1), "TRADING", updated_at=at)]
        )
        assert (first.added, first.changed, first.unchanged) == (2, 0, 0)
        second = ledger.upsert_symbols(
            [
                SymbolRecord(BTC, day(1), "TRADING", updated_at=later),
                SymbolRecord(ETH, day(1), "SETTLING", day(5), later),
            ]
        )
        assert (second.added, second.changed, second.unchanged) == (0, 1, 1)
        assert ledger.symbols() == {
            BTC: SymbolRecord(BTC, day(1), "TRADING", None, at),  # unchanged: its updated_at stays
            ETH: SymbolRecord(ETH, day(1), "SETTLING", day(5), later),
        }
