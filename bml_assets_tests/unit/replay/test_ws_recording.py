"""A recorded stream file replayed on the market clock (bml_assets.replay.ws.recording):
the real btcusdt recording's facts, the time shift, and ``/fapi/v1/depth`` answers
consistent with the replay position. The raw file is read here with ``gzip`` and
``json`` and the book rebuilt with a dict, independently of the code under test."""

from __future__ import annotations

import gzip
import itertools
import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from bml_assets.replay.ws.recording import Recording, RecordingError, RecordingReplay
from bml_assets.replay.ws.streams import parse_stream
from bml_assets_tests.conftest import REAL_FIXTURES

ORIGIN = 1_900_000_000_000  # 2030-03-17: any instant will do
FIRST_E = 1723161256299  # E of line 1
SHIFT = ORIGIN - FIRST_E
LOCAL_0 = 1723161255030314667  # local_ns of line 1


@pytest.fixture(scope="module")
def recording_path() -> Path:
    path = REAL_FIXTURES / "ws" / "btcusdt_20240808.gz"
    if not path.is_file():
        pytest.skip(f"the real recording is not at {path} (../shared is absent)")
    return path


@pytest.fixture(scope="module")
def raw(recording_path: Path) -> list[tuple[int, dict[str, Any]]]:
    with gzip.open(recording_path, "rt") as handle:
        return [(int(stamp), json.loads(text)) for stamp, text in (line.split(" ", 1) for line in handle)]


@pytest.fixture(scope="module")
def replay(recording_path: Path) -> RecordingReplay:
    return RecordingReplay(Recording.load(recording_path), ORIGIN)


def sent_at(local_ns: int) -> int:
    return ORIGIN + (local_ns - LOCAL_0) // 1_000_000


class Book:
    def __init__(self, snapshot: dict[str, Any]) -> None:
        self.sides = {"b": dict(map(tuple, snapshot["bids"])), "a": dict(map(tuple, snapshot["asks"]))}

    def apply(self, event: dict[str, Any]) -> None:
        for side in ("b", "a"):
            for price, qty in event[side]:
                if Decimal(qty) == 0:
                    self.sides[side].pop(price, None)
                else:
                    self.sides[side][price] = qty

    def top(self) -> tuple[str, str, str, str]:
        bid = max(self.sides["b"], key=float)  # prices of up to 8 decimals: float orders them exactly
        ask = min(self.sides["a"], key=float)
        return bid, self.sides["b"][bid], ask, self.sides["a"][ask]

    def levels(self, side: str, limit: int) -> list[list[str]]:
        ordered = sorted(self.sides[side].items(), key=lambda lv: Decimal(lv[0]), reverse=side == "b")
        return [list(level) for level in ordered[:limit]]


def test_the_recording_loads_with_its_known_counts(replay: RecordingReplay) -> None:
    recording = replay.recording
    assert len(recording.texts) == 93_953  # 93 954 lines, one of them the REST snapshot
    assert recording.symbols() == {"BTCUSDT"}
    assert [(s.line, s.last_update_id) for s in recording.snapshots] == [(55, 5123107852948)]
    depth = recording.depth["BTCUSDT"]
    assert (depth.stream, len(depth.frames)) == ("btcusdt@depth@0ms", 6551)
    ((segment,),) = recording.segments.values()
    assert (segment.sync, segment.end) == (4, 6551)  # the 5th depth event (line 42) syncs; no break after it
    assert recording.lines[depth.frames[4]] == 42


