"""The ``bml`` command line.

What belongs here: argument parsing, printing (progress bars included) and exit
codes for the commands people run in a terminal; each command parses its options,
calls one function of the package (``orchestration/`` for the state, the symbol
universe, scans, backfills, the hot pass and the daemon; the replay server; the live
collector (``live/process.py``) and the live table's rebuild from its spool
(``live/rebuild.py``); the demo driving the real Dagster definitions; the coverage
heatmap, drawn by ``defs/coverage.py``) and prints what it returns or yields.
What stays out: logic of its own — a command that needs some, gets it in the
module that owns the subject.

Exit codes: 0 when everything asked for is done and clean, 1 when work failed or
problems remain (or the state cannot be used), 2 for usage errors (bad options,
dates, symbols or ``BML_*`` values). Configuration comes from the same ``BML_*``
environment (and ``.env``) as the Dagster code location. Heavy modules (Dagster)
are imported inside the commands, so ``--help`` stays quick.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import json
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from bml_assets.domain.settings import Settings, SettingsError, parse_symbols
from bml_assets.orchestration.console import console_logging

DEMO_DAYS = (dt.date(2024, 2, 29), dt.date(2024, 3, 1), dt.date(2024, 3, 2))


class BadArgument(click.ClickException):
    """A usage error of one argument (a partition key outside the set, an unknown symbol, a bad
    date or ``BML_*`` value): one line on stderr naming it and what is valid, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _date(_ctx: click.Context, param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        option = param.opts[0] if param.opts else param.name
        raise BadArgument(
            f"{option} {value!r} is not a date like 2024-03-01 (YYYY-MM-DD, a real day, or an ISO timestamp)"
        ) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)  # partitions are UTC days
    return moment.date()


F = TypeVar("F", bound=Callable[..., Any])

LEDGER_VERSION_HELP = (
    "what to do: bml upgrades a ledger it knows in place (`bml db current` shows where it stands). A ledger "
    "a newer bml upgraded needs that bml. Otherwise start a new one: point BML_STATE_URL (or BML_LAKE_ROOT) at "
    "a fresh location, run `bml init-state`, then `bml backfill-range` to rebuild the ledger rows (unchanged "
    "files are not rewritten)."
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _guarded(fn: F) -> F:
    """Turn the errors a user can act on into clear messages and the right exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from bml_assets.lake.ledger import LedgerVersionError
        from bml_assets.orchestration.errors import BadRequest, CommandError
        from bml_assets.sources.http import HttpError
        from bml_assets.sources.rest import RestError
        from bml_assets.sources.rest_budget import RestBanned

        try:
            return fn(*args, **kwargs)
        except SettingsError as err:
            raise BadArgument(f"configuration: {err}") from None
        except BadRequest as err:
            raise BadArgument(str(err)) from None
        except CommandError as err:
            _fail(str(err))
        except LedgerVersionError as err:
            _fail(f"{err}\n{LEDGER_VERSION_HELP}")
        except (HttpError, RestError, RestBanned) as err:
            _fail(f"the exchange could not be asked: {err}")

    return wrapper  # type: ignore[return-value]


def _settings() -> Settings:
    return Settings.from_env()


def _symbols_option(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    try:
        return parse_symbols(value, variable="--symbols")
    except SettingsError as err:
        raise BadArgument(str(err)) from None


def _live_bar() -> bool:
    return sys.stderr.isatty()


class _Quiet:
    """Stands in for a progress bar when stderr is not a terminal (logs, CI): one line, no redraws."""

    def __init__(self, label: str = "", **_kw: Any) -> None:
        click.echo(f"{label} …", err=True)

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def update(self, _n: int, _item: Any = None) -> None:
        return None


def _progress(**kw: Any) -> Any:
    """``click.progressbar`` (with ETA, on stderr) on a terminal, else a single line."""
    if not _live_bar():
        return _Quiet(**kw)
    return click.progressbar(show_eta=True, file=sys.stderr, **kw)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """bml — the Binance Minute Lake: a verified 1-minute view of USD-M perpetuals."""
    console_logging()
    # Dagster's beta/preview notices about the project's own definitions are not for terminal users.
    warnings.filterwarnings("ignore", message=r".*is currently in (beta|preview)")


@main.command("replay-server")
@click.option(
    "--host", default="127.0.0.1", show_default=True, help="Address to bind (a loopback one unless --allow-public)."
)
@click.option(
    "--allow-public",
    is_flag=True,
    help="Allow a non-loopback --host and any Host header: anyone who can reach it can set faults.",
)
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 = any free port).")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the synthetic market.")
@click.option("--trades-per-day", default=6000, show_default=True, type=int, help="aggTrades per symbol-day.")
@click.option(
    "--symbols",
    default="BTCUSDT,ETHUSDT",
    show_default=True,
    help="Comma-separated symbols of the synthetic market (its exchangeInfo); others get Vision 404 and REST -1121.",
)
@click.option(
    "--real-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also serve real Vision files from this folder (they win over the synthetic market and serve "
    "whatever symbol they name; links leading outside the folder are not served).",
)
@click.option(
    "--clock-origin",
    default=None,
    help="Run a market clock from this UTC instant (e.g. 2024-06-03T10:00:00) instead of real time: "
    "REST serves the market as of that clock and Vision publishes only days before it.",
)
@click.option("--clock-speed", default=1.0, show_default=True, type=float, help="Market seconds per real second.")
@click.option(
    "--ws-port",
    default=None,
    type=int,
    help="Port of the WebSocket streams (/public/stream, /market/stream) [default: --port + 1; any free port "
    "with --port 0].",
)
@click.option(
    "--ws-recording",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Replay this '<local_ns> <json>' recording (e.g. a raw spool file) on the WebSocket side in real "
    "market time; /fapi/v1/depth answers for its symbol from it.",
)
@click.option(
    "--ws-recording-origin",
    default=None,
    help="UTC instant the recording's first event is moved to (default: the market clock's now at start).",
)
def replay_server(
    host: str,
    allow_public: bool,
    port: int,
    seed: int,
    trades_per_day: int,
    symbols: str,
    real_dir: Path | None,
    clock_origin: str | None,
    clock_speed: float,
    ws_port: int | None,
    ws_recording: Path | None,
    ws_recording_origin: str | None,
) -> None:
    """Serve Binance Vision files, the USD-M REST API and its WebSocket streams (synthetic market,
    real files, a recording) locally."""
    from bml_assets.replay.server import is_loopback_host, serve
    from bml_assets.replay.ws.recording import RecordingError

    if not allow_public and not is_loopback_host(host):
        raise click.UsageError(
            f"--host {host} is not a loopback address: the replay server is a local test tool; "
            "add --allow-public to expose it anyway"
        )
    symbol_list = _symbols_option(symbols)
    origin = _utc_instant(clock_origin, "--clock-origin")
    recording_origin = _utc_instant(ws_recording_origin, "--ws-recording-origin")
    try:
        serve(
            host,
            port,
            seed=seed,
            trades_per_day=trades_per_day,
            real_dir=real_dir,
            listing_dates={},
            symbols=symbol_list,
            allow_public=allow_public,
            clock_origin=origin,
            clock_speed=clock_speed,
            ws_port=ws_port,
            ws_recording=ws_recording,
            ws_recording_origin=recording_origin,
        )
    except RecordingError as exc:
        raise click.BadParameter(str(exc), param_hint="--ws-recording") from None


def _utc_instant(text: str | None, option: str) -> dt.datetime | None:
    """An ISO instant option as an aware UTC datetime (naive means UTC)."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO time like 2024-06-03T10:00:00", param_hint=option) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


