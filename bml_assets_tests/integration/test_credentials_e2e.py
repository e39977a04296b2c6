"""Credentials in ``BML_VISION_BASE_URL`` / ``BML_REST_BASE_URL`` (a private mirror,
``http://user:s3cret@host``) end to end: runs that succeed, repair from REST, meet a
404 and a persistent 500 leave the password nowhere — not in the lake's files (ledger
database, parquet, cache sidecars), not in Dagster's events, logs or run storage, not
in errors."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from dagster import DagsterInstance
from dagster._serdes import serialize_value

from bml_assets.cli import main
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.server import ReplayServer

from .conftest import DAY, Lake, failure_text, make_lake

SECRET = "s3cret"
KLINES_PATH = f"klines/BTCUSDT/1m/BTCUSDT-1m-{DAY.isoformat()}.zip"
BOOK_PATH = f"bookTicker/BTCUSDT/BTCUSDT-bookTicker-{DAY.isoformat()}.zip"
ETH_AGG_PATH = f"aggTrades/ETHUSDT/ETHUSDT-aggTrades-{DAY.isoformat()}.zip"


@pytest.fixture
def private(tmp_path: Path, replay: ReplayServer) -> Iterator[tuple[Lake, str]]:
    """A lake whose Vision and REST base URLs carry a user and a password."""
    replay.faults.clear()
    base = replay.base_url.replace("http://", f"http://user:{SECRET}@")
    with DagsterInstance.ephemeral() as instance:
        yield make_lake(tmp_path / "lake", base, instance), replay.base_url.replace("http://", "http://***@")
    replay.faults.clear()


def test_no_password_in_the_lake_the_events_or_the_errors(
    private: tuple[Lake, str], replay: ReplayServer, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture
) -> None:
    lake, shown = private
    caplog.set_level(logging.DEBUG)
    # A Vision file gone from an old day (repaired from REST), and one never published (404).
    replay.faults.add(FaultRule("missing", KLINES_PATH))
    replay.faults.add(FaultRule("missing", BOOK_PATH))
    built = lake.materialize("BTCUSDT", DAY)
    assert built.success, failure_text(built)
    replay.faults.clear()
    # A persistent 500: the run fails and says where.
    replay.faults.add(FaultRule("error_500", ETH_AGG_PATH))
    failed = lake.materialize("ETHUSDT", DAY)
    assert not failed.success

    # The redacted URLs are there, where the password would have been.
    ledger = lake.ledger
    klines = ledger.get_partition("klines_1m", "BTCUSDT", DAY)
    assert klines is not None and klines.provenance["klines"]["status"] == "rest"
    assert klines.provenance["klines"]["base_url"] == shown
    book = ledger.get_partition("book_ticker_1m", "BTCUSDT", DAY)
    assert book is not None and book.provenance["bookTicker"]["url"] == f"{shown}/data/futures/um/daily/{BOOK_PATH}"
    metrics = ledger.get_partition("metrics_5m", "BTCUSDT", DAY)
    assert metrics is not None
    (metrics_url, *_) = [f["url"] for f in metrics.provenance["metrics"]["files"]]
    assert metrics_url.startswith(f"{shown}/data/futures/um/daily/metrics/BTCUSDT/")
    assert ledger.get_source_file(metrics_url) is not None  # source_files holds the redacted URL
    sidecars = list(lake.settings.cache_dir.rglob("*.json"))
    assert sidecars and all(f'"url": "{shown}/' in p.read_text() for p in sidecars)
    error = failure_text(failed)
    assert f"{shown}/data/futures/um/daily/{ETH_AGG_PATH}" in error and "500" in error, error

    # And the password is nowhere.
    files = [p for p in lake.root.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.name == "ledger.sqlite" for p in files)
    assert [p for p in files if SECRET.encode() in p.read_bytes()] == []
    for result in (built, failed):
        events = [serialize_value(event) for event in result.all_events]  # messages, metadata, errors
        assert [e for e in events if SECRET in e] == []
    assert SECRET not in error
    assert SECRET not in caplog.text
    out, err = capfd.readouterr()
    assert "STEP_FAILURE" in err or "STEP_FAILURE" in caplog.text  # the logs were captured
    assert SECRET not in out and SECRET not in err


def _texts_of(database: Path) -> Iterator[str]:
    """Every value of every table of a SQLite file, zlib-compressed blobs (Dagster's
    snapshots) unpacked."""
    with sqlite3.connect(database) as conn:
        tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for row in conn.execute(f'SELECT * FROM "{table}"'):
                for value in row:
                    if isinstance(value, bytes):
                        try:
                            value = zlib.decompress(value)
                        except zlib.error:
                            pass
                        value = value.decode("utf-8", errors="replace")
                    if isinstance(value, str):
                        yield value


def test_the_cli_with_a_dagster_home_shows_and_stores_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("BML_"):
            monkeypatch.delenv(name)
    home = tmp_path / "dagster_home"
    home.mkdir()
    market = SyntheticMarket(MarketConfig(seed=3, trades_per_day=1000))
    clock = MarketClock.fixed(dt.datetime(2024, 6, 3, 10, 30, 20, tzinfo=dt.UTC))
    with ReplayServer(market=market, clock=clock) as server:
        base = server.base_url.replace("http://", f"http://user:{SECRET}@")
        shown = server.base_url.replace("http://", "http://***@")
        env = {
            "DAGSTER_HOME": str(home),
            "BML_SYMBOLS": "BTCUSDT",
            "BML_START_DATE": "2024-01-01",
            "BML_LAKE_ROOT": str(tmp_path / "lake"),
            "BML_VISION_BASE_URL": base,
            "BML_REST_BASE_URL": base,
        }
        synced = CliRunner().invoke(main, ["symbols", "sync"], env=env, catch_exceptions=False)
        result = CliRunner().invoke(main, ["run-once"], env=env, catch_exceptions=False)
    assert synced.exit_code == 0, synced.output
    assert f"exchangeInfo ({shown}): " in synced.output
    assert SECRET not in synced.output
    assert result.exit_code == 0, result.output
    assert "BTCUSDT      2024-06-03 hot      none              -> 2024-06-03 10:28" in result.output
    assert SECRET not in result.output
    databases = [p for p in home.rglob("*.db")]
    assert databases  # the runs and their job snapshots were stored
    snapshot_texts = [t for db in databases for t in _texts_of(db)]
    assert [t[:200] for t in snapshot_texts if SECRET in t] == []
    # The resources' URL fields are stored redacted: the credentials stay in the process
    # (the REST resource's config, its fields in name order: base_url, egress, state_url).
    assert any(f'\\"base_url\\": \\"{shown}\\", \\"egress\\": \\"\\", \\"state_url\\": ' in t for t in snapshot_texts)
    lake_files = [p for p in (tmp_path / "lake").rglob("*") if p.is_file()]
    assert lake_files and [p for p in lake_files if SECRET.encode() in p.read_bytes()] == []
