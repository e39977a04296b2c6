"""MarketClock: fixed and live modes, with an injected wall clock (no sleeping)."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest

from bml_assets.replay.clock import MarketClock, to_ms

T0 = 1_709_634_620_000  # 2024-03-05 10:30:20 UTC


class FakeWall:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_fixed_clock_stands_still_until_moved() -> None:
    wall = FakeWall()
    clock = MarketClock.fixed(datetime(2024, 3, 5, 10, 30, 20, tzinfo=UTC), wall=wall)
    assert not clock.is_live
    assert clock.now_ms() == T0
    wall.t += 3600
    assert clock.now_ms() == T0  # wall time passing does not move a fixed clock
    assert clock.wall_time() == 1_003_600.0
    clock.advance(40_000)
    assert clock.now_ms() == 1_709_634_660_000
    assert clock.now() == datetime(2024, 3, 5, 10, 31, tzinfo=UTC)
    clock.set(datetime(2024, 3, 5, 23, 59, 59, 999_000))  # naive = UTC
    assert clock.now_ms() == 1_709_683_199_999
    assert clock.today() == date(2024, 3, 5)
    clock.advance(1)
    assert clock.today() == date(2024, 3, 6)
    assert clock.now_ms() == 1_709_683_200_000


def test_live_clock_runs_at_speed() -> None:
    wall = FakeWall(500.0)
    clock = MarketClock.live(datetime(2024, 3, 5, 10, 30, 20, tzinfo=UTC), speed=60.0, wall=wall)
    assert clock.is_live and clock.speed == 60.0
    assert clock.now_ms() == T0
    wall.t += 1.5  # 1.5 wall seconds at 60× = 90 market seconds
    assert clock.now_ms() == T0 + 90_000
    clock.advance(10_000)  # jumps, then keeps running from there
    assert clock.now_ms() == T0 + 100_000
    wall.t += 0.25
    assert clock.now_ms() == T0 + 115_000
    clock.set(T0)
    assert clock.now_ms() == T0
    wall.t += 2.0
    assert clock.now_ms() == T0 + 120_000


def test_live_clock_at_real_speed_and_validation() -> None:
    wall = FakeWall(0.0)
    clock = MarketClock.live(T0, wall=wall)
    wall.t = 0.0015  # 1.5 ms: market time counts whole milliseconds
    assert clock.now_ms() == T0 + 1
    with pytest.raises(ValueError):
        MarketClock.live(T0, speed=0, wall=wall)
    with pytest.raises(ValueError):
        MarketClock.live(T0, speed=float("nan"), wall=wall)
    with pytest.raises(TypeError):
        MarketClock.fixed(1.5)  # type: ignore[arg-type]
    assert to_ms(datetime(1970, 1, 1, 0, 0, 1)) == 1000


def test_clock_is_thread_safe() -> None:
    clock = MarketClock.fixed(0)

    def bump() -> None:
        for _ in range(1000):
            clock.advance(1)

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert clock.now_ms() == 8000
