"""The replay server's fault switches: which requests to break, and how.

What belongs here: ``FaultKind`` (404, 403, a corrupt zip, a CHECKSUM mismatch, a
truncated body, 500, slow answers, injected 429/418, malformed JSON, an invalid
symbol), ``FaultRule`` (a kind, the paths it matches, how often), ``FaultSet`` (the
live rules, safe to change while requests are served, deciding per request which
rule applies: ``FaultDecision``), and the byte manglers the zip kinds use
(``garbage``, ``flipped``).

What stays out: sending the broken answers and the ``/_replay/faults`` control
path (``server.py``), the REST limiter's own 429/418 (``rest/limits.py``).
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


# Kinds that change the zip bytes: only requests for the zip itself use them up.
_ZIP_KINDS = frozenset({FaultKind.CORRUPT_ZIP, FaultKind.CHECKSUM_MISMATCH})
# Kinds that only mean something on REST paths; Vision requests pass them by.
_REST_ONLY_KINDS = frozenset({FaultKind.MALFORMED_JSON, FaultKind.BAD_SYMBOL})


@dataclass(frozen=True)
class FaultRule:
    """Affect requests whose path contains ``path_contains``; ``times=None`` means
    every matching request, else that many matching requests. ``retry_after_s`` is
    the ``Retry-After`` of ``rate_limit_429`` and ``ban_418`` answers."""

    kind: FaultKind
    path_contains: str
    times: int | None = None
    delay_s: float = 0.0
    retry_after_s: int = 1

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

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FaultRule:
        unknown = set(data) - {"kind", "path_contains", "times", "delay_s", "retry_after_s"}
        if unknown:
            raise ValueError(f"unknown fault rule fields: {sorted(unknown)}")
        return cls(
            kind=FaultKind(data["kind"]),
            path_contains=data.get("path_contains", ""),
            times=data.get("times"),
            delay_s=float(data.get("delay_s", 0.0)),
            retry_after_s=data.get("retry_after_s", 1),
        )


@dataclass
class _ActiveRule:
    rule: FaultRule
    remaining: int | None

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

    def add(self, rule: FaultRule) -> None:
        with self._lock:
            self._rules.append(_ActiveRule(rule, rule.times))

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
                if active.rule.kind in (_ZIP_KINDS if rest else _REST_ONLY_KINDS):
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
