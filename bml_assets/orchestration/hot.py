"""The hot pass (``bml run-once``): per symbol, commit the minutes closed since its watermark.

What belongs here: one pass over the symbols at the exchange's clock: which day
each symbol's next committable minute falls on (``hot_targets``), then ``HOT_JOB``
once per day for every symbol due on it (``hot_runs``: the range of symbols, as the
hot poll sensor asks for; band ``hot`` for today, ``catch-up`` for a past day) through
the run helper (``runner.py``), and each symbol's watermark before and after.

What stays out: the choice of targets and the exchange's clock (``defs/sensors.py``,
``defs/assets``), how a run is executed and retried (``runner.py``), and printing
(``cli.py``). The hot poll sensor does the same continuously under the daemon.

Also here: ``hot_weight_per_minute``, the REST weight the hot band spends per minute
for N symbols, from the weight table (``sources/rest_limits.py``) and the requests one
incremental poll of a symbol sends — what must fit under ``BML_REST_WEIGHT_BUDGET``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from bml_assets.days.clock import ExchangeNow
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger
from bml_assets.orchestration.runner import in_process
from bml_assets.orchestration.state import open_workspace
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.rest import RestClient

# The requests one incremental poll of one symbol sends for one new minute (a steady hot
# band), as counted on the replay server: the four kline streams from the first
# uncommitted minute (limit 1), aggTrades by fromId, the three snapshots, fundingRate
# since the last settlement, the three 5-minute history series and the exchange's time
# the history reads for its 30-day window. Per run: the run's clock, once.
_KLINE_ONE_MINUTE = {"limit": 1}
HOT_POLL_REQUESTS_PER_SYMBOL: tuple[tuple[str, dict[str, int]], ...] = (
    *((path, _KLINE_ONE_MINUTE) for path in limits.KLINE_PATHS.values()),
    (limits.PREMIUM_INDEX_PATH, {}),
    (limits.OPEN_INTEREST_PATH, {}),
    (limits.BOOK_TICKER_PATH, {}),
    (limits.FUNDING_RATE_PATH, {}),
    *((path, {}) for path in limits.HIST_PATHS),
    (limits.SERVER_TIME_PATH, {}),
)
HOT_POLL_REQUESTS_PER_RUN: tuple[tuple[str, dict[str, int]], ...] = ((limits.SERVER_TIME_PATH, {}),)
# The sensor reads the exchange's clock at every tick (every 5 s).
HOT_SENSOR_TICKS_PER_MINUTE = 12


def hot_weight_per_minute(symbols: int, *, agg_trades_per_minute: int = 0, runs_per_minute: int = 1) -> int:
    """REST weight of one minute of the hot band for ``symbols`` symbols, each with
    ``agg_trades_per_minute`` new aggregate trades (pages of 1000 by fromId; the page that
    reaches the end is one more when the count fills its last page exactly)."""
    agg_pages = agg_trades_per_minute // limits.AGG_TRADES_MAX_LIMIT + 1
    per_symbol = sum(limits.weight_of(path, params) for path, params in HOT_POLL_REQUESTS_PER_SYMBOL)
    per_symbol += agg_pages * limits.weight_of(limits.AGG_TRADES_PATH)
    per_run = sum(limits.weight_of(path, params) for path, params in HOT_POLL_REQUESTS_PER_RUN)
    sensor = HOT_SENSOR_TICKS_PER_MINUTE * limits.weight_of(limits.SERVER_TIME_PATH)
    return symbols * per_symbol + runs_per_minute * per_run + sensor


@dataclass(frozen=True)
class HotOutcome:
    symbol: str
    day: dt.date | None  # None: nothing committable yet
    band: str | None
    before: dt.datetime | None
    after: dt.datetime | None
    ok: bool
    error: str | None = None
    runs: int = 1  # more than one: earlier runs lost a commit race and were run again


def hot_pass(settings: Settings, symbols: Sequence[str] | None = None) -> Iterator[HotOutcome]:
    """One hot-poll pass over ``symbols`` (default ``BML_SYMBOLS``), an outcome per symbol.

    The lake root, the ledger and the symbols are checked at the call (``CommandError``,
    ``LedgerVersionError``), the runs happen as the outcomes are taken. A run that lost a
    commit race is run again (``runner.MAX_RUN_ATTEMPTS``); a run the process's interrupt
    ended raises ``KeyboardInterrupt``. A failed symbol does not stop the others.
    """
    ws = open_workspace(settings, symbols)
    ws.close()
    return _hot_runs(settings, ws.symbols)


def _hot_runs(settings: Settings, symbols: tuple[str, ...]) -> Iterator[HotOutcome]:
    from bml_assets.definitions import HOT_JOB
    from bml_assets.defs.assets.streams import BAND_TAG, HOT_BAND
    from bml_assets.defs.sensors import hot_runs, hot_targets

    rest = RestClient.from_settings(settings)
    try:
        now = ExchangeNow(rest.server_time_ms(), settings.safety_lag_minutes)
    finally:
        rest.close()
    with Ledger(settings.state_url) as ledger:
        targets = hot_targets(ledger, symbols, now)
    first_day = min([now.today, *targets.values()])
    with (
        Ledger(settings.state_url) as ledger,
        in_process(settings, HOT_JOB, symbols=symbols, first_day=first_day) as runner,
    ):
        for symbol in symbols:
            if symbol not in targets:
                before = ledger.get_watermark(symbol)
                yield HotOutcome(symbol, None, None, before, before, True)
        for hot in hot_runs(targets, symbols):
            band = HOT_BAND if hot.day == now.today else "catch-up"
            due = [s for s in hot.symbols if targets.get(s) == hot.day]
            before = {s: ledger.get_watermark(s) for s in due}
            run = runner.run_symbols(hot.day, hot.first, hot.last, {BAND_TAG: band})
            if run.interrupted:
                raise KeyboardInterrupt
            for symbol in due:
                after = ledger.get_watermark(symbol)
                yield HotOutcome(symbol, hot.day, band, before[symbol], after, run.ok, run.error, run.runs)
