"""How long one (symbol, day) takes to build from local Vision zips, phase by phase,
against two references on the same files.

The synthetic market renders one day's Vision zips (aggTrades at each size, the four
klines streams, metrics of the day and the day before, the month's fundingRate; the
day is after 2024-03-30, so there is no bookTicker) into a temporary directory laid
out like data.binance.vision. Each measurement then runs in a fresh subprocess (so
its peak RSS is its own), three times, interleaved, and the median is reported:

- ``ours``: the product's own functions, called as the asset layer calls them:
  ``vision_days.trade_flow_day`` / ``kline_day`` / ``metrics_day`` / ``funding_day`` /
  ``book_ticker_day`` with the real ``StreamFetcher`` whose Vision client hands out
  the local zips instead of downloading them (parse, ledger source-file rows and any
  streaming are the product's), ``rest_days.hot_snapshot_day``, ``assets.minute_view.build_day``
  (``build_minute_view``), ``checks.enforce_blocking`` and ``commit_table`` into a
  temporary lake + ledger, with the IO manager's validator. Phases: parse (aggTrades
  zip → Arrow: the time spent inside ``read_vision_csv``, or inside
  ``iter_vision_csv_batches`` when the trade flow is streamed), trade-flow aggregation
  (the rest of ``trade_flow_day``: ``trade_flow`` or its streaming builder, and the
  ledger's source-file row), canonical join (the other
  streams parsed + transformed, then ``build_minute_view``), validation
  (``enforce_blocking``), commit (``commit_table`` minus the validation it runs
  inside). Two more things the asset layer does are measured but kept out of the
  day-build total: the reported checks (``ALL_RULES``) and the per-stream tables'
  commits and read-back through the lake.
- ``floor``: decompress + parse the aggTrades CSV with ``pyarrow.csv.read_csv`` on
  the zip member stream, multi-threaded, column types given. Nothing else.
- ``duckdb``: unzip the aggTrades CSV to a temporary file (counted in DuckDB's
  time), then one SQL query computing the per-minute trade-flow columns.

Once per run, the DuckDB result and our ``trade_flow`` table are compared column by
column (integers exactly, floats within 1e-9 relative) and "agree" is printed.

    .venv/bin/python bench/day_build.py                 # 1 M, 3 M, 7 M; 3 repetitions
    .venv/bin/python bench/day_build.py --smoke         # 20 000 trades, once, no results.md
    .venv/bin/python bench/day_build.py --profile 7000000   # pyinstrument profile of ours

Appends its table to bench/results.md (unless ``--no-append``/``--smoke``).
Not part of the test suite (``bml_assets_tests/integration/test_bench_smoke.py`` runs ``--smoke``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results.md"
SYMBOL = "BTCUSDT"
DAY = dt.date(2024, 6, 3)  # after 2024-03-30: no bookTicker on Vision
VISION_BASE = "https://data.binance.vision"  # names the files in messages and provenance only
DEFAULT_SIZES = (1_000_000, 3_000_000, 7_000_000)
SMOKE_SIZE = 20_000
MAX_FFILL_MINUTES = 60
# The product's thresholds (features/trade_flow.py), widened the same way for DuckDB.
WHALE_NOTIONAL = 100_000.0
RETAIL_NOTIONAL = 1_000.0
THRESHOLD_REL_TOL = 1e-12
AGREE_REL_TOL = 1e-9
RESULT_PREFIX = "RESULT "

# Rows of the table: (key, label, in the day-build total).
PHASES: tuple[tuple[str, str, bool], ...] = (
    ("parse", "parse: aggTrades zip → Arrow (time inside the CSV reader)", True),
    ("trade_flow", "trade-flow aggregation (rest of `trade_flow_day`)", True),
    ("join_inputs", "canonical join: other streams parsed + transformed", True),
    ("build_minute_view", "canonical join: `build_minute_view` (`build_day`)", True),
    ("validate", "validation (`enforce_blocking`)", True),
    ("commit", "commit (`commit_table` + ledger, minus its validation)", True),
    ("reported_checks", "asset layer, not in total: reported checks (`ALL_RULES`)", False),
    ("stream_commits", "asset layer, not in total: 9 stream tables committed + read back", False),
)
PHASE_KEYS = tuple(k for k, _, _ in PHASES)
TOTAL_KEYS = tuple(k for k, _, in_total in PHASES if in_total)


# --- machine ------------------------------------------------------------------------


def _version(module: str) -> str:
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def machine_description() -> str:
    """Cores, RAM, CPU model, Python and the data libraries' versions, on one line."""
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} cores ({model}), {ram_gb:.1f} GB RAM, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, pyarrow {_version('pyarrow')}, pandas {_version('pandas')}, "
        f"numpy {_version('numpy')}, duckdb {_version('duckdb')}, dagster {_version('dagster')}"
    )


def load_text(samples: list[float]) -> str:
    """Min–max of 1-minute load averages sampled around the measurements."""
    if not samples:
        return "n/a"
    return f"{min(samples):.2f}–{max(samples):.2f} (1-min loadavg, {os.cpu_count()} cores)"


def append_results(text: str) -> None:
    if not RESULTS.exists():
        RESULTS.write_text("# bml benchmark results\n\n")
    with RESULTS.open("a") as fh:
        fh.write("\n" + text)