@main.command()
@click.option("--lake-root", type=click.Path(path_type=Path), default=Path(".bml_demo/lake"), show_default=True)
@click.option("--symbols", default="BTCUSDT,ETHUSDT", show_default=True, help="Comma-separated symbols.")
@click.option("--start", callback=_date, default=DEMO_DAYS[0].isoformat(), show_default=True, help="First day.")
@click.option("--days", default=len(DEMO_DAYS), show_default=True, type=click.IntRange(1, 31))
@click.option("--trades-per-day", default=20_000, show_default=True, type=int, help="Synthetic aggTrades per day.")
@click.option("--vision-base-url", default=None, help="Use this Vision host instead of starting the replay server.")
def demo(
    lake_root: Path, symbols: str, start: dt.date, days: int, trades_per_day: int, vision_base_url: str | None
) -> None:
    """Materialize the minute view for a few partitions through Dagster, offline, and report."""
    from bml_assets.demo import format_reports, run_demo

    try:
        symbol_list = parse_symbols(symbols, variable="--symbols")
    except SettingsError as err:
        raise click.BadParameter(str(err)) from None
    reports = run_demo(
        lake_root=lake_root,
        symbols=symbol_list,
        days=[start + dt.timedelta(days=i) for i in range(days)],
        vision_base_url=vision_base_url,
        trades_per_day=trades_per_day,
        echo=click.echo,
    )
    click.echo("")
    click.echo(format_reports(reports))
    click.echo(
        f"\nlake: {lake_root.resolve()}  (read it with DuckDB: SELECT * FROM '{lake_root}/futures/um/minute/*/*/*.parquet')"
    )
    sys.exit(0 if all(r.success and all(r.checks.values()) for r in reports) else 1)


@main.command()
def columns() -> None:
    """Print the columns of the minute view (from the schema registry)."""
    from bml_assets.domain.schema import column_table_markdown

    click.echo(column_table_markdown())


# --------------------------------------------------------------------------- state and universe


@main.command("init-state")
@_guarded
def init_state() -> None:
    """Create the lake root and the ledger tables (idempotent); print where they are."""
    from bml_assets.orchestration.state import init_state as create

    info = create(_settings())
    click.echo(f"lake root: {info.lake_root}")
    click.echo(f"ledger:    {info.ledger_url} (schema_version {info.schema_version})")
    click.echo(f"tables:    {', '.join(info.tables)}")
    hint = "" if info.symbols_synced else "  (run `bml symbols sync` to load the exchange's symbols)"
    click.echo(f"symbols synced: {info.symbols_synced}{hint}")


@main.group()
def db() -> None:
    """The ledger's database: its migrations (upgraded in place; SPEC §10)."""


