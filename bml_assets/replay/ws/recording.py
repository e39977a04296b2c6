"""A recorded stream file replayed in real time, and its depth snapshots.

What belongs here: ``Recording``, a ``<local_ns> <json>`` file (the raw spool's
format, and that of ``fixtures/real/ws/btcusdt_20240808.gz``; gzipped or not)
read into memory: its combined-stream frames in file order and the REST depth
snapshots recorded between them (``{"lastUpdateId": …}`` lines); and
``RecordingReplay``, the recording laid on the market clock: which frames are
sent when, time-shifted, and what ``/fapi/v1/depth`` answers at any instant.

Timing. Frame i is sent at ``origin + (local_i − local_0)``: the recording's own
arrival schedule from the origin on (real time on a clock running at speed 1).
Its times move by one shift, ``origin − E_0``, E_0 the first frame's event time:
``E`` and ``T`` of every event (``o.T`` of a forceOrder) and of the snapshots,
so the first event reads "now" and the gaps between events stay as recorded. Ids
(U, u, pu, trade ids) are left as recorded. After the last frame the streams are
silent.

Depth snapshots, consistent with the replay position (the recording's depth
stream must chain from one of its snapshots, else loading fails). A snapshot and
the depth events from the first one it syncs with (U ≤ L ≤ u) up to the next
``pu`` break make a segment; at an instant whose last depth event sent is k:

* inside a segment (its first event already sent): the recorded snapshot with
  every recorded event of the segment up to k applied, ``lastUpdateId`` = the U of
  the next event (the next event straddles it, so a client that subscribed
  before asking always finds its first event; see ``order_book.py``), ``T`` = k's
  T; at the segment's end, the u of k;
* before a segment's first event is sent: that snapshot as recorded (what the
  exchange answered; a client that starts with the replay drops the stale events
  and syncs on the same event the recorder did — for the btcusdt recording: 4
  events dropped, the one on line 42 first);
* after the last segment: its final book (the stream is over or broken).

``E`` of an answer is the instant asked. What stays out: sending (``service.py``),
the synthetic streams (``synthetic.py``), REST routing (``rest/``, ``server.py``).
"""

from __future__ import annotations

import gzip
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bml_assets.replay.ws.streams import Frame, Kind, StreamName, parse_stream

_STREAM_PREFIX = re.compile(r'\{"stream":"([^"\\]+)"')


class RecordingError(ValueError):
    """A recording that cannot be replayed; the message names the file (and line)."""


@dataclass(frozen=True)
class RecordedSnapshot:
    """A REST depth snapshot line of a recording: its line number and its JSON."""

    line: int
    payload: dict[str, Any]

    @property
    def last_update_id(self) -> int:
        return int(self.payload["lastUpdateId"])


@dataclass
class _DepthStream:
    """One symbol's depth events: frame index, U, u, pu and T per event, file order."""

    stream: str
    frames: list[int] = field(default_factory=list)
    position: dict[int, int] = field(default_factory=dict)  # frame index → event index
    first: list[int] = field(default_factory=list)
    last: list[int] = field(default_factory=list)
    prev: list[int] = field(default_factory=list)
    transaction: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class _Segment:
    snapshot: RecordedSnapshot
    sync: int  # index of the first depth event applied on the snapshot
    end: int  # exclusive: the first event that breaks the pu chain, or the count