def test_frames_are_sent_on_the_recorded_schedule_time_shifted(
    replay: RecordingReplay, raw: list[tuple[int, dict[str, Any]]]
) -> None:
    for name in ("btcusdt@depth@0ms", "btcusdt@bookTicker", "btcusdt@trade"):
        stream = parse_stream(name)
        assert stream is not None
        got = replay.frames(stream, ORIGIN - 1, ORIGIN + 2_000)
        expected = [
            (stamp, line) for stamp, line in raw if line.get("stream") == name and sent_at(stamp) <= ORIGIN + 2_000
        ]
        assert len(got) == len(expected) > 5
        for frame, (stamp, line) in zip(got, expected, strict=True):
            shifted = json.loads(frame.text)
            assert frame.at_ms == sent_at(stamp)
            assert shifted["data"]["E"] == line["data"]["E"] + SHIFT == frame.event_ms
            assert shifted["data"]["T"] == line["data"]["T"] + SHIFT
            shifted["data"]["E"], shifted["data"]["T"] = line["data"]["E"], line["data"]["T"]
            assert shifted == line  # nothing else changes, keys in their order
            assert list(shifted["data"]) == list(line["data"])
    first = replay.frames(parse_stream("btcusdt@depth@0ms"), ORIGIN - 1, ORIGIN)  # type: ignore[arg-type]
    assert [(f.at_ms, f.event_ms, f.first_id, f.last_id) for f in first] == [
        (ORIGIN, ORIGIN, 5123107832006, 5123107837557)
    ]
    assert replay.frames(parse_stream("btcusdt@aggTrade"), ORIGIN - 1, ORIGIN + 400_000) == []  # type: ignore[arg-type]
    assert replay.frames(parse_stream("btcusdt@trade"), ORIGIN + 400_000, ORIGIN + 900_000) == []  # type: ignore[arg-type]


def test_a_client_starting_with_the_replay_syncs_as_the_recorder_did(replay: RecordingReplay) -> None:
    snapshot = replay.depth_answer("BTCUSDT", ORIGIN, 1000)
    assert snapshot is not None and snapshot["lastUpdateId"] == 5123107852948
    assert (snapshot["E"], snapshot["T"]) == (ORIGIN, 1723161256493 + SHIFT)
    depth = [
        json.loads(f.text)["data"]
        for f in replay.frames(parse_stream("btcusdt@depth@0ms"), ORIGIN - 1, ORIGIN + 400_000)
    ]  # type: ignore[arg-type]
    tickers = {}
    for frame in replay.frames(parse_stream("btcusdt@bookTicker"), ORIGIN - 1, ORIGIN + 400_000):  # type: ignore[arg-type]
        ticker = json.loads(frame.text)["data"]
        tickers.setdefault(ticker["u"], ticker)
    L = snapshot["lastUpdateId"]
    dropped = [e for e in depth if e["u"] < L]
    kept = depth[len(dropped) :]
    assert (len(depth), len(dropped)) == (6551, 4)
    assert kept[0]["U"] <= L <= kept[0]["u"]
    assert sum(after["pu"] != before["u"] for before, after in itertools.pairwise(kept)) == 0
    book, matched = Book(snapshot), 0
    for event in kept:
        book.apply(event)
        ticker = tickers.get(event["u"])
        if ticker is not None:
            assert (ticker["b"], ticker["B"], ticker["a"], ticker["A"]) == book.top()
            matched += 1
    assert matched == 629


def test_depth_answers_follow_the_replay_position(
    replay: RecordingReplay, raw: list[tuple[int, dict[str, Any]]]
) -> None:
    snapshot = next(line for _, line in raw if "lastUpdateId" in line)
    depth = [(sent_at(stamp), line["data"]) for stamp, line in raw if line.get("stream") == "btcusdt@depth@0ms"]
    sync_sent = depth[4][0]
    # Until the syncing event is sent: the recorded snapshot.
    before = replay.depth_answer("BTCUSDT", sync_sent - 1, 5)
    assert before is not None
    assert (before["lastUpdateId"], before["bids"], before["asks"]) == (
        5123107852948,
        snapshot["bids"][:5],
        snapshot["asks"][:5],
    )
    # Then the recorded snapshot with the events sent so far applied, L inside the next event.
    for now in (sync_sent, ORIGIN + 60_000, ORIGIN + 123_456, ORIGIN + 300_000):
        book = Book(snapshot)
        applied = [e for at, e in depth[4:] if at <= now]
        for event in applied:
            book.apply(event)
        following = depth[4 + len(applied)][1]
        answer = replay.depth_answer("BTCUSDT", now, 1000)
        assert answer is not None
        assert answer["lastUpdateId"] == following["U"] and following["pu"] == applied[-1]["u"]
        assert (answer["E"], answer["T"]) == (now, applied[-1]["T"] + SHIFT)
        assert answer["bids"] == book.levels("b", 1000) and answer["asks"] == book.levels("a", 1000)
    # Asked again earlier, the answer is rebuilt, not left at the later position.
    again = replay.depth_answer("BTCUSDT", ORIGIN + 60_000, 20)
    book = Book(snapshot)
    for at, event in depth[4:]:
        if at <= ORIGIN + 60_000:
            book.apply(event)
    assert again is not None and again["bids"] == book.levels("b", 20)
    # After the last event: its u.
    last = replay.depth_answer("BTCUSDT", ORIGIN + 10**7, 5)
    assert last is not None and last["lastUpdateId"] == depth[-1][1]["u"] == 5123135475514
    assert replay.depth_answer("ETHUSDT", ORIGIN, 5) is None


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def _depth(local_ns: int, e: int, first: int, last: int, prev: int, bids: list[list[str]]) -> str:
    data = {"e": "depthUpdate", "E": e, "T": e - 1, "s": "XUSDT", "U": first, "u": last, "pu": prev, "b": bids, "a": []}
    return f"{local_ns} " + json.dumps({"stream": "xusdt@depth@100ms", "data": data})


