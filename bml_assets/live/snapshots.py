"""Depth snapshots for the local order books (SPEC §9): ``GET /fapi/v1/depth?symbol=S&limit=1000``.

What belongs here: one snapshot through the one REST client (weight 20 at limit 1000,
charged to the weight budget every process shares; a 429 or 418 honours ``Retry-After``
and the budget's ban, so no request goes out while the host bans us), returned as the
answer's text (for the raw spool, one line) with the local time it arrived
(``DepthSnapshot``); and ``SnapshotRequests``, which runs them off the event loop (a
thread each, a few at a time), retries a failed one after its ban or a backoff, and hands
each result or failure back on the loop, so a slow snapshot never stalls the frames of
the other symbols.

What stays out: what a snapshot means for a book (the core's ``book.py``: buffer, drop
``u < L``, first event ``U ≤ L ≤ u``), HTTP and the budget (``sources/``).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import validate_symbol
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import STATUS_IP_BANNED, STATUS_TOO_MANY_REQUESTS, HttpError
from bml_assets.sources.rest import RestClient, RestError
from bml_assets.sources.rest_budget import RestBanned

log = logging.getLogger(__name__)

SNAPSHOT_LIMIT: Final = 1000  # levels per side: the deepest the exchange serves
RETRY_MIN_S: Final = 1.0
RETRY_MAX_S: Final = 60.0


@dataclass(frozen=True)
class DepthSnapshot:
    """One depth snapshot of ``symbol``: ``text`` as answered (on one line, so a spool line
    is ``f"{local_ns} {text}"``), ``local_ns`` when its whole answer arrived (``time.time_ns``),
    ``sent_ns`` just before its request went out, ``last_update_id`` its ``lastUpdateId``
    (L), ``url`` the request (redacted) and ``weight`` what it cost."""

    symbol: str
    text: str
    local_ns: int
    sent_ns: int
    last_update_id: int
    url: str
    weight: int


class SnapshotError(Exception):
    """A snapshot of ``symbol`` that could not be had; the message names the URL (redacted).
    ``retry_in_s``: when ``SnapshotRequests`` asks again (None: not again, e.g. an unknown
    symbol); ``banned_until_ms``: the host's ban, when that is the reason; ``status``: the
    HTTP status of the failed answer, if one came."""

    def __init__(
        self,
        symbol: str,
        message: str,
        *,
        url: str,
        retry_in_s: float | None = None,
        banned_until_ms: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(redact_url(message))
        self.symbol = symbol
        self.url = redact_url(url)
        self.retry_in_s = retry_in_s
        self.banned_until_ms = banned_until_ms
        self.status = status


def depth_url(rest: RestClient, symbol: str, limit: int = SNAPSHOT_LIMIT) -> str:
    """The snapshot's URL as shown in messages (redacted)."""
    return f"{rest.base_url}{limits.DEPTH_PATH}?symbol={symbol}&limit={limit}"


def fetch_depth_snapshot(rest: RestClient, symbol: str, limit: int = SNAPSHOT_LIMIT) -> DepthSnapshot:
    """One snapshot (blocking: run it in a thread). Raises ``SnapshotError`` with
    ``retry_in_s`` unset; ``SnapshotRequests`` decides about retries."""
    validate_symbol(symbol)
    url = depth_url(rest, symbol, limit)
    weight = limits.weight_of(limits.DEPTH_PATH, {"limit": limit})
    try:
        answer = rest.timed_get(limits.DEPTH_PATH, {"symbol": symbol, "limit": limit})
    except RestBanned as exc:
        raise SnapshotError(
            symbol, f"depth snapshot {url} not asked: {exc}", url=url, banned_until_ms=exc.until_ms
        ) from None
    except HttpError as exc:
        raise SnapshotError(symbol, f"depth snapshot {url} failed: {exc}", url=url, status=exc.status) from None
    except RestError as exc:
        raise SnapshotError(symbol, f"depth snapshot {url} failed: {exc}", url=url) from None
    data = answer.data
    last_update_id = data.get("lastUpdateId") if isinstance(data, dict) else None
    if (
        isinstance(last_update_id, bool)
        or not isinstance(last_update_id, int)
        or not isinstance(data.get("bids"), list)
        or not isinstance(data.get("asks"), list)
    ):
        raise SnapshotError(
            symbol,
            f"depth snapshot {answer.url} is not a book (no whole lastUpdateId, or no bids/asks lists): "
            f"{answer.text[:200]!r}",
            url=answer.url,
        )
    # JSON holds no raw line break inside a string, so outside them a break is only spacing.
    text = answer.text.strip()
    if "\n" in text or "\r" in text:
        text = text.replace("\r", " ").replace("\n", " ")
    return DepthSnapshot(symbol, text, answer.received_ns, answer.sent_ns, last_update_id, answer.url, weight)


