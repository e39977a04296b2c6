"""The REST weight spent to build one full past day of one symbol from REST alone.

Starts the replay server with a synthetic market and a fixed market clock at
D+1 12:00 (so REST has all of day D), makes Vision answer 404 for D (and the
month's funding file is not out yet), builds the definitions like the hot-path
e2e test and runs ``minute_view_job`` for ``D|BTCUSDT`` in process with the
catch-up band tag, so the run follows the exchange's clock and falls back to REST.
Then reads the server's own REST log: requests and weight per endpoint, the total,
and the theoretical minimum for that day from the exchange's weight rules.

    .venv/bin/python bench/rest_day_weight.py --trades-per-day 100000

The client's weight budget is raised (``--weight-budget``) so that the wall time
measures the work, not the rate limit; the weight counted is the same either way.
Appends its table to bench/results.md. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import shutil
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path

from dagster import DagsterInstance

from bml_assets.definitions import MINUTE_VIEW_JOB, build_definitions
from bml_assets.defs.assets.streams import BAND_TAG
from bml_assets.demo import QUIET
from bml_assets.domain.minutes import MINUTES_PER_DAY
from bml_assets.domain.partitions import partition_key
from bml_assets.domain.provenance import Provenance
from bml_assets.domain.settings import Settings
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.rest.log import RestLogEntry
from bml_assets.replay.server import ReplayServer
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.rest import RestClient

REPO = Path(__file__).resolve().parent.parent
SYMBOL = "BTCUSDT"
HIST_ROWS_PER_DAY = MINUTES_PER_DAY // 5  # 288 five-minute snapshots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trades-per-day", type=int, default=100_000)
    parser.add_argument("--day", default="2024-06-03", help="the past day D to build (UTC)")
    parser.add_argument(
        "--weight-budget",
        type=int,
        default=10_000_000,
        help="BML_REST_WEIGHT_BUDGET for the run (the product's default is 1800 per minute)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary lake")
    parser.add_argument("--no-append", action="store_true", help="print only; leave bench/results.md alone")
    args = parser.parse_args()
    day = dt.date.fromisoformat(args.day)
    warnings.filterwarnings("ignore", module="dagster")
    time_callers = trace_server_time()

    work = Path(tempfile.mkdtemp(prefix="bml_rest_day_"))
    market = SyntheticMarket(MarketConfig(trades_per_day=args.trades_per_day))
    clock = MarketClock.fixed(dt.datetime.combine(day + dt.timedelta(days=1), dt.time(12), dt.UTC))
    try:
        with (
            ReplayServer(market=market, clock=clock, rest_weight_limit=max(args.weight_budget, 2400)) as server,
            DagsterInstance.ephemeral() as instance,
        ):
            server.faults.add(FaultRule("missing", f"{day.isoformat()}.zip"))  # Vision has not published D
            root = work / "lake"
            settings = Settings(
                symbols=(SYMBOL,),
                start_date=dt.date(2024, 1, 1),
                lake_root=root,
                vision_base_url=server.base_url,
                rest_base_url=server.base_url,
                rest_weight_budget=args.weight_budget,
            )
            defs = build_definitions(settings)
            started = time.perf_counter()
            result = defs.resolve_job_def(MINUTE_VIEW_JOB).execute_in_process(
                partition_key=partition_key(SYMBOL, day),
                instance=instance,
                raise_on_error=False,
                run_config=QUIET,
                tags={BAND_TAG: "catch-up"},
            )
            wall_s = time.perf_counter() - started
            if not result.success:
                raise SystemExit(f"the run failed: {[e.message for e in result.all_events if e.is_failure]}")
            record = Ledger(settings.state_url).get_partition("minute", SYMBOL, day)
            provenance = record.provenance if record is not None else {}
            log = server.rest_log
            agg_trades = market.agg_trades(SYMBOL, day).num_rows
            max_ffill = settings.max_ffill_minutes
        report(log, day, args, agg_trades, max_ffill, wall_s, provenance, time_callers)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def trace_server_time() -> Counter[str]:
    """Count ``RestClient.server_time_ms`` calls by where they come from (this process only)."""
    callers: Counter[str] = Counter()
    original = RestClient.server_time_ms
    repo = str(REPO) + os.sep

    def traced(self: RestClient) -> int:
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(repo + "bml_assets")]
        chain = [f"{f.filename.removeprefix(repo)}:{f.lineno} {f.name}" for f in frames[-2:]]
        callers[" ← ".join(reversed(chain))] += 1
        return original(self)

    RestClient.server_time_ms = traced  # type: ignore[method-assign]
    return callers


# --- the minimum --------------------------------------------------------------------------


def min_kline_cost(minutes: int) -> tuple[int, int, int]:
    """(requests, weight, limit per request) of the cheapest way to fetch ``minutes`` 1m bars,
    by the exchange's rule: weight 1/2/5/10 for limit <100 / <500 / ≤1000 / >1000 (≤1500)."""
    options = []
    for largest_limit in (99, 499, 1000, limits.KLINES_MAX_LIMIT):
        requests = math.ceil(minutes / largest_limit)
        options.append((requests * limits.kline_weight(largest_limit), requests, largest_limit))
    weight, requests, largest_limit = min(options)
    return requests, weight, largest_limit


