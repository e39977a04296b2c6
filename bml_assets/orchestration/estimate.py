"""What a backfill's plan will cost, before it runs: the ``--dry-run`` summary.

What belongs here: ``estimate_plan``: the partitions of a plan, the committed ones of the
range it leaves alone, the Vision zips they need and their download size, the REST weight
of the days Vision has not published yet, and the time at the rate the ledger shows for
the last backfill; and the summary's text. It reads the ledger, the Vision cache and the
Vision host's ``HEAD`` answers; it writes nothing (``record_rate``, called by a real
backfill, keeps its rate in the ledger for the next estimate).

How each figure is found, and why (the summary says which basis each figure has):
- Zips: a cold day needs the daily zip of each daily stream (bookTicker only up to its
  last published day), the day before's metrics, and the fundingRate zips of its month (and
  on the 1st, the month before: ``days.vision_days.funding_months``). A zip the cache holds costs
  nothing; a zip the ledger's ``source_files`` recorded (fetched before, evicted since)
  costs what it cost then; the others cost what one ``HEAD`` per symbol and stream says
  for its latest planned day, times their number — zips of one stream grow slowly over
  months, so one answer per stream keeps a dry run of 100 000 partitions to a few hundred
  requests instead of a million.
- REST weight: days inside the publication lag (``days.choice.PUBLICATION_LAG_DAYS``) are
  built from REST: per day the kline family in pages of ``KLINES_MAX_LIMIT`` minutes, the
  three 5-minute histories in pages of ``HIST_MAX_LIMIT``, one fundingRate page, and
  aggTrades in pages of ``AGG_TRADES_MAX_LIMIT`` (weights from ``sources.rest_limits``); the
  aggTrades per day are the symbol's latest committed day's ``agg_trade_count`` summed (no
  committed day: that part is left out and the summary says so).
- Time: the partitions per minute of the last backfill that built something, wall time of its
  whole build phase, which it keeps in the ledger's meta table (``record_rate``); the time is
  never shorter than the REST weight at the budget. None yet, no time.

What stays out: planning (``plan.py``), running (``backfill.py``), printing (``cli.py``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from bml_assets.days.choice import PUBLICATION_LAG_DAYS
from bml_assets.days.vision_days import funding_months
from bml_assets.domain.minutes import MINUTES_PER_DAY
from bml_assets.domain.redaction import redact_url
from bml_assets.domain.schema import MINUTE_VIEW
from bml_assets.domain.streams import BOOK_TICKER_LAST_DAY, DAILY_STREAMS, KLINE_STREAMS, Stream
from bml_assets.lake.lake import Lake, PartitionNotFound, PartitionUnreadable, SchemaMismatch
from bml_assets.lake.ledger import Ledger
from bml_assets.orchestration.plan import BackfillPlan
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpError
from bml_assets.sources.vision import VisionClient

FIVE_MINUTE_ROWS_PER_DAY = MINUTES_PER_DAY // 5
MIB = 1 << 20


def _pages(rows: int, per_page: int) -> int:
    return max(1, -(-rows // per_page))


def rest_day_weight(agg_trades: int | None) -> int:
    """The REST weight of one day built from REST alone; without ``agg_trades`` (unknown), the
    weight of everything but aggTrades."""
    klines = (
        len(KLINE_STREAMS)
        * _pages(MINUTES_PER_DAY, limits.KLINES_MAX_LIMIT)
        * limits.kline_weight(limits.KLINES_MAX_LIMIT)
    )
    hist = len(limits.HIST_PATHS) * _pages(FIVE_MINUTE_ROWS_PER_DAY, limits.HIST_MAX_LIMIT) * limits.HIST_WEIGHT
    weight = klines + hist + limits.FUNDING_RATE_WEIGHT
    if agg_trades is not None:
        weight += _pages(agg_trades, limits.AGG_TRADES_MAX_LIMIT) * limits.AGG_TRADES_WEIGHT
    return weight


def vision_urls(vision: VisionClient, symbol: str, day: dt.date) -> list[tuple[Stream, str]]:
    """The Vision zips a cold day of ``symbol`` needs, as the day builders read them: each daily
    stream's, metrics of the day before too, and the fundingRate months (the day's, and on the
    1st the month before)."""
    streams = sorted(s for s in DAILY_STREAMS if s != Stream.BOOK_TICKER or day <= BOOK_TICKER_LAST_DAY)
    urls = [(s, vision.daily_url(s, symbol, day)) for s in streams]
    # metrics_day seeds its first minutes from the day before's file.
    urls.append((Stream.METRICS, vision.daily_url(Stream.METRICS, symbol, day - dt.timedelta(days=1))))
    urls += [
        (Stream.FUNDING_RATE, vision.monthly_url(Stream.FUNDING_RATE, symbol, y, m)) for y, m in funding_months(day)
    ]
    return urls


@dataclass(frozen=True)
class BackfillEstimate:
    partitions: int
    committed_skipped: int  # committed minute-view partitions of the range the plan leaves alone
    vision_days: int
    zips: int
    cached_zips: int
    known_zips: int  # sized by the ledger's source_files (fetched before, not in the cache now)
    known_bytes: int
    headed_zips: int  # sized by one HEAD per symbol and stream
    headed_bytes: int
    unsized_zips: int  # their HEAD found no file (not published) or no size
    heads: int
    rest_days: int
    rest_weight: int
    rest_unmeasured: tuple[str, ...]  # symbols without a committed day to count aggTrades from
    rate_per_min: float | None
    rate_partitions: int  # commits the rate was measured over
    budget_per_min: int
    head_error: str | None = None  # the first HEAD that failed

    @property
    def download_bytes(self) -> int:
        return self.known_bytes + self.headed_bytes

    @property
    def minutes(self) -> float | None:
        if self.rate_per_min is None or self.rate_per_min <= 0:
            return None
        # REST days cannot go faster than the weight budget allows.
        return max(self.partitions / self.rate_per_min, self.rest_weight / self.budget_per_min)

    def lines(self) -> list[str]:
        out = [
            f"estimate: {self.partitions} partition(s) to build; {self.committed_skipped} committed partition(s) "
            "of the range skipped (clean)",
            f"  download: ≈ {self.download_bytes / MIB:.1f} MiB in {self.zips - self.cached_zips} of the "
            f"{self.zips} Vision zip(s) of {self.vision_days} day(s)",
            f"    sized by: the cache {self.cached_zips} (0 B), the ledger's source_files {self.known_zips} "
            f"({self.known_bytes / MIB:.1f} MiB), {self.heads} HEAD(s) (one per symbol and stream, × its days) "
            f"{self.headed_zips} ({self.headed_bytes / MIB:.1f} MiB), not on Vision {self.unsized_zips}",
        ]
        if self.head_error:
            out.append(f"  (a HEAD failed, its zips are counted unsized: {self.head_error})")
        rest = (
            f"  REST weight: ≈ {self.rest_weight} for {self.rest_days} day(s) Vision has not published "
            f"(the last {PUBLICATION_LAG_DAYS}; klines, histories, fundingRate and aggTrades pages at the "
            f"exchange's weights; budget {self.budget_per_min}/min)"
        )
        if self.rest_unmeasured:
            rest += f"; aggTrades not counted for {', '.join(self.rest_unmeasured)} (no committed day to measure)"
        out.append(rest)
        minutes = self.minutes
        if minutes is None:
            out.append("  time: unknown (no backfill measured in this ledger yet)")
        else:
            out.append(
                f"  time: ≈ {dt.timedelta(seconds=round(minutes * 60))} at the measured rate "
                f"{self.rate_per_min:.1f} partitions/min (the last backfill: {self.rate_partitions} partition(s))"
            )
        return out


def record_rate(ledger: Ledger, partitions: int, seconds: float, workers: int) -> None:
    """Keep a backfill's rate in the ledger's meta table, for the next dry run's time."""
    value = {"partitions": partitions, "seconds": round(seconds, 3), "workers": workers}
    ledger.set_meta(Ledger.BACKFILL_RATE_KEY, json.dumps(value))


