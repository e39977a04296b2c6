"""The source of a stream's day, per band (SPEC §1 bands, §8 completeness).

What belongs here: ``choose`` — verified Vision when it has published the day; REST
for today (the hot band) and for the recent days Vision has not published yet; REST
for an older day Vision has no file for (Vision has holes) when REST serves the
stream; otherwise "not listed" / "not published" with the reason — and the verdict
of the synced universe (a day before a symbol's listing or after its delisting is
"not listed" without a request). A fillable BACKFILL stream that REST cannot serve
now (an error after the client's retries, a ban, an id gap) is recorded as missing
with the reason (the minute view is then incomplete), never a failed run; a HARD
stream that cannot be filled fails the run. What stays out: the day builders
(``vision_days.py``, ``rest_days.py``), a short Vision file's repair
(``coverage_fills.py``) and Dagster.

"Today" is the run's clock (``DayContext.now``): the exchange's for the runs the
sensors request, so a replayed market with its own clock is served like the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from bml_assets.days.clock import ExchangeNow
from bml_assets.days.context import FILL_ERRORS, DayContext, StreamFillFailed
from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import StreamProvenance, StreamStatus
from bml_assets.domain.schema import HARD_DATASETS, Dataset
from bml_assets.sources.rest import HttpError
from bml_assets.sources.rest_limits import INVALID_SYMBOL_CODE

# Vision publishes a day one to several days late (SPEC §4): inside this many days
# REST stands in (provisionally); older, a HARD stream's 404 means "not listed".
PUBLICATION_LAG_DAYS = 7
# fundingRate is published monthly, after the month: REST stands in for up to two months.
FUNDING_REST_DAYS = 62
# The provenance entry of a listing verdict from the synced universe (not a stream).
EXCHANGE_INFO = "exchangeInfo"


def listing_verdict(ctx: DayContext, sd: SymbolDay) -> PartitionData | None:
    """ "Not listed" straight from the synced universe (``bml symbols sync``), with no request:
    before the symbol's onboard day, or after its last trading day."""
    record = ctx.listing(sd.symbol)
    if record is None:
        return None
    if record.onboard_date is not None and sd.day < record.onboard_date:
        reason = f"{sd.symbol} is not listed on {sd.day}: it started trading on {record.onboard_date} (exchangeInfo)"
    elif record.delist_date is not None and sd.day > record.delist_date:
        reason = f"{sd.symbol} is not listed on {sd.day}: it stopped trading after {record.delist_date} (exchangeInfo)"
    else:
        return None
    return PartitionData.unavailable(
        "not_listed", reason, {EXCHANGE_INFO: StreamProvenance(StreamStatus.NOT_LISTED, reason=reason)}
    )


def choose(
    ctx: DayContext,
    sd: SymbolDay,
    dataset: Dataset,
    vision: Callable[[], PartitionData],
    rest: Callable[[ExchangeNow], PartitionData] | None,
    *,
    rest_window_days: int = PUBLICATION_LAG_DAYS,
    cold_rest: Callable[[ExchangeNow], PartitionData] | None = None,
) -> PartitionData:
    """Vision when it has the day; REST for today and the recent unpublished days, and
    (``cold_rest``, else ``rest``) for an older day Vision has no file for."""
    not_listed = listing_verdict(ctx, sd)
    if not_listed is not None:
        return not_listed
    if ctx.hot and rest is not None:
        return rest(ctx.now())
    data = vision()
    if data.available:
        return data
    now = ctx.now()
    if sd.day > now.today:
        message = f"{sd} is after today ({now.today}): nothing is published for it yet"
        return PartitionData.unavailable("not_published", message, data.provenance)
    age_days = (now.today - sd.day).days
    if age_days <= rest_window_days and rest is not None:
        return rest(now)
    if rest is None or age_days <= PUBLICATION_LAG_DAYS:
        return data  # REST keeps no history of the stream, or Vision may still publish it
    return _fill_vision_hole(ctx, sd, dataset, data, cold_rest or rest, now)


def _fill_vision_hole(
    ctx: DayContext,
    sd: SymbolDay,
    dataset: Dataset,
    missed: PartitionData,
    rest: Callable[[ExchangeNow], PartitionData],
    now: ExchangeNow,
) -> PartitionData:
    """An old day Vision has no file for: Vision has real holes, so REST fills it (SPEC §8).

    A HARD stream REST has nothing for means the symbol did not trade that day; a HARD
    stream REST fails for stops the run. A BACKFILL stream REST fails for keeps the
    committed table if there is one, else it is missing with the reason (the minute
    view is committed without it, incomplete)."""
    stream, entry = next(iter(missed.provenance.items()))
    why = f"Vision has no file (HTTP {entry.http_status} at {entry.url})"
    before = ctx.rest_weight_spent()
    try:
        filled = rest(now)
    except FILL_ERRORS as err:
        if isinstance(err, HttpError) and err.code == INVALID_SYMBOL_CODE:
            # Neither source knows the symbol on that day: it was not listed (or is long delisted).
            message = f"{sd.symbol} is not listed on {sd.day}: {why}, and REST does not know the symbol ({err})"
            return PartitionData.unavailable("not_listed", message, {stream: replace(entry, reason="not listed")})
        reason = f"{why}; REST failed: {err}"
        if dataset in HARD_DATASETS:
            raise StreamFillFailed(f"{dataset.name} {sd}: {reason}. Nothing was published.") from err
        kept = ctx.committed(dataset, sd)
        if kept is not None:
            return kept  # the lake keeps what an earlier build filled
        message = f"{dataset.name} {sd}: {reason}"
        missing = StreamProvenance(
            StreamStatus.MISSING, vision_url=entry.url, vision_http_status=entry.http_status, incomplete=reason
        )
        return PartitionData.unavailable("not_published", message, {stream: missing})
    weight = ctx.rest_weight_spent() - before
    if dataset in HARD_DATASETS and (filled.table is None or filled.table.num_rows == 0):
        # Vision has holes (a stream starting later than another), but REST has nothing
        # either: the symbol did not trade that day.
        message = f"{sd.symbol} is not listed on {sd.day}: {missed.message}; REST has no {stream} for it either"
        return PartitionData.unavailable("not_listed", message, {stream: replace(entry, reason="not listed")})
    provenance = {
        name: replace(
            p,
            vision_url=entry.url,
            vision_http_status=entry.http_status,
            reason=f"{why}: built from REST",
            rest_weight=weight,
        )
        if p.is_rest
        else replace(
            p, vision_url=entry.url, vision_http_status=entry.http_status, reason=f"{why}; {p.reason}", fillable=False
        )
        for name, p in filled.provenance.items()
    }
    return replace(filled, provenance=provenance)