# --- measuring, in a child --------------------------------------------------------------


def _clock() -> tuple[float, float, float]:
    """(wall, CPU = user + sys, sys) seconds, this process (all threads) and its children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    sys_s = own.ru_stime + kids.ru_stime
    return time.perf_counter(), own.ru_utime + kids.ru_utime + sys_s, sys_s


def _since(start: tuple[float, float, float]) -> list[float]:
    return [b - a for a, b in zip(start, _clock(), strict=True)]


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def _peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM). Not ``ru_maxrss``: Linux carries the
    parent's high-water mark over fork + exec into the child's ``ru_maxrss``."""
    try:
        return _status_mb("VmHWM")
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset_peak() -> None:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs`` 5), so a phase's peak is its own."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class Meter:
    """Wall, CPU and sys seconds per named phase (accumulating), and its peak RSS."""

    def __init__(self) -> None:
        self.phases: dict[str, dict[str, float]] = {}

    def add(self, name: str, took: list[float], peak_mb: float | None = None) -> None:
        """Add a phase's (wall, cpu, sys) seconds; its peak RSS is ``peak_mb`` or the
        high-water mark since the last ``_reset_peak`` (which this then calls for the next phase)."""
        p = self.phases.setdefault(name, {"wall": 0.0, "cpu": 0.0, "sys": 0.0, "peak_rss_mb": 0.0})
        p["wall"] += took[0]
        p["cpu"] += took[1]
        p["sys"] += took[2]
        p["peak_rss_mb"] = max(p["peak_rss_mb"], _peak_rss_mb() if peak_mb is None else peak_mb)
        p["rss_after_mb"] = _rss_mb()
        _reset_peak()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        _reset_peak()
        start = _clock()
        yield
        self.add(name, _since(start))


@contextmanager
def _stopwatch() -> Iterator[list[float]]:
    """Yields a list that holds [wall, cpu, sys] seconds once the block ends."""
    out: list[float] = []
    start = _clock()
    try:
        yield out
    finally:
        out += _since(start)


def _minus(a: list[float], b: list[float]) -> list[float]:
    return [x - y for x, y in zip(a, b, strict=True)]


def _emit(payload: dict[str, Any]) -> None:
    print(RESULT_PREFIX + json.dumps(payload), flush=True)


def _manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / "manifest.json").read_text())


