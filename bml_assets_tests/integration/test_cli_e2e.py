"""The ``bml`` command line end to end: every command through its real entry point, in a
subprocess, configured by ``BML_*`` like Dagster, against a replay server on loopback.

The replay server's market clock is fixed (2024-06-03 10:30:20 UTC): REST answers as of
then (``run-once`` follows it) and Vision has published every day before it. ``scan`` and
the backfills judge "today" by this machine's clock, so the days used here (March 2024)
are closed whatever the date.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from bml_assets.cluster.services import free_port
from bml_assets.lake.ledger import Ledger
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer
from bml_assets.storage.store import file_sha256

from .live_ws import ThreadedStreamServer

CLOCK_AT = dt.datetime(2024, 6, 3, 10, 30, 20, tzinfo=dt.UTC)
ETH_LISTING = dt.date(2024, 2, 20)
SYMBOLS = "BTCUSDT,ETHUSDT"
_SCRIPT = Path(sys.executable).with_name("bml")
BML = [str(_SCRIPT)] if _SCRIPT.is_file() else [sys.executable, "-m", "bml_assets.cli"]
MODULE = [sys.executable, "-m", "bml_assets.cli"]
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def server() -> Iterator[ReplayServer]:
    market = SyntheticMarket(MarketConfig(seed=5, trades_per_day=2000, listing_dates={"ETHUSDT": ETH_LISTING}))
    with ReplayServer(market=market, clock=MarketClock.fixed(CLOCK_AT)) as replay:
        yield replay


class Bml:
    """Runs ``bml`` in a subprocess with its own lake and the replay server's URLs."""

    def __init__(self, tmp_path: Path, server: ReplayServer, lake: Path | None = None) -> None:
        self.cwd = tmp_path  # no stray .env of the repository is read
        self.lake = lake or tmp_path / "lake"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("BML_") and k != "DAGSTER_HOME"}
        self.env.update(
            BML_SYMBOLS=SYMBOLS,
            BML_START_DATE="2024-01-01",
            BML_LAKE_ROOT=str(self.lake),
            BML_VISION_BASE_URL=server.base_url,
            BML_REST_BASE_URL=server.base_url,
            # Nothing listens there: a command that opens the live streams never reaches the internet.
            BML_WS_BASE_URL="ws://127.0.0.1:9",
            PYTHONWARNINGS="ignore",
        )

    @property
    def state_url(self) -> str:
        return f"sqlite:///{self.lake / '_state' / 'ledger.sqlite'}"

    def __call__(self, *args: str, entry: list[str] = BML, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*entry, *args],
            cwd=self.cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )

    def popen(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*BML, *args],
            cwd=self.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def minute_path(self, symbol: str, day: str) -> Path:
        return self.lake / "futures/um/minute" / f"symbol={symbol}" / f"date={day}" / "part.parquet"

    def minute_rows(self):
        with Ledger(self.state_url) as ledger:
            return ledger.partitions(dataset="minute")