@db.command("current")
@_guarded
def db_current() -> None:
    """Show the ledger's migration revision and what `bml db upgrade` would run; changes nothing."""
    from sqlalchemy.engine import make_url

    from bml_assets.lake.ledger import Ledger

    url = _settings().state_url
    parsed = make_url(url)
    # Looking must not create: opening a SQLite file that is not there makes an empty one.
    missing = parsed.get_backend_name() == "sqlite" and bool(parsed.database) and not Path(parsed.database).exists()
    with Ledger("sqlite://" if missing else url) as ledger:  # a missing file reads as an empty database
        state = ledger.migration_state()
    click.echo(f"ledger:   {parsed.render_as_string(hide_password=True)}{' (no such file)' if missing else ''}")
    if state.refused is not None:
        click.echo(
            f"revision: none; `bml db upgrade` would refuse it: {state.refused.removesuffix('; nothing was changed')}"
        )
    elif state.empty:
        click.echo("revision: none (no ledger yet: `bml db upgrade` or `bml init-state` creates it)")
    elif state.current is None:
        click.echo(f"revision: none (a ledger older than the migrations, schema_version {state.pre_migration})")
    else:
        click.echo(f"revision: {state.current}")
    click.echo(f"head:     {state.head} (the newest this bml knows)")
    if state.refused is not None:
        return
    if not state.known:
        click.echo("a newer bml upgraded this ledger: upgrade bml before using it")
    elif state.pending:
        click.echo(f"{len(state.pending)} migration(s) pending (`bml db upgrade` runs them):")
        for revision, what in state.pending:
            click.echo(f"  {revision}  {what.splitlines()[0] if what else ''}")
    else:
        click.echo("up to date")


@db.command("upgrade")
@_guarded
def db_upgrade() -> None:
    """Upgrade the ledger's tables in place to this bml's newest revision (idempotent)."""
    from bml_assets.lake.ledger import Ledger

    with Ledger(_settings().state_url) as ledger:
        done = ledger.upgrade()
        click.echo(f"ledger:   {ledger.display_url}")
    if not done.changed:
        click.echo(f"revision: {done.after} (up to date, nothing to do)")
        return
    before = done.before or "empty"
    if done.adopted is not None:
        before = f"schema_version {done.adopted} (before migrations), as {done.before}"
    click.echo(f"revision: {done.after} (upgraded from {before})")


@main.group()
def symbols() -> None:
    """The exchange's symbol universe, kept in the ledger's symbols table."""


@symbols.command("sync")
@_guarded
def symbols_sync() -> None:
    """exchangeInfo → the onboard date and status of every USD-M perpetual, in the ledger.

    Days before a symbol's onboard date are then "not listed" (backfills skip them);
    a symbol that stopped trading stops at its last trading day when exchangeInfo
    gives it.
    """
    from bml_assets.domain.redaction import redact_url
    from bml_assets.orchestration.symbols import sync_symbols

    settings = _settings()
    result = sync_symbols(settings)
    click.echo(
        f"exchangeInfo ({redact_url(settings.rest_base_url)}): {result.perpetuals} USD-M perpetual(s): "
        f"{result.trading} trading, {result.not_trading} not trading "
        f"({result.delisted_with_date} with a last trading day)"
    )
    click.echo(
        f"ledger {result.ledger_url}: {result.sync.added} added, {result.sync.changed} changed, "
        f"{result.sync.unchanged} unchanged"
    )
    if result.unlisted_configured:
        names = ", ".join(result.unlisted_configured)
        click.echo(f"warning: BML_SYMBOLS lists {names}, which exchangeInfo does not list", err=True)


# --------------------------------------------------------------------------- hot band