def child_ours(root: Path, dump: Path | None, profile: bool) -> None:
    """The day build with the product's functions, as the asset layer calls them."""
    import pyarrow.parquet as pq

    from bml_assets.days import rest_days, vision_days
    from bml_assets.days.clock import ExchangeNow
    from bml_assets.days.minute_view import build_day, evidence_for
    from bml_assets.days.partition_data import PartitionData
    from bml_assets.days.streams import STREAM_TABLES
    from bml_assets.days.vision_days import StreamFetcher
    from bml_assets.defs.io_manager import _validator
    from bml_assets.domain.partitions import SymbolDay
    from bml_assets.domain.schema import (
        BOOK_TICKER,
        DATASETS,
        FUNDING,
        HOT_SNAPSHOTS,
        INDEX_PRICE_KLINES,
        KLINES,
        MARK_PRICE_KLINES,
        METRICS,
        MINUTE_VIEW,
        PREMIUM_INDEX_KLINES,
        TRADE_FLOW,
    )
    from bml_assets.domain.settings import DEFAULT_VISION_MAX_CSV_BYTES
    from bml_assets.domain.streams import Stream
    from bml_assets.lake.commit import commit_table, record_unavailable
    from bml_assets.lake.lake import Lake
    from bml_assets.lake.ledger import Ledger
    from bml_assets.quality import ALL_RULES, enforce_blocking
    from bml_assets.sources.vision import NotPublished, VisionFile, daily_url, monthly_url

    manifest = _manifest(root)
    day = dt.date.fromisoformat(manifest["day"])
    sd = SymbolDay(manifest["symbol"], day)
    work = Path(tempfile.mkdtemp(prefix="bml_day_build_lake_"))
    lake = Lake.at(work / "lake")
    ledger = Ledger(f"sqlite:///{work / 'lake'}/_state/ledger.sqlite")
    ledger.init()
    meter = Meter()
    parse_times: dict[str, list[float]] = {}
    streamed: set[str] = set()  # streams whose file was parsed in record batches

    class LocalVision:
        """Stands in for the Vision client (``sources/vision.py``): the files are already
        local and verified. Everything after the download is the product's own code."""

        def _local(self, url: str) -> VisionFile:
            entry = manifest["files"].get(url)
            if entry is None:
                raise NotPublished(url, 404)
            return VisionFile(
                url=url,
                path=root / entry["path"],
                sha256=entry["sha256"],
                bytes=entry["bytes"],
                from_cache=True,
                fetched_at=dt.datetime.now(dt.UTC),
            )

        def fetch_daily(self, stream: Stream, symbol: str, day: dt.date) -> VisionFile:
            return self._local(daily_url(VISION_BASE, stream, symbol, day))

        def fetch_monthly(self, stream: Stream, symbol: str, year: int, month: int) -> VisionFile:
            return self._local(monthly_url(VISION_BASE, stream, symbol, year, month))

    # The parse is timed where the asset layer calls it: the CSV readers as
    # ``vision_days`` imported them (a whole-file read, or record batches when the
    # trade flow is streamed; then each batch's parse is timed apart from its use).
    def _account(stream: Stream, took: list[float], *, peak: bool = True) -> None:
        spent = parse_times.setdefault(Stream(stream).value, [0.0, 0.0, 0.0, 0.0])
        for i in range(3):
            spent[i] += took[i]
        if peak:
            spent[3] = max(spent[3], _peak_rss_mb())

    real_read = vision_days.read_vision_csv

    def timed_read(path: Path, stream: Stream, **kwargs: Any) -> Any:
        with _stopwatch() as took:
            table = real_read(path, stream, **kwargs)
        _account(stream, took)
        if Stream(stream) is Stream.AGG_TRADES:
            _reset_peak()  # what follows inside trade_flow_day is the aggregation
        return table

    vision_days.read_vision_csv = timed_read
    real_batches = getattr(vision_days, "iter_vision_csv_batches", None)
    if real_batches is not None:

        def timed_batches(path: Path, stream: Stream, **kwargs: Any) -> Iterator[Any]:
            streamed.add(Stream(stream).value)
            batches = real_batches(path, stream, **kwargs)
            while True:
                with _stopwatch() as took:
                    batch = next(batches, None)
                _account(stream, took, peak=False)  # (cheap: a few µs per batch)
                if batch is None:
                    return
                yield batch

        vision_days.iter_vision_csv_batches = timed_batches

    # The product's fetcher over a local Vision client (no download, no network): its parse,
    # ledger record and streaming are the product's.
    fetch = StreamFetcher(LocalVision(), ledger, max_csv_bytes=DEFAULT_VISION_MAX_CSV_BYTES)  # type: ignore[arg-type]
    now = ExchangeNow(int(time.time() * 1000), 1)
    base_rss = _rss_mb()
    gc.collect()

    def run() -> dict[str, PartitionData]:
        # 1-2. aggTrades: parse, then the per-minute aggregation (the trade_flow asset).
        _reset_peak()
        with _stopwatch() as took:
            flow = vision_days.trade_flow_day(fetch, sd)
        flow_peak = _peak_rss_mb()
        parse = parse_times.pop(Stream.AGG_TRADES.value)
        # Read whole, the parse's peak is its own; streamed, parse and aggregation
        # interleave and share one peak (shown on both rows).
        meter.add("parse", parse[:3], peak_mb=parse[3] if Stream.AGG_TRADES.value not in streamed else flow_peak)
        meter.add("trade_flow", _minus(took, parse[:3]), peak_mb=flow_peak)
        # 3. The other stream assets, then the minute view's join.
        with meter.phase("join_inputs"):
            inputs = {
                KLINES.name: vision_days.kline_day(fetch, Stream.KLINES, KLINES, sd),
                MARK_PRICE_KLINES.name: vision_days.kline_day(fetch, Stream.MARK_PRICE_KLINES, MARK_PRICE_KLINES, sd),
                INDEX_PRICE_KLINES.name: vision_days.kline_day(
                    fetch, Stream.INDEX_PRICE_KLINES, INDEX_PRICE_KLINES, sd
                ),
                PREMIUM_INDEX_KLINES.name: vision_days.kline_day(
                    fetch, Stream.PREMIUM_INDEX_KLINES, PREMIUM_INDEX_KLINES, sd
                ),
                TRADE_FLOW.name: flow,
                BOOK_TICKER.name: vision_days.book_ticker_day(fetch, sd),
                METRICS.name: vision_days.metrics_day(fetch, sd),
                FUNDING.name: vision_days.funding_day(fetch, sd),
                HOT_SNAPSHOTS.name: rest_days.hot_snapshot_day(None, sd, now, None),  # type: ignore[arg-type]
            }
        with meter.phase("build_minute_view"):
            data = build_day(sd, inputs, max_ffill_minutes=MAX_FFILL_MINUTES)
        assert data.table is not None, data.message
        # The asset's reported checks (it evaluates every rule on the built day).
        with meter.phase("reported_checks"):
            ev = evidence_for(sd, data, inputs[TRADE_FLOW.name], closed_day=True)
            failed = [r.name for r in ALL_RULES if not r.run(ev).passed]
        # 4. The blocking rules, as the IO manager's validator runs them before the rename.
        with meter.phase("validate"):
            enforce_blocking(data.table, sd.day, label=f"minute view {sd}")
        # 5. The commit with the IO manager's validator; its validation is timed apart.
        inner: list[float] = [0.0, 0.0, 0.0]
        validator = _validator(MINUTE_VIEW, sd)

        def timed_validator(table: Any) -> None:
            with _stopwatch() as v:
                validator(table)
            for i in range(3):
                inner[i] += v[i]

        with _stopwatch() as took:
            commit_table(
                data.table,
                message=None,
                lake=lake,
                ledger=ledger,
                dataset=MINUTE_VIEW,
                symbol=sd.symbol,
                day=sd.day,
                validate=timed_validator,
                provenance=data.provenance.to_json(),
                source_gaps=data.source_gaps,
            )
        meter.add("commit", _minus(took, inner))
        # The stream assets' outputs through the IO manager, and the minute view's load_input.
        with meter.phase("stream_commits"):
            for d in (t.dataset for t in STREAM_TABLES):  # live_1m is the collector's, not a run's
                part = inputs[d.name]
                if part.table is None:
                    record_unavailable(
                        lake=lake,
                        ledger=ledger,
                        dataset=DATASETS[d.name],
                        symbol=sd.symbol,
                        day=sd.day,
                        status=part.status,  # type: ignore[arg-type]
                        message=part.message or part.status,
                        provenance=part.provenance.to_json(),
                    )
                    continue
                commit_table(
                    part.table,
                    message=None,
                    lake=lake,
                    ledger=ledger,
                    dataset=DATASETS[d.name],
                    symbol=sd.symbol,
                    day=sd.day,
                    validate=_validator(DATASETS[d.name], sd),
                    provenance=part.provenance.to_json(),
                    source_gaps=part.source_gaps,
                )
                lake.read(DATASETS[d.name], sd.symbol, sd.day)
        meter.phases["view_rows"] = {"rows": data.table.num_rows, "failed_reported": failed}  # type: ignore[dict-item]
        return inputs

    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.002)
        profiler.start()
        inputs = run()
        profiler.stop()
        print(profiler.output_text(unicode=True, color=False, show_all=False), flush=True)
    else:
        inputs = run()
    info = meter.phases.pop("view_rows")
    flow_table = inputs[TRADE_FLOW.name].table
    if dump is not None and flow_table is not None:
        pq.write_table(flow_table, dump)
    _emit(
        {
            "phases": meter.phases,
            "peak_rss_mb": max(p["peak_rss_mb"] for p in meter.phases.values()),
            "base_rss_mb": base_rss,
            "view_rows": info["rows"],
            "failed_reported_checks": info["failed_reported"],
            "other_parse": parse_times,
            "agg_trades_streamed": Stream.AGG_TRADES.value in streamed,
        }
    )
    ledger.close()
    shutil.rmtree(work, ignore_errors=True)


