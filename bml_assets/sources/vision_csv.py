"""Reading Binance Vision CSV files (zipped or loose) straight into Arrow.

What belongs here: the CSV layout of every Vision stream (column names, Arrow
types, natural key, time columns), header detection, the ms/µs guard, sorting and
de-duplicating on the natural key, and error messages that name the file and the
data row. Parsing is done by ``pyarrow.csv`` on the decompressed stream: no Python
object per row (an aggTrades day is 1–7 million rows).

Bounded input: a file may unpack to at most ``max_bytes`` of CSV
(``BML_VISION_MAX_CSV_BYTES``). The zip's declared size is checked before anything
is decompressed, and the bytes actually decompressed are counted while reading (a
header can lie, a loose CSV has none): past the limit, reading stops with a
``VisionError`` naming the file, the size and the limit.

What stays out: downloading and verifying files (``vision.py``), and any meaning
given to the values (metrics label conventions, funding slot snapping, minute
bucketing are the features' job). Times are returned as int64 milliseconds.
"""

from __future__ import annotations

import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from bml_assets.domain.settings import DEFAULT_VISION_MAX_CSV_BYTES
from bml_assets.domain.streams import Stream
from bml_assets.sources.vision import VisionError

log = logging.getLogger(__name__)

I64 = pa.int64()
F64 = pa.float64()
# Timestamps above this are microseconds: 1e14 ms is the year 5138, 1e14 µs is 1973.
# Futures files are ms, spot files switched to µs on 2025-01-01 (SPEC §4).
MICROSECOND_THRESHOLD = 10**14
DEFAULT_BLOCK_SIZE = 1 << 20  # pyarrow's default; measured fastest for zipped input
_HEADER_PEEK_BYTES = 64 * 1024
_NUMERIC_FIELD = re.compile(rb"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_DATETIME_FIELD = re.compile(rb"\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}")
_ROW_IN_MESSAGE = re.compile(r"Row #(\d+)")
_COLUMN_IN_MESSAGE = re.compile(r"In CSV column #(\d+)")
_UTF8_BOM = b"\xef\xbb\xbf"
MAX_CSV_BYTES_VARIABLE = "BML_VISION_MAX_CSV_BYTES"


@dataclass(frozen=True)
class CsvLayout:
    """One Vision stream's CSV: columns as in the file, and what the reader returns."""

    columns: tuple[tuple[str, pa.DataType], ...]  # file order, with the type to parse as
    key: str  # natural key: sorted on, unique
    time_columns: tuple[str, ...] = ()  # int64 epoch times: ms, µs guarded
    drop: tuple[str, ...] = ()  # file columns not returned
    text_time_column: str | None = None  # a `YYYY-MM-DD HH:MM:SS` column returned as int64 ms
    empty_is_null: bool = False  # empty fields are nulls, not errors

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.columns]

    @property
    def output_schema(self) -> pa.Schema:
        return pa.schema([(n, I64 if n == self.text_time_column else t) for n, t in self.columns if n not in self.drop])


_KLINE = CsvLayout(
    columns=(
        ("open_time", I64),
        ("open", F64),
        ("high", F64),
        ("low", F64),
        ("close", F64),
        ("volume", F64),
        ("close_time", I64),
        ("quote_volume", F64),
        ("count", I64),
        ("taker_buy_volume", F64),
        ("taker_buy_quote_volume", F64),
        ("ignore", pa.string()),
    ),
    key="open_time",
    time_columns=("open_time", "close_time"),
    drop=("ignore",),
)

