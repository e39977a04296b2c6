"""The raw spool of the live collector: every received frame and every REST snapshot used,
as ``<local_ns> <json>`` lines, in gzipped hourly segments (SPEC §9).

What belongs here: the spool's layout in the lake, the writer (``SpoolWriter``) and the
reader (``segments``, ``read_segment``, ``spool_lines``). What stays out: what a line
means (``frames.py``, ``rebuild.py``), sockets.

Layout, relative to the spool's store (``spool_store``: the lake root when it is a local
folder, else ``BML_WORK_DIR``; ``_`` keeps it out of the hive readers)::

    _spool/live/{SYMBOL}/{YYYY-MM-DD}/{YYYYMMDDTHH}Z_{start}_{pid}.gz

The folder's day and the segment's hour are the local receive time's (UTC) of its lines;
``start`` (``YYYYMMDDTHHMMSSffffff``, UTC) and ``pid`` name the process that wrote it, so
a process start never reopens a file of another one, and a process rotates to a new file
each hour (it never reopens one either: a file is created with ``x``). Frames that name
no subscribed symbol (not JSON, an unknown stream) go to the folder ``_unrouted``.

Line format: the recording format of ``fixtures/real/ws/btcusdt_20240808.gz``: the local
receive time in ns, a space, the text as received (a raw newline in it, which valid JSON
only has as whitespace, becomes a space). Snapshot lines are the REST body as received.
The collector's own notes — the session (subscribed families), connection drops, silent
streams, clock ticks — are JSON lines with a ``"bml"`` key, so a rebuild replays them too.

Durability: each segment is a series of gzip members; ``flush()`` ends the current member
and writes it (the collector flushes every second), so a killed process leaves complete
members and at most one truncated last member, which the reader tolerates (its complete
lines are kept, the partial last line is dropped, and ``SegmentRead.truncated`` says so).

The store seam: keys and listing go through ``storage/store`` (``Store.list``,
``Store.read``), so the reader works on any store; the writer appends to a local file,
which only a ``LocalStore`` has: with an object-store lake the spool stays on the
collector's disk (``spool_store``), and a writer handed an object store refuses it by name.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final

from bml_assets.domain.settings import validate_symbol
from bml_assets.storage.store import LocalStore, Store

SPOOL_PREFIX: Final = "_spool/live"
UNROUTED: Final = "_unrouted"
HOUR_NS: Final = 3_600 * 1_000_000_000
_NS_PER_S: Final = 1_000_000_000
_SEGMENT: Final = re.compile(r"^(\d{8}T\d{2})Z_(\d{8}T\d{12})_(\d{10})\.gz$")
_READ_BLOCK: Final = 1 << 20
# zlib level 6: the recording's 27.8 MB of lines spool to 3.8 MB (level 1: 4.95 MB) at 61k
# events/s through parse + book + aggregation + spool on one core (level 1: 86k): ample
# either way, and the spool is kept for rebuilds, so disk wins.
COMPRESS_LEVEL: Final = 6
FLUSH_BYTES: Final = 1 << 20
"""A member is also ended when this many uncompressed bytes wait in it."""


class SpoolError(OSError):
    """The spool could not keep a line (a full disk, a refused store)."""


def _utc(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns // _NS_PER_S, dt.UTC).replace(microsecond=(ns // 1000) % 1_000_000)


def segment_key(folder: str, hour_ns: int, started_ns: int, pid: int) -> str:
    """The key of one process's segment of one hour, for ``folder`` (a symbol or ``_unrouted``)."""
    hour = _utc(hour_ns)
    started = _utc(started_ns)
    return f"{SPOOL_PREFIX}/{folder}/{hour:%Y-%m-%d}/{hour:%Y%m%dT%H}Z_{started:%Y%m%dT%H%M%S%f}_{pid:010d}.gz"


def spool_line(local_ns: int, text: str) -> str:
    """One spool line (with its newline)."""
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return f"{local_ns} {text}\n"


class _Segment:
    def __init__(self, path: str, hour: int) -> None:
        self.path = path
        self.hour = hour
        self.file: IO[bytes] = open(path, "xb")  # never reopened, never another's
        self.member = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
        self.pending = 0  # uncompressed bytes in the open member

    def write(self, data: bytes) -> None:
        self.file.write(self.member.compress(data))
        self.pending += len(data)

    def end_member(self) -> None:
        if self.pending:
            self.file.write(self.member.flush(zlib.Z_FINISH))
            self.file.flush()
            self.member = zlib.compressobj(COMPRESS_LEVEL, zlib.DEFLATED, 31)
            self.pending = 0

    def close(self) -> None:
        try:
            self.end_member()
        finally:
            self.file.close()


def spool_store(lake_store: Store, host_dir: Path) -> LocalStore:
    """Where the raw spool goes: the lake itself when it is a local folder, else this host's
    work folder (``BML_WORK_DIR``). The spool is appended to in place, which an object store
    cannot do; it stays with the collector, and only the minutes it makes go to the lake."""
    return lake_store if isinstance(lake_store, LocalStore) else LocalStore(host_dir)