def _agg_file(root: Path) -> tuple[Path, bool, list[tuple[str, str]]]:
    m = _manifest(root)
    agg = m["agg_trades"]
    return root / agg["path"], agg["header"], [tuple(c) for c in m["agg_columns"]]


def child_floor(root: Path) -> None:
    """Decompress + parse the aggTrades CSV into Arrow: pyarrow's multi-threaded reader, types given."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    path, header, columns = _agg_file(root)
    types = {"int64": pa.int64(), "double": pa.float64(), "bool": pa.bool_()}
    base_rss = _rss_mb()
    with _stopwatch() as took:
        with zipfile.ZipFile(path) as zf, zf.open(zf.infolist()[0]) as member:
            table = pacsv.read_csv(
                member,
                read_options=pacsv.ReadOptions(
                    column_names=[n for n, _ in columns], skip_rows=1 if header else 0, use_threads=True
                ),
                convert_options=pacsv.ConvertOptions(column_types={n: types[t] for n, t in columns}),
            )
    _emit(
        {
            "wall": took[0],
            "cpu": took[1],
            "sys": took[2],
            "rows": table.num_rows,
            "peak_rss_mb": _peak_rss_mb(),
            "base_rss_mb": base_rss,
        }
    )


def duckdb_query(csv_path: Path, header: bool) -> str:
    """One query: the per-minute trade-flow columns of ``features/trade_flow.py``
    (vwap as Σ notional / Σ quantity), realised volatility with a ``lag`` window
    ordered by (transact_time, agg_trade_id) inside the minute."""
    whale = WHALE_NOTIONAL * (1 - THRESHOLD_REL_TOL)
    retail = RETAIL_NOTIONAL * (1 + THRESHOLD_REL_TOL)
    path = str(csv_path).replace("'", "''")
    return f"""
        WITH t AS (
            SELECT
                transact_time // 60000 * 60000 AS minute,
                agg_trade_id, transact_time, quantity,
                price * quantity AS notional,
                NOT is_buyer_maker AS buy,
                last_trade_id - first_trade_id + 1 AS trades,
                ln(price / lag(price) OVER (
                    PARTITION BY transact_time // 60000 ORDER BY transact_time, agg_trade_id
                )) AS r
            FROM read_csv('{path}', header = {str(header).lower()}, delim = ',', columns = {{
                'agg_trade_id': 'BIGINT', 'price': 'DOUBLE', 'quantity': 'DOUBLE',
                'first_trade_id': 'BIGINT', 'last_trade_id': 'BIGINT', 'transact_time': 'BIGINT',
                'is_buyer_maker': 'BOOLEAN'
            }})
        )
        SELECT
            minute AS minute_ms,
            max(transact_time) AS transact_time,
            count(*) AS agg_trade_count,
            min(agg_trade_id) AS first_agg_trade_id,
            max(agg_trade_id) AS last_agg_trade_id,
            sum(quantity) AS quantity_sum,
            sum(notional) AS notional_sum,
            sum(notional) / sum(quantity) AS vwap,
            max(quantity) AS max_trade_size_btc,
            coalesce(sum(quantity) FILTER (WHERE buy), 0) AS taker_buy_qty,
            coalesce(sum(quantity) FILTER (WHERE NOT buy), 0) AS taker_sell_qty,
            coalesce(sum(trades) FILTER (WHERE buy), 0)::BIGINT AS count_buy_trades,
            coalesce(sum(trades) FILTER (WHERE NOT buy), 0)::BIGINT AS count_sell_trades,
            coalesce(sum(quantity) FILTER (WHERE buy AND notional >= {whale!r}), 0) AS vol_buy_whale_btc,
            coalesce(sum(quantity) FILTER (WHERE NOT buy AND notional >= {whale!r}), 0) AS vol_sell_whale_btc,
            coalesce(sum(quantity) FILTER (WHERE buy AND notional <= {retail!r}), 0) AS vol_buy_retail_btc,
            coalesce(sum(quantity) FILTER (WHERE NOT buy AND notional <= {retail!r}), 0) AS vol_sell_retail_btc,
            count(*) FILTER (WHERE notional >= {whale!r}) AS whale_trade_count,
            sqrt(coalesce(sum(r * r), 0)) AS realized_vol_1m
        FROM t
        GROUP BY minute
        ORDER BY minute
    """


def child_duckdb(root: Path, dump: Path | None) -> None:
    """Unzip the aggTrades CSV to a temporary file, then one DuckDB query (both timed)."""
    import duckdb
    import pyarrow.parquet as pq

    path, header, _ = _agg_file(root)
    base_rss = _rss_mb()
    tmp = Path(tempfile.mkdtemp(prefix="bml_duckdb_"))
    try:
        csv = tmp / "aggTrades.csv"
        with _stopwatch() as unzip:
            with zipfile.ZipFile(path) as zf, zf.open(zf.infolist()[0]) as member, open(csv, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
        with _stopwatch() as query:
            con = duckdb.connect()
            result = con.sql(duckdb_query(csv, header)).to_arrow_table()
        threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
        con.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if dump is not None:
        pq.write_table(result, dump)
    _emit(
        {
            "wall": unzip[0] + query[0],
            "cpu": unzip[1] + query[1],
            "sys": unzip[2] + query[2],
            "unzip_wall": unzip[0],
            "query_wall": query[0],
            "minutes": result.num_rows,
            "threads": threads,
            "peak_rss_mb": _peak_rss_mb(),
            "base_rss_mb": base_rss,
        }
    )


# --- the parent ----------------------------------------------------------------------------


def write_day(root: Path, trades: int, day: dt.date = DAY, symbol: str = SYMBOL) -> dict[str, Any]:
    """Render the day's Vision zips with the synthetic market under ``root`` (laid out
    like the Vision URL paths) and a manifest: url → path, sha256, bytes."""
    from bml_assets.domain.streams import Stream
    from bml_assets.replay.market import AGG_TRADE_COLUMNS, KLINE_STREAMS, MarketConfig, SyntheticMarket
    from bml_assets.replay.render import zip_csv
    from bml_assets.replay.vision_archive import vision_file
    from bml_assets.sources.vision import daily_url, monthly_url

    market = SyntheticMarket(MarketConfig(trades_per_day=trades, today=day + dt.timedelta(days=60)))
    wanted: list[tuple[Stream, dt.date, str]] = [
        (Stream.AGG_TRADES, day, daily_url(VISION_BASE, Stream.AGG_TRADES, symbol, day)),
        *((s, day, daily_url(VISION_BASE, s, symbol, day)) for s in KLINE_STREAMS),
        (Stream.METRICS, day, daily_url(VISION_BASE, Stream.METRICS, symbol, day)),
        (
            Stream.METRICS,
            day - dt.timedelta(days=1),
            daily_url(VISION_BASE, Stream.METRICS, symbol, day - dt.timedelta(days=1)),
        ),
    ]
    months = [day.replace(day=1)]
    if day.day == 1:
        months.insert(0, (day - dt.timedelta(days=1)).replace(day=1))
    wanted += [
        (Stream.FUNDING_RATE, m, monthly_url(VISION_BASE, Stream.FUNDING_RATE, symbol, m.year, m.month)) for m in months
    ]
    manifest: dict[str, Any] = {"day": day.isoformat(), "symbol": symbol, "trades_per_day": trades, "files": {}}
    for stream, period, url in wanted:
        vf = vision_file(market, stream, symbol, period)
        assert vf is not None, (stream, period)
        data = zip_csv(vf.csv_name, vf.columns(), header=vf.header, modified=vf.modified)
        rel = urlsplit(url).path.lstrip("/")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        manifest["files"][url] = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        if stream is Stream.AGG_TRADES:
            manifest["agg_trades"] = {"path": rel, "header": vf.header, "bytes": len(data)}
        del data
    types = {"agg_trade_id": "int64", "price": "double", "quantity": "double", "is_buyer_maker": "bool"}
    manifest["agg_columns"] = [(n, types.get(n, "int64")) for n in AGG_TRADE_COLUMNS]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    del market
    gc.collect()
    return manifest


def child_render(root: Path, trades: int) -> None:
    started = time.perf_counter()
    write_day(root, trades)
    _emit({"seconds": time.perf_counter() - started})


def render(root: Path, trades: int, loads: list[float]) -> None:
    """The day's zips, rendered in a subprocess: the parent stays small, and so does
    what its children inherit."""
    took = run_child("render", root, "--size", str(trades), loads=loads)["seconds"]
    print(f"{trades:,} trades: zips rendered in {took:.1f} s", flush=True)


def run_child(mode: str, root: Path, *extra: str, loads: list[float], echo: bool = False) -> dict[str, Any]:
    """One measurement in a fresh interpreter; its RESULT line, parsed."""
    loads.append(os.getloadavg()[0])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--dir", str(root), *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    loads.append(os.getloadavg()[0])
    if proc.returncode != 0:
        raise SystemExit(f"child {mode} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    if echo:
        print("\n".join(line for line in proc.stdout.splitlines() if not line.startswith(RESULT_PREFIX)))
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise SystemExit(f"child {mode} printed no result:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


def compare_flows(ours_path: Path, duck_path: Path) -> tuple[bool, list[str]]:
    """Column by column: integers exact, floats within AGREE_REL_TOL relative."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ours = pq.read_table(ours_path)
    duck = pq.read_table(duck_path)
    problems: list[str] = []
    minutes = pc.cast(ours.column("timestamp"), "int64").to_numpy()
    if not np.array_equal(minutes, duck.column("minute_ms").to_numpy()):
        return False, [f"different minutes: ours {len(minutes)}, DuckDB {duck.num_rows}"]
    ints = (
        "transact_time",
        "agg_trade_count",
        "first_agg_trade_id",
        "last_agg_trade_id",
        "count_buy_trades",
        "count_sell_trades",
        "whale_trade_count",
    )
    floats = (
        "quantity_sum",
        "notional_sum",
        "max_trade_size_btc",
        "taker_buy_qty",
        "taker_sell_qty",
        "vol_buy_whale_btc",
        "vol_sell_whale_btc",
        "vol_buy_retail_btc",
        "vol_sell_retail_btc",
        "realized_vol_1m",
    )
    for name in ints:
        a, b = ours.column(name).to_numpy(), duck.column(name).to_numpy().astype(np.int64)
        if not np.array_equal(a, b):
            problems.append(f"{name}: {int((a != b).sum())} minutes differ")
    for name in floats:
        a, b = ours.column(name).to_numpy(), duck.column(name).to_numpy()
        if not np.allclose(a, b, rtol=AGREE_REL_TOL, atol=0.0):
            problems.append(f"{name}: max rel diff {float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))):.3g}")
    ours_vwap = ours.column("notional_sum").to_numpy() / ours.column("quantity_sum").to_numpy()
    if not np.allclose(ours_vwap, duck.column("vwap").to_numpy(), rtol=AGREE_REL_TOL, atol=0.0):
        problems.append("vwap (Σ notional / Σ quantity) differs")
    return not problems, problems


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def summarise(size: int, ours: list[dict], floor: list[dict], duck: list[dict]) -> dict[str, Any]:
    phases = {
        k: {m: _median([r["phases"][k][m] for r in ours]) for m in ("wall", "cpu", "sys", "peak_rss_mb")}
        for k in PHASE_KEYS
    }
    out: dict[str, Any] = {
        "size": size,
        "reps": len(ours),
        "phases": phases,
        # Medians of per-run totals, not sums of medians.
        "total_wall": _median([sum(r["phases"][k]["wall"] for k in TOTAL_KEYS) for r in ours]),
        "total_cpu": _median([sum(r["phases"][k]["cpu"] for k in TOTAL_KEYS) for r in ours]),
        "total_sys": _median([sum(r["phases"][k]["sys"] for k in TOTAL_KEYS) for r in ours]),
        "asset_layer_wall": _median([sum(r["phases"][k]["wall"] for k in PHASE_KEYS) for r in ours]),
        "trade_flow_step_wall": _median(
            [r["phases"]["parse"]["wall"] + r["phases"]["trade_flow"]["wall"] for r in ours]
        ),
        "trade_flow_step_cpu": _median([r["phases"]["parse"]["cpu"] + r["phases"]["trade_flow"]["cpu"] for r in ours]),
        "peak_rss_mb": _median([r["peak_rss_mb"] for r in ours]),
        "base_rss_mb": _median([r["base_rss_mb"] for r in ours]),
        "view_rows": ours[0]["view_rows"],
        "failed_reported_checks": ours[0]["failed_reported_checks"],
        "streamed": any(r.get("agg_trades_streamed") for r in ours),
        "runs": {"ours": ours, "floor": floor, "duckdb": duck},
    }
    if floor:
        out["floor"] = {k: _median([r[k] for r in floor]) for k in ("wall", "cpu", "sys", "peak_rss_mb", "base_rss_mb")}
        out["ratio_floor"] = out["total_wall"] / out["floor"]["wall"]
        out["ratio_floor_cpu"] = out["total_cpu"] / out["floor"]["cpu"]
    if duck:
        out["duckdb"] = {
            k: _median([r[k] for r in duck])
            for k in ("wall", "cpu", "sys", "unzip_wall", "query_wall", "peak_rss_mb", "base_rss_mb")
        }
        out["duckdb"]["threads"] = duck[0]["threads"]
        out["ratio_duckdb"] = out["trade_flow_step_wall"] / out["duckdb"]["wall"]
        out["ratio_duckdb_cpu"] = out["trade_flow_step_cpu"] / out["duckdb"]["cpu"]
    return out


