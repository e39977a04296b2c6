"""The replay server's market clock: what time it is on the synthetic exchange.

What belongs here: ``MarketClock``, shared by a ``ReplayServer`` and its REST API.
It has two modes. Fixed: market time stands still at a given instant until a test
moves it (``set``/``advance``). Live: market time runs from an origin at ``speed``
times the wall clock (``origin + (wall − wall_at_start) × speed``), so a demo can
replay 2024 at 60× while rate limits still count real seconds. The clock also
hands out its wall time (``wall_time``), which the server's rate limiter uses:
limits are real time, never market time. Both clocks (market and wall) can be
injected, so tests never sleep.

What stays out: what happens at a given time (``market.py``, ``rest/endpoints.py``) and
the HTTP plumbing (``server.py``).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, date, datetime

WallClock = Callable[[], float]


def to_ms(moment: datetime | int) -> int:
    """Milliseconds since the epoch of ``moment`` (a naive datetime is taken as UTC)."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return round(moment.timestamp() * 1000)
    if isinstance(moment, bool) or not isinstance(moment, int):
        raise TypeError(f"expected a datetime or whole milliseconds, not {moment!r}")
    return moment


class MarketClock:
    """Market time in ms; thread-safe. Build it with ``fixed`` or ``live``."""

    def __init__(self, origin_ms: int, *, live: bool, speed: float = 1.0, wall: WallClock = time.time) -> None:
        if not (isinstance(speed, int | float) and math.isfinite(speed) and speed > 0):
            raise ValueError(f"speed must be a finite number > 0, not {speed!r}")
        self._lock = threading.Lock()
        self._wall = wall
        self._live = live
        self._speed = float(speed)
        self._origin_ms = to_ms(origin_ms)
        self._wall_at_origin = wall()

    @classmethod
    def fixed(cls, at: datetime | int, *, wall: WallClock = time.time) -> MarketClock:
        """A clock standing at ``at`` (ms or datetime) until ``set``/``advance``.
        ``wall`` only feeds ``wall_time`` (the rate limiter's clock)."""
        return cls(to_ms(at), live=False, wall=wall)

    @classmethod
    def live(cls, origin: datetime | int, speed: float = 1.0, *, wall: WallClock = time.time) -> MarketClock:
        """A clock that reads ``origin`` now and runs at ``speed`` × the wall clock."""
        return cls(to_ms(origin), live=True, speed=speed, wall=wall)

    @property
    def is_live(self) -> bool:
        return self._live

    @property
    def speed(self) -> float:
        return self._speed

    def wall_time(self) -> float:
        """The wall clock (seconds since the epoch) this clock runs on."""
        return self._wall()

    def _now_locked(self) -> int:
        if not self._live:
            return self._origin_ms
        elapsed_ms = (self._wall() - self._wall_at_origin) * 1000.0 * self._speed
        return self._origin_ms + math.floor(elapsed_ms)

    def now_ms(self) -> int:
        with self._lock:
            return self._now_locked()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.now_ms() / 1000, UTC)

    def today(self) -> date:
        """The UTC date of market time."""
        return self.now().date()

    def set(self, at: datetime | int) -> None:
        """Jump to ``at``; a live clock keeps running from there."""
        ms = to_ms(at)
        with self._lock:
            self._origin_ms = ms
            self._wall_at_origin = self._wall()

    def advance(self, ms: int) -> None:
        """Move market time by ``ms`` (may be negative); a live clock keeps running."""
        with self._lock:
            now = self._now_locked()
            self._origin_ms = now + int(ms)
            self._wall_at_origin = self._wall()

    def __repr__(self) -> str:
        mode = f"live, speed={self._speed:g}" if self._live else "fixed"
        return f"MarketClock({self.now().isoformat()}, {mode})"