def ok(result: subprocess.CompletedProcess[str], code: int = 0) -> subprocess.CompletedProcess[str]:
    assert result.returncode == code, (
        f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    return result


@pytest.fixture
def bml(tmp_path: Path, server: ReplayServer) -> Bml:
    return Bml(tmp_path, server)


COMMANDS = [
    [],
    ["init-state"],
    ["symbols"],
    ["symbols", "sync"],
    ["run-once"],
    ["run-daemon"],
    ["show-watermark"],
    ["scan"],
    ["backfill-range"],
    ["backfill-years"],
    ["replay-server"],
    ["live-collect"],
    ["demo"],
    ["columns"],
    ["cache"],
    ["coverage"],
]


def test_every_command_has_help(bml: Bml) -> None:
    for command in COMMANDS:
        out = ok(bml(*command, "--help")).stdout
        assert "Usage: bml" in out, command
    assert "--max-missing-hours" in bml("backfill-years", "--help").stdout
    assert "--shallow" in bml("scan", "--help").stdout and "--sweep" in bml("scan", "--help").stdout


def test_state_universe_backfill_scan_and_repair(bml: Bml) -> None:
    out = ok(bml("init-state")).stdout
    assert f"lake root: {bml.lake.resolve()}" in out and "ledger.sqlite" in out
    ok(bml("init-state"))  # idempotent

    out = ok(bml("symbols", "sync")).stdout
    assert "2 USD-M perpetual(s): 2 trading" in out and "2 added" in out
    assert "0 added, 0 changed, 2 unchanged" in ok(bml("symbols", "sync")).stdout
    with Ledger(bml.state_url) as ledger:
        assert ledger.symbols()["ETHUSDT"].onboard_date == ETH_LISTING

    # A range before the listing: said plainly, nothing to do.
    out = ok(bml("backfill-range", "--start", "2024-01-01", "--end", "2024-01-05", "--symbols", "ETHUSDT")).stdout
    assert "before its listing on 2024-02-20: nothing to do" in out
    assert bml.minute_rows() == []

    # The plan first: 6 days to build (exit 1: work remains), folded per symbol, with its
    # estimate; the cap.
    dry = ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-03", "--dry-run"), 1).stdout
    assert "plan: 6 partition(s) to build (144 h)" in dry
    assert "  ETHUSDT      2024-03-01..2024-03-03  not_built (3 day(s))" in dry
    assert "estimate: 6 partition(s) to build; 0 committed partition(s) of the range skipped" in dry
    # 6 days × 7 daily streams (bookTicker is published until 2024-03-30), metrics of the day
    # before the first (2 × 1), two fundingRate months per symbol (March 1st reads February's
    # too): 42 + 2 + 4; one HEAD per symbol and stream (2 × 8).
    assert "in 48 of the 48 Vision zip(s) of 6 day(s)" in dry
    assert "the cache 0 (0 B), the ledger's source_files 0 (0.0 MiB), 16 HEAD(s)" in dry
    assert "REST weight: ≈ 0 for 0 day(s) Vision has not published" in dry
    assert "time: unknown (no backfill measured in this ledger yet)" in dry
    estimated_mib = float(dry.split("download: ≈ ")[1].split(" MiB")[0])
    assert len(dry.splitlines()) < 12  # a summary, not a line per partition
    years = ok(bml("backfill-years", "--years", "1", "--dry-run", "--max-missing-hours", "50"), 1).stdout
    assert "range: " in years and "plan: 2 partition(s) to build (48 h)" in years
    assert "cap reached: --max-missing-hours 50 allows 48 h" in years
    # A dry run writes nothing: no ledger row, no source file, no cache, no Dagster instance.
    assert bml.minute_rows() == []
    with Ledger(bml.state_url) as ledger:
        assert ledger.partitions() == [] and ledger.meta(Ledger.BACKFILL_RATE_KEY) is None
    assert not (bml.lake / "_cache").exists() and not (bml.lake / "_dagster").exists()
    assert not (bml.lake / "futures").exists()

    # From an empty lake: 2 symbols × 3 days, then a clean scan.
    done = ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-03"))
    out = done.stdout
    assert "built 6 of 6 partition(s) (6 committed; 6 written, 0 unchanged)" in out
    assert "final scan: clean" in out
    # Bytes and weight next to [i/N], rate and ETA; the summary's total against the estimate
    # (the synthetic market's zips are about the same size every day: within a quarter).
    assert "[6/6] " in out and "partitions/min, ETA " in out and " MiB, weight 0" in out
    received_mib = float(out.split("traffic: ")[1].split(" MiB received")[0])
    assert received_mib > 0 and abs(estimated_mib - received_mib) <= 0.25 * received_mib
    assert "REST weight 0" in out
    # The cache holds the zips the estimate counted; the coverage shows the days built.
    assert "in 48 file(s)" in ok(bml("cache")).stdout
    window = ("--start", "2024-03-01", "--end", "2024-03-04")
    table = ok(bml("coverage", *window)).stdout
    assert "2024-03-01..2024-03-03" in table and "1: 2024-03-04" in table and "heatmap: " in table
    coverage = json.loads(ok(bml("coverage", *window, "--json")).stdout)
    assert coverage["counts"] == {
        "committed": 6,
        "provisional": 0,
        "incomplete": 0,
        "not_listed": 0,
        "not_published": 0,
        "missing": 2,
    }
    assert coverage["symbols"][1]["symbol"] == "ETHUSDT"
    assert coverage["symbols"][1]["committed_ranges"] == [["2024-03-01", "2024-03-03"]]
    assert coverage["symbols"][1]["missing_ranges"] == [["2024-03-04", "2024-03-04"]]
    assert coverage["heatmap"] == str(bml.lake / "_reports" / "coverage.png")
    assert (bml.lake / "_reports" / "coverage.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "clean: 6 partition(s) checked" in ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-03")).stdout
    report = json.loads(ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-03", "--json")).stdout)
    assert report["clean"] is True and report["checked"] == 6 and report["problems"] == []

    # A re-run has nothing to do and touches nothing.
    path = bml.minute_path("ETHUSDT", "2024-03-02")
    before = {p: p.stat().st_mtime_ns for p in (bml.lake / "futures/um/minute").rglob("*.parquet")}
    out = ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-03")).stdout
    assert "plan: 0 partition(s)" in out and "final scan: clean" in out
    assert {p: p.stat().st_mtime_ns for p in before} == before

    # A damaged file: the scan finds it (exit 1), the backfill repairs it (exit 0).
    good = file_sha256(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    out = ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-03"), 1).stdout
    assert "content_hash_mismatch" in out and "ETHUSDT" in out and "2024-03-02" in out
    report = json.loads(ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-03", "--json"), 1).stdout)
    assert [(p["symbol"], p["date"], p["kind"]) for p in report["problems"]] == [
        ("ETHUSDT", "2024-03-02", "content_hash_mismatch")
    ]
    out = ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-03")).stdout
    assert "built 1 of 1 partition(s)" in out and "1 written" in out and "final scan: clean" in out
    assert file_sha256(path) == good
    ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-03", entry=MODULE))

    # A stream table's file truncated, a killed commit's temporary file and a stale Vision
    # download: the shallow scan reports all three (exit 1), --sweep removes the strays, the
    # backfill's plan names the stream table and its rebuild restores the file.
    span = ("--start", "2024-03-01", "--end", "2024-03-03")
    klines = bml.lake / "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-01/part.parquet"
    good_klines = file_sha256(klines)
    with open(klines, "r+b") as f:
        f.truncate(5000)
    stray = klines.with_name(".part.parquet." + "7" * 32 + ".tmp")
    stray.write_bytes(b"left by a killed commit")
    entry = next(p for p in (bml.lake / "_cache" / "vision").glob("*/*") if p.is_dir())
    download = entry / ".0123456789abcdef.k1ll3d.part"
    download.write_bytes(b"partial zip")
    two_hours_ago = time.time() - 7200  # the sweep waits an hour for a cache file
    os.utime(download, (two_hours_ago, two_hours_ago))
    report = json.loads(ok(bml("scan", *span, "--shallow", "--json"), 1).stdout)
    assert [(p["dataset"], p["symbol"], p["date"], p["kind"]) for p in report["problems"]] == [
        ("klines_1m", "BTCUSDT", "2024-03-01", "unreadable")
    ]
    assert sorted((f["where"], f["path"]) for f in report["stray_files"]) == [
        ("lake", str(stray)),
        ("vision cache", str(download)),
    ]
    out = ok(bml("scan", *span, "--shallow", "--sweep"), 1).stdout
    assert "swept 2 stray temporary file(s)" in out and "klines_1m" in out
    assert not stray.exists() and not download.exists()
    dry = ok(bml("backfill-range", *span, "--dry-run"), 1).stdout
    assert "plan: 1 partition(s)" in dry and "klines_1m:unreadable" in dry
    # Its zips are in the cache now (nothing to download), and the last backfill measured a rate.
    assert "estimate: 1 partition(s) to build; 5 committed partition(s) of the range skipped" in dry
    assert "download: ≈ 0.0 MiB in 0 of the 10 Vision zip(s) of 1 day(s)" in dry
    assert "at the measured rate" in dry and "partitions/min (the last backfill: " in dry
    out = ok(bml("backfill-range", *span)).stdout
    assert "built 1 of 1 partition(s)" in out and "final scan: clean" in out
    assert file_sha256(klines) == good_klines
    assert json.loads(ok(bml("scan", *span, "--json")).stdout)["stray_files"] == []

    marks = {r["symbol"]: r for r in json.loads(ok(bml("show-watermark", "--json")).stdout)}
    assert marks["BTCUSDT"]["committed_partitions"] == 3
    assert (marks["ETHUSDT"]["first_committed_day"], marks["ETHUSDT"]["last_committed_day"]) == (
        "2024-03-01",
        "2024-03-03",
    )
    assert marks["ETHUSDT"]["provisional_days"] == [] and marks["ETHUSDT"]["not_listed_days"] == []
    text = ok(bml("show-watermark", "--symbol", "BTCUSDT")).stdout
    assert text.splitlines()[1].startswith("BTCUSDT") and "        3  2024-03-01  2024-03-03" in text
    assert "ETHUSDT" not in text


def test_usage_errors_and_unusable_state(bml: Bml, tmp_path: Path) -> None:
    reversed_ = ok(bml("scan", "--start", "2024-03-03", "--end", "2024-03-01"), 2)
    assert "the range is reversed" in reversed_.stderr
    reversed_ = ok(bml("backfill-range", "--start", "2024-03-03", "--end", "2024-03-01"), 2)
    assert "the range is reversed" in reversed_.stderr
    malformed = ok(bml("backfill-range", "--start", "2024-02-30", "--end", "2024-03-01"), 2)
    assert "'2024-02-30' is not a date" in malformed.stderr
    assert not bml.lake.exists()  # a usage error leaves nothing behind
    ok(bml("scan", "--start", "2024-03-01T00:00:00", "--end", "2024-03-01T12:00:00+00:00", "--shallow"), 1)

    unknown = ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-01", "--symbols", "XRPUSDT"), 2)
    assert "unknown symbol XRPUSDT: not in BML_SYMBOLS (BTCUSDT,ETHUSDT)" in unknown.stderr
    assert "bml symbols sync" in unknown.stderr
    assert (
        "unknown symbol XRPUSDT"
        in ok(bml("scan", "--start", "2024-03-01", "--end", "2024-03-01", "--symbols", "XRPUSDT"), 2).stderr
    )

    assert "unknown symbol XRPUSDT" in ok(bml("show-watermark", "--symbol", "XRPUSDT"), 2).stderr

    bad_config = ok(bml("init-state", BML_SYMBOLS="btc"), 2)
    assert "configuration" in bad_config.stderr and "BML_SYMBOLS" in bad_config.stderr

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    unwritable = ok(bml("init-state", BML_LAKE_ROOT=str(blocker / "lake")), 1)
    assert f"the lake root {blocker / 'lake'} is not writable" in unwritable.stderr

    ok(bml("init-state"))
    with sqlite3.connect(bml.lake / "_state" / "ledger.sqlite") as conn:
        conn.execute("UPDATE ledger_meta SET value = '0' WHERE key = 'schema_version'")
    old = ok(bml("show-watermark"), 1)
    assert "schema_version '0'" in old.stderr and "what to do" in old.stderr
    assert "schema_version '0'" in ok(bml("backfill-range", "--start", "2024-03-01", "--end", "2024-03-01"), 1).stderr


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    """A usage error: exit 2 and one line on stderr (no usage text)."""
    ok(result, 2)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_a_partition_key_outside_the_set_is_one_line_naming_the_argument(bml: Bml) -> None:
    day = ("--start", "2024-03-01", "--end", "2024-03-01")
    # Malformed dates, for every command that takes one.
    for command in (["backfill-range", "--end", "2024-03-01"], ["scan", "--end", "2024-03-01"], ["coverage"]):
        text = one_line(bml(*command, "--start", "2024-13-01"))
        assert "error: --start '2024-13-01' is not a date like 2024-03-01" in text, command
    text = one_line(bml("live-rebuild", "--symbol", "BTCUSDT", "--date", "yesterday"))
    assert "error: --date 'yesterday' is not a date" in text
    # A day before BML_START_DATE (2024-01-01): the valid days named.
    for command in ("backfill-range", "scan", "coverage"):
        text = one_line(bml(command, "--start", "2023-12-31", "--end", "2024-01-02"))
        assert "--start 2023-12-31 is before the first partition day 2024-01-01 (BML_START_DATE)" in text, command
        assert "valid days are 2024-01-01.." in text
    text = one_line(bml("live-rebuild", "--symbol", "BTCUSDT", "--date", "2023-12-31"))
    assert "--date 2023-12-31 is before the first partition day: valid days are 2024-01-01 (BML_START_DATE).." in text
    # A day in the future.
    text = one_line(bml("backfill-range", "--start", "2024-03-01", "--end", "2999-01-01"))
    assert "--end 2999-01-01 is after today" in text and "valid days are 2024-01-01.." in text
    text = one_line(bml("scan", "--start", "2999-01-01", "--end", "2999-01-02"))
    assert "--start 2999-01-01 is after today" in text
    assert "is after today" in one_line(bml("live-rebuild", "--symbol", "BTCUSDT", "--date", "2999-01-01"))
    # An unknown or malformed symbol.
    for command in (
        ["backfill-range", *day],
        ["scan", *day],
        ["coverage"],
        ["run-once"],
        ["backfill-years", "--years", "1"],
    ):
        assert "unknown symbol XRPUSDT: not in BML_SYMBOLS" in one_line(bml(*command, "--symbols", "XRPUSDT")), command
    assert "unknown symbol XRPUSDT" in one_line(bml("show-watermark", "--symbol", "XRPUSDT"))
    assert "--symbols" in one_line(bml("scan", *day, "--symbols", "btc"))
    assert not (bml.lake / "futures").exists() and not (bml.lake / "_dagster").exists()


def test_run_once_advances_the_watermark_by_the_exchange_clock(bml: Bml, server: ReplayServer) -> None:
    ok(bml("init-state"))
    out = ok(bml("run-once")).stdout
    # 10:30:20 with a 1-minute safety lag: 10:28 is the last committable minute.
    assert "BTCUSDT      2024-06-03 hot      none              -> 2024-06-03 10:28" in out
    assert "ETHUSDT      2024-06-03 hot      none              -> 2024-06-03 10:28" in out
    # One run for the day's due symbols, not one per symbol (in the instance under the lake root).
    from dagster import DagsterInstance

    with DagsterInstance.from_config(str(Path(bml.env["BML_LAKE_ROOT"]).resolve() / "_dagster")) as instance:
        runs = instance.get_runs()
    assert len(runs) == 1
    assert runs[0].tags["dagster/asset_partition_range_start"] == "2024-06-03|BTCUSDT"
    assert runs[0].tags["dagster/asset_partition_range_end"] == "2024-06-03|ETHUSDT"
    assert "nothing new is committable yet" in ok(bml("run-once")).stdout
    server.clock.set(CLOCK_AT + dt.timedelta(minutes=5))
    try:
        out = ok(bml("run-once", "--symbols", "BTCUSDT")).stdout
    finally:
        server.clock.set(CLOCK_AT)
    assert "BTCUSDT      2024-06-03 hot      2024-06-03 10:28  -> 2024-06-03 10:33" in out
    report = {r["symbol"]: r for r in json.loads(ok(bml("show-watermark", "--json")).stdout)}
    assert report["BTCUSDT"]["watermark"] == "2024-06-03T10:33:00+00:00"
    assert report["ETHUSDT"]["watermark"] == "2024-06-03T10:28:00+00:00"
    assert report["BTCUSDT"]["provisional_days"] == ["2024-06-03"]  # REST-built, Vision has not published it


def test_a_killed_backfill_resumes_and_commits_every_partition_once(bml: Bml) -> None:
    args = ("backfill-range", "--start", "2024-03-10", "--end", "2024-03-15")
    ok(bml("init-state"))
    proc = bml.popen(*args)
    first: list = []
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            first = [r for r in bml.minute_rows() if r.status == "committed"]
            if first:
                break
            time.sleep(0.05)
        assert first, "no partition was committed before the deadline"
        workers = _children(proc.pid)
        proc.kill()  # SIGKILL: no cleanup of any kind
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert len(bml.minute_rows()) < 12  # killed in the middle
    # Its worker processes do not outlive it (an orphan would wait on the pool forever).
    assert workers, "the backfill started no worker process"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(pid) for pid in workers):
        time.sleep(0.1)
    assert not [pid for pid in workers if _alive(pid)], "worker processes outlived the killed backfill"
    killed_at = {(r.symbol, r.day): r for r in first}

    out = ok(bml(*args)).stdout
    assert "final scan: clean" in out
    rows = bml.minute_rows()
    assert len(rows) == 12 and len({(r.symbol, r.day) for r in rows}) == 12
    for r in rows:
        assert r.status == "committed"
        assert file_sha256(bml.lake / r.path) == r.content_hash
        if (r.symbol, r.day) in killed_at:  # committed before the kill: not committed again
            assert r.committed_at == killed_at[(r.symbol, r.day)].committed_at
    assert not list(bml.lake.rglob("*.tmp"))
    ok(bml("scan", "--start", "2024-03-10", "--end", "2024-03-15"))


def _children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(c) for c in (task / "children").read_text().split()]
    return children


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def test_run_daemon_serves_the_ui_and_stops_on_ctrl_c(bml: Bml) -> None:
    port = free_port()
    with ThreadedStreamServer() as ws:
        bml.env["BML_WS_BASE_URL"] = ws.base_url
        proc = bml.popen("run-daemon", "--port", str(port))
        try:
            deadline = time.monotonic() + 90
            up = False
            while time.monotonic() < deadline and proc.poll() is None and not up:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
                        up = answer.status == 200
                except OSError:
                    time.sleep(0.3)
            assert up, proc.stdout.read() if proc.poll() is not None and proc.stdout else "the UI did not answer"
            # The live collector runs beside it, for BML_SYMBOLS (one shard: two connections).
            ws.call(ws.ws.wait_for_peers(2, timeout=90), timeout=95)
            proc.send_signal(signal.SIGINT)
            output, _ = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.terminate()  # forwarded to dagster dev
                proc.wait(timeout=60)
        peers = ws.ws.peers
    assert proc.returncode == 0, output
    assert f"--port {port}" in output and "workspace.yaml" in output
    assert "Dagster services shut down" in output
    # The UI's instance is the one the bml commands use: under the lake root (no DAGSTER_HOME here).
    home = Path(bml.env["BML_LAKE_ROOT"]).resolve() / "_dagster"
    assert f"Dagster instance: {home}" in output and (home / "dagster.yaml").is_file()
    assert "live collector started (pid" in output and "live collector stopped (exit code 0)" in output
    assert "ended with exit code" not in output  # it never died on its own
    assert sorted(p.streams[0] for p in peers) == ["btcusdt@aggTrade", "btcusdt@depth@100ms"]
    assert all("ethusdt@bookTicker" in p.streams or "ethusdt@forceOrder" in p.streams for p in peers)
    assert [p.close_code for p in peers] == [1000, 1000]  # stopped cleanly, not killed