def _retry_in_s(error: SnapshotError, failures: int, now_ms: int, rng: random.Random) -> float | None:
    """After a ban: until it ends (plus a second); after a 4xx other than 418/429: never (the
    request itself is wrong, e.g. an unknown symbol); else a jittered backoff of 1 s doubling
    to 60 s."""
    if error.banned_until_ms is not None:
        return max(0.0, (error.banned_until_ms - now_ms) / 1000) + 1.0
    status = error.status
    if status is not None and 400 <= status < 500 and status not in (STATUS_TOO_MANY_REQUESTS, STATUS_IP_BANNED):
        return None
    ceiling = min(RETRY_MAX_S, RETRY_MIN_S * 2**failures)
    return rng.uniform(ceiling / 2, ceiling)


class SnapshotRequests:
    """Snapshots asked for on the event loop, fetched in threads, answered on the loop.

    ``request(symbol)`` starts one unless one is pending for the symbol; the result reaches
    ``on_snapshot``; each failure reaches ``on_error`` (a ``SnapshotError`` whose
    ``retry_in_s`` says when it is tried again, None: not again). ``clients``: one REST
    client per concurrent fetch (each used by one thread at a time; they share the weight
    budget through the state database)."""

    def __init__(
        self,
        clients: Sequence[RestClient],
        on_snapshot: Callable[[DepthSnapshot], None],
        on_error: Callable[[SnapshotError], None],
        *,
        limit: int = SNAPSHOT_LIMIT,
        rng: random.Random | None = None,
    ) -> None:
        if not clients:
            raise ValueError("snapshots need at least one REST client")
        self._idle: list[RestClient] = list(clients)
        self._free = asyncio.Semaphore(len(clients))
        self.on_snapshot = on_snapshot
        self.on_error = on_error
        self.limit = limit
        self._rng = rng if rng is not None else random.Random()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self.fetched = 0
        self.failed = 0

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._tasks)

    def request(self, symbol: str) -> bool:
        """Ask for a snapshot of ``symbol``; False when one is already on its way."""
        validate_symbol(symbol)
        if symbol in self._tasks:
            return False
        self._tasks[symbol] = asyncio.get_running_loop().create_task(self._fetch(symbol), name=f"snapshot {symbol}")
        return True

    async def _fetch(self, symbol: str) -> None:
        failures = 0
        try:
            while True:
                async with self._free:
                    client = self._idle.pop()
                    try:
                        snapshot = await asyncio.to_thread(fetch_depth_snapshot, client, symbol, self.limit)
                    except SnapshotError as exc:
                        error = exc
                    else:
                        error = None
                    finally:
                        self._idle.append(client)
                if error is None:
                    self.fetched += 1
                    del self._tasks[symbol]  # before the callback: it may ask again
                    self.on_snapshot(snapshot)
                    return
                self.failed += 1
                error.retry_in_s = _retry_in_s(error, failures, time.time_ns() // 1_000_000, self._rng)
                failures += 1
                self.on_error(error)
                if error.retry_in_s is None:
                    del self._tasks[symbol]
                    return
                await asyncio.sleep(error.retry_in_s)
        except asyncio.CancelledError:
            self._tasks.pop(symbol, None)
            raise
        except Exception:
            self._tasks.pop(symbol, None)
            log.exception("the snapshot of %s failed unexpectedly", symbol)

    async def aclose(self) -> None:
        """Cancel every pending snapshot (a thread already sending finishes on its own)."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
