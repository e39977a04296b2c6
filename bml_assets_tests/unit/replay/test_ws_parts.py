"""Parts of the replay's WebSocket side without sockets: stream names and paths
(bml_assets.replay.ws.streams) and the WebSocket fault rules (bml_assets.replay.faults)."""

from __future__ import annotations

import pytest

from bml_assets.replay.faults import FaultKind, FaultRule, FaultSet
from bml_assets.replay.ws.streams import Family, Kind, StreamName, parse_stream, requested_streams

PUBLIC = "/public/stream?streams=btcusdt@depth@100ms/btcusdt@bookTicker"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("btcusdt@depth@100ms", StreamName("btcusdt@depth@100ms", "BTCUSDT", Kind.DEPTH, 100)),
        ("btcusdt@depth@0ms", StreamName("btcusdt@depth@0ms", "BTCUSDT", Kind.DEPTH, 0)),
        ("btcusdt@depth", StreamName("btcusdt@depth", "BTCUSDT", Kind.DEPTH, 250)),
        ("ethusdt@depth@500ms", StreamName("ethusdt@depth@500ms", "ETHUSDT", Kind.DEPTH, 500)),
        ("btcusdt@bookTicker", StreamName("btcusdt@bookTicker", "BTCUSDT", Kind.BOOK_TICKER)),
        ("btcusdt@trade", StreamName("btcusdt@trade", "BTCUSDT", Kind.TRADE)),
        ("btcusdt@aggTrade", StreamName("btcusdt@aggTrade", "BTCUSDT", Kind.AGG_TRADE)),
        ("btcusdt@markPrice@1s", StreamName("btcusdt@markPrice@1s", "BTCUSDT", Kind.MARK_PRICE, 1000)),
        ("btcusdt@markPrice", StreamName("btcusdt@markPrice", "BTCUSDT", Kind.MARK_PRICE, 3000)),
        ("btcusdt@forceOrder", StreamName("btcusdt@forceOrder", "BTCUSDT", Kind.FORCE_ORDER)),
        ("1000pepeusdt@kline_1m", StreamName("1000pepeusdt@kline_1m", "1000PEPEUSDT", Kind.KLINE)),
        ("BTCUSDT@depth@100ms", None),  # symbols are lowercase in stream names
        ("btcusdt@depth@50ms", None),
        ("btcusdt@depth20@100ms", None),  # partial book depth: not served
        ("btcusdt@aggtrade", None),
        ("btcusdt@markPrice@2s", None),
        ("!forceOrder@arr", None),
        ("btcusdt", None),
        ("", None),
    ],
)
def test_stream_names(name: str, expected: StreamName | None) -> None:
    assert parse_stream(name) == expected


def test_families() -> None:
    public = {parse_stream(f"btcusdt@{k}").family for k in ("depth", "bookTicker", "trade")}  # type: ignore[union-attr]
    market = {parse_stream(f"btcusdt@{k}").family for k in ("aggTrade", "markPrice", "forceOrder", "kline_1m")}  # type: ignore[union-attr]
    assert (public, market) == ({Family.PUBLIC}, {Family.MARKET})


def test_requested_streams() -> None:
    assert requested_streams("streams=btcusdt@depth@100ms/btcusdt@bookTicker//btcusdt@bookTicker") == [
        "btcusdt@depth@100ms",
        "btcusdt@bookTicker",
    ]
    assert requested_streams("streams=a/b&streams=c&other=d") == ["a", "b", "c"]
    assert requested_streams("") == []


# --- WebSocket fault rules ------------------------------------------------------------------------


def test_ws_rule_validation() -> None:
    with pytest.raises(ValueError, match="ws_silence lasts while the rule lives"):
        FaultRule(FaultKind.WS_SILENCE, "x", times=1)
    with pytest.raises(ValueError, match="update_id applies to ws_drop_depth only"):
        FaultRule(FaultKind.WS_CLOSE, "x", update_id=5)
    with pytest.raises(ValueError, match="limit_bytes applies to ws_slow_consumer only"):
        FaultRule(FaultKind.WS_NO_PONG, "x", limit_bytes=5)
    with pytest.raises(ValueError, match=r"at_ms applies to the ws_\* kinds only"):
        FaultRule(FaultKind.MISSING, "x", at_ms=5)
    with pytest.raises(ValueError, match=r"until_ms \(10\) must be after at_ms \(10\)"):
        FaultRule(FaultKind.WS_SILENCE, "x", at_ms=10, until_ms=10)
    with pytest.raises(ValueError, match="at_ms must be None or a whole number"):
        FaultRule(FaultKind.WS_CLOSE, "x", at_ms=-1)
    with pytest.raises(ValueError, match="delay_s does not apply"):
        FaultRule(FaultKind.WS_CLOSE, "x", delay_s=1.0)
    rule = FaultRule.from_json({"kind": "ws_drop_depth", "path_contains": "btcusdt@depth", "update_id": 7, "times": 1})
    assert rule == FaultRule(FaultKind.WS_DROP_DEPTH, "btcusdt@depth", times=1, update_id=7)


