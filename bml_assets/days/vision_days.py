"""Vision-backed stream days: one (symbol, day) of each stream from Binance Vision files.

What belongs here: downloading (through ``sources/vision.py``), parsing and
transforming (``features/``) the files behind each per-stream table, recording
every verified file in the ledger, reporting a missing file as "not
published" with its URL, downloading a file again on request (one that looks
short), checking raw rows that aggregation would hide (aggTrades, bookTicker) and
naming any bad row — or any row a blocking check of the table refuses — at its
data row in the file as written. What stays out: Dagster, deciding what a missing
or short file means for the day (``choice.py`` and ``coverage_fills.py`` know the
exchange's clock and ask REST), and REST.
"""

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from bml_assets.days.partition_data import PartitionData
from bml_assets.domain.minutes import MINUTE_MS, datetime_to_ms
from bml_assets.domain.partitions import SymbolDay
from bml_assets.domain.provenance import SourceFile, StreamProvenance, StreamStatus
from bml_assets.domain.schema import (
    AGG_TRADE_ROWS,
    BOOK_TICKER,
    BOOK_TICKER_ROWS,
    METRICS,
    TRADE_FLOW,
    Dataset,
    SourceRows,
)
from bml_assets.domain.streams import BOOK_TICKER_LAST_DAY, Stream
from bml_assets.features.book import book_ticker_minutes
from bml_assets.features.funding import funding_settlements, settlements_for_day
from bml_assets.features.klines import kline_table
from bml_assets.features.metrics import combine_observations, label_shift_ms, metrics_observations
from bml_assets.features.timegrid import OutsideDayError
from bml_assets.features.trade_flow import TradeFlowBuilder, trade_flow
from bml_assets.lake.ledger import Ledger
from bml_assets.quality import BadSourceRows, RowLocator, check_source_rows
from bml_assets.sources.vision import NotPublished, VisionClient, VisionError, VisionFile
from bml_assets.sources.vision_csv import LAYOUTS, data_row_of, iter_vision_csv_batches, read_vision_csv

T = TypeVar("T")


def relocate_outside_day(file: VisionFile, stream: Stream, work: Callable[[], T]) -> T:
    """Run ``work``; a row outside the day is reported at its row in the file as written."""
    try:
        return work()
    except OutsideDayError as err:
        row = (
            # No size limit: the row was found by a read that stayed within it.
            data_row_of(file.path, stream, err.column, err.value_ms, source=file.url, max_bytes=None)
            if err.value_ms is not None
            else None
        )
        where = f"data row {row}" if row is not None else "a row"
        raise VisionError(f"{file.url}, {where}: {err.detail}", url=file.url) from err


def checked_batches(
    file: VisionFile, stream: Stream, rows: SourceRows, label: str, *, max_bytes: int | None
) -> Iterator[pa.RecordBatch]:
    """The file's record batches, each checked against its rows' domains first; a bad
    row is named at its data row (batches come in file order)."""
    first = 1
    for batch in iter_vision_csv_batches(file.path, stream, source=file.url, max_bytes=max_bytes):
        try:
            check_source_rows(batch, rows)
        except BadSourceRows as err:
            raise err.located(label, lambda i, first=first: f"{file.url}, data row {first + i}") from None
        first += batch.num_rows
        yield batch


@dataclass(frozen=True)
class Fetched:
    """A downloaded, verified and parsed Vision file, with its provenance entry."""

    file: VisionFile
    stream: Stream
    table: pa.Table | None  # None when the file was streamed, not held
    rows: int

    def transform(self, fn: Callable[[pa.Table], pa.Table]) -> pa.Table:
        """Run a feature transform on the parsed table; a row outside the day is
        reported at its row in the file as written (the parsed table is sorted)."""
        table = self.parsed
        return relocate_outside_day(self.file, self.stream, lambda: fn(table))

    @property
    def parsed(self) -> pa.Table:
        if self.table is None:
            raise ValueError(f"{self.file.url} was streamed, not held: no table")
        return self.table

    @property
    def provenance(self) -> SourceFile:
        return SourceFile(
            url=self.file.url,
            sha256=self.file.sha256,
            bytes=self.file.bytes,
            rows=self.rows,
            from_cache=self.file.from_cache,
        )


def check_parsed_rows(got: Fetched, rows: SourceRows, label: str) -> None:
    """Check a parsed (sorted, de-duplicated) file's rows; a bad row is named at its
    data row in the file as written, found by its natural key."""
    table = got.parsed
    key = LAYOUTS[got.stream].key
    try:
        check_source_rows(table, rows)
    except BadSourceRows as err:

        def where(i: int) -> str:
            # The file was parsed under the size bound already: no second bound here.
            row = data_row_of(
                got.file.path, got.stream, key, table.column(key)[i].as_py(), source=got.file.url, max_bytes=None
            )
            return f"{got.file.url}, data row {row}" if row is not None else got.file.url

        raise err.located(label, where) from None