def measured_rate(ledger: Ledger) -> tuple[float | None, int]:
    """Partitions per minute of the last backfill that built something (its whole build phase:
    run start-up, downloads and commits), and how many partitions it built; (None, 0) before any."""
    text = ledger.meta(Ledger.BACKFILL_RATE_KEY)
    if text is None:
        return None, 0
    try:
        value = json.loads(text)
        partitions, seconds = int(value["partitions"]), float(value["seconds"])
    except (ValueError, KeyError, TypeError):
        return None, 0  # written by another version: no rate rather than a wrong one
    return (partitions / seconds * 60, partitions) if partitions > 0 and seconds > 0 else (None, 0)


def _agg_trades_per_day(ledger: Ledger, lake: Lake, symbol: str) -> int | None:
    """The aggTrades of ``symbol``'s latest committed day (its minute view's ``agg_trade_count``)."""
    import pyarrow.compute as pc

    rows = ledger.partitions(MINUTE_VIEW.name, [symbol], status="committed")
    if not rows:
        return None
    try:
        counts = lake.read(MINUTE_VIEW, symbol, rows[-1].day).column("agg_trade_count")
    except (PartitionNotFound, PartitionUnreadable, SchemaMismatch):
        return None  # the scan reports it; the estimate goes without
    return int(pc.sum(counts).as_py() or 0)


