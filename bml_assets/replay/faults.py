"""The replay server's fault switches: which requests and streams to break, and how.

What belongs here: ``FaultKind`` (HTTP: 404, 403, a corrupt zip, a CHECKSUM
mismatch, a truncated body, 500, slow answers, injected 429/418, malformed JSON,
an invalid symbol; WebSocket: a dropped depth event, a closed or reset
connection, a silent stream, unanswered pings, a slow consumer), ``FaultRule`` (a
kind, what it matches, how often, and for the WebSocket kinds when), ``FaultSet``
(the live rules, safe to change while requests are served, deciding per request
which rule applies: ``FaultDecision``; per frame and per connection for the
WebSocket kinds), and the byte manglers the zip kinds use (``garbage``,
``flipped``).

What stays out: sending the broken answers and the ``/_replay/faults`` control
path (``server.py``), carrying out the WebSocket kinds (``ws/service.py``), the
REST limiter's own 429/418 (``rest/limits.py``).

The WebSocket kinds (all set through the same ``POST /_replay/faults``). Their
``path_contains`` is matched against the stream name (``btcusdt@depth@100ms``)
for the per-frame kinds and against the connection's request path with its query
(``/public/stream?streams=…``) for the per-connection kinds; ``at_ms`` and
``until_ms`` are market time (the event's ``E`` for per-frame kinds, the clock for
the others):

* ``ws_drop_depth`` (per frame): the next ``times`` depth events (None: all) with
  ``E ≥ at_ms`` (and ``< until_ms``) are not sent; with ``update_id``, only the
  event whose U..u holds it. The client sees a ``pu`` gap.
* ``ws_silence`` (per frame): nothing is sent on the matching streams for events
  with ``at_ms ≤ E < until_ms`` while the rule lives; the connection stays open.
* ``ws_close`` / ``ws_reset`` (per connection): connections open at the instant
  ``at_ms`` (without it: open when the rule was added) are closed with a close
  frame (1001) / dropped without one, after every frame with ``E < at_ms``; up
  to ``times`` connections (None: all of them). Later connections are untouched.
* ``ws_no_pong`` (per connection): the client's pings go unanswered while the rule
  lives (and the clock is within ``at_ms``..``until_ms``).
* ``ws_slow_consumer`` (per connection): the connection's write buffer may hold
  ``limit_bytes`` (default 65 536) unsent bytes, its socket's send buffer is made
  small; a client that does not read is dropped once the buffer is over the limit.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from bml_assets.replay.rest.paths import is_rest_path
from bml_assets.replay.vision_archive import CHECKSUM_SUFFIX


class FaultKind(StrEnum):
    MISSING = "missing"  # 404
    FORBIDDEN = "forbidden"  # 403
    CORRUPT_ZIP = "corrupt_zip"  # garbage zip, CHECKSUM of the garbage: broken upstream
    CHECKSUM_MISMATCH = "checksum_mismatch"  # flipped bytes, true CHECKSUM: broken in transit
    TRUNCATED = "truncated"  # Content-Length larger than the bytes sent, then close
    ERROR_500 = "error_500"  # HTTP 500
    SLOW = "slow"  # sleep delay_s, then answer (other rules still apply)
    RATE_LIMIT_429 = "rate_limit_429"  # 429 with Retry-After: retry_after_s
    BAN_418 = "ban_418"  # 418 with Retry-After: retry_after_s and the -1003 ban body
    MALFORMED_JSON = "malformed_json"  # REST only: 200 with a truncated JSON body
    BAD_SYMBOL = "bad_symbol"  # REST only: 400 {"code":-1121,"msg":"Invalid symbol."}
    WS_DROP_DEPTH = "ws_drop_depth"  # a depth event not sent: a pu gap
    WS_SILENCE = "ws_silence"  # a stream sends nothing, its connection stays open
    WS_CLOSE = "ws_close"  # the server closes connections (close frame 1001)
    WS_RESET = "ws_reset"  # the server drops connections without a close frame
    WS_NO_PONG = "ws_no_pong"  # the client's pings go unanswered
    WS_SLOW_CONSUMER = "ws_slow_consumer"  # a small write buffer: a client that does not read is dropped


# Kinds that change the zip bytes: only requests for the zip itself use them up.
_ZIP_KINDS = frozenset({FaultKind.CORRUPT_ZIP, FaultKind.CHECKSUM_MISMATCH})
# Kinds that only mean something on REST paths; Vision requests pass them by.
_REST_ONLY_KINDS = frozenset({FaultKind.MALFORMED_JSON, FaultKind.BAD_SYMBOL})
WS_FRAME_KINDS = frozenset({FaultKind.WS_DROP_DEPTH, FaultKind.WS_SILENCE})
WS_CONNECTION_KINDS = frozenset(
    {FaultKind.WS_CLOSE, FaultKind.WS_RESET, FaultKind.WS_NO_PONG, FaultKind.WS_SLOW_CONSUMER}
)
WS_KINDS = WS_FRAME_KINDS | WS_CONNECTION_KINDS
# Kinds that are a state while the rule lives, not a number of uses.
_WS_STATE_KINDS = frozenset({FaultKind.WS_SILENCE, FaultKind.WS_NO_PONG, FaultKind.WS_SLOW_CONSUMER})
DEFAULT_SLOW_CONSUMER_BYTES = 65_536
_RULE_FIELDS = (
    "kind",
    "path_contains",
    "times",
    "delay_s",
    "retry_after_s",
    "at_ms",
    "until_ms",
    "update_id",
    "limit_bytes",
)


@dataclass(frozen=True)
class FaultRule:
    """Affect requests whose path contains ``path_contains``; ``times=None`` means
    every matching request, else that many matching requests. ``retry_after_s`` is
    the ``Retry-After`` of ``rate_limit_429`` and ``ban_418`` answers. ``at_ms``,
    ``until_ms``, ``update_id`` and ``limit_bytes`` belong to the WebSocket kinds
    (module docstring)."""

    kind: FaultKind
    path_contains: str
    times: int | None = None
    delay_s: float = 0.0
    retry_after_s: int = 1
    at_ms: int | None = None
    until_ms: int | None = None
    update_id: int | None = None
    limit_bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", FaultKind(self.kind))
        if not isinstance(self.path_contains, str):
            raise ValueError("path_contains must be a string")
        if self.times is not None and (not isinstance(self.times, int) or self.times < 0):
            raise ValueError(f"times must be None or a whole number ≥ 0, not {self.times!r}")
        if not self.delay_s >= 0:
            raise ValueError(f"delay_s must be ≥ 0, not {self.delay_s!r}")
        if isinstance(self.retry_after_s, bool) or not isinstance(self.retry_after_s, int) or self.retry_after_s < 0:
            raise ValueError(f"retry_after_s must be a whole number ≥ 0, not {self.retry_after_s!r}")
        for name in ("at_ms", "until_ms", "update_id", "limit_bytes"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be None or a whole number ≥ 0, not {value!r}")
            if self.kind not in WS_KINDS:
                raise ValueError(f"{name} applies to the ws_* kinds only, not {self.kind.value}")
        if self.update_id is not None and self.kind is not FaultKind.WS_DROP_DEPTH:
            raise ValueError("update_id applies to ws_drop_depth only")
        if self.limit_bytes is not None and self.kind is not FaultKind.WS_SLOW_CONSUMER:
            raise ValueError("limit_bytes applies to ws_slow_consumer only")
        if self.kind in _WS_STATE_KINDS and self.times is not None:
            raise ValueError(f"{self.kind.value} lasts while the rule lives: times must be None")
        if self.kind in WS_KINDS and self.delay_s:
            raise ValueError(f"delay_s does not apply to {self.kind.value}")
        if self.at_ms is not None and self.until_ms is not None and self.until_ms <= self.at_ms:
            raise ValueError(f"until_ms ({self.until_ms}) must be after at_ms ({self.at_ms})")

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        unknown = set(data) - set(_RULE_FIELDS)
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        return cls(
            kind=FaultKind(data["kind"]),
            path_contains=data.get("path_contains", ""),
            times=data.get("times"),
            delay_s=float(data.get("delay_s", 0.0)),
            retry_after_s=data.get("retry_after_s", 1),
            at_ms=data.get("at_ms"),
            until_ms=data.get("until_ms"),
            update_id=data.get("update_id"),
            limit_bytes=data.get("limit_bytes"),
        )

    def _in_window(self, instant_ms: int) -> bool:
        return (self.at_ms is None or instant_ms >= self.at_ms) and (
            self.until_ms is None or instant_ms < self.until_ms
        )


@dataclass
class _ActiveRule:
    rule: FaultRule
    remaining: int | None
    sequence: int = 0  # the order rules were added in (connections remember the last they saw)

    def live(self) -> bool:
        return self.remaining is None or self.remaining > 0

    def use(self) -> None:
        if self.remaining is not None:
            self.remaining -= 1


@dataclass(frozen=True)
class FaultDecision:
    delay_s: float = 0.0
    kind: FaultKind | None = None
    rule: FaultRule | None = None  # the rule that set ``kind``


class FaultSet:
    """The server's fault rules, safe to change while requests are served.

    A request sleeps for every matching ``slow`` rule and is then affected by at
    most one other rule: the first added that matches and has uses left. The
    zip-changing kinds are used up by zip requests only; a ``corrupt_zip`` rule
    also makes the file's ``.CHECKSUM`` describe the garbage (while the rule is
    live, or for the one CHECKSUM request that follows a garbage zip), so the pair
    looks broken upstream whichever of the two a client fetches first.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[_ActiveRule] = []
        # Zip paths served as garbage whose CHECKSUM has not been asked for since,
        # and CHECKSUM paths served for garbage whose zip has not been asked for.
        self._garbage_zip_pending: set[str] = set()
        self._garbage_checksum_served: set[str] = set()
        self._sequence = 0

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._sequence += 1
            self._rules.append(_ActiveRule(rule, rule.times, self._sequence))

    @property
    def sequence(self) -> int:
        """The number of rules added so far: a connection opened now is older than
        every rule added after it."""
        with self._lock:
            return self._sequence

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()
            self._garbage_zip_pending.clear()
            self._garbage_checksum_served.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._rules)

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{**asdict(r.rule), "kind": r.rule.kind.value, "remaining": r.remaining} for r in self._rules]

    def decide(self, path: str) -> FaultDecision:
        """Use up the rules that apply to one request of ``path`` (a zip or CHECKSUM
        path, or a REST path: there the zip kinds do not apply, and on Vision paths
        the REST-only kinds do not)."""
        rest = is_rest_path(path)
        is_checksum = not rest and path.endswith(CHECKSUM_SUFFIX)
        zip_path = path[: -len(CHECKSUM_SUFFIX)] if is_checksum else path
        delay, kind, chosen = 0.0, None, None
        with self._lock:
            for active in self._rules:
                if active.rule.path_contains not in path or not active.live():
                    continue
                if active.rule.kind in WS_KINDS or active.rule.kind in (_ZIP_KINDS if rest else _REST_ONLY_KINDS):
                    continue
                if active.rule.kind is FaultKind.SLOW:
                    active.use()
                    delay += active.rule.delay_s
                    continue
                if kind is not None:
                    continue
                if active.rule.kind in _ZIP_KINDS and is_checksum:
                    if active.rule.kind is FaultKind.CORRUPT_ZIP:
                        kind = FaultKind.CORRUPT_ZIP
                        self._garbage_checksum_served.add(zip_path)
                        self._garbage_zip_pending.discard(zip_path)
                    continue
                active.use()
                kind, chosen = active.rule.kind, active.rule
            if is_checksum and kind is None and zip_path in self._garbage_zip_pending:
                self._garbage_zip_pending.discard(zip_path)
                kind = FaultKind.CORRUPT_ZIP
            if not is_checksum and kind is FaultKind.CORRUPT_ZIP:
                if zip_path in self._garbage_checksum_served:
                    self._garbage_checksum_served.discard(zip_path)
                else:
                    self._garbage_zip_pending.add(zip_path)
        return FaultDecision(delay, kind, chosen)

    # --- WebSocket kinds ----------------------------------------------------------------

    def has_ws_rules(self) -> bool:
        with self._lock:
            return any(active.rule.kind in WS_KINDS for active in self._rules)

    def ws_frame(self, stream: str, event_ms: int, ids: tuple[int, int] | None) -> FaultRule | None:
        """The rule that keeps a frame of ``stream`` with event time ``event_ms`` (and,
        for depth, ids U..u) from being sent, using up one of a drop rule's times."""
        with self._lock:
            for active in self._rules:
                rule = active.rule
                if rule.kind not in WS_FRAME_KINDS or rule.path_contains not in stream or not active.live():
                    continue
                if not rule._in_window(event_ms):
                    continue
                if rule.kind is FaultKind.WS_SILENCE:
                    return rule
                if ids is None or (rule.update_id is not None and not ids[0] <= rule.update_id <= ids[1]):
                    continue
                active.use()
                return rule
        return None

    def ws_connection(
        self, kind: FaultKind, target: str, now_ms: int, *, opened_ms: int, opened_after: int
    ) -> FaultRule | None:
        """The live rule of ``kind`` (a per-connection kind) for a connection whose
        request path is ``target``, opened at market time ``opened_ms`` after
        ``opened_after`` rules had been added; a close/reset rule is used up by it."""
        if kind not in WS_CONNECTION_KINDS:
            raise ValueError(f"{kind.value} is not a per-connection kind")
        with self._lock:
            for active in self._rules:
                rule = active.rule
                if rule.kind is not kind or rule.path_contains not in target or not active.live():
                    continue
                if kind in _WS_STATE_KINDS:
                    if rule._in_window(now_ms):
                        return rule
                    continue
                # close/reset: the connections open at the rule's instant.
                if rule.at_ms is None:
                    if active.sequence <= opened_after:
                        continue
                elif not (opened_ms <= rule.at_ms <= now_ms):
                    continue
                active.use()
                return rule
        return None

    def ws_close_at(self, target: str, *, opened_ms: int, opened_after: int) -> int | None:
        """The earliest instant a live close/reset rule will end a connection
        (``target`` its request path): frames with ``E`` before it go out first.
        None when no such rule waits for an instant of its own."""
        with self._lock:
            instants = [
                active.rule.at_ms
                for active in self._rules
                if active.rule.kind in (FaultKind.WS_CLOSE, FaultKind.WS_RESET)
                and active.live()
                and active.rule.path_contains in target
                and active.rule.at_ms is not None
                and active.rule.at_ms >= opened_ms
            ]
        return min(instants) if instants else None


def garbage(data: bytes) -> bytes:
    """Deterministic garbage of the same length: the local header survives (it
    still looks like a zip), everything after it is scrambled."""
    head = min(len(data), 30)
    body = np.frombuffer(data, dtype=np.uint8)[head:] ^ np.uint8(0xA5)
    return data[:head] + body.tobytes()


def flipped(data: bytes) -> bytes:
    """A few flipped bytes in the middle, as a bad transfer would leave them."""
    out = bytearray(data)
    for i in range(len(out) // 2, min(len(out), len(out) // 2 + 8)):
        out[i] ^= 0xFF
    return bytes(out)
