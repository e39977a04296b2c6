"""Typed provenance (domain/provenance.py): the ledger's JSON read and written back as it
was, and the questions the code asks of it."""

from __future__ import annotations

import copy
import datetime as dt

import pyarrow as pa
import pytest

from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.provenance import (
    Provenance,
    Repair,
    SourceFile,
    StreamProvenance,
    StreamStatus,
    provisional_streams,
)
from bml_assets.quality import Evidence

KLINES_URL = "https://data.binance.vision/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-03-01.zip"
AGG_URL = "https://data.binance.vision/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-03-01.zip"
REST = "https://fapi.binance.com"

# One entry of every shape the day builders write, as the ledger stores them.
STORED = {
    "klines": {
        "status": "vision",
        "files": [{"url": KLINES_URL, "sha256": "ab" * 32, "bytes": 61234, "rows": 1340, "from_cache": False}],
        "redownloaded": "the Vision file holds 1340 of 1440 minutes; re-downloaded once, same sha256",
        "repaired": {
            "source": "rest",
            "base_url": REST,
            "minutes": 100,
            "absent_from_rest": 0,
            "rest_weight": 2,
            "reason": "100 missing minutes asked from REST: 100 filled, 0 absent there too",
        },
    },
    "markPriceKlines": {
        "status": "rest",
        "base_url": REST,
        "through": "2024-03-01T10:28:00+00:00",
        "rows": 629,
        "vision_url": "https://data.binance.vision/x.zip",
        "vision_http_status": 404,
        "reason": "Vision has no file (HTTP 404 at https://data.binance.vision/x.zip): built from REST",
        "rest_weight": 10,
    },
    "aggTrades": {
        "status": "missing",
        "files": [{"url": AGG_URL, "sha256": "cd" * 32, "bytes": 9, "rows": 3, "from_cache": True}],
        "incomplete": "REST failed for those minutes: HTTP 500",
    },
    "bookTicker": {"status": "not_published", "reason": "bookTicker ends 2024-03-30"},
    "metrics": {
        "status": "not_published",
        "url": "https://data.binance.vision/m.zip",
        "http_status": 404,
        "reason": "not listed",
        "fillable": False,
    },
    "snapshots": {"status": "polled", "base_url": REST, "through": "2024-03-01T10:28:05.123000+00:00", "rows": 7},
    "exchangeInfo": {"status": "not_listed", "reason": "BTCUSDT is not listed on 2019-01-01"},
}


def test_every_stored_shape_is_written_back_as_it_was() -> None:
    stored = copy.deepcopy(STORED)
    provenance = Provenance.of(stored)
    assert provenance.to_json() == STORED
    for stream in provenance:  # read every record: the typed form writes the same JSON
        assert isinstance(provenance[stream], StreamProvenance)
    assert provenance.to_json() == STORED
    assert stored == STORED  # reading does not touch the caller's JSON


def test_records_are_typed() -> None:
    p = Provenance.of(STORED)
    klines = p["klines"]
    assert klines.status is StreamStatus.VISION and klines.is_vision
    assert klines.files == (SourceFile(url=KLINES_URL, sha256="ab" * 32, bytes=61234, rows=1340, from_cache=False),)
    assert klines.repaired == Repair(
        source="rest",
        base_url=REST,
        minutes=100,
        absent_from_rest=0,
        rest_weight=2,
        reason="100 missing minutes asked from REST: 100 filled, 0 absent there too",
    )
    assert p["markPriceKlines"].through == dt.datetime(2024, 3, 1, 10, 28, tzinfo=dt.UTC)
    assert p["metrics"].fillable is False
    assert p["bookTicker"].url is None


def test_unknown_keys_and_entries_are_kept() -> None:
    """A row written by an older or newer build survives a read and a write."""
    stored = {
        "klines": {
            "status": "vision",
            "files": [{"url": KLINES_URL, "etag": "x1"}],
            "repaired": {"source": "rest", "minutes": 3, "window": [1, 2]},
            "checked_by": "v0",
        },
        "note": "not a stream record",
        "count": 1,
    }
    p = Provenance.of(stored)
    assert list(p) == ["klines"]
    assert p["klines"].extra == {"checked_by": "v0"}
    assert p["klines"].files[0].extra == {"etag": "x1"}  # type: ignore[index]
    assert p.to_json() == stored