def estimate_plan(
    plan: BackfillPlan, ledger: Ledger, vision: VisionClient, *, lake: Lake, today: dt.date, budget_per_min: int
) -> BackfillEstimate:
    """The plan's download size, REST weight and time (see the module's text for how); writes nothing."""
    planned = set(plan.keys)
    committed = ledger.partitions(MINUTE_VIEW.name, plan.symbols, plan.start, plan.end, status="committed")
    skipped = sum((r.symbol, r.day) not in planned for r in committed)
    rest_from = today - dt.timedelta(days=PUBLICATION_LAG_DAYS)
    cold = [(s, d) for s, d in plan.keys if d < rest_from]
    rest_days = [(s, d) for s, d in plan.keys if d >= rest_from]

    needed: dict[str, tuple[str, Stream, dt.date]] = {}  # url → (symbol, stream, day); a month's file once
    for symbol, day in cold:
        for stream, url in vision_urls(vision, symbol, day):
            needed.setdefault(url, (symbol, stream, day))
    cached = {url for url in needed if vision.is_cached(url)}
    known: dict[str, int] = {}
    for url in needed.keys() - cached:
        record = ledger.get_source_file(redact_url(url))  # the ledger keeps URLs redacted
        if record is not None:
            known[url] = record.bytes
    sample: dict[tuple[str, Stream], str] = {}  # per symbol and stream: the URL of its latest day
    for url, (symbol, stream, day) in needed.items():
        if url in cached or url in known:
            continue
        latest = sample.get((symbol, stream))
        if latest is None or needed[latest][2] < day:
            sample[(symbol, stream)] = url
    sizes: dict[tuple[str, Stream], int | None] = {}
    head_error = None
    for key, url in sample.items():
        try:
            sizes[key] = vision.published_size(url)
        except HttpError as exc:  # an estimate goes on without the size; the summary names why
            sizes[key], head_error = None, head_error or str(exc)
    headed_bytes = headed = unsized = 0
    for url, (symbol, stream, _day) in needed.items():
        if url in cached or url in known:
            continue
        size = sizes.get((symbol, stream))
        if size is None:
            unsized += 1
        else:
            headed += 1
            headed_bytes += size

    weight = 0
    unmeasured: list[str] = []
    for symbol in dict.fromkeys(s for s, _ in rest_days):
        trades = _agg_trades_per_day(ledger, lake, symbol)
        if trades is None:
            unmeasured.append(symbol)
        weight += rest_day_weight(trades) * sum(1 for s, _ in rest_days if s == symbol)
    rate, measured = measured_rate(ledger)
    return BackfillEstimate(
        partitions=len(plan.partitions),
        committed_skipped=skipped,
        vision_days=len(cold),
        zips=len(needed),
        cached_zips=len(cached),
        known_zips=len(known),
        known_bytes=sum(known.values()),
        headed_zips=headed,
        headed_bytes=headed_bytes,
        unsized_zips=unsized,
        heads=len(sample),
        rest_days=len(rest_days),
        rest_weight=weight,
        rest_unmeasured=tuple(unmeasured),
        rate_per_min=rate,
        rate_partitions=measured,
        budget_per_min=budget_per_min,
        head_error=head_error,
    )
