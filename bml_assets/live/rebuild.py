"""Replaying spooled or recorded lines through the live path, and rebuilding ``live_1m`` from
the spool (``bml live-rebuild --symbol S --date D``).

What belongs here: feeding ``<local_ns> <json>`` lines — frames, REST snapshots and the
collector's own notes (``spool.py``) — to a ``LiveCore`` exactly as the collector feeds
it, and the rebuild of one symbol-day; readers of the two real recordings' formats (the
hftbacktest one is the spool's own format; cryptofeed's is ``"<recv_ts_s>: <json>"``
after a URL line). What stays out: the formulas and the closing rules (the core's: the
same code path as the live collector), sockets.

A rebuild of (S, D) reads S's spool from ``LOOKBACK_NS`` before D's start (local time,
so that the book finds a snapshot — the collector refreshes one every 30 minutes — and
the first minutes of D have frames before them) to ``LOOKAHEAD_NS`` after its end (so
D's last minute closes on frames after it), keeps D's rows and replaces the day's table.
Where the spool passes from one process to the next, the books and connections are
reset (the new process synced its own book from its own snapshot).
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import logging
from collections.abc import Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bml_assets.domain.minutes import day_bounds_ms
from bml_assets.lake.commit import CommitResult
from bml_assets.lake.lake import Lake
from bml_assets.lake.ledger import Ledger
from bml_assets.live.core import LiveCore
from bml_assets.live.frames import FAMILIES, FrameError, stream_family
from bml_assets.live.sink import LiveSink
from bml_assets.live.spool import SegmentRead, SpoolLine, spool_lines
from bml_assets.storage.store import Store

log = logging.getLogger("bml.live")

LOOKBACK_NS: Final = 2 * 3_600 * 1_000_000_000
LOOKAHEAD_NS: Final = 10 * 60 * 1_000_000_000
_NS_PER_MS: Final = 1_000_000


@dataclass
class Replayed:
    """What a replay fed: lines by kind, unreadable ones, process changes."""

    frames: int = 0
    snapshots: int = 0
    notes: int = 0
    unreadable: int = 0
    processes: int = 0
    _connection: dict[str, Hashable] = field(default_factory=dict)


def feed(core: LiveCore, lines: Iterable[SpoolLine | tuple[int, str]], replayed: Replayed | None = None) -> Replayed:
    """Feed ``lines`` (a symbol's spool, or a recording's (ns, text) pairs) to ``core``. The
    symbol of a snapshot line is the core's only symbol (a spool is per symbol)."""
    done = replayed if replayed is not None else Replayed()
    process: Any = None
    symbol = core.symbols[0] if len(core.symbols) == 1 else None
    for line in lines:
        if isinstance(line, SpoolLine):
            if line.process != process:
                if process is not None:
                    core.reset_books()
                process = line.process
                done.processes += 1
            ns, text = line.local_ns, line.text
        else:
            ns, text = line
        if text.startswith('{"stream"'):
            done.frames += 1
            core.on_frame(None, text, ns, _frame_connection(done, text))
            continue
        if text.startswith('{"lastUpdateId"'):
            if symbol is None:
                raise ValueError("a depth snapshot in the lines of several symbols: replay one symbol's spool")
            done.snapshots += 1
            core.on_snapshot(symbol, text, ns)
            continue
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and "bml" in data:
            done.notes += 1
            _note(core, done, data, ns)
        elif isinstance(data, dict) and "stream" in data:
            done.frames += 1
            core.on_frame(None, text, ns, 0)
        elif isinstance(data, dict) and "lastUpdateId" in data and symbol is not None:
            done.snapshots += 1
            core.on_snapshot(symbol, text, ns)
        else:
            done.unreadable += 1
            core.on_frame(None, text, ns)  # refused there, named in its log
    return done


def _frame_connection(done: Replayed, text: str) -> Hashable:
    """The connection a frame line came on: the one last spooled as connected for its family."""
    stream = text[11 : text.find('"', 11)]  # text starts with {"stream":"
    try:
        return _conn(done, stream_family(stream))
    except FrameError:
        return 0


def _conn(done: Replayed, family: str) -> Hashable:
    return done._connection.get(family, 0)


def _note(core: LiveCore, done: Replayed, note: dict[str, Any], ns: int) -> None:
    kind = note.get("bml")
    if kind == "session":
        families = [f for f in note.get("families") or () if f in FAMILIES]
        if families:
            core.families = frozenset(families)
    elif kind == "connection":
        family, connection = note.get("family"), note.get("connection", 0)
        if family not in FAMILIES:
            return
        if note.get("state") == "connected":
            done._connection[family] = connection
        core.on_connection(family, note.get("state"), ns, reason=str(note.get("reason", "")), connection=connection)  # type: ignore[arg-type]
    elif kind == "silence":
        core.on_silence(str(note.get("stream")), bool(note.get("silent")), ns)
    elif kind == "tick":
        progress: dict[str, tuple[Hashable, int]] = {
            f: (_conn(done, f), int(E)) for f, E in (note.get("progress") or {}).items() if f in FAMILIES
        }
        core.on_tick(int(note["now"]), note.get("offset"), local_ns=ns, progress=progress)


# --------------------------------------------------------------------------- recordings


def recording_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(local_ns, json) of a ``<local_ns> <json>`` file, gzipped or not (the spool's format)."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:  # type: ignore[operator]
        for line in f:
            ns, _, text = line.rstrip("\n").partition(" ")
            yield int(ns), text


def cryptofeed_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(local_ns, json) of a cryptofeed recording: a URL line, then ``<recv_ts_s>: <json>``."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            stamp, sep, text = line.rstrip("\n").partition(": ")
            if not sep or not text.startswith("{"):
                continue  # the URL line
            yield round(float(stamp) * 1e9), text


# --------------------------------------------------------------------------- rebuild


@dataclass(frozen=True)
class Rebuild:
    """The outcome of ``rebuild_day``."""

    symbol: str
    day: dt.date
    rows: int
    public_covered: int
    market_covered: int
    replayed: Replayed
    segments: list[SegmentRead]
    commit: CommitResult | None


def rebuild_day(
    lake: Lake, ledger: Ledger, symbol: str, day: dt.date, *, commit: bool = True, spool: Store | None = None
) -> Rebuild:
    """Rebuild ``live_1m`` of (symbol, day) from the spool (``spool``: where the collector
    spooled, ``spool_store``; default the lake's own store, right for a local lake only) through the live path; replace the day's table with the result (``commit=False``:
    compute only). A day with no spooled minutes is left as it is."""
    start_ms, end_ms = day_bounds_ms(day)
    core = LiveCore([symbol])
    reports: list[SegmentRead] = []
    lines = spool_lines(
        spool if spool is not None else lake.store,
        symbol,
        start_ms * _NS_PER_MS - LOOKBACK_NS,
        end_ms * _NS_PER_MS + LOOKAHEAD_NS,
        reports,
    )
    replayed = feed(core, lines)
    core.flush()
    rows = [r for r in core.rows[symbol] if start_ms <= r["timestamp"] < end_ms]
    for report in reports:
        if report.truncated:
            log.warning("%s: %s (%d lines read)", report.key, report.truncated, report.lines)
    result = LiveSink(lake, ledger).replace_day(symbol, day, rows) if commit and rows else None
    return Rebuild(
        symbol,
        day,
        len(rows),
        sum(1 for r in rows if r["public_covered"]),
        sum(1 for r in rows if r["market_covered"]),
        replayed,
        reports,
        result,
    )