def _cells(m: dict[str, float], bold: bool = False) -> str:
    b = "**" if bold else ""
    return f"{b}{m['wall']:.2f}{b} | {m['cpu']:.2f} ({m['sys']:.2f}) | {b}{m['peak_rss_mb']:.0f}{b}"


def format_report(
    summaries: list[dict[str, Any]],
    *,
    agree: str,
    loads: list[float],
    reps: int,
    seconds: float,
    fresh: dict[str, float] | None,
) -> str:
    sizes = [s["size"] for s in summaries]
    head = " | ".join(f"{n / 1e6:g} M: wall s | CPU s (sys) | peak RSS MB" for n in sizes)
    lines = [
        f"## Day build from local Vision zips — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine_description()}. Load during the runs: {load_text(loads)}.",
        "",
        f"One day ({DAY}, {SYMBOL}): aggTrades at {', '.join(f'{n:,}' for n in sizes)} trades + klines, mark/index/"
        "premium klines, metrics (day and day before), fundingRate (month); no bookTicker after 2024-03-30. "
        f"Each figure is the median of {reps} run(s), each in a fresh subprocess (interleaved ours / floor / "
        "DuckDB). CPU = user + sys of the process (all threads), sys in brackets. Peak RSS = the child's VmHWM "
        "during that phase (reset at each phase start); a reference's over its whole process. Interpreter + "
        f"imports (not timed): ours ~{summaries[0]['base_rss_mb']:.0f} MB"
        + (f", floor ~{summaries[0]['floor']['base_rss_mb']:.0f} MB" if "floor" in summaries[0] else "")
        + (f", DuckDB ~{summaries[0]['duckdb']['base_rss_mb']:.0f} MB" if "duckdb" in summaries[0] else "")
        + ".",
        "",
        f"| phase | {head} |",
        "| --- |" + " ---: | ---: | ---: |" * len(summaries),
    ]
    for key, label, _ in PHASES:
        lines.append(f"| {label} | " + " | ".join(_cells(s["phases"][key]) for s in summaries) + " |")
    lines.append(
        "| **day build (the 6 rows above the asset-layer rows)** | "
        + " | ".join(
            _cells(
                {
                    "wall": s["total_wall"],
                    "cpu": s["total_cpu"],
                    "sys": s["total_sys"],
                    "peak_rss_mb": s["peak_rss_mb"],
                },
                True,
            )
            for s in summaries
        )
        + " |"
    )
    lines.append(
        "| day build + asset-layer rows | " + " | ".join(f"{s['asset_layer_wall']:.2f} | | " for s in summaries) + " |"
    )
    if all("floor" in s for s in summaries):
        lines.append(
            "| floor: `pyarrow.csv.read_csv` on the zip member (threads, types given) | "
            + " | ".join(_cells(s["floor"]) for s in summaries)
            + " |"
        )
    if all("duckdb" in s for s in summaries):
        lines.append(
            "| DuckDB: unzip to a temp file + one SQL query (trade-flow columns) | "
            + " | ".join(_cells(s["duckdb"]) for s in summaries)
            + " |"
        )
        lines.append(
            "| … DuckDB's unzip + query | "
            + " | ".join(f"{s['duckdb']['unzip_wall']:.2f} + {s['duckdb']['query_wall']:.2f} | | " for s in summaries)
            + " |"
        )
    lines += ["", "| ratio (wall, medians) | " + " | ".join(f"{n / 1e6:g} M" for n in sizes) + " | target |"]
    lines.append("| --- |" + " ---: |" * len(sizes) + " --- |")
    if all("ratio_floor" in s for s in summaries):
        lines.append(
            "| day build ÷ floor | "
            + " | ".join(f"{s['ratio_floor']:.2f}" for s in summaries)
            + " | ≤ 2.0 at 3 M and 7 M |"
        )
    if all("ratio_duckdb" in s for s in summaries):
        lines.append(
            "| our trade-flow step (parse + aggregation) ÷ DuckDB (unzip + query) | "
            + " | ".join(f"{s['ratio_duckdb']:.2f}" for s in summaries)
            + " | ≤ 1.0 |"
        )
    if all("ratio_floor_cpu" in s for s in summaries):
        lines.append(
            "| (CPU time) day build ÷ floor | "
            + " | ".join(f"{s['ratio_floor_cpu']:.2f}" for s in summaries)
            + " | for information: less sensitive to other load |"
        )
    if all("ratio_duckdb_cpu" in s for s in summaries):
        lines.append(
            "| (CPU time) our trade-flow step ÷ DuckDB | "
            + " | ".join(f"{s['ratio_duckdb_cpu']:.2f}" for s in summaries)
            + " | for information |"
        )
    lines.append(
        "| peak RSS of the day build, MB | "
        + " | ".join(f"{s['peak_rss_mb']:.0f}" for s in summaries)
        + " | ≤ 1024 at 7 M |"
    )
    threads = summaries[0].get("duckdb", {}).get("threads")
    lines += [
        "",
        f"DuckDB vs our `trade_flow` on the {sizes[0]:,}-trade day (every trade-flow column; integers exact, "
        f"floats within {AGREE_REL_TOL:g} relative; the whale/retail thresholds widened by {THRESHOLD_REL_TOL:g} "
        f"as the product does): **{agree}**." + (f" DuckDB threads: {threads}." if threads else ""),
    ]
    if fresh:
        lines += [
            "",
            f"Fresh memory on this machine (a VM): a new process touching {fresh['mb']:.0f} MB for the first time "
            f"took {fresh['first']:.2f} s ({fresh['first_sys']:.2f} s sys), the same size again {fresh['again']:.2f} s "
            f"(median of {fresh['n']}; it varies from run to run). Page faults on newly allocated memory show as "
            "sys time in the table above.",
        ]
    streamed = any(s["streamed"] for s in summaries)
    lines += [
        "",
        "How the product read the aggTrades file: "
        + (
            "streamed in record batches (`iter_vision_csv_batches`), so parse and aggregation interleave: the parse row "
            "is the time spent inside the batch reader, the aggregation row the rest, and both show the peak of the two."
            if streamed
            else "whole (`read_vision_csv`), then aggregated (`trade_flow`)."
        ),
    ]
    lines += [
        "",
        f"The minute view had {summaries[-1]['view_rows']} rows; reported checks failing: "
        f"{summaries[-1]['failed_reported_checks'] or 'none'}. Benchmark wall time (zip rendering included): {seconds:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


def child_fresh(mb: int) -> None:
    """First-touch cost of memory in a fresh process, then the same size again."""
    import numpy as np

    out = []
    for _ in range(2):
        with _stopwatch() as took:
            block = np.ones(mb * 2**20 // 8)
        del block
        out.append(took)
    _emit({"mb": mb, "first": out[0][0], "first_sys": out[0][2], "again": out[1][0]})


def fresh_memory(loads: list[float], reps: int, mb: int = 512) -> dict[str, float]:
    runs = [run_child("fresh", Path("."), "--size", str(mb), loads=loads) for _ in range(reps)]
    return {k: _median([r[k] for r in runs]) for k in ("mb", "first", "first_sys", "again")} | {"n": len(runs)}


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default=",".join(str(n) for n in DEFAULT_SIZES), help="aggTrades per day, comma-separated"
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_SIZE} trades, one run, no results.md")
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/results.md alone")
    parser.add_argument("--no-references", action="store_true", help="skip the floor and DuckDB runs")
    parser.add_argument("--json", type=Path, help="also write the summary here (for run_all.py)")
    parser.add_argument(
        "--profile", type=int, metavar="TRADES", help="print a pyinstrument profile of ours at this size"
    )
    parser.add_argument("--child", choices=("render", "ours", "floor", "duckdb", "fresh"), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dump", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child-profile", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        {
            "render": lambda: child_render(args.dir, args.size),
            "fresh": lambda: child_fresh(args.size),
            "ours": lambda: child_ours(args.dir, args.dump, args.child_profile),
            "floor": lambda: child_floor(args.dir),
            "duckdb": lambda: child_duckdb(args.dir, args.dump),
        }[args.child]()
        # Skip the interpreter's teardown: pyarrow's CSV reader threads, fed from a Python
        # file object, now and then abort it ("terminate called without an active
        # exception") after the result was printed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bml_day_build_"))
    try:
        if args.profile:
            root = work / f"day_{args.profile}"
            render(root, args.profile, [])
            run_child("ours", root, "--child-profile", loads=[], echo=True)
            return None
        sizes = [SMOKE_SIZE] if args.smoke else [int(s) for s in args.sizes.split(",")]
        reps = 1 if args.smoke else args.reps
        append = not (args.smoke or args.no_append)
        try:
            import duckdb  # noqa: F401

            have_duckdb = not args.no_references
        except ImportError:
            print("duckdb is not installed: the DuckDB reference is skipped (pip install duckdb)", flush=True)
            have_duckdb = False
        loads: list[float] = []
        summaries: list[dict[str, Any]] = []
        agree = "not checked (no DuckDB run)"
        for size in sizes:
            root = work / f"day_{size}"
            render(root, size, loads)
            ours, floor, duck = [], [], []
            for rep in range(reps):
                check = have_duckdb and size == sizes[0] and rep == 0
                dump_ours, dump_duck = work / "ours_flow.parquet", work / "duck_flow.parquet"
                ours.append(run_child("ours", root, *(["--dump", str(dump_ours)] if check else []), loads=loads))
                if not args.no_references:
                    floor.append(run_child("floor", root, loads=loads))
                if have_duckdb:
                    duck.append(run_child("duckdb", root, *(["--dump", str(dump_duck)] if check else []), loads=loads))
                if check:
                    ok, problems = compare_flows(dump_ours, dump_duck)
                    agree = "agree" if ok else "DISAGREE: " + "; ".join(problems)
                    print(f"DuckDB vs ours on {size:,} trades: {agree}", flush=True)
                print(
                    f"{size:,} trades, run {rep + 1}/{reps}: ours {sum(ours[-1]['phases'][k]['wall'] for k in TOTAL_KEYS):.2f} s"
                    + (f", floor {floor[-1]['wall']:.2f} s" if floor else "")
                    + (f", DuckDB {duck[-1]['wall']:.2f} s" if duck else ""),
                    flush=True,
                )
            summaries.append(summarise(size, ours, floor, duck))
            shutil.rmtree(root, ignore_errors=True)
        fresh = fresh_memory(loads, reps, mb=64 if args.smoke else 512)
        text = format_report(
            summaries, agree=agree, loads=loads, reps=reps, seconds=time.perf_counter() - started, fresh=fresh
        )
        print(text, flush=True)
        if append:
            append_results(text)
        summary = {
            "sizes": summaries,
            "agree": agree,
            "fresh_memory": fresh,
            "loads": loads,
            "seconds": time.perf_counter() - started,
        }
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1))
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