def minimum(agg_trades: int, max_ffill_minutes: int) -> dict[str, tuple[int, int, str]]:
    """Per endpoint family: (requests, weight, how) of the least a client needs for a past day."""
    k_req, k_weight, k_limit = min_kline_cost(MINUTES_PER_DAY)
    one_page = limits.kline_weight(MINUTES_PER_DAY)
    trade_pages = max(1, math.ceil(agg_trades / limits.AGG_TRADES_MAX_LIMIT))
    end_aware = (agg_trades + limits.AGG_TRADES_MAX_LIMIT) // limits.AGG_TRADES_MAX_LIMIT
    hist_rows = HIST_ROWS_PER_DAY + math.ceil(max_ffill_minutes / 5)
    hist_pages = math.ceil(hist_rows / limits.HIST_MAX_LIMIT)
    return {
        "klines ×4 (trade, mark, index, premium)": (
            4 * k_req,
            4 * k_weight,
            f"4 × {k_req} req of ≤{k_limit} min (weight {limits.kline_weight(k_limit)}); "
            f"one 1440-min request would cost {one_page}",
        ),
        limits.AGG_TRADES_PATH: (
            trade_pages,
            trade_pages * limits.AGG_TRADES_WEIGHT,
            f"ceil({agg_trades} trades / 1000) pages × 20, the first found by a time window"
            + (
                f" (seeing that the day has ended needs ceil((n+1)/1000) = {end_aware}: its last trade closes a page)"
                if end_aware > trade_pages
                else ""
            ),
        ),
        limits.FUNDING_RATE_PATH: (1, limits.FUNDING_RATE_WEIGHT, "1 request"),
        "5m history ×3": (
            3 * hist_pages,
            3 * hist_pages * limits.HIST_WEIGHT,
            f"3 × ceil(({HIST_ROWS_PER_DAY} + {hist_rows - HIST_ROWS_PER_DAY} ffill-lead rows) / 500) page",
        ),
        limits.SERVER_TIME_PATH: (1, limits.SERVER_TIME_WEIGHT, "1 request: the exchange's now, read once"),
    }


# --- the report -----------------------------------------------------------------------------


def _family(path: str) -> str:
    if path in limits.KLINE_PATHS.values():
        return "klines ×4 (trade, mark, index, premium)"
    if path in limits.HIST_PATHS:
        return "5m history ×3"
    return path


def report(
    log: list[RestLogEntry],
    day: dt.date,
    args: argparse.Namespace,
    agg_trades: int,
    max_ffill_minutes: int,
    wall_s: float,
    provenance: dict,
    time_callers: Counter[str],
) -> None:
    by_path: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for entry in log:
        by_path[entry.path][0] += 1
        by_path[entry.path][1] += entry.weight
    statuses = sorted({e.status for e in log})
    trades = [e for e in log if e.path == limits.AGG_TRADES_PATH]
    by_window = sum("startTime" in e.params for e in trades)
    by_id = sum("fromId" in e.params for e in trades)
    total_req = sum(r for r, _ in by_path.values())
    total_weight = sum(w for _, w in by_path.values())
    least = minimum(agg_trades, max_ffill_minutes)
    least_req = sum(r for r, _, _ in least.values())
    least_weight = sum(w for _, w, _ in least.values())
    typed = Provenance.of(provenance)
    sources = ", ".join(f"{k}={typed.status_of(k)}" for k in sorted(typed))

    lines = [
        f"## REST weight of one past day — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}. "
        f"`minute_view_job` for `{day}|{SYMBOL}` in process, tag `{BAND_TAG}=catch-up`, market clock fixed at "
        f"{day + dt.timedelta(days=1)} 12:00 UTC, Vision 404 for {day}; {args.trades_per_day} trades/day "
        f"({agg_trades} aggTrades that day), BML_MAX_FFILL_MINUTES={max_ffill_minutes}, "
        f"weight budget {args.weight_budget}/min (so no waiting). HTTP statuses seen: {statuses}.",
        "",
        f"Sources of the minute view: {sources or '(none recorded)'}.",
        "",
        "| endpoint | requests | weight |",
        "| --- | ---: | ---: |",
    ]
    for path in sorted(by_path, key=lambda p: (-by_path[p][1], p)):
        requests, weight = by_path[path]
        lines.append(f"| `{path}` | {requests} | {weight} |")
    lines += [
        f"| **total** | **{total_req}** | **{total_weight}** |",
        "",
        "Theoretical minimum for the day:",
        "",
        "| endpoint family | measured req | measured weight | min req | min weight | how |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    measured: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for path, (requests, weight) in by_path.items():
        measured[_family(path)][0] += requests
        measured[_family(path)][1] += weight
    for family, (requests, weight, how) in least.items():
        got = measured.pop(family, [0, 0])
        lines.append(f"| `{family}` | {got[0]} | {got[1]} | {requests} | {weight} | {how} |")
    for family, (requests, weight) in sorted(measured.items()):  # anything a minimal client would not send
        lines.append(f"| `{family}` | {requests} | {weight} | 0 | 0 | not needed for a past day |")
    lines += [
        f"| **total** | **{total_req}** | **{total_weight}** | **{least_req}** | **{least_weight}** | |",
        "",
        f"Ratio total ÷ minimum: **{total_weight / least_weight:.3f}** (weight), "
        f"{total_req / least_req:.3f} (requests). Wall time of the run: **{wall_s:.1f} s**. "
        f"At the default budget of 1800 weight/min the weight alone needs ≥ {total_weight / 1800:.1f} min.",
        "",
        f"aggTrades requests: {by_window} by startTime/endTime window, {by_id} by fromId.",
        "",
        f"`{limits.SERVER_TIME_PATH}` calls by caller (`server_time_ms` ← its caller):",
        "",
        *(f"- {n} × `{caller}`" for caller, n in time_callers.most_common()),
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.no_append:
        return
    results = REPO / "bench" / "results.md"
    if not results.exists():
        results.write_text("# bml benchmark results\n\n")
    with results.open("a") as fh:
        fh.write("\n" + text)


if __name__ == "__main__":
    main()