class Recording:
    """A ``<local_ns> <json>`` recording in memory (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        local_ns: list[int],
        streams: list[str],
        texts: list[str],
        lines: list[int],
        snapshots: list[RecordedSnapshot],
    ) -> None:
        if not texts:
            raise RecordingError(f"{path}: no stream frames")
        self.path = path
        self.local_ns = np.array(local_ns, dtype=np.int64)
        self.streams = streams
        self.texts = texts
        self.lines = lines
        self.snapshots = snapshots
        first = json.loads(texts[0]).get("data", {})
        if not isinstance(first.get("E"), int):
            raise RecordingError(f"{path}:{lines[0]}: the first frame's event has no event time E")
        self.first_event_ms: int = first["E"]
        self.depth: dict[str, _DepthStream] = {}
        for i, (stream, text) in enumerate(zip(streams, texts, strict=True)):
            parsed = parse_stream(stream)
            if parsed is None or parsed.kind is not Kind.DEPTH:
                continue
            data = json.loads(text)["data"]
            try:
                ids = (int(data["U"]), int(data["u"]), int(data["pu"]), int(data["T"]))
            except (KeyError, TypeError, ValueError):
                raise RecordingError(f"{path}:{lines[i]}: a depth event without integer U, u, pu and T") from None
            entry = self.depth.setdefault(parsed.symbol, _DepthStream(stream))
            if entry.stream != stream:
                raise RecordingError(
                    f"{path}:{lines[i]}: two depth streams for {parsed.symbol}: {entry.stream}, {stream}"
                )
            entry.position[i] = len(entry.frames)
            entry.frames.append(i)
            entry.first.append(ids[0])
            entry.last.append(ids[1])
            entry.prev.append(ids[2])
            entry.transaction.append(ids[3])
        self.segments: dict[str, list[_Segment]] = {
            symbol: self._segments_of(symbol, depth) for symbol, depth in self.depth.items()
        }

    def _segments_of(self, symbol: str, depth: _DepthStream) -> list[_Segment]:
        segments = []
        first, last, prev = (np.array(a, dtype=np.int64) for a in (depth.first, depth.last, depth.prev))
        for snapshot in self.snapshots:
            straddles = np.flatnonzero((first <= snapshot.last_update_id) & (snapshot.last_update_id <= last))
            if not straddles.size:
                continue  # another symbol's snapshot, or one the stream never reached
            sync = int(straddles[0])
            breaks = np.flatnonzero(prev[sync + 1 :] != last[sync:-1]) if sync + 1 < len(first) else []
            end = sync + 1 + int(breaks[0]) if len(breaks) else len(first)
            segments.append(_Segment(snapshot, sync, end))
        if not segments:
            raise RecordingError(
                f"{self.path}: the {symbol} depth stream syncs with none of the recording's REST snapshots "
                "(no snapshot line whose lastUpdateId falls in an event's U..u): /fapi/v1/depth could not answer "
                "consistently with the replay"
            )
        return segments

    @classmethod
    def load(cls, path: Path | str) -> Recording:
        """Read a recording; a line that is neither ``<integer> <frame>`` nor
        ``<integer> <snapshot>`` is an error naming the file and the line."""
        path = Path(path)
        local_ns: list[int] = []
        streams: list[str] = []
        texts: list[str] = []
        lines: list[int] = []
        snapshots: list[RecordedSnapshot] = []
        try:
            numbered = list(_read_lines(path))
        except (OSError, EOFError, UnicodeDecodeError) as exc:
            raise RecordingError(f"{path}: cannot read it: {exc}") from None
        for number, line in numbered:
            stamp, _, text = line.partition(" ")
            if not stamp.isdigit() or not text:
                raise RecordingError(f"{path}:{number}: expected '<local_ns> <json>', got {line[:80]!r}")
            match = _STREAM_PREFIX.match(text)
            if match is not None:
                stream = match.group(1)
            else:
                try:
                    payload = json.loads(text)
                except json.JSONDecodeError as exc:
                    raise RecordingError(f"{path}:{number}: not JSON: {exc}") from None
                if isinstance(payload, dict) and "lastUpdateId" in payload and "bids" in payload:
                    snapshots.append(RecordedSnapshot(number, payload))
                    continue
                if not (isinstance(payload, dict) and isinstance(payload.get("stream"), str) and "data" in payload):
                    raise RecordingError(f"{path}:{number}: neither a stream frame nor a depth snapshot")
                stream = payload["stream"]
            local_ns.append(int(stamp))
            streams.append(stream)
            texts.append(text)
            lines.append(number)
        return cls(path, local_ns, streams, texts, lines, snapshots)

    def symbols(self) -> set[str]:
        """The symbols the recording has frames for (uppercase)."""
        return {parsed.symbol for parsed in map(parse_stream, set(self.streams)) if parsed is not None}


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8") as handle:  # type: ignore[operator]
        for number, line in enumerate(handle, start=1):
            line = line.rstrip("\n")
            if line:
                yield number, line


def _shift_text(text: str, shift_ms: int) -> tuple[str, int]:
    """The frame with its event's E and T (and a forceOrder's o.T) moved by
    ``shift_ms``, and the new E."""
    frame = json.loads(text)
    data = frame.get("data")
    if isinstance(data, dict):
        for key in ("E", "T"):
            if isinstance(data.get(key), int):
                data[key] += shift_ms
        order = data.get("o")
        if isinstance(order, dict) and isinstance(order.get("T"), int):
            order["T"] += shift_ms
    event_ms = data.get("E") if isinstance(data, dict) else None
    return json.dumps(frame, separators=(",", ":")), int(event_ms) if isinstance(event_ms, int) else 0


def _level_key(level: tuple[str, str]) -> float:
    return float(level[0])


class RecordingReplay:
    """``recording`` laid on the market clock from ``origin_ms`` (see the module docstring)."""

    def __init__(self, recording: Recording, origin_ms: int) -> None:
        self.recording = recording
        self.origin_ms = origin_ms
        self.shift_ms = origin_ms - recording.first_event_ms
        self.at_ms = origin_ms + (recording.local_ns - recording.local_ns[0]) // 1_000_000
        by_stream: dict[str, list[int]] = {}
        for i, stream in enumerate(recording.streams):
            by_stream.setdefault(stream, []).append(i)
        self._by_stream = {name: np.array(indices, dtype=np.int64) for name, indices in by_stream.items()}
        self._symbols = recording.symbols()
        self._lock = threading.Lock()
        # (symbol, snapshot line, events applied up to (exclusive), bids, asks)
        self._book: tuple[str, int, int, dict[str, str], dict[str, str]] | None = None

    # --- streams --------------------------------------------------------------------------------

    @property
    def symbols(self) -> set[str]:
        return set(self._symbols)

    def serves(self, stream: StreamName) -> bool:
        return stream.name in self._by_stream

    def frames(self, stream: StreamName, after_ms: int, until_ms: int) -> list[Frame]:
        """The recorded frames of ``stream`` sent in ``(after_ms, until_ms]``, time-shifted."""
        indices = self._by_stream.get(stream.name)
        if indices is None or until_ms <= after_ms:
            return []
        at = self.at_ms[indices]
        lo, hi = np.searchsorted(at, [after_ms, until_ms], side="right")
        out = []
        depth = self.recording.depth.get(stream.symbol) if stream.kind is Kind.DEPTH else None
        for i in indices[lo:hi].tolist():
            text, event_ms = _shift_text(self.recording.texts[i], self.shift_ms)
            first = last = None
            if depth is not None and depth.stream == stream.name:
                k = depth.position[i]
                first, last = depth.first[k], depth.last[k]
            # Rank 0 and the line's index: frames of one millisecond go out in file order.
            out.append(Frame(int(self.at_ms[i]), 0, i, stream.name, stream.kind, event_ms, text, first, last))
        return out

    # --- depth snapshots ----------------------------------------------------------------------------

    def depth_answer(self, symbol: str, now_ms: int, limit: int) -> dict[str, Any] | None:
        """The ``/fapi/v1/depth`` answer for ``symbol`` at market time ``now_ms``, or
        None when the recording has no depth stream for it."""
        depth = self.recording.depth.get(symbol)
        if depth is None:
            return None
        sent = int(np.searchsorted(self.at_ms[np.array(depth.frames, dtype=np.int64)], now_ms, side="right"))
        k = sent - 1  # the last depth event sent, -1 before the first
        segments = self.recording.segments[symbol]
        inside = [s for s in segments if s.sync <= k < s.end]
        ahead = [s for s in segments if s.sync > k]
        if inside:
            segment, upto = inside[-1], k
        elif ahead:
            snapshot = ahead[0].snapshot.payload
            bids = [tuple(level) for level in snapshot["bids"]]
            asks = [tuple(level) for level in snapshot["asks"]]
            return {
                "lastUpdateId": int(snapshot["lastUpdateId"]),
                "E": now_ms,
                "T": int(snapshot.get("T", snapshot.get("E", 0))) + self.shift_ms,
                "bids": [list(level) for level in sorted(bids, key=_level_key, reverse=True)[:limit]],
                "asks": [list(level) for level in sorted(asks, key=_level_key)[:limit]],
            }
        else:
            segment = segments[-1]
            upto = segment.end - 1
        with self._lock:
            bids_book, asks_book = self._book_at(symbol, segment, upto)
            bids = sorted(bids_book.items(), key=_level_key, reverse=True)[:limit]
            asks = sorted(asks_book.items(), key=_level_key)[:limit]
        last_update_id = depth.first[upto + 1] if upto + 1 < segment.end else depth.last[upto]
        return {
            "lastUpdateId": last_update_id,
            "E": now_ms,
            "T": depth.transaction[upto] + self.shift_ms,
            "bids": [list(level) for level in bids],
            "asks": [list(level) for level in asks],
        }

    def _book_at(self, symbol: str, segment: _Segment, upto: int) -> tuple[dict[str, str], dict[str, str]]:
        """The segment's snapshot with its events up to ``upto`` applied; kept, so a
        replay moving forward applies each event once. Called under the lock."""
        key = (symbol, segment.snapshot.line)
        if self._book is None or self._book[:2] != key or self._book[2] > upto + 1:
            payload = segment.snapshot.payload
            bids = {price: qty for price, qty in payload["bids"] if float(qty) != 0}
            asks = {price: qty for price, qty in payload["asks"] if float(qty) != 0}
            self._book = (symbol, segment.snapshot.line, segment.sync, bids, asks)
        _, _, applied, bids, asks = self._book
        depth = self.recording.depth[symbol]
        for k in range(applied, upto + 1):
            data = json.loads(self.recording.texts[depth.frames[k]])["data"]
            for side, book in (("b", bids), ("a", asks)):
                for price, qty in data[side]:
                    if float(qty) == 0:
                        book.pop(price, None)
                    else:
                        book[price] = qty
        self._book = (symbol, segment.snapshot.line, max(applied, upto + 1), bids, asks)
        return bids, asks