LAYOUTS: dict[Stream, CsvLayout] = {
    Stream.KLINES: _KLINE,
    Stream.MARK_PRICE_KLINES: _KLINE,
    Stream.INDEX_PRICE_KLINES: _KLINE,
    Stream.PREMIUM_INDEX_KLINES: _KLINE,
    Stream.AGG_TRADES: CsvLayout(
        columns=(
            ("agg_trade_id", I64),
            ("price", F64),
            ("quantity", F64),
            ("first_trade_id", I64),
            ("last_trade_id", I64),
            ("transact_time", I64),
            ("is_buyer_maker", pa.bool_()),
        ),
        key="agg_trade_id",
        time_columns=("transact_time",),
    ),
    Stream.BOOK_TICKER: CsvLayout(
        columns=(
            ("update_id", I64),
            ("best_bid_price", F64),
            ("best_bid_qty", F64),
            ("best_ask_price", F64),
            ("best_ask_qty", F64),
            ("transaction_time", I64),
            ("event_time", I64),
        ),
        key="update_id",
        time_columns=("transaction_time", "event_time"),
    ),
    Stream.METRICS: CsvLayout(
        columns=(
            # Parsed by Arrow's ISO-8601 parser as a naive timestamp, i.e. the UTC label as written.
            ("create_time", pa.timestamp("ms")),
            ("symbol", pa.string()),
            ("sum_open_interest", F64),
            ("sum_open_interest_value", F64),
            ("count_toptrader_long_short_ratio", F64),
            ("sum_toptrader_long_short_ratio", F64),
            ("count_long_short_ratio", F64),
            ("sum_taker_long_short_vol_ratio", F64),
        ),
        key="create_time",
        text_time_column="create_time",
        empty_is_null=True,  # some ratios are missing in real files
    ),
    Stream.FUNDING_RATE: CsvLayout(
        columns=(("calc_time", I64), ("funding_interval_hours", I64), ("last_funding_rate", F64)),
        key="calc_time",
        time_columns=("calc_time",),
    ),
}


def output_schema(stream: Stream) -> pa.Schema:
    """The schema ``read_vision_csv`` returns for ``stream``."""
    return LAYOUTS[Stream(stream)].output_schema


# --- opening ------------------------------------------------------------------


def _too_large(source: str, seen: str, limit: int, outcome: str) -> VisionError:
    """The error of a file over the limit: ``seen`` is what was found, ``outcome`` what was done."""
    shown = f"{limit:,} bytes" + (f" ({limit / 2**20:,.0f} MiB)" if limit >= 2**20 else "")
    return VisionError(
        f"{source}: {seen}, over the limit of {shown} of CSV a Vision file may unpack to: {outcome} "
        f"(a zip bomb or a damaged file). If the file is genuine, raise {MAX_CSV_BYTES_VARIABLE}.",
        url=source,
    )


class _BoundedReader:
    """A binary reader that counts the bytes it hands out and raises once they pass
    ``limit``: the real decompressed size, whatever the zip's header declared."""

    def __init__(self, raw: IO[bytes], limit: int, source: str) -> None:
        self._raw = raw
        self._limit = limit
        self._source = source
        self.count = 0
        self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        # Never more than one byte past the limit per call, so an unbounded read
        # (``read()``) cannot pull a whole bomb into memory first.
        room = self._limit - self.count + 1
        data = self._raw.read(room if size is None or size < 0 else min(size, room))
        self.count += len(data)
        if self.count > self._limit:
            seen = f"its CSV had unpacked {self.count:,} bytes"
            raise _too_large(self._source, seen, self._limit, "reading stopped there")
        return data

    def close(self) -> None:
        self.closed = True


@contextmanager
def _open_csv_bytes(path: Path, source: str, max_bytes: int | None) -> Iterator[IO[bytes] | _BoundedReader]:
    """The CSV bytes of ``path``: the single member of a zip, or the file itself,
    cut off with a ``VisionError`` past ``max_bytes`` (None: no limit)."""
    if path.suffix.lower() != ".zip":
        with open(path, "rb") as f:
            yield f if max_bytes is None else _BoundedReader(f, max_bytes, source)
        return
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise VisionError(
                    f"{source}: expected a zip with one CSV, found {[m.filename for m in members]}", url=source
                )
            member = members[0]
            if max_bytes is not None and member.file_size > max_bytes:
                # Cheap early refusal: nothing decompressed yet.
                seen = f"its CSV {member.filename} declares {member.file_size:,} bytes"
                raise _too_large(source, seen, max_bytes, "refused without unpacking it")
            # Decompressed as a stream: only pyarrow's blocks are ever in memory.
            with zf.open(member) as stream:
                yield stream if max_bytes is None else _BoundedReader(stream, max_bytes, source)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise VisionError(f"corrupted zip {source}: {exc}", url=source) from exc


def _peek(path: Path, source: str, max_bytes: int | None) -> tuple[bytes, bool]:
    """The first line (without line end) and whether any data follows it."""
    with _open_csv_bytes(path, source, max_bytes) as f:
        head = f.read(_HEADER_PEEK_BYTES)
    head = head.removeprefix(_UTF8_BOM)
    if not head.strip():
        raise VisionError(f"{source}: empty file", url=source)
    line, _, rest = head.partition(b"\n")
    more = bool(rest.strip()) or len(head) == _HEADER_PEEK_BYTES
    return line.rstrip(b"\r"), more


