"""The clock a build runs by: the exchange's (REST server time) or this machine's, read once per run.

What belongs here: ``ExchangeNow`` (an instant and what it makes committable: closed
minutes plus the safety lag) and ``run_clock``, the one reading per run that every
stream of the run is cut at, waiting for a not-before instant when the run was
launched early. What stays out: which runs follow which clock (the run's tags, read
by ``defs/assets``) and HTTP (``sources/rest.py``).
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms, day_bounds_ms, floor_minute_ms, ms_to_datetime
from bml_assets.sources.rest import RestClient

# The longest a run launched early waits for the exchange's clock to reach its start.
MAX_NOT_BEFORE_WAIT_S = 30.0
# Runs remembered in one process; a long in-process backfill forgets finished runs.
_MAX_RUN_CLOCKS = 64


@dataclass(frozen=True)
class ExchangeNow:
    """The exchange's clock at the start of a run, and what it makes committable."""

    now_ms: int
    lag_minutes: int

    @property
    def today(self) -> dt.date:
        return ms_to_datetime(self.now_ms).date()

    @property
    def closed_end_ms(self) -> int:
        """Minutes starting before this instant are closed and past the safety lag:
        minute M qualifies when M + 60 s + lag ≤ now."""
        return floor_minute_ms(self.now_ms - self.lag_minutes * MINUTE_MS)

    def end_ms(self, day: dt.date) -> int:
        """The exclusive end of what can be committed for ``day`` now."""
        return min(day_bounds_ms(day)[1], self.closed_end_ms)


# One clock reading per run, shared by its steps in this process: every stream of a
# run is cut at the same minute.
_RUN_CLOCKS: dict[str, ExchangeNow] = {}


def run_clock(
    run_id: str, rest: RestClient, *, exchange_clock: bool, not_before_ms: int | None, lag_minutes: int
) -> ExchangeNow:
    """The clock of run ``run_id``, read once: the exchange's (``exchange_clock``; not
    before ``not_before_ms`` when given, waiting up to ``MAX_NOT_BEFORE_WAIT_S``), else
    this machine's UTC clock."""
    cached = _RUN_CLOCKS.get(run_id)
    if cached is not None:
        return cached
    if exchange_clock:
        now_ms = _exchange_time_not_before(rest, not_before_ms)
    else:
        now_ms = datetime_to_ms(dt.datetime.now(dt.UTC))
    if len(_RUN_CLOCKS) > _MAX_RUN_CLOCKS:
        _RUN_CLOCKS.clear()
    now = _RUN_CLOCKS[run_id] = ExchangeNow(now_ms, lag_minutes)
    return now


def _exchange_time_not_before(rest: RestClient, not_before_ms: int | None) -> int:
    now_ms = rest.server_time_ms()
    if not_before_ms is None:
        return now_ms
    deadline = time.monotonic() + MAX_NOT_BEFORE_WAIT_S
    while now_ms < not_before_ms and time.monotonic() < deadline:
        time.sleep(min((not_before_ms - now_ms) / 1000, 1.0))
        now_ms = rest.server_time_ms()
    return now_ms
