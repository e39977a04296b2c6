"""Bounded input: a Vision file may unpack to at most ``max_bytes`` of CSV
(``BML_VISION_MAX_CSV_BYTES``), and the streaming aggTrades parse keeps its memory flat."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from bml_assets.domain.settings import DEFAULT_VISION_MAX_CSV_BYTES, Settings, SettingsError
from bml_assets.domain.streams import Stream
from bml_assets.sources.vision import VisionError
from bml_assets.sources.vision_csv import iter_vision_csv_batches, read_vision_csv

from .conftest import make_zip

URL = "http://***@mirror/data/futures/um/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-03-01.zip"
MEMBER = "BTCUSDT-aggTrades-2024-03-01.csv"
AGG_HEADER = b"agg_trade_id,price,quantity,first_trade_id,last_trade_id,transact_time,is_buyer_maker\n"
# 40 bytes a row: "1000000,60000.5,0.125,2000000,2000002,1709251200000,true\n" is 57; these are fixed-width.
ROW = b"%07d,60000.5,0.125,%07d,%07d,1709251200000,true\n"
T0 = 1709251200000  # 2024-03-01 00:00 UTC


def agg_csv(rows: int) -> bytes:
    return AGG_HEADER + b"".join(ROW % (i, 2 * i, 2 * i) for i in range(1, rows + 1))


def test_the_default_limit_and_its_variable() -> None:
    assert DEFAULT_VISION_MAX_CSV_BYTES == 1_610_612_736  # 1.5 GiB
    assert Settings.from_env({}, dotenv_path=None).vision_max_csv_bytes == 1_610_612_736
    assert Settings.from_env({"BML_VISION_MAX_CSV_BYTES": "5000"}, dotenv_path=None).vision_max_csv_bytes == 5000
    for bad in ("1.5G", "0", "-1"):
        with pytest.raises(SettingsError, match="BML_VISION_MAX_CSV_BYTES"):
            Settings.from_env({"BML_VISION_MAX_CSV_BYTES": bad}, dotenv_path=None)


def test_a_zip_declaring_more_than_the_limit_is_refused_before_unpacking(tmp_path: Path) -> None:
    csv = agg_csv(100)
    assert len(csv) == 86 + 100 * 57  # 5786 bytes
    path = tmp_path / "f.zip"
    path.write_bytes(make_zip(MEMBER, csv))
    for read in (
        lambda: read_vision_csv(path, Stream.AGG_TRADES, source=URL, max_bytes=5785),
        lambda: list(iter_vision_csv_batches(path, Stream.AGG_TRADES, source=URL, max_bytes=5785)),
    ):
        with pytest.raises(VisionError) as info:
            read()
        text = str(info.value)
        assert text == (
            f"{URL}: its CSV {MEMBER} declares 5,786 bytes, over the limit of 5,785 bytes of CSV a Vision file "
            "may unpack to: refused without unpacking it (a zip bomb or a damaged file). If the file is genuine, "
            "raise BML_VISION_MAX_CSV_BYTES."
        )
        assert info.value.url == URL
    # At the limit exactly, the file is read.
    assert read_vision_csv(path, Stream.AGG_TRADES, source=URL, max_bytes=5786).num_rows == 100
    assert sum(b.num_rows for b in iter_vision_csv_batches(path, Stream.AGG_TRADES, max_bytes=5786)) == 100


def test_the_bytes_unpacked_are_counted_when_nothing_declares_them(tmp_path: Path) -> None:
    # A loose CSV has no header saying how big it is: the count stops it.
    path = tmp_path / MEMBER
    path.write_bytes(agg_csv(100))  # 5786 bytes
    with pytest.raises(VisionError) as info:
        list(iter_vision_csv_batches(path, Stream.AGG_TRADES, source=URL, max_bytes=4000, block_size=1024))
    assert str(info.value) == (
        f"{URL}: its CSV had unpacked 4,001 bytes, over the limit of 4,000 bytes of CSV a Vision file may unpack "
        "to: reading stopped there (a zip bomb or a damaged file). If the file is genuine, raise "
        "BML_VISION_MAX_CSV_BYTES."
    )
    assert read_vision_csv(path, Stream.AGG_TRADES, max_bytes=5786).num_rows == 100


def _declaring(data: bytes, size: int) -> bytes:
    """The zip ``data`` (one member, no zip64) with its uncompressed size rewritten to ``size``
    in both the local header and the central directory: a header that lies."""
    out = bytearray(data)
    local = out.index(b"PK\x03\x04")
    central = out.index(b"PK\x01\x02")
    struct.pack_into("<I", out, local + 22, size)
    struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


def test_a_zip_whose_header_lies_about_its_size_is_still_refused(tmp_path: Path) -> None:
    path = tmp_path / "f.zip"
    path.write_bytes(_declaring(make_zip(MEMBER, agg_csv(2000)), 1000))  # 114,086 bytes declared as 1,000
    assert zipfile.ZipFile(path).infolist()[0].file_size == 1000
    with pytest.raises(VisionError) as info:
        list(iter_vision_csv_batches(path, Stream.AGG_TRADES, source=URL, max_bytes=10_000))
    # Python's zip reader stops at the declared size, where the CRC cannot match.
    assert str(info.value).startswith(f"corrupted zip {URL}: Bad CRC-32"), info.value


# --- memory ---------------------------------------------------------------------------------

ROWS_SMALL = 200_000  # ~11 MB of CSV: the first file pays for lazy imports and allocator pools
ROWS_LARGE = 4_000_000  # ~218 MiB of CSV
BOMB_ROW = b"1,60000.5,0.125,1,1,1709251200000,true\n"  # 39 bytes
BOMB_BLOCKS = 265  # of 26,000 rows: 268,710,000 bytes of CSV
BOMB_LIMIT = 64 << 20


def _write_legal_agg_zip(path: Path, rows: int) -> int:
    """A day of in-order aggTrades (one every 86400000/rows ms), zipped; returns the CSV's size."""
    size = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open(MEMBER, "w", force_zip64=True) as out:
            out.write(AGG_HEADER)
            size += len(AGG_HEADER)
            rng = np.random.default_rng(7)
            for start in range(0, rows, 500_000):
                ids = np.arange(start, min(rows, start + 500_000), dtype=np.int64)
                chunk = pa.table(
                    {
                        "agg_trade_id": ids,
                        "price": np.round(60_000 + rng.standard_normal(len(ids)) * 50, 1),
                        "quantity": np.round(rng.random(len(ids)) * 2 + 0.001, 3),
                        "first_trade_id": ids * 3,
                        "last_trade_id": ids * 3 + 2,
                        "transact_time": T0 + ids * 86_400_000 // rows,
                        "is_buyer_maker": rng.random(len(ids)) < 0.5,
                    }
                )
                buf = io.BytesIO()
                pacsv.write_csv(chunk, buf, pacsv.WriteOptions(include_header=False))
                out.write(buf.getvalue())
                size += buf.tell()
    return size