def file_rows(files: Sequence[tuple[Fetched, int]], column: str) -> RowLocator:
    """Where a minute's row is in the files as written: the first row whose ``column``
    (epoch ms) lies in the minute, ``shift`` ms earlier (a metrics label), per file."""

    def locate(minute: dt.datetime, _column: str) -> str | None:
        ms = datetime_to_ms(minute)
        for got, shift in files:
            row = data_row_of(
                got.file.path,
                got.stream,
                column,
                ms - shift,
                source=got.file.url,
                until=ms - shift + MINUTE_MS,
                max_bytes=None,
            )
            if row is not None:
                return f"{got.file.url}, data row {row}"
        return None

    return locate


class StreamFetcher:
    """Fetches Vision files for one run, recording every verified file in the ledger.

    ``max_csv_bytes``: the most CSV a file may unpack to (``BML_VISION_MAX_CSV_BYTES``)."""

    def __init__(self, vision: VisionClient, ledger: Ledger, *, max_csv_bytes: int) -> None:
        self._vision = vision
        self._ledger = ledger
        self.max_csv_bytes = max_csv_bytes

    def file(self, stream: Stream, sd: SymbolDay, *, refetch: bool = False) -> VisionFile:
        """The verified daily zip (raises ``NotPublished``), not parsed yet; ``refetch``
        downloads it again even when the cache holds it."""
        if refetch:
            return self._vision.refetch_daily(stream, sd.symbol, sd.day)
        return self._vision.fetch_daily(stream, sd.symbol, sd.day)

    def record(self, file: VisionFile, stream: Stream, rows: int, table: pa.Table | None = None) -> Fetched:
        """Record a parsed file in the ledger's ``source_files``."""
        self._ledger.record_source_file(
            url=file.url,
            sha256=file.sha256,
            bytes=file.bytes,
            rows=rows,
            checksum_verified=True,
            fetched_at=file.fetched_at,
        )
        return Fetched(file, stream, table, rows)

    def parse(self, file: VisionFile, stream: Stream) -> Fetched:
        table = read_vision_csv(file.path, stream, source=file.url, max_bytes=self.max_csv_bytes)
        return self.record(file, stream, table.num_rows, table)

    def daily(self, stream: Stream, sd: SymbolDay, *, refetch: bool = False) -> Fetched:
        return self.parse(self.file(stream, sd, refetch=refetch), stream)

    def monthly(self, stream: Stream, symbol: str, year: int, month: int) -> Fetched:
        return self.parse(self._vision.fetch_monthly(stream, symbol, year, month), stream)


def _vision(files: list[Fetched]) -> StreamProvenance:
    return StreamProvenance(StreamStatus.VISION, files=tuple(f.provenance for f in files))


def _missing(err: NotPublished, reason: str) -> StreamProvenance:
    return StreamProvenance(StreamStatus.NOT_PUBLISHED, url=err.url, http_status=err.status, reason=reason)


def _not_available(stream: Stream, sd: SymbolDay, err: NotPublished) -> PartitionData:
    message = f"Vision has not published {stream} for {sd} (HTTP {err.status} at {err.url})"
    return PartitionData.unavailable("not_published", message, {stream.value: _missing(err, "not published")})


def kline_day(
    fetch: StreamFetcher, stream: Stream, dataset: Dataset, sd: SymbolDay, *, refetch: bool = False
) -> PartitionData:
    try:
        got = fetch.daily(stream, sd, refetch=refetch)
    except NotPublished as err:
        return _not_available(stream, sd, err)
    table = got.transform(lambda t: kline_table(t, sd.day, dataset, source=got.file.url))
    return PartitionData(table, {stream.value: _vision([got])}, locate=file_rows([(got, 0)], "open_time"))


def trade_flow_day(fetch: StreamFetcher, sd: SymbolDay, *, refetch: bool = False) -> PartitionData:
    """Streamed in record batches when the file is in order (it normally is), so a day
    of millions of trades is never held whole; else parsed, sorted and de-duplicated."""
    try:
        file = fetch.file(Stream.AGG_TRADES, sd, refetch=refetch)
    except NotPublished as err:
        return _not_available(Stream.AGG_TRADES, sd, err)
    builder = TradeFlowBuilder(sd.day, source=file.url)
    label = f"{TRADE_FLOW.name} {sd}"
    in_order = relocate_outside_day(
        file,
        Stream.AGG_TRADES,
        lambda: all(
            builder.add(batch)
            for batch in checked_batches(file, Stream.AGG_TRADES, AGG_TRADE_ROWS, label, max_bytes=fetch.max_csv_bytes)
        ),
    )
    if in_order:
        got = fetch.record(file, Stream.AGG_TRADES, builder.rows)
        table = builder.finish()
    else:
        got = fetch.parse(file, Stream.AGG_TRADES)
        check_parsed_rows(got, AGG_TRADE_ROWS, label)
        table = got.transform(lambda t: trade_flow(t, sd.day, source=got.file.url))
    return PartitionData(table, {Stream.AGG_TRADES.value: _vision([got])})