def _has_header(path: Path, layout: CsvLayout, source: str, max_bytes: int | None) -> tuple[bool, bool]:
    """(has a header, has data rows), from the file's first line.

    Decided from the data, never from the file's date: the first field of a data
    row is a number (or, for metrics, a date-time); anything else must be the
    exact header.
    """
    line, more = _peek(path, source, max_bytes)
    first = line.split(b",", 1)[0].strip().strip(b'"')
    looks_like_data = _DATETIME_FIELD if layout.text_time_column == layout.names[0] else _NUMERIC_FIELD
    if looks_like_data.fullmatch(first):
        return False, True
    fields = [f.strip().strip('"') for f in line.decode("utf-8", errors="replace").split(",")]
    if fields != layout.names:
        raise VisionError(
            f"{source}: unexpected header {','.join(fields)!r}; expected {','.join(layout.names)!r}", url=source
        )
    return True, more


def _options(
    layout: CsvLayout, has_header: bool, *, use_threads: bool, block_size: int
) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    read = pacsv.ReadOptions(
        # Explicit names: a header-less file is then read (and sampled) correctly.
        column_names=layout.names,
        skip_rows=1 if has_header else 0,
        use_threads=use_threads,
        block_size=block_size,
    )
    parse = pacsv.ParseOptions(delimiter=",", newlines_in_values=False)
    convert = pacsv.ConvertOptions(
        column_types=dict(layout.columns),
        include_columns=[n for n in layout.names if n not in layout.drop],
        # Strict by default: an empty field in a numeric column is a broken file.
        null_values=[""] if layout.empty_is_null else [],
        strings_can_be_null=False,
        quoted_strings_can_be_null=layout.empty_is_null,
        true_values=["true", "True", "TRUE"],
        false_values=["false", "False", "FALSE"],
    )
    return read, parse, convert


# --- errors ---------------------------------------------------------------------


def _located_error(
    path: Path, layout: CsvLayout, has_header: bool, source: str, original: pa.ArrowInvalid, max_bytes: int | None
) -> VisionError:
    """A VisionError naming the file, the 1-based data row and the column.

    Multi-threaded parsing does not know row numbers; a serial re-parse (only on
    this error path) does, and reports them as physical line numbers.
    """
    message = str(original)
    try:
        with _open_csv_bytes(path, source, max_bytes) as f:
            read, parse, convert = _options(layout, has_header, use_threads=False, block_size=DEFAULT_BLOCK_SIZE)
            reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
            for _ in reader:
                pass
    except pa.ArrowInvalid as exc:
        message = str(exc)
    except VisionError:
        pass
    where = [source]
    row = _ROW_IN_MESSAGE.search(message)
    if row is not None:
        line = int(row.group(1))
        where.append(f"data row {line - 1 if has_header else line} (line {line})")
    column = _COLUMN_IN_MESSAGE.search(message)
    if column is not None:
        index = int(column.group(1))  # Arrow counts the file's columns, dropped ones included
        if 0 <= index < len(layout.names):
            where.append(f"column {layout.names[index]!r}")
    return VisionError(f"{', '.join(where)}: {message}", url=source)


# --- finishing ---------------------------------------------------------------


