"""The exchange's clock as seen from here: the offset of the local clock against
``{BML_REST_BASE_URL}/fapi/v1/time``, measured every minute (SPEC §9).

What belongs here: one measurement (``ClockReading``: offset = serverTime − (t_send +
t_recv)/2 in ms, with the round trip that bounds its error), keeping the last good offset
when a measurement fails, and the corrected clock ``now_exchange_ms()`` by which the
collector closes minutes (never the raw local clock, which may be seconds off).

What stays out: HTTP and the weight budget (the one REST client, ``sources/rest.py``:
weight 1 per measurement, charged to the budget every process shares), and what a
minute does with the offset (the aggregation records it, uncorrected, per minute).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bml_assets.domain.redaction import redact_url
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpError
from bml_assets.sources.rest import RestClient, RestError
from bml_assets.sources.rest_budget import RestBanned

MEASURE_EVERY_S: Final = 60.0


@dataclass(frozen=True)
class ClockReading:
    """One measurement of the local clock against the exchange's.

    ``ok``: ``offset_ms`` (exchange − local, ms; add it to the local clock) and
    ``round_trip_ms`` are this measurement's. Not ``ok``: ``error`` says why (URL redacted)
    and ``offset_ms`` is the last good one kept (None: none yet). ``local_ns``: when the
    answer (or the failure) came."""

    ok: bool
    offset_ms: float | None
    round_trip_ms: float | None
    server_ms: int | None
    local_ns: int
    error: str = ""


class ExchangeClock:
    """The local clock corrected by the last measured offset (``rest``: the one REST client)."""

    def __init__(self, rest: RestClient, *, local_ns: Callable[[], int] = time.time_ns) -> None:
        self.rest = rest
        self._local_ns = local_ns
        self.offset_ms: float | None = None
        self.last: ClockReading | None = None

    def measure(self) -> ClockReading:
        """GET /fapi/v1/time once (blocking: run it off the event loop); a failure keeps the
        last offset and is returned as a reading with ``ok`` False, never raised."""
        try:
            answer = self.rest.timed_get(limits.SERVER_TIME_PATH)
            server_ms = answer.data["serverTime"]
            if isinstance(server_ms, bool) or not isinstance(server_ms, int):
                raise RestError(f"serverTime {server_ms!r} is not whole milliseconds in {answer.url}", url=answer.url)
        except (HttpError, RestError, RestBanned, OSError) as exc:
            reading = ClockReading(False, self.offset_ms, None, None, self._local_ns(), redact_url(str(exc)))
        except (KeyError, TypeError):
            url = f"{self.rest.base_url}{limits.SERVER_TIME_PATH}"
            reading = ClockReading(
                False, self.offset_ms, None, None, self._local_ns(), f"no serverTime in the answer of {url}"
            )
        else:
            midpoint_ms = (answer.sent_ns + answer.received_ns) / 2e6
            offset = server_ms - midpoint_ms
            reading = ClockReading(
                True, offset, (answer.received_ns - answer.sent_ns) / 1e6, server_ms, answer.received_ns
            )
            self.offset_ms = offset
        self.last = reading
        return reading

    def now_exchange_ms(self) -> int | None:
        """The exchange's time now by the local clock and the last good offset; None until a
        measurement has succeeded (the local clock alone is not the exchange's)."""
        if self.offset_ms is None:
            return None
        return round(self._local_ns() / 1e6 + self.offset_ms)

    async def keep_measuring(self, report: Callable[[ClockReading], None], every_s: float = MEASURE_EVERY_S) -> None:
        """Measure now and then every ``every_s`` seconds until cancelled, each reading handed
        to ``report``; the request runs in a thread, so the event loop never waits on it."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            report(await asyncio.to_thread(self.measure))
            next_at += every_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