class SpoolWriter:
    """Appends lines to the spool of one process (``started_ns``, ``pid``) in a local store."""

    def __init__(self, store: Store, *, started_ns: int, pid: int | None = None) -> None:
        if not isinstance(store, LocalStore):
            raise SpoolError(f"the live spool is appended to in place: it needs a local folder, not {store.root}")
        self.store = store
        self.started_ns = started_ns
        self.pid = os.getpid() if pid is None else pid
        self._open: dict[str, _Segment] = {}
        self.lines = 0
        self.files: list[str] = []

    def write(self, folder: str, local_ns: int, text: str) -> None:
        """One line to ``folder``'s segment of ``local_ns``'s hour (``SpoolError`` on failure)."""
        hour = local_ns - local_ns % HOUR_NS
        segment = self._open.get(folder)
        try:
            # Rotate only forward: a local clock stepping back keeps writing the open file.
            if segment is None or hour > segment.hour:
                if segment is not None:
                    segment.close()
                segment = self._start(folder, hour)
            segment.write(spool_line(local_ns, text).encode("utf-8", errors="replace"))
            if segment.pending >= FLUSH_BYTES:
                segment.end_member()
        except OSError as exc:
            self._open.pop(folder, None)
            raise SpoolError(f"spool {folder}: cannot write ({exc})") from exc
        self.lines += 1

    def _start(self, folder: str, hour: int) -> _Segment:
        if folder != UNROUTED:
            validate_symbol(folder)
        path = Path(self.store.location(segment_key(folder, hour, self.started_ns, self.pid)))
        path.parent.mkdir(parents=True, exist_ok=True)
        segment = _Segment(str(path), hour)
        self._open[folder] = segment
        self.files.append(str(path))
        return segment

    def flush(self) -> None:
        """End the open gzip members and write them out (a kill after this loses nothing before it)."""
        failed = []
        for folder, segment in list(self._open.items()):
            try:
                segment.end_member()
            except OSError as exc:
                self._open.pop(folder, None)
                failed.append(f"{folder}: {exc}")
        if failed:
            raise SpoolError("spool flush failed: " + "; ".join(failed))

    def close(self) -> None:
        segments, self._open = list(self._open.values()), {}
        errors = []
        for segment in segments:
            try:
                segment.close()
            except OSError as exc:
                errors.append(f"{segment.path}: {exc}")
        if errors:
            raise SpoolError("spool close failed: " + "; ".join(errors))


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True, order=True)
class Segment:
    """One spool file: its hour, the writing process (start, pid), and its key. Sorted by
    (hour, process start, pid): the order its lines were received in."""

    hour: str
    started: str
    pid: int
    key: str

    @property
    def process(self) -> tuple[str, int]:
        return (self.started, self.pid)


def segments(store: Store, symbol: str, days: Iterable[dt.date]) -> list[Segment]:
    """The segments of ``symbol`` in the folders of ``days``, in reading order."""
    folder = validate_symbol(symbol) if symbol != UNROUTED else symbol
    found = []
    for day in days:
        prefix = f"{SPOOL_PREFIX}/{folder}/{day.isoformat()}"
        for key in store.list(prefix):
            match = _SEGMENT.match(key.rsplit("/", 1)[-1])
            if match:
                found.append(Segment(match[1], match[2], int(match[3]), key))
    return sorted(found)


@dataclass
class SegmentRead:
    """What reading one segment found besides its lines."""

    key: str
    lines: int = 0
    bad_lines: int = 0
    truncated: str | None = None  # why the last member ended early, if it did


def _chunks(store: Store, key: str) -> Iterator[bytes]:
    if isinstance(store, LocalStore):
        with open(store.location(key), "rb") as f:
            while block := f.read(_READ_BLOCK):
                yield block
    else:
        yield store.read(key)


def read_segment(store: Store, segment: Segment | str, report: SegmentRead | None = None) -> Iterator[tuple[int, str]]:
    """The (local_ns, text) lines of one segment, member by member; a truncated or corrupt
    last member yields its complete lines and ends the segment (``report.truncated``)."""
    key = segment.key if isinstance(segment, Segment) else segment
    report = report if report is not None else SegmentRead(key)
    member = zlib.decompressobj(31)
    tail = b""
    in_member = False
    try:
        for block in _chunks(store, key):
            data = block
            while data:
                out = member.decompress(data)
                in_member = True
                data = b""
                if out:
                    tail += out
                    *complete, tail = tail.split(b"\n")
                    yield from _lines(complete, report)
                if member.eof:
                    data = member.unused_data
                    member = zlib.decompressobj(31)
                    in_member = False
    except zlib.error as exc:
        report.truncated = f"corrupt gzip data ({exc})"
    else:
        if in_member and not member.eof:
            report.truncated = "the last gzip member is truncated (a killed writer)"
    if tail:
        report.bad_lines += 1  # a partial last line: never half a frame


def _lines(raw: list[bytes], report: SegmentRead) -> Iterator[tuple[int, str]]:
    for line in raw:
        ns, sep, text = line.partition(b" ")
        if not sep or not ns.isdigit():
            report.bad_lines += 1
            continue
        report.lines += 1
        yield int(ns), text.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class SpoolLine:
    """One line of a symbol's spool and the process that wrote it."""

    process: tuple[str, int]
    local_ns: int
    text: str


def spool_lines(
    store: Store, symbol: str, start_ns: int, end_ns: int, reports: list[SegmentRead] | None = None
) -> Iterator[SpoolLine]:
    """The lines of ``symbol`` received in ``[start_ns, end_ns)`` (local time), in order across
    segments and processes (a segment's hour and its writer's start time order them)."""
    first = _utc(start_ns - start_ns % HOUR_NS).date()
    last = _utc(max(start_ns, end_ns - 1)).date()
    days = [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]
    start_hour, end_hour = _hour_text(start_ns), _hour_text(end_ns - 1)
    for segment in segments(store, symbol, days):
        if not start_hour <= segment.hour <= end_hour:
            continue
        report = SegmentRead(segment.key)
        for ns, text in read_segment(store, segment, report):
            if start_ns <= ns < end_ns:
                yield SpoolLine(segment.process, ns, text)
        if reports is not None:
            reports.append(report)


def _hour_text(ns: int) -> str:
    return f"{_utc(ns):%Y%m%dT%H}"
