"""The replay's REST request log: what was asked, answered and charged, in order.

What belongs here: ``RestLogEntry`` (one REST request as the server answered it)
and ``RestLog`` (the entries, appended to from the server's threads; read as a
copy). Tests and benchmarks read it to see which requests a client sent and what
weight they cost.

What stays out: deciding the answer or the weight (``service.py``,
``limits.py``), the server's log of every HTTP request (``server.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class RestLogEntry:
    """One REST request as the server answered it; ``weight`` is what was charged
    (0 for limiter rejections and injected faults), ``client`` the IP it came from
    (what the exchange counts weight per)."""

    wall_time_s: float
    path: str
    params: dict[str, str]
    status: int
    weight: int
    client: str = ""


class RestLog:
    """Every REST request so far, in order; thread-safe."""

    def __init__(self) -> None:
        self._entries: list[RestLogEntry] = []
        self._lock = threading.Lock()

    def entries(self) -> list[RestLogEntry]:
        """A copy of the entries so far."""
        with self._lock:
            return list(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def record(
        self, wall: float, path: str, params: Mapping[str, str], status: int, weight: int, client: str = ""
    ) -> None:
        with self._lock:
            self._entries.append(RestLogEntry(wall, path, dict(params), int(status), int(weight), client))