def _ms(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """µs → ms for values above the threshold (per value: a file may mix them)."""
    if len(values) == 0:
        return values
    top = pc.max(values).as_py()
    if top is None or top <= MICROSECOND_THRESHOLD:
        return values
    return pc.if_else(pc.greater(values, MICROSECOND_THRESHOLD), pc.divide(values, 1000), values)


def _finish_columns(
    names: list[str], columns: list[pa.Array | pa.ChunkedArray], layout: CsvLayout, source: str, first_row: int
) -> list[pa.Array | pa.ChunkedArray]:
    out = []
    for name, values in zip(names, columns, strict=True):
        if name == layout.text_time_column:
            values = values.cast(I64)
        elif name in layout.time_columns:
            values = _ms(values)
        if name == layout.key and values.null_count:
            bad = pc.index(pc.is_null(values), True).as_py()
            raise VisionError(f"{source}: data row {first_row + bad}: empty {name!r}", url=source)
        out.append(values)
    return out


def _sort_unique(table: pa.Table, key: str, source: str) -> pa.Table:
    """Stable sort on ``key``, keeping the first row of each key; a no-op when the
    file is already strictly increasing (the usual case)."""
    if table.num_rows < 2:
        return table
    keys = table[key].combine_chunks()
    if pc.all(pc.greater(keys[1:], keys[:-1])).as_py():
        return table
    order = pc.sort_indices(keys)  # Arrow's sort_indices is stable
    ordered = keys.take(order)
    first_of_key = pa.concat_arrays([pa.array([True]), pc.not_equal(ordered[1:], ordered[:-1])])
    order = order.filter(first_of_key)
    dropped = table.num_rows - len(order)
    if dropped:
        log.info("%s: dropped %d rows with a duplicate %s (kept the first)", source, dropped, key)
    return table.take(order)


# --- public ------------------------------------------------------------------


def iter_vision_csv_batches(
    path: Path,
    stream: Stream,
    *,
    source: str | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
    use_threads: bool = True,
    max_bytes: int | None = DEFAULT_VISION_MAX_CSV_BYTES,
) -> Iterator[pa.RecordBatch]:
    """Typed, µs-guarded record batches of a Vision CSV, in file order.

    Batches are NOT sorted or de-duplicated across each other (that needs the
    whole file; ``read_vision_csv`` does it). Memory stays at a few blocks
    whatever the file's size. Raises ``VisionError``, also for a file that unpacks
    to more than ``max_bytes`` (None: no limit).
    """
    path = Path(path)
    layout = LAYOUTS[Stream(stream)]
    source = source or str(path)
    has_header, has_data = _has_header(path, layout, source, max_bytes)
    if not has_data:
        return
    schema = layout.output_schema
    first_row = 1
    with _open_csv_bytes(path, source, max_bytes) as f:
        read, parse, convert = _options(layout, has_header, use_threads=use_threads, block_size=block_size)
        try:
            reader = pacsv.open_csv(f, read_options=read, parse_options=parse, convert_options=convert)
            while True:
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    break
                columns = _finish_columns(batch.schema.names, batch.columns, layout, source, first_row)
                first_row += batch.num_rows
                yield pa.RecordBatch.from_arrays(columns, schema=schema)
        except pa.ArrowInvalid as exc:
            raise _located_error(path, layout, has_header, source, exc, max_bytes) from exc


def read_vision_csv(
    path: Path, stream: Stream, *, source: str | None = None, max_bytes: int | None = DEFAULT_VISION_MAX_CSV_BYTES
) -> pa.Table:
    """The whole Vision CSV (zip or plain .csv) as a table sorted and unique on its
    natural key, with the columns of ``output_schema(stream)``.

    ``source`` names the file in error messages (the URL; default the path).
    Raises ``VisionError`` for an empty file, a wrong header, a wrong column count,
    a non-numeric field or a truncated line, naming the file and the data row, and
    for a file that unpacks to more than ``max_bytes`` (None: no limit).
    """
    path = Path(path)
    layout = LAYOUTS[Stream(stream)]
    source = source or str(path)
    has_header, has_data = _has_header(path, layout, source, max_bytes)
    if not has_data:  # a header and nothing else: a day without rows
        return layout.output_schema.empty_table()
    with _open_csv_bytes(path, source, max_bytes) as f:
        read, parse, convert = _options(layout, has_header, use_threads=True, block_size=DEFAULT_BLOCK_SIZE)
        try:
            table = pacsv.read_csv(f, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise _located_error(path, layout, has_header, source, exc, max_bytes) from exc
    columns = _finish_columns(table.column_names, table.columns, layout, source, 1)
    table = pa.Table.from_arrays(columns, schema=layout.output_schema)
    return _sort_unique(table, layout.key, source)


def data_row_of(
    path: Path,
    stream: Stream,
    column: str,
    value: int,
    *,
    source: str | None = None,
    until: int | None = None,
    max_bytes: int | None = DEFAULT_VISION_MAX_CSV_BYTES,
) -> int | None:
    """1-based data row (header not counted) of the first row whose ``column`` equals
    ``value`` — or, with ``until``, lies in ``[value, until)`` — in the file as
    written: for error messages about a sorted or aggregated table."""
    offset = 0
    for batch in iter_vision_csv_batches(path, stream, source=source, use_threads=False, max_bytes=max_bytes):
        values = batch.column(column)
        low = pa.scalar(value, batch.schema.field(column).type)
        if until is None:
            hits = pc.equal(values, low)
        else:
            high = pa.scalar(until, batch.schema.field(column).type)
            hits = pc.and_(pc.greater_equal(values, low), pc.less(values, high))
        index = pc.index(hits, True).as_py()
        if index >= 0:
            return offset + index + 1
        offset += batch.num_rows
    return None