def _when(moment: dt.datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "none"


@main.command("run-once")
@click.option("--symbols", "symbols_text", default=None, help="Comma-separated symbols (default: BML_SYMBOLS).")
@_guarded
def run_once(symbols_text: str | None) -> None:
    """One hot-poll pass: per symbol, commit the minutes closed since its watermark (exchange clock)."""
    from bml_assets.orchestration.hot import hot_pass

    outcomes = hot_pass(_settings(), _symbols_option(symbols_text))
    failed = 0
    click.echo(f"{'symbol':<12} {'day':<10} {'band':<8} {'watermark before':<17} -> after")
    try:
        for o in outcomes:
            day = o.day.isoformat() if o.day else "-"
            note = "" if o.day else "  (nothing new is committable yet)"
            click.echo(f"{o.symbol:<12} {day:<10} {o.band or '-':<8} {_when(o.before):<17} -> {_when(o.after)}{note}")
            if not o.ok:
                failed += 1
                click.echo(f"    FAILED: {o.error}", err=True)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the watermarks stay where the last commit left them", err=True)
        sys.exit(130)
    sys.exit(1 if failed else 0)


@main.command("run-daemon")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address of the web UI (loopback unless told).")
@click.option("--port", default=3000, show_default=True, type=click.IntRange(0, 65535), help="Port of the web UI.")
@click.option(
    "--workspace",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Workspace file (default: ./workspace.yaml, else the project's, else the bml_assets module).",
)
@click.option("--no-live", is_flag=True, help="Do not run the live collector (bml live-collect) beside it.")
@_guarded
def run_daemon(host: str, port: int, workspace: Path | None, no_live: bool) -> None:
    """Run `dagster dev` (web UI + daemon: schedules and sensors) and the live collector for
    BML_SYMBOLS beside it, with this environment; Ctrl-C stops both. The Dagster instance is
    DAGSTER_HOME when set, else {BML_WORK_DIR}/_dagster: the one the bml commands use."""
    from bml_assets.orchestration import daemon

    # A bad BML_* value is reported here, not by a code server later.
    launch = daemon.daemon_launch(_settings(), host, port, workspace, live=not no_live)
    for note in launch.notes:
        click.echo(note, err=True)
    click.echo(f"starting: {' '.join(launch.command)}  (UI on http://{host}:{port}; Ctrl-C stops)", err=True)
    sys.exit(daemon.run_daemon(launch, report=lambda line: click.echo(line, err=True)))


# --------------------------------------------------------------------------- the local cluster


@main.group("cluster")
def cluster() -> None:
    """A local scale-out cluster for tests and demos (SPEC §10): PostgreSQL, Redis, moto's S3
    server and Celery workers on 127.0.0.1, under one folder. See README, "Scale-out"."""


_CLUSTER_DIR = click.option(
    "--dir",
    "folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".bml-cluster"),
    show_default=True,
    help="The cluster's folder (its services' data, logs and cluster.env).",
)


def _cluster_failure(fn: F) -> F:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import subprocess

        from bml_assets.cluster.services import ServiceUnavailable

        try:
            return fn(*args, **kwargs)
        except ServiceUnavailable as err:
            _fail(f"cluster: {err}")
        except subprocess.TimeoutExpired as err:
            _fail(f"cluster: {err.cmd[0] if err.cmd else 'a command'} did not finish within {err.timeout:g} s")
        except SettingsError as err:
            raise BadArgument(f"configuration: {err}") from None

    return wrapper  # type: ignore[return-value]


@cluster.command("up")
@_CLUSTER_DIR
@click.option("--workers", type=click.IntRange(1, 16), default=2, show_default=True, help="Celery workers.")
@click.option(
    "--replay",
    "replay_symbols",
    default=None,
    help="Also serve a synthetic market of these comma-separated symbols (bml replay-server) and point "
    "Vision and REST at it: a cluster that needs no internet.",
)
@click.option("--trades-per-day", type=click.IntRange(1), default=6000, show_default=True, help="With --replay.")
@_cluster_failure
def cluster_up(folder: Path, workers: int, replay_symbols: str | None, trades_per_day: int) -> None:
    """Start the cluster and write {dir}/cluster.env: PostgreSQL (databases bml and dagster),
    Redis, moto_server with the bucket bml-lake (the lake: s3://bml-lake/lake), --workers
    Celery workers, and DAGSTER_HOME with deploy/dagster.yaml. Run commands in it with
    `bml cluster run ...`."""
    from bml_assets.cluster.local import up

    symbols = _symbols_option(replay_symbols) if replay_symbols else None
    state = up(folder, worker_count=workers, replay_symbols=symbols, replay_trades_per_day=trades_per_day)
    click.echo(f"cluster up in {state.folder}: {len(state.worker_pids)} Celery worker(s)")
    for key in ("BML_STATE_URL", "DAGSTER_PG_URL", "BML_LAKE_ROOT", "BML_S3_ENDPOINT_URL", "BML_CELERY_BROKER_URL"):
        click.echo(f"  {key}={state.env[key]}")
    if symbols:
        click.echo(f"  replay server: {state.env['BML_VISION_BASE_URL']} ({','.join(symbols)})")
    click.echo(f"run commands in it: bml cluster run --dir {folder} -- bml backfill-range ...; stop: bml cluster down")


@cluster.command("down")
@_CLUSTER_DIR
@click.option("--purge", is_flag=True, help="Also delete the folder (the lake in moto and both databases).")
@_cluster_failure
def cluster_down(folder: Path, purge: bool) -> None:
    """Stop every service of the cluster."""
    from bml_assets.cluster.local import down

    down(folder, purge=purge)
    click.echo(f"cluster in {folder} stopped" + (" and deleted" if purge else ""))


@cluster.command("run", context_settings={"ignore_unknown_options": True})
@_CLUSTER_DIR
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@_cluster_failure
def cluster_run(folder: Path, command: tuple[str, ...]) -> None:
    """Run COMMAND with the cluster's environment added to this one (e.g. `bml cluster run --
    bml backfill-range --start 2024-01-01 --end 2024-01-10`, or `-- dagster dev`)."""
    import os

    from bml_assets.cluster.local import environment

    env = {**os.environ, **environment(folder)}
    try:
        os.execvpe(command[0], list(command), env)
    except OSError as err:
        _fail(f"cluster run: cannot run {command[0]!r}: {err.strerror}")


# --------------------------------------------------------------------------- the live collector


def _summary_lines(summary: Any) -> list[str]:
    frames = ", ".join(f"{family} {n}" for family, n in summary.frames.items())
    lines = [
        f"live-collect: {len(summary.symbols)} symbol(s) ({','.join(summary.symbols)}) in {summary.shards} "
        f"shard(s), stopped by {summary.stopped_by} after {summary.duration_s:.1f} s",
        f"frames: {frames} ({summary.duplicates} duplicate(s) dropped in rotations)",
        f"connections: {summary.drops} drop(s), {summary.rotations} rotation(s); silent streams: {summary.silences}",
    ]
    clock = summary.clock
    if clock is None:
        lines.append("clock: not measured")
    elif clock.ok:
        lines.append(f"clock: offset {clock.offset_ms:+.1f} ms (round trip {clock.round_trip_ms:.1f} ms)")
    else:
        kept = "none" if clock.offset_ms is None else f"{clock.offset_ms:+.1f} ms"
        lines.append(f"clock: last measurement failed ({clock.error}); offset kept: {kept}")
    lines.append(f"depth snapshots: {summary.snapshots} fetched, {summary.snapshot_failures} failed")
    lines += [f"error: {e}" for e in summary.errors]
    return lines


@main.command("live-collect")
@click.option("--symbols", "symbols_text", default=None, help="Comma-separated symbols (default: BML_SYMBOLS).")
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Stop cleanly after this many seconds (default: run until SIGTERM or Ctrl-C).",
)
@_guarded
def live_collect(symbols_text: str | None, duration: float | None) -> None:
    """Collect the exchange's live streams (BML_WS_BASE_URL) for the symbols until --duration
    has passed or SIGTERM / Ctrl-C; either way it ends cleanly. Progress goes to stderr."""
    import logging

    from bml_assets.lake.lake import Lake
    from bml_assets.live.process import run_collector
    from bml_assets.orchestration.state import check_lake

    settings = _settings()
    symbols = _symbols_option(symbols_text)
    check_lake(Lake.from_settings(settings))
    console_logging(timed_info=True)  # the collector's lines are a timed log
    logging.getLogger("websockets").setLevel(logging.WARNING)
    summary = run_collector(settings, symbols, duration_s=duration)
    for line in _summary_lines(summary):
        click.echo(line)
    sys.exit(0 if summary.ok else 1)


# --------------------------------------------------------------------------- watermark and scan


@main.command("show-watermark")
@click.option("--symbol", default=None, help="Only this symbol.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_guarded
def show_watermark(symbol: str | None, as_json: bool) -> None:
    """Per symbol: watermark, committed partitions, first/last day, provisional and not-listed days."""
    from bml_assets.domain.partitions import show_ranges
    from bml_assets.orchestration.state import watermark_report

    if symbol is not None:
        try:
            symbol = parse_symbols(symbol, variable="--symbol")[0]
        except SettingsError as err:
            raise BadArgument(str(err)) from None
    rows = watermark_report(_settings(), symbol)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(
        f"{'symbol':<12} {'watermark':<25} {'committed':>9}  {'first':<10}  {'last':<10}  provisional / not listed"
    )
    for r in rows:
        days = [dt.date.fromisoformat(d) for d in r["provisional_days"]]
        missing = [dt.date.fromisoformat(d) for d in r["not_listed_days"]]
        click.echo(
            f"{r['symbol']:<12} {r['watermark'] or 'none':<25} {r['committed_partitions']:>9}  "
            f"{r['first_committed_day'] or '-':<10}  {r['last_committed_day'] or '-':<10}  "
            f"{len(days)} ({show_ranges(days)}) / {len(missing)} ({show_ranges(missing)})"
        )


def _some_ranges(days: list[Any], shown: int = 4) -> str:
    """Days folded into ranges, the first ``shown`` ranges and how many more."""
    from bml_assets.domain.partitions import day_ranges

    ranges = day_ranges(days)
    text = ", ".join(a.isoformat() if a == b else f"{a.isoformat()}..{b.isoformat()}" for a, b in ranges[:shown])
    more = f" (+{len(ranges) - shown} more)" if len(ranges) > shown else ""
    return f"{len(days)}: {text}{more}" if days else "0"


@main.command()
@click.option("--start", callback=_date, default=None, help="First day [default: the ledger's first day of them].")
@click.option("--end", callback=_date, default=None, help="Last day, inclusive [default: today UTC].")
@click.option("--symbols", "symbols_text", default=None, help="Comma-separated symbols (default: BML_SYMBOLS).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (every day, not folded).")
@click.option("--no-image", is_flag=True, help="Do not draw the heatmap.")
@_guarded
def coverage(
    start: dt.date | None, end: dt.date | None, symbols_text: str | None, as_json: bool, no_image: bool
) -> None:
    """Per symbol, from the ledger: the committed ranges, missing days, incomplete and provisional
    days of the minute view; and a heatmap (symbols × days, coloured by state) written to
    {BML_WORK_DIR}/_reports/coverage.png (needs the extra `plot`: matplotlib). The coverage_sensor
    shows the same picture on minute_view in the UI. Exit 0 (it reports; `bml scan` judges files)."""
    from bml_assets.defs.coverage import write_coverage_report
    from bml_assets.orchestration.state import coverage_report

    settings = _settings()
    cov = coverage_report(settings, _symbols_option(symbols_text), start=start, end=end)
    report = None if no_image else write_coverage_report(cov, settings.host_dir)
    if as_json:
        payload = cov.to_json()
        payload["heatmap"] = str(report.png) if report is not None and report.png is not None else None
        click.echo(json.dumps(payload, indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"minute view coverage {cov.start.isoformat()}..{cov.end.isoformat()} (from the ledger)")
        for name in ("symbol", "committed", "committed ranges", "missing", "incomplete", "provisional", "not listed"):
            table.add_column(name, justify="right" if name == "committed" else "left")
        for row in cov.per_symbol():
            ranges = [f"{a.isoformat()}..{b.isoformat()}" if a != b else a.isoformat() for a, b in row.committed]
            table.add_row(
                row.symbol,
                str(row.committed_days),
                ", ".join(ranges[:4]) + (f" (+{len(ranges) - 4} more)" if len(ranges) > 4 else "") or "-",
                _some_ranges(list(row.missing)),
                _some_ranges(list(row.incomplete)),
                _some_ranges(list(row.provisional)),
                _some_ranges(list(row.not_listed)),
            )
        # In a log or a pipe, wide enough that a row is one line.
        Console(width=None if sys.stdout.isatty() else 200).print(table)
    if report is not None:
        if report.png is not None:
            click.echo(f"heatmap: {report.png}", err=as_json)
        else:
            click.echo(f"heatmap: not drawn: {report.note}", err=True)


def _problem_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [f"{'kind':<22} {'dataset':<23} {'symbol':<12} {'day':<10} {'minutes':>7}  detail"]
    lines += [
        f"{r['kind']:<22} {r['dataset']:<23} {r['symbol']:<12} {r['day']:<10} {r['minutes']:>7}  {r['detail']}"
        for r in rows
    ]
    return lines


def _scan_json(found: Any) -> str:
    report, swept = found.report, found.swept
    payload = {
        "start": found.start.isoformat(),
        "end": found.end.isoformat(),
        "today": found.today.isoformat(),
        "symbols": list(found.symbols),
        "deep": found.deep,
        "checked": report.checked,
        "files_checked": report.files,
        "clean": report.clean,
        "by_kind": report.by_kind(),
        "problems": report.to_rows(),
        "stray_files": [f.to_row() for f in report.strays],
        "stale_file_stats": len(report.restat),
    }
    if swept is not None:
        payload["swept"] = {
            "removed": [str(p) for p in swept.removed],
            "left": [str(p) for p in swept.left],
            "restated": len(swept.restated),
        }
    return json.dumps(payload, indent=2, default=str)


def _scan_lines(found: Any) -> list[str]:
    from bml_assets.orchestration.scans import problem_rows

    report, swept = found.report, found.swept
    span = f"{found.start.isoformat()}..{found.end.isoformat()}, {', '.join(found.symbols)}"
    lines = []
    if swept is not None and (swept.removed or swept.left or swept.restated):
        lines.append(swept.summary())
    lines += [
        f"stray temporary file ({f.where}): {f.path} ({f.bytes} bytes, modified {f.mtime:%Y-%m-%d %H:%M}Z)"
        for f in report.strays
    ]
    if report.strays and swept is None:
        lines.append("run `bml scan --sweep` to remove them")
    if report.clean:
        lines.append(f"clean: {report.checked} partition(s) checked ({report.files} files), no problems ({span})")
    elif report.problems:
        kinds = ", ".join(f"{k} {n}" for k, n in report.by_kind().items())
        lines += _problem_table(problem_rows(report))
        lines.append(f"{len(report.problems)} problem(s) in {report.checked} partition(s) checked ({span}): {kinds}")
    return lines


@main.command()
@click.option("--start", callback=_date, required=True, help="First day (YYYY-MM-DD or an ISO timestamp).")
@click.option("--end", callback=_date, required=True, help="Last day, inclusive.")
@click.option("--symbols", "symbols_text", default=None, help="Comma-separated symbols (default: BML_SYMBOLS).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--shallow",
    is_flag=True,
    help="Per file only a stat against the size and mtime the ledger recorded; the parquet footer "
    "(and a hash) only for a file whose stat changed. Default: hash and read every file.",
)
@click.option(
    "--sweep",
    is_flag=True,
    help="Remove the stray temporary files found (a commit's, under its partition's lock; a Vision "
    "download's, once untouched for an hour) and re-record the size and mtime of intact files. "
    "Without it they are only reported (the repair sensor and backfill-range sweep by themselves).",
)
@_guarded
def scan(start: dt.date, end: dt.date, symbols_text: str | None, as_json: bool, shallow: bool, sweep: bool) -> None:
    """Check every dataset of the lake against the ledger over a range, and look for stray temporary
    files (in the range's partition folders and the Vision cache).

    Problems: missing, unreadable, outdated or changed files of any table, missing minutes, NULLs in
    HARD columns, incomplete partitions (a fillable stream still missing, with the reason). Exit 0
    when clean, 1 when problems or stray files remain.
    """
    from bml_assets.orchestration.scans import scan_range

    found = scan_range(_settings(), start, end, _symbols_option(symbols_text), deep=not shallow, sweep=sweep)
    for line in [_scan_json(found)] if as_json else _scan_lines(found):
        click.echo(line)
    sys.exit(0 if found.clean else 1)


# --------------------------------------------------------------------------- backfills


def _backfill_options(fn: F) -> F:
    for option in reversed(
        [
            click.option(
                "--symbols", "symbols_text", default=None, help="Comma-separated symbols (default: BML_SYMBOLS)."
            ),
            click.option(
                "--max-missing-hours",
                type=click.IntRange(min=0),
                default=None,
                help="Plan at most this much work (each partition counts 24 h); the rest is left for a later run.",
            ),
            click.option("--dry-run", is_flag=True, help="Print the plan only (exit 0 when there is nothing to do)."),
            click.option(
                "--chunk-days",
                type=click.IntRange(min=1),
                default=30,
                show_default=True,
                help="Days scanned per step and built per symbol before the next symbol.",
            ),
            click.option(
                "--workers",
                type=click.IntRange(min=1),
                default=None,
                help="Runs at once, each in a worker process [default: this machine's cores].",
            ),
            click.option(
                "--partitions-per-run",
                type=click.IntRange(min=1),
                default=30,
                show_default=True,
                help="Days of one symbol built in one Dagster run (1: a run per partition, the old way).",
            ),
            click.option("--verbose", "-v", is_flag=True, help="Print the full error chain of a failed partition."),
        ]
    ):
        fn = option(fn)
    return fn


def _span_label(span: tuple[dt.date, dt.date] | None) -> str:
    return f"{span[0].isoformat()}..{span[1].isoformat()}" if span else ""


def _outcome_label(outcome: Any) -> str:
    return f"{outcome.symbol} {outcome.day.isoformat()}" if outcome else ""


class _BackfillScreen:
    """Shows a backfill's events: notes, the plan and the summary on stdout; the scan's and the
    build's progress on stderr (a bar on a terminal; else one line, and a line per partition)."""

    def __init__(self, *, verbose: bool = False) -> None:
        self.verbose = verbose
        self._bar_scope = contextlib.ExitStack()
        self._bar: Any = None
        self.exit_code = 0

    def __enter__(self) -> _BackfillScreen:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._bar_scope.close()

    def show(self, event: Any) -> None:
        from bml_assets.orchestration import backfill as bf

        shown = {
            bf.Scanning: self._scanning,
            bf.Scanned: self._scanned,
            bf.Building: self._building,
            bf.PartitionOutcome: self._built,
            bf.Interrupted: self._interrupted,
            bf.Finished: self._finished,
        }
        shown.get(type(event), self._lines)(event)

    def _open(self, **kw: Any) -> None:
        self._bar_scope.close()
        self._bar = self._bar_scope.enter_context(_progress(**kw))

    def _scanning(self, event: Any) -> None:
        count = len(event.spans)
        self._open(length=count, label=f"scanning {count} chunk(s)", item_show_func=_span_label)

    def _scanned(self, event: Any) -> None:
        self._bar.update(1, event.span)

    def _building(self, event: Any) -> None:
        import time

        self._bar_scope.close()
        self._total, self._done, self._began = len(event.plan.partitions), 0, time.monotonic()
        self._received, self._weight = 0, 0
        if _live_bar():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            progress = Progress(
                TextColumn("building"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[traffic]}"),
                TextColumn("{task.fields[last]}"),
                console=Console(stderr=True),
            )
            self._bar = self._bar_scope.enter_context(progress)
            self._task = progress.add_task("building", total=self._total, rate="", traffic="", last="")
        else:
            click.echo(f"building {self._total} partition(s) …", err=True)

    def _rate(self) -> tuple[str, str]:
        """Partitions per minute so far and the time left at that rate."""
        import time

        elapsed = time.monotonic() - self._began
        if not self._done or elapsed <= 0:
            return "", ""
        per_min = self._done / elapsed * 60
        left = (self._total - self._done) / per_min * 60
        return f"{per_min:.1f} partitions/min", f"ETA {dt.timedelta(seconds=round(left))}"

    def _built(self, outcome: Any) -> None:
        from bml_assets.orchestration.backfill import size_text

        self._done += 1
        self._received += outcome.bytes_received
        self._weight += outcome.rest_weight
        rate, eta = self._rate()
        traffic = f"{size_text(self._received)}, weight {self._weight}"
        if _live_bar():
            self._bar.update(self._task, advance=1, rate=rate, traffic=traffic, last=_outcome_label(outcome))
        else:
            state = "ok" if outcome.ok else "FAILED"
            what = "written" if outcome.rewritten else "unchanged"
            click.echo(
                f"[{self._done}/{self._total}] {outcome.symbol:<12} {outcome.day.isoformat()}  {state:<6} "
                f"{outcome.status:<13} {what:<9} {outcome.seconds:5.1f} s  {rate}, {eta}, {traffic}"
            )
        if not outcome.ok:
            click.echo(f"FAILED {outcome.symbol} {outcome.day.isoformat()}: {outcome.error}", err=True)
            if self.verbose and outcome.detail:
                click.echo(outcome.detail, err=True)

    def _interrupted(self, event: Any) -> None:
        click.echo(
            f"\ninterrupted after {event.done} of {event.planned} partition(s): what was committed "
            "stays; run the same command again to go on",
            err=True,
        )
        self.exit_code = 130

    def _lines(self, event: Any) -> None:
        """A note or the plan: text for stdout, after the progress bar before it."""
        self._bar_scope.close()
        for line in event.lines():
            click.echo(line)

    def _finished(self, event: Any) -> None:
        self._lines(event)
        self.exit_code = 0 if event.clean else 1


def _run_backfill(
    start: dt.date,
    end: dt.date,
    symbols_text: str | None,
    max_missing_hours: int | None,
    dry_run: bool,
    chunk_days: int,
    workers: int | None = None,
    partitions_per_run: int = 30,
    verbose: bool = False,
) -> None:
    from bml_assets.orchestration.backfill import run_backfill

    events = run_backfill(
        _settings(),
        start,
        end,
        symbols=_symbols_option(symbols_text),
        max_missing_hours=max_missing_hours,
        chunk_days=chunk_days,
        dry_run=dry_run,
        workers=workers,
        partitions_per_run=partitions_per_run,
    )
    with _BackfillScreen(verbose=verbose) as screen:
        for event in events:
            screen.show(event)
    sys.exit(screen.exit_code)


@main.command("backfill-range")
@click.option("--start", callback=_date, required=True, help="First day (YYYY-MM-DD or an ISO timestamp).")
@click.option("--end", callback=_date, required=True, help="Last day, inclusive.")
@_backfill_options
@_guarded
def backfill_range(
    start: dt.date,
    end: dt.date,
    symbols_text: str | None,
    max_missing_hours: int | None,
    dry_run: bool,
    chunk_days: int,
    workers: int | None,
    partitions_per_run: int,
    verbose: bool,
) -> None:
    """Scan the range, rebuild every partition the scan finds wrong or missing, scan again.

    Every dataset is scanned; a damaged stream table is rebuilt with its day. Partitions
    are built through the real definitions (minute_view_job): ranged runs of up to
    --partitions-per-run days of one symbol, --workers of them at once, in the one
    persistent Dagster instance (DAGSTER_HOME when set, else BML_WORK_DIR/_dagster, the
    instance `bml run-daemon` serves), so the UI shows them; committed partitions the
    ledger has and Dagster does not are reported to it. Days a symbol was not listed
    are skipped. Stray temporary files the scan finds are swept first (as `bml scan
    --sweep` does; not in a --dry-run). An incomplete partition is rebuilt at once (the
    repair sensor's backoff is for its own retries) and stays a problem while a fillable
    stream is still missing. Exit 0 only when the final scan is clean.
    """
    _run_backfill(
        start, end, symbols_text, max_missing_hours, dry_run, chunk_days, workers, partitions_per_run, verbose
    )


@main.command("backfill-years")
@click.option("--years", type=click.IntRange(1, 50), required=True, help="How many years back from yesterday.")
@_backfill_options
@_guarded
def backfill_years(
    years: int,
    symbols_text: str | None,
    max_missing_hours: int | None,
    dry_run: bool,
    chunk_days: int,
    workers: int | None,
    partitions_per_run: int,
    verbose: bool,
) -> None:
    """backfill-range from N years before yesterday to yesterday."""
    from bml_assets.orchestration.plan import years_back

    first_day = _settings().start_date
    start, end = years_back(years, first_day=first_day)
    clipped = f" (from BML_START_DATE; {years} year(s) would reach further back)" if start == first_day else ""
    click.echo(f"range: {start.isoformat()}..{end.isoformat()}{clipped}")
    _run_backfill(
        start, end, symbols_text, max_missing_hours, dry_run, chunk_days, workers, partitions_per_run, verbose
    )


# --------------------------------------------------------------------------- live collector


@main.command("live-rebuild")
@click.option("--symbol", required=True, help="The symbol whose spool is replayed.")
@click.option("--date", "day", callback=_date, required=True, help="The UTC day to rebuild (YYYY-MM-DD).")
@click.option("--dry-run", is_flag=True, help="Compute and print, commit nothing.")
@_guarded
def live_rebuild(symbol: str, day: dt.date, dry_run: bool) -> None:
    """Rebuild live_1m of one symbol-day from the raw spool, through the live collector's own path.

    Reads {BML_WORK_DIR}/_spool/live/SYMBOL/ from two hours before the day to ten minutes
    after it, replays frames, snapshots and the collector's notes, and replaces the day's
    live_1m table with the minutes of the day (unless --dry-run). Exit 1 when the spool
    holds no minute of the day.
    """
    from bml_assets.lake.lake import Lake
    from bml_assets.live.rebuild import rebuild_day
    from bml_assets.live.spool import spool_store
    from bml_assets.orchestration.scans import check_day
    from bml_assets.orchestration.state import open_ledger, utc_today

    try:
        symbol = parse_symbols(symbol, variable="--symbol")[0]
    except SettingsError as err:
        raise BadArgument(str(err)) from None
    settings = _settings()
    check_day(day, utc_today(), settings.start_date, option="--date")
    ledger = open_ledger(settings)
    try:
        lake = Lake.from_settings(settings)
        spool = spool_store(lake.store, settings.host_dir)
        result = rebuild_day(lake, ledger, symbol, day, commit=not dry_run, spool=spool)
    finally:
        ledger.close()
    r = result.replayed
    click.echo(
        f"{symbol} {day.isoformat()}: spool {len(result.segments)} segment(s), {r.frames} frame(s), "
        f"{r.snapshots} snapshot(s), {r.notes} note(s), {r.processes} process(es)"
    )
    for segment in result.segments:
        if segment.truncated:
            click.echo(f"  {segment.key}: {segment.truncated}; {segment.lines} line(s) kept", err=True)
    click.echo(
        f"{result.rows} minute(s): public covered {result.public_covered}, market covered {result.market_covered}"
    )
    if result.commit is not None:
        click.echo(f"committed {result.commit.path} (sha256 {result.commit.content_hash[:16]}…)")
    elif dry_run:
        click.echo("dry run: nothing committed")
    if not result.rows:
        _fail(f"the spool holds no minute of {symbol} on {day.isoformat()}: nothing rebuilt")


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------- the Vision cache


@main.command("cache")
@click.option(
    "--trim",
    is_flag=True,
    help="Evict the least recently used zips of committed, complete partitions until the cache fits "
    "BML_VISION_CACHE_MAX_BYTES (zips a partition not committed yet or incomplete needs, and zips used "
    "within the hour, stay). The repair sensor does the same each tick.",
)
@_guarded
def cache(trim: bool) -> None:
    """The Vision cache ({BML_WORK_DIR}/_cache/vision): size, files, least recently used; --trim."""
    from bml_assets.defs.repair import trim_summary, trim_vision_cache
    from bml_assets.lake.cache_policy import eviction_plan
    from bml_assets.lake.ledger import Ledger
    from bml_assets.sources.vision import cached_zips

    settings = _settings()
    now = dt.datetime.now(dt.UTC)
    ledger = Ledger(settings.state_url)
    zips = cached_zips(settings.cache_dir)
    plan = eviction_plan(zips, ledger, max_bytes=settings.vision_cache_max_bytes, now=now.timestamp())
    mib = 1 << 20
    click.echo(f"cache:  {settings.cache_dir}")
    click.echo(
        f"size:   {plan.total_bytes / mib:.1f} MiB in {plan.files} file(s); "
        f"bound {settings.vision_cache_max_bytes / mib:.1f} MiB (BML_VISION_CACHE_MAX_BYTES)"
    )
    if zips:
        oldest = dt.datetime.fromtimestamp(zips[0].last_used, dt.UTC)
        click.echo(f"oldest: last used {oldest:%Y-%m-%d %H:%M:%S}Z  {zips[0].url}")
    if not trim:
        if plan.evict:
            click.echo(
                f"over the bound: --trim would evict {len(plan.evict)} file(s), {plan.evict_bytes / mib:.1f} MiB"
            )
        return
    click.echo(
        trim_summary(trim_vision_cache(settings.cache_dir, ledger, max_bytes=settings.vision_cache_max_bytes, now=now))
    )
