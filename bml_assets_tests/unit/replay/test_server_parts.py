"""Pieces of the replay server that need no socket: path parsing, the real-file
index, fault rule bookkeeping, the loopback guard."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from bml_assets.domain.streams import Stream
from bml_assets.replay.faults import FaultKind, FaultRule, FaultSet
from bml_assets.replay.real_files import index_real_dir
from bml_assets.replay.server import ReplayServer
from bml_assets.replay.vision_archive import parse_vision_path

UM = "/data/futures/um"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip", (Stream.KLINES, "BTCUSDT", date(2024, 1, 2))),
        (
            f"{UM}/daily/premiumIndexKlines/ETHUSDT/1m/ETHUSDT-1m-2022-05-31.zip",
            (Stream.PREMIUM_INDEX_KLINES, "ETHUSDT", date(2022, 5, 31)),
        ),
        (
            f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip",
            (Stream.AGG_TRADES, "BTCUSDT", date(2024, 1, 2)),
        ),
        (f"{UM}/daily/bookTicker/X1/X1-bookTicker-2023-02-28.zip", (Stream.BOOK_TICKER, "X1", date(2023, 2, 28))),
        (f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-2026-06-25.zip", (Stream.METRICS, "BTCUSDT", date(2026, 6, 25))),
        (
            f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-02.zip",
            (Stream.FUNDING_RATE, "BTCUSDT", date(2024, 2, 1)),
        ),
        (f"{UM}/daily/klines/BTCUSDT/5m/BTCUSDT-5m-2024-01-02.zip", None),  # only 1m
        (f"{UM}/daily/klines/BTCUSDT/1m/ETHUSDT-1m-2024-01-02.zip", None),  # symbols disagree
        (f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02-30.zip", None),  # no such day
        (f"{UM}/daily/aggTrades/btcusdt/btcusdt-aggTrades-2024-01-02.zip", None),
        (f"{UM}/daily/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-01-02.zip", None),  # monthly only
        (f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-13.zip", None),
        ("/data/spot/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip", None),
        (f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip.CHECKSUM", None),  # the caller strips it
    ],
)
def test_vision_paths(path: str, expected: tuple[Stream, str, date] | None) -> None:
    assert parse_vision_path(path) == expected


def _touch(root: Path, rel: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_real_dir_index(tmp_path: Path) -> None:
    laid = "data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip"
    _touch(tmp_path, laid)
    _touch(tmp_path, laid + ".CHECKSUM")
    _touch(tmp_path, "loose/BTCUSDT-aggTrades-2024-01-02.zip")  # loses to the laid-out copy
    _touch(tmp_path, "k/BTCUSDT-1m-2023-04-15.csv")
    _touch(tmp_path, "k2/BTCUSDT-1m-2023-04-15.zip")  # a zip beats a CSV
    _touch(tmp_path, "x/markPriceKlines/BTCUSDT-1m-2023-04-15.csv")
    _touch(tmp_path, "indexPriceKlines/1m/ETHUSDT-1m-2023-04-16.zip")
    _touch(tmp_path, "m/ETHUSDT-metrics-2026-06-25.zip")
    _touch(tmp_path, "b/ETHUSDT-bookTicker-2024-03-30.csv")
    _touch(tmp_path, "f/BTCUSDT-fundingRate-2026-04.zip")
    _touch(tmp_path, "spot_fallback/BTCUSDT-1m-2020-01-01.zip")  # another market
    _touch(tmp_path, "aggTrades_cm_fallback/BTCUSD_PERP-aggTrades-2026-05-08.zip")
    _touch(tmp_path, "notes/readme.csv")
    index = index_real_dir(tmp_path)
    assert {route: str(real.source.relative_to(tmp_path)) for route, real in index.items()} == {
        f"/{laid}": laid,
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip": "k2/BTCUSDT-1m-2023-04-15.zip",
        f"{UM}/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2023-04-15.zip": "x/markPriceKlines/BTCUSDT-1m-2023-04-15.csv",
        f"{UM}/daily/indexPriceKlines/ETHUSDT/1m/ETHUSDT-1m-2023-04-16.zip": "indexPriceKlines/1m/ETHUSDT-1m-2023-04-16.zip",
        f"{UM}/daily/metrics/ETHUSDT/ETHUSDT-metrics-2026-06-25.zip": "m/ETHUSDT-metrics-2026-06-25.zip",
        f"{UM}/daily/bookTicker/ETHUSDT/ETHUSDT-bookTicker-2024-03-30.zip": "b/ETHUSDT-bookTicker-2024-03-30.csv",
        f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2026-04.zip": "f/BTCUSDT-fundingRate-2026-04.zip",
    }
    assert index[f"/{laid}"].checksum == tmp_path / (laid + ".CHECKSUM")
    assert (
        index[f"/{laid}"].laid_out and not index[f"{UM}/daily/metrics/ETHUSDT/ETHUSDT-metrics-2026-06-25.zip"].laid_out
    )


def test_real_dir_index_skips_links_leading_outside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root, outside = tmp_path / "real", tmp_path / "outside"
    secret = _touch(outside, "secret.txt")
    _touch(outside, "folder/BTCUSDT-aggTrades-2024-01-02.zip")
    good = _touch(root, "k/BTCUSDT-1m-2024-01-03.zip")
    # A file link, a folder link and a CHECKSUM link out of the folder; one link inside.
    (root / "k" / "BTCUSDT-1m-2024-01-01.csv").symlink_to(secret)
    (root / "linked").symlink_to(outside / "folder", target_is_directory=True)
    (root / "k" / "BTCUSDT-1m-2024-01-03.zip.CHECKSUM").symlink_to(secret)
    (root / "k" / "BTCUSDT-1m-2024-01-04.zip").symlink_to(good)
    with caplog.at_level("WARNING", logger="bml_assets.replay.real_files"):
        index = index_real_dir(root)
    assert {route: str(real.source.relative_to(root)) for route, real in index.items()} == {
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-03.zip": "k/BTCUSDT-1m-2024-01-03.zip",
        f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-04.zip": "k/BTCUSDT-1m-2024-01-04.zip",
    }
    assert index[f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-03.zip"].checksum is None
    assert sorted(r.getMessage() for r in caplog.records) == [
        f"replay: not serving {root / 'k' / 'BTCUSDT-1m-2024-01-01.csv'}: it links outside {root}",
        f"replay: not serving {root / 'k' / 'BTCUSDT-1m-2024-01-03.zip.CHECKSUM'}: it links outside {root}",
        f"replay: not serving {root / 'linked'}: it links outside {root}",
    ]


def test_fault_rules_count_per_matching_request() -> None:
    faults = FaultSet()
    faults.add(FaultRule("error_500", "aggTrades", times=2))
    faults.add(FaultRule("slow", "aggTrades", delay_s=0.25))
    faults.add(FaultRule("slow", "BTC", times=1, delay_s=0.5))
    faults.add(FaultRule(FaultKind.MISSING, "ETHUSDT"))
    path = f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-01-02.zip"
    assert [(d.kind, d.delay_s) for d in (faults.decide(path) for _ in range(3))] == [
        (FaultKind.ERROR_500, 0.75),
        (FaultKind.ERROR_500, 0.25),
        (None, 0.25),
    ]
    assert faults.decide(f"{UM}/daily/klines/ETHUSDT/1m/ETHUSDT-1m-2024-01-02.zip").kind is FaultKind.MISSING
    assert faults.decide("/other").kind is None
    assert [(r["kind"], r["remaining"]) for r in faults.describe()] == [
        ("error_500", 0),
        ("slow", None),
        ("slow", 0),
        ("missing", None),
    ]
    faults.clear()
    assert len(faults) == 0 and faults.decide(path).kind is None


@pytest.mark.parametrize("checksum_first", [True, False])
def test_corrupt_zip_pairs_the_checksum_with_the_garbage(checksum_first: bool) -> None:
    zip_path = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
    faults = FaultSet()
    faults.add(FaultRule("corrupt_zip", "BTCUSDT-1m", times=1))
    order = [zip_path + ".CHECKSUM", zip_path] if checksum_first else [zip_path, zip_path + ".CHECKSUM"]
    assert [faults.decide(p).kind for p in order] == [FaultKind.CORRUPT_ZIP] * 2
    # The one use is spent: the retry sees the good pair.
    assert [faults.decide(p).kind for p in order] == [None, None]


def test_checksum_mismatch_spares_the_checksum() -> None:
    zip_path = f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip"
    faults = FaultSet()
    faults.add(FaultRule("checksum_mismatch", "BTCUSDT", times=1))
    assert faults.decide(zip_path + ".CHECKSUM").kind is None
    assert faults.decide(zip_path).kind is FaultKind.CHECKSUM_MISMATCH
    assert faults.decide(zip_path).kind is None


def test_fault_rule_validation() -> None:
    with pytest.raises(ValueError):
        FaultRule("teapot", "x")
    with pytest.raises(ValueError):
        FaultRule("slow", "x", delay_s=-1)
    with pytest.raises(ValueError):
        FaultRule("missing", "x", times=-1)
    with pytest.raises(ValueError, match="unknown"):
        FaultRule.from_json({"kind": "missing", "path_contains": "x", "when": 1})
    assert FaultRule.from_json({"kind": "slow", "path_contains": "x", "delay_s": 1}) == FaultRule(
        FaultKind.SLOW, "x", None, 1.0
    )


def test_refuses_public_hosts_unless_asked() -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        ReplayServer(host="0.0.0.0")
    with pytest.raises(ValueError, match="non-loopback"):
        ReplayServer(host="192.168.1.10")
    ReplayServer(host="0.0.0.0", allow_public=True)  # not started: nothing listens
    ReplayServer(host="localhost")
    ReplayServer(host="::1")