def test_provisional_streams_are_vision_streams_taken_from_rest() -> None:
    stored = {
        "klines": {"status": "rest"},
        "fundingRate": {"status": "rest"},
        "aggTrades": {"status": "vision"},
        "snapshots": {"status": "rest"},  # not a Vision stream: never promoted
    }
    assert provisional_streams(stored) == ["fundingRate", "klines"]
    assert Provenance.of(stored).provisional_streams() == ["fundingRate", "klines"]
    assert provisional_streams(STORED) == ["markPriceKlines"]


def test_status_predicates() -> None:
    p = Provenance.of(STORED)
    assert (p.is_vision("klines"), p.is_rest("klines"), p.is_rest("markPriceKlines")) == (True, False, True)
    assert p.status_of("fundingRate") is None and not p.is_vision("fundingRate")
    assert p.status_of("aggTrades") is StreamStatus.MISSING
    assert p.any_vision()
    assert not Provenance.of({"klines": {"status": "rest"}}).any_vision()


def test_rest_weight_counts_fills_and_repairs() -> None:
    assert Provenance.of(STORED).rest_weight() == 12  # markPriceKlines 10 + the klines repair 2
    assert Provenance().rest_weight() == 0


def test_sources_for_error_texts() -> None:
    p = Provenance.of(STORED)
    assert p.sources("klines") == KLINES_URL  # the repair's REST host is not the stream's source
    assert p.sources("markPriceKlines") == f"REST {REST}"
    assert p.sources("fundingRate") is None
    assert p.sources() == f"{KLINES_URL}, REST {REST}, {AGG_URL}"


def test_summaries_and_what_a_partition_still_lacks() -> None:
    p = Provenance.of(STORED)
    assert p.summaries() == {
        "aggTrades": "missing; incomplete: REST failed for those minutes: HTTP 500",
        "bookTicker": "not_published: bookTicker ends 2024-03-30",
        "exchangeInfo": "not_listed: BTCUSDT is not listed on 2019-01-01",
        "klines": "vision, completed from rest (100 minutes)",
        "markPriceKlines": "rest",
        "metrics": "not_published: not listed",
        "snapshots": "polled",
    }
    assert p.incomplete() == {"aggTrades": "REST failed for those minutes: HTTP 500"}


def test_union_replaces_the_right_sides_streams_and_leaves_both_as_they_were() -> None:
    left = Provenance.of({"klines": {"status": "rest"}, "metrics": {"status": "vision"}})
    right = {"klines": StreamProvenance(StreamStatus.VISION, files=())}
    merged = left | right
    assert merged.to_json() == {"klines": {"status": "vision", "files": []}, "metrics": {"status": "vision"}}
    assert left.to_json() == {"klines": {"status": "rest"}, "metrics": {"status": "vision"}}
    assert merged == Provenance.of({"metrics": {"status": "vision"}, "klines": {"status": "vision", "files": []}})


def test_a_bad_record_names_its_stream_and_value() -> None:
    p = Provenance.of({"klines": {"status": "fetched"}, "metrics": {"status": "rest", "through": "yesterday"}})
    with pytest.raises(ValueError, match=r"provenance of klines: status 'fetched' is not one of \['vision'"):
        p.status_of("klines")
    with pytest.raises(ValueError, match=r"provenance of metrics: StreamProvenance: through = 'yesterday'"):
        p["metrics"]
    with pytest.raises(ValueError, match=r"SourceFile: expected a JSON object, got 'a.zip'"):
        StreamProvenance.from_json({"status": "vision", "files": ["a.zip"]})


def test_partition_data_and_evidence_hold_a_provenance_given_as_json() -> None:
    data = PartitionData(pa.table({"x": [1]}), {"klines": {"status": "vision"}})
    assert isinstance(data.provenance, Provenance) and data.provenance.is_vision("klines")
    gone = PartitionData.unavailable("not_listed", "why", {"aggTrades": {"status": "not_listed"}})
    assert gone.provenance.status_of("aggTrades") is StreamStatus.NOT_LISTED
    evidence = Evidence(day=dt.date(2024, 3, 1), frame=None, closed_day=True, provenance=STORED)  # type: ignore[arg-type]
    assert evidence.provenance.is_rest("markPriceKlines")