def _write_bomb(path: Path) -> None:
    """One row repeated to 256 MiB: a ~0.3 MB zip, as the zip bomb of the issue (16 MB → 2 GB)."""
    block = BOMB_ROW * 26_000
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open(MEMBER, "w", force_zip64=True) as out:
            for _ in range(BOMB_BLOCKS):
                out.write(block)


# Runs in a fresh interpreter: the streaming aggTrades path of ``trade_flow_day``
# (``iter_vision_csv_batches`` → ``TradeFlowBuilder``) over each file in turn,
# reporting how far the resident set rose above where it was before the file (Linux:
# the peak, VmHWM, is reset through /proc/self/clear_refs) and the peak of Python +
# Arrow allocations.
_MEASURE = textwrap.dedent(
    """
    import datetime as dt, json, re, sys, tracemalloc
    from pathlib import Path
    import pyarrow as pa
    from bml_assets.features.trade_flow import TradeFlowBuilder
    from bml_assets.sources.vision import VisionError
    from bml_assets.domain.streams import Stream
    from bml_assets.sources.vision_csv import iter_vision_csv_batches

    def status(field: str) -> int:
        with open("/proc/self/status") as f:
            return int(re.search(field + r":\\s+(\\d+) kB", f.read())[1]) * 1024

    report = []
    for path, limit in json.loads(sys.argv[1]):
        pool = pa.default_memory_pool()
        pool.release_unused()
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident set
        rss_before = status("VmRSS")
        tracemalloc.start()
        builder = TradeFlowBuilder(dt.date(2024, 3, 1), source=path)
        error = minutes = None
        try:
            batches = iter_vision_csv_batches(Path(path), Stream.AGG_TRADES, source=path, max_bytes=limit)
            assert all(builder.add(batch) for batch in batches)
            minutes = builder.finish().num_rows
        except VisionError as exc:
            error = str(exc)
        traced = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        report.append({"rss_growth": status("VmHWM") - rss_before, "traced_peak": traced,
                       "arrow_peak": pool.max_memory(), "rows": builder.rows, "minutes": minutes, "error": error})
    print(json.dumps(report))
    """
)


def test_the_streaming_agg_trades_parse_keeps_memory_flat(tmp_path: Path) -> None:
    small, large, bomb = tmp_path / "small.zip", tmp_path / "large.zip", tmp_path / "bomb.zip"
    _write_legal_agg_zip(small, ROWS_SMALL)
    large_csv = _write_legal_agg_zip(large, ROWS_LARGE)
    _write_bomb(bomb)
    assert large_csv > 200 << 20 and bomb.stat().st_size < 1 << 20
    files = [(str(small), None), (str(large), None), (str(bomb), BOMB_LIMIT)]
    done = subprocess.run(
        [sys.executable, "-c", _MEASURE, json.dumps(files)], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    first, second, refused = json.loads(done.stdout)
    assert (first["rows"], first["minutes"]) == (ROWS_SMALL, 1440)
    assert (second["rows"], second["minutes"]) == (ROWS_LARGE, 1440)
    # Held whole, the large file would need more memory than its CSV (218 MiB). Streamed,
    # the parser keeps a bounded read-ahead of 1 MiB blocks (measured ~40 of them) and the
    # builder one minute of trades: well under half of it, whatever the file's size.
    assert second["rss_growth"] < min(96 << 20, large_csv * 45 // 100), (second, large_csv)
    assert second["traced_peak"] + second["arrow_peak"] < 128 << 20, second
    # The bomb declares 256 MiB: refused before anything is unpacked.
    assert refused["error"].startswith(
        f"{bomb}: its CSV {MEMBER} declares 268,710,000 bytes, over the limit of 67,108,864 bytes (64 MiB) of CSV"
    )
    assert refused["rows"] == 0 and refused["rss_growth"] < 16 << 20, refused