def book_ticker_day(fetch: StreamFetcher, sd: SymbolDay) -> PartitionData:
    if sd.day > BOOK_TICKER_LAST_DAY:
        message = f"Vision stopped publishing bookTicker after {BOOK_TICKER_LAST_DAY}; book columns are NULL for {sd}"
        prov = StreamProvenance(StreamStatus.NOT_PUBLISHED, reason=f"bookTicker ends {BOOK_TICKER_LAST_DAY}")
        return PartitionData.unavailable("not_published", message, {Stream.BOOK_TICKER.value: prov})
    try:
        got = fetch.daily(Stream.BOOK_TICKER, sd)
    except NotPublished as err:
        return _not_available(Stream.BOOK_TICKER, sd, err)
    label = f"{BOOK_TICKER.name} {sd}"
    check_parsed_rows(got, BOOK_TICKER_ROWS, label)
    minutes = got.transform(lambda t: book_ticker_minutes(t, sd.day, source=got.file.url))
    files = [got]
    if _first_minute_missing(minutes, sd.day):
        # The previous day's last snapshot seeds the minutes before the day's first one.
        previous = SymbolDay(sd.symbol, sd.day - dt.timedelta(days=1))
        try:
            seed = fetch.daily(Stream.BOOK_TICKER, previous)
        except NotPublished:
            seed = None
        if seed is not None:
            check_parsed_rows(seed, BOOK_TICKER_ROWS, label)
            seed_minutes = seed.transform(lambda t: book_ticker_minutes(t, previous.day, source=seed.file.url))
            if seed_minutes.num_rows:
                minutes = pa.concat_tables([seed_minutes.slice(seed_minutes.num_rows - 1), minutes])
                files.insert(0, seed)
    return PartitionData(minutes, {Stream.BOOK_TICKER.value: _vision(files)})


def _first_minute_missing(minutes: pa.Table, day: dt.date) -> bool:
    start = dt.datetime.combine(day, dt.time(), dt.UTC)
    return minutes.num_rows == 0 or minutes.column("timestamp")[0].as_py() > start


def metrics_day(fetch: StreamFetcher, sd: SymbolDay) -> PartitionData:
    """The day's file and the previous day's: its last snapshots seed the first minutes."""
    try:
        got = [fetch.daily(Stream.METRICS, sd)]
    except NotPublished as err:
        return _not_available(Stream.METRICS, sd, err)
    observations = [metrics_observations(got[0].parsed, sd.day)]
    previous = SymbolDay(sd.symbol, sd.day - dt.timedelta(days=1))
    try:
        seed = fetch.daily(Stream.METRICS, previous)
        got.insert(0, seed)
        observations.insert(0, metrics_observations(seed.parsed, previous.day))
    except NotPublished:
        pass  # the first minutes stay NULL until the day's first snapshot
    table = _taken_before_day_end(combine_observations(observations), sd.day)
    # The day's file first: where both files hold an instant, its row is the one kept.
    shifts = [(f, label_shift_ms(d)) for f, d in zip(got, [previous.day, sd.day][-len(got) :], strict=True)]
    return PartitionData(table, {Stream.METRICS.value: _vision(got)}, locate=file_rows(shifts[::-1], "create_time"))


def _taken_before_day_end(obs: pa.Table, day: dt.date) -> pa.Table:
    """Keep the observations that can reach a minute of ``day``: none taken after it."""
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), dt.UTC)
    return obs.filter(
        pc.less(obs.column("observation_time"), pa.scalar(end, METRICS.arrow_schema.field("observation_time").type))
    )


def funding_months(day: dt.date) -> list[tuple[int, int]]:
    """The month of ``day``, and the month before on the 1st (its last settlement seeds the day)."""
    months = [(day.year, day.month)]
    if day.day == 1:
        prev = day - dt.timedelta(days=1)
        months.insert(0, (prev.year, prev.month))
    return months


def funding_day(fetch: StreamFetcher, sd: SymbolDay) -> PartitionData:
    got: list[Fetched] = []
    missing: NotPublished | None = None
    for year, month in funding_months(sd.day):
        try:
            got.append(fetch.monthly(Stream.FUNDING_RATE, sd.symbol, year, month))
        except NotPublished as err:
            if (year, month) == (sd.day.year, sd.day.month):
                missing = err
    if missing is not None:
        return _not_available(Stream.FUNDING_RATE, sd, missing)
    settlements = funding_settlements(pa.concat_tables([f.parsed for f in got]))
    return PartitionData(
        settlements_for_day(settlements, sd.day),
        {Stream.FUNDING_RATE.value: _vision(got)},
        locate=file_rows([(f, 0) for f in reversed(got)], "calc_time"),
    )
