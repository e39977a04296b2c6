"""Rendering Vision files: exact-unit columns → CSV text → one-member zip → CHECKSUM.

What belongs here: turning ``CsvColumn``s into CSV bytes with or without a header,
packing CSV into a zip the way Vision does (one deflated member named like the zip
with ``.csv``), and the ``.CHECKSUM`` line. Large files (millions of aggTrades) are
formatted and deflated in row chunks on a thread pool, so a 7M-row day renders in
seconds and the full CSV text is never held in memory at once.

What stays out: the column type and how one value prints (``columns.py``), what the
columns contain (``market.py``) and which files exist under which names
(``vision_archive.py``), URL paths and HTTP (``server.py``). The project's Vision
URL builder and CSV reader live in ``sources/``; nothing here is meant for them.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.replay.columns import CsvColumn, format_column

# Rows per formatting/deflate task: big enough to amortise Arrow call overhead,
# small enough that a few chunks in flight stay well under 100 MB.
CHUNK_ROWS = 400_000
# Deflate level of every zip served. Level 1 is ~4x faster than the default 6
# on this data and only ~15 % larger; files stay deterministic for a fixed level.
DEFLATE_LEVEL = 1
# A plain (non-zip64) zip member must stay under 4 GiB.
_ZIP32_LIMIT = 0xFFFFFFFF


def _rows_text(columns: Sequence[CsvColumn], start: int, stop: int) -> bytes:
    """Rows ``start:stop`` as CSV lines, each ending in LF."""
    if stop <= start:
        return b""
    texts = [format_column(c.take(slice(start, stop))) for c in columns]
    texts[-1] = pc.binary_join_element_wise(texts[-1], pa.scalar("\n"), "")
    lines = pc.binary_join_element_wise(*texts, ",") if len(texts) > 1 else texts[0]
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    # The joined array's data buffer is exactly the concatenated lines.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    first, last = int(offsets[lines.offset]), int(offsets[lines.offset + len(lines)])
    return lines.buffers()[2].to_pybytes()[first:last]


def header_line(columns: Sequence[CsvColumn]) -> bytes:
    return (",".join(c.name for c in columns) + "\n").encode()


def _row_count(columns: Sequence[CsvColumn]) -> int:
    counts = {len(c.values) for c in columns}
    if len(counts) != 1:
        raise ValueError(f"columns differ in length: {sorted(counts)}")
    return counts.pop()


def csv_bytes(columns: Sequence[CsvColumn], *, header: bool) -> bytes:
    """The whole CSV text (LF endings, trailing newline). For small files and tests;
    ``zip_csv`` streams large ones."""
    return b"".join(_csv_chunks(columns, header=header))


def _csv_chunks(columns: Sequence[CsvColumn], *, header: bool) -> Iterator[bytes]:
    n = _row_count(columns)
    if header:
        yield header_line(columns)
    for start in range(0, n, CHUNK_ROWS):
        yield _rows_text(columns, start, min(n, start + CHUNK_ROWS))


def _deflate_piece(data: bytes, final: bool) -> bytes:
    # Raw deflate (no zlib header). Every piece starts with a fresh dictionary and
    # non-final pieces end byte-aligned (sync flush), so concatenated pieces form
    # one valid deflate stream, as pigz does.
    z = zlib.compressobj(DEFLATE_LEVEL, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush(zlib.Z_FINISH if final else zlib.Z_SYNC_FLUSH)


def _dos_time(moment: datetime) -> tuple[int, int]:
    year = max(moment.year, 1980)
    return (
        (moment.hour << 11) | (moment.minute << 5) | (moment.second // 2),
        ((year - 1980) << 9) | (moment.month << 5) | moment.day,
    )


def _zip_from_pieces(member_name: str, modified: datetime, crc: int, raw_size: int, deflated: list[bytes]) -> bytes:
    """A one-member zip around already deflated data (sizes known, no data descriptor)."""
    comp_size = sum(len(p) for p in deflated)
    if raw_size > _ZIP32_LIMIT or comp_size > _ZIP32_LIMIT:
        raise ValueError(f"{member_name}: {raw_size} bytes is beyond a plain zip member (4 GiB)")
    name = member_name.encode()
    dos_time, dos_date = _dos_time(modified)
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, dos_time, dos_date, crc, comp_size, raw_size, len(name), 0
    )
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII",
        0x02014B50,
        (3 << 8) | 20,  # made by: unix, spec 2.0 (so the mode bits below are read)
        20,
        0,
        8,
        dos_time,
        dos_date,
        crc,
        comp_size,
        raw_size,
        len(name),
        0,
        0,
        0,
        0,
        (0o100644 << 16),
        0,
    )
    central_offset = len(local) + len(name) + comp_size
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central) + len(name), central_offset, 0)
    return b"".join([local, name, *deflated, central, name, end])


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def zip_csv(member_name: str, columns: Sequence[CsvColumn], *, header: bool, modified: datetime) -> bytes:
    """Format ``columns`` as CSV and pack it as the zip's only member, chunk by chunk
    on a thread pool (Arrow and zlib release the GIL)."""
    n = _row_count(columns)
    bounds = [(s, min(n, s + CHUNK_ROWS)) for s in range(0, n, CHUNK_ROWS)] or [(0, 0)]
    head = header_line(columns) if header else b""

    def piece(i: int) -> tuple[bytes, bytes]:
        text = _rows_text(columns, *bounds[i])
        if i == 0:
            text = head + text
        return text, _deflate_piece(text, final=i == len(bounds) - 1)

    crc, raw_size, deflated = 0, 0, []
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        # map() yields in order; the CRC must run over the text in file order.
        for text, packed in pool.map(piece, range(len(bounds))):
            crc = zlib.crc32(text, crc)
            raw_size += len(text)
            deflated.append(packed)
    return _zip_from_pieces(member_name, modified, crc, raw_size, deflated)


def zip_bytes(member_name: str, data: bytes, *, modified: datetime) -> bytes:
    """Pack existing CSV bytes (e.g. a real loose CSV) as a one-member zip."""
    step = 32 << 20
    pieces = [data[i : i + step] for i in range(0, len(data), step)] or [b""]
    with ThreadPoolExecutor(max_workers=_workers()) as pool:
        deflated = list(pool.map(lambda i: _deflate_piece(pieces[i], i == len(pieces) - 1), range(len(pieces))))
    return _zip_from_pieces(member_name, modified, zlib.crc32(data), len(data), deflated)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def checksum_text(zip_name: str, data: bytes) -> str:
    """The ``.CHECKSUM`` file's text: ``<sha256 hex><two spaces><zip name>`` and a newline."""
    return f"{sha256_hex(data)}  {zip_name}\n"
