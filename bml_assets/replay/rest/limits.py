"""The replay's REST limits: request weights and the per-IP weight window.

What belongs here: what each request weighs (``endpoint_weight``), ``RateLimiter``
(per-IP request weight in fixed wall-clock windows, 429 then the 418 ban, and the
separate fundingRate request limit), its verdict (``Admission``), the
``X-MBX-USED-WEIGHT-1M`` header name and the exchange's 429/418 messages. Limits
count real (wall-clock) seconds, never market time.

Choices where the exchange is vague or the replay simplifies (SPEC §4 lists the
facts relied on):

* Weights: klines family 1/2/5/10 by ``limit`` (<100 / <500 / ≤1000 / >1000; the
  default 500 weighs 5), depth 2/5/10/20 by ``limit`` (≤50 / 100 / 500 / 1000; the
  default 500 weighs 10), aggTrades 20, bookTicker 2, everything else 1 (time,
  ping, exchangeInfo, premiumIndex, openInterest, fundingRate and the three
  ``/futures/data`` histories). Unknown paths weigh 1.
* Requests answered 429/418 by the limiter add no weight; every other answer
  (200 and 4xx alike) is charged in full (``service.py`` does the charging).

What stays out: the answers (``endpoints.py``), admitting-answering-logging one
request (``service.py``), injected 429/418 faults (``faults.py``, ``server.py``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http import HTTPStatus

from bml_assets.replay.rest.paths import FUNDING_RATE_PATH, KLINE_PATHS

DEFAULT_WEIGHT_LIMIT = 2400
DEFAULT_FUNDING_LIMIT = 500
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


def ban_message(banned_until_ms: int) -> str:
    return (
        f"Way too much request weight used; IP banned until {banned_until_ms}. "
        "Please use WebSocket Streams for live updates to avoid bans."
    )


def too_much_weight_message(limit: int) -> str:
    return (
        f"Too much request weight used; current limit is {limit} request weight per 1 MINUTE. "
        "Please use WebSocket Streams for live updates to avoid polling the API."
    )


def _kline_weight(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit") or 500)
    except ValueError:
        return 1
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def endpoint_weight(path: str, params: Mapping[str, str]) -> int:
    """The request weight the exchange charges for ``path`` with ``params``."""
    if path in KLINE_PATHS:
        return _kline_weight(params)
    if path == "/fapi/v1/aggTrades":
        return 20
    if path == "/fapi/v1/ticker/bookTicker":
        return 2
    if path == "/fapi/v1/depth":
        return _depth_weight(params)
    return 1


def _depth_weight(params: Mapping[str, str]) -> int:
    try:
        limit = int(params.get("limit") or 500)
    except ValueError:
        return 2
    return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20


@dataclass
class _IpState:
    window: int = -1
    used: int = 0
    rejected: int = 0  # 429s answered in this window
    banned_until: float = 0.0
    funding_window: int = -1
    funding_count: int = 0


@dataclass(frozen=True)
class Admission:
    """The limiter's verdict on one request: 200 (go ahead), 429 or 418."""

    status: int
    used: int  # weight used in the current window, this request included when admitted
    retry_after_s: int = 0
    banned_until_ms: int = 0
    message: str = ""


class RateLimiter:
    """Per-IP request weight in fixed wall-clock windows (``window_s``, default a
    minute, counted from the epoch so windows turn on the minute).

    A request whose weight does not fit (``used + weight > weight_limit``) is
    answered 429 with ``Retry-After`` = seconds to the window's end, and so is
    every further request in that window; after ``ban_after`` such 429s the next
    request earns a 418 ban of ``ban_s`` seconds, during which every request is
    418 (with ``Retry-After`` = the seconds left). fundingRate requests also count
    against ``funding_limit`` requests per ``funding_window_s`` (429, no ban).
    Rejected requests add no weight."""

    def __init__(
        self,
        weight_limit: int = DEFAULT_WEIGHT_LIMIT,
        window_s: float = 60.0,
        *,
        ban_after: int = 3,
        ban_s: float = 120.0,
        funding_limit: int = DEFAULT_FUNDING_LIMIT,
        funding_window_s: float = 300.0,
    ) -> None:
        if weight_limit < 1 or window_s <= 0 or ban_after < 0 or ban_s <= 0:
            raise ValueError("weight_limit ≥ 1, window_s > 0, ban_after ≥ 0 and ban_s > 0 are required")
        if funding_limit < 1 or funding_window_s <= 0:
            raise ValueError("funding_limit ≥ 1 and funding_window_s > 0 are required")
        self.weight_limit = weight_limit
        self.window_s = float(window_s)
        self.ban_after = ban_after
        self.ban_s = float(ban_s)
        self.funding_limit = funding_limit
        self.funding_window_s = float(funding_window_s)
        self._lock = threading.Lock()
        self._states: dict[str, _IpState] = {}

    def _roll(self, state: _IpState, wall: float) -> None:
        window = math.floor(wall / self.window_s)
        if window != state.window:
            state.window, state.used, state.rejected = window, 0, 0

    def used(self, ip: str, wall: float) -> int:
        with self._lock:
            state = self._states.setdefault(ip, _IpState())
            self._roll(state, wall)
            return state.used

    def admit(self, ip: str, weight: int, wall: float, *, funding: bool = False) -> Admission:
        with self._lock:
            state = self._states.setdefault(ip, _IpState())
            self._roll(state, wall)
            if state.banned_until > wall:
                return self._banned(state, wall)
            if state.rejected > 0 or state.used + weight > self.weight_limit:
                if state.rejected >= self.ban_after:
                    state.banned_until = wall + self.ban_s
                    state.rejected = 0
                    return self._banned(state, wall)
                state.rejected += 1
                window_end = (state.window + 1) * self.window_s
                return Admission(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    state.used,
                    _ceil_s(window_end - wall),
                    message=too_much_weight_message(self.weight_limit),
                )
            if funding:
                funding_window = math.floor(wall / self.funding_window_s)
                if funding_window != state.funding_window:
                    state.funding_window, state.funding_count = funding_window, 0
                if state.funding_count >= self.funding_limit:
                    window_end = (funding_window + 1) * self.funding_window_s
                    return Admission(
                        HTTPStatus.TOO_MANY_REQUESTS,
                        state.used,
                        _ceil_s(window_end - wall),
                        message=(
                            f"Too many requests; current limit of IP({ip}) is {self.funding_limit} requests per "
                            f"{self.funding_window_s:g} seconds for {FUNDING_RATE_PATH}."
                        ),
                    )
                state.funding_count += 1
            state.used += weight
            return Admission(HTTPStatus.OK, state.used)

    @staticmethod
    def _banned(state: _IpState, wall: float) -> Admission:
        until_ms = math.ceil(state.banned_until * 1000)
        return Admission(
            HTTPStatus.IM_A_TEAPOT,
            state.used,
            _ceil_s(state.banned_until - wall),
            until_ms,
            message=ban_message(until_ms),
        )

    def reset(self) -> None:
        with self._lock:
            self._states.clear()


def _ceil_s(seconds: float) -> int:
    return max(1, math.ceil(seconds - 1e-9))