def _snapshot(local_ns: int, last_update_id: int, bids: list[list[str]]) -> str:
    payload = {"lastUpdateId": last_update_id, "E": 1, "T": 1, "bids": bids, "asks": [["9.0", "1"]]}
    return f"{local_ns} " + json.dumps(payload)


def test_a_break_ends_a_segment_and_a_later_snapshot_starts_the_next(tmp_path: Path) -> None:
    ms = 1_000_000
    path = _write(
        tmp_path / "spool.txt",  # not gzipped: read as text
        [
            _depth(0, 1000, 10, 12, 9, [["1.0", "5"]]),
            _snapshot(1 * ms, 11, [["1.0", "4"], ["0.9", "2"]]),
            _depth(2 * ms, 1002, 13, 15, 12, [["0.9", "0"]]),
            _depth(3 * ms, 1003, 20, 22, 17, [["1.1", "7"]]),  # pu 17 ≠ 15: a gap
            _snapshot(4 * ms, 23, [["1.2", "1"]]),
            _depth(5 * ms, 1005, 23, 25, 22, [["1.2", "3"]]),
            _depth(6 * ms, 1006, 26, 28, 25, [["1.3", "1"]]),
        ],
    )
    recording = Recording.load(path)
    assert [(s.sync, s.end) for s in recording.segments["XUSDT"]] == [(0, 2), (3, 5)]
    replay = RecordingReplay(recording, 1000)

    def answer(now: int) -> tuple[int, list[list[str]]]:
        got = replay.depth_answer("XUSDT", now, 10)
        assert got is not None
        return got["lastUpdateId"], got["bids"]

    assert answer(1000) == (13, [["1.0", "5"], ["0.9", "2"]])  # first event applied, L = U of the second
    assert answer(1002) == (15, [["1.0", "5"]])  # end of the segment: the last u
    assert answer(1003) == (23, [["1.2", "1"]])  # broken: the next recorded snapshot
    assert answer(1005) == (26, [["1.2", "3"]])
    assert answer(1006) == (28, [["1.3", "1"], ["1.2", "3"]])


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (["oops"], r"spool.txt:1: expected '<local_ns> <json>'"),
        (["12 {not json"], r"spool.txt:1: not JSON"),
        (['12 {"hello": 1}'], r"spool.txt:1: neither a stream frame nor a depth snapshot"),
        ([], r"spool.txt: no stream frames"),
        (
            ['12 {"stream":"xusdt@bookTicker","data":{"u":1}}'],
            r"spool.txt:1: the first frame's event has no event time E",
        ),
        (
            [_depth(0, 1000, 10, 12, 9, [])],
            r"spool.txt: the XUSDT depth stream syncs with none of the recording's REST snapshots",
        ),
    ],
)
def test_a_recording_that_cannot_be_replayed_says_where(tmp_path: Path, lines: list[str], message: str) -> None:
    with pytest.raises(RecordingError, match=message):
        Recording.load(_write(tmp_path / "spool.txt", lines))


def test_an_unreadable_recording_says_so(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gz"
    broken.write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(RecordingError, match=r"broken\.gz: cannot read it"):
        Recording.load(broken)