def test_ws_rules_leave_http_requests_alone() -> None:
    faults = FaultSet()
    faults.add(FaultRule(FaultKind.WS_CLOSE, ""))
    faults.add(FaultRule(FaultKind.WS_DROP_DEPTH, ""))
    assert faults.decide("/fapi/v1/depth").kind is None
    assert faults.decide("/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-02.zip").kind is None
    http_only = FaultSet()
    http_only.add(FaultRule(FaultKind.MISSING, ""))
    assert not http_only.has_ws_rules()
    assert http_only.ws_frame("btcusdt@depth@100ms", 1, (1, 2)) is None


def test_drop_depth_once_at_an_update_or_from_an_instant() -> None:
    faults = FaultSet()
    faults.add(FaultRule(FaultKind.WS_DROP_DEPTH, "btcusdt@depth", times=1))
    assert faults.ws_frame("ethusdt@depth@100ms", 5, (1, 2)) is None  # another symbol
    assert faults.ws_frame("btcusdt@bookTicker", 5, None) is None  # not a depth frame
    assert faults.ws_frame("btcusdt@depth@100ms", 5, (1, 2)) is not None
    assert faults.ws_frame("btcusdt@depth@100ms", 6, (3, 4)) is None  # used up
    faults.clear()
    faults.add(FaultRule(FaultKind.WS_DROP_DEPTH, "btcusdt@depth", update_id=15))
    assert faults.ws_frame("btcusdt@depth@100ms", 5, (10, 14)) is None
    assert faults.ws_frame("btcusdt@depth@100ms", 6, (15, 19)) is not None
    assert faults.ws_frame("btcusdt@depth@0ms", 6, (12, 15)) is not None  # every copy of it (times=None)
    faults.clear()
    faults.add(FaultRule(FaultKind.WS_DROP_DEPTH, "btcusdt@depth", times=1, at_ms=1000))
    assert faults.ws_frame("btcusdt@depth@100ms", 999, (1, 2)) is None
    assert faults.ws_frame("btcusdt@depth@100ms", 1000, (3, 4)) is not None
    assert faults.ws_frame("btcusdt@depth@100ms", 1001, (5, 6)) is None


def test_silence_is_a_window_of_event_times() -> None:
    faults = FaultSet()
    faults.add(FaultRule(FaultKind.WS_SILENCE, "btcusdt@bookTicker", at_ms=100, until_ms=200))
    assert faults.ws_frame("btcusdt@bookTicker", 99, None) is None
    assert [faults.ws_frame("btcusdt@bookTicker", t, None) is not None for t in (100, 150, 199)] == [True] * 3
    assert faults.ws_frame("btcusdt@bookTicker", 200, None) is None
    assert faults.ws_frame("btcusdt@depth@100ms", 150, (1, 2)) is None


def test_close_hits_the_connections_open_at_its_instant() -> None:
    faults = FaultSet()
    before = faults.sequence
    faults.add(FaultRule(FaultKind.WS_CLOSE, "/public/", times=1))
    after = faults.sequence

    def close(target: str, now: int, opened_ms: int, opened_after: int) -> bool:
        rule = faults.ws_connection(FaultKind.WS_CLOSE, target, now, opened_ms=opened_ms, opened_after=opened_after)
        return rule is not None

    assert not close("/market/stream?streams=x", 5, 0, before)  # another path
    assert not close(PUBLIC, 5, 0, after)  # opened after the rule was added
    assert close(PUBLIC, 5, 0, before)
    assert not close(PUBLIC, 5, 0, before)  # times=1: used up
    faults.clear()
    faults.add(FaultRule(FaultKind.WS_RESET, "", at_ms=1000))
    assert faults.ws_close_at(PUBLIC, opened_ms=0, opened_after=0) == 1000
    assert faults.ws_close_at(PUBLIC, opened_ms=1500, opened_after=0) is None  # opened after the instant
    reset = FaultKind.WS_RESET
    assert faults.ws_connection(reset, PUBLIC, 999, opened_ms=0, opened_after=0) is None  # not yet
    assert faults.ws_connection(reset, PUBLIC, 1000, opened_ms=0, opened_after=0) is not None
    assert faults.ws_connection(reset, PUBLIC, 1000, opened_ms=10, opened_after=0) is not None  # times=None: all
    assert faults.ws_connection(reset, PUBLIC, 2000, opened_ms=1500, opened_after=0) is None


def test_state_kinds_last_while_the_rule_lives() -> None:
    faults = FaultSet()
    faults.add(FaultRule(FaultKind.WS_NO_PONG, "/market/", until_ms=500))
    no_pong = FaultKind.WS_NO_PONG
    assert faults.ws_connection(no_pong, "/market/stream", 10, opened_ms=0, opened_after=5) is not None
    assert faults.ws_connection(no_pong, "/market/stream", 10, opened_ms=0, opened_after=5) is not None
    assert faults.ws_connection(no_pong, "/market/stream", 500, opened_ms=0, opened_after=5) is None
    assert faults.ws_connection(no_pong, PUBLIC, 10, opened_ms=0, opened_after=5) is None
    with pytest.raises(ValueError, match="not a per-connection kind"):
        faults.ws_connection(FaultKind.WS_SILENCE, PUBLIC, 10, opened_ms=0, opened_after=0)
    assert faults.describe()[0]["until_ms"] == 500
