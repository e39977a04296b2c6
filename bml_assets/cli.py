"""The ``bml`` command line.

What belongs here: argument parsing, progress and exit codes for the commands
people run in a terminal; each command calls into the package (the replay
server, the demo driving the real Dagster definitions). What stays out: logic of
its own — a command that needs some, gets it in the module that owns the subject.
"""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import click

from bml_assets.settings import SettingsError, parse_symbols

DEMO_DAYS = (dt.date(2024, 2, 29), dt.date(2024, 3, 1), dt.date(2024, 3, 2))


def _date(_ctx: click.Context, _param: click.Parameter, value: str | None) -> dt.date | None:
    if value is None:
        return None
    try:
        return dt.datetime.fromisoformat(value).date()
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date like 2024-03-01 (or an ISO timestamp)") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """bml — the Binance Minute Lake: a verified 58-column 1-minute view of USD-M perpetuals."""


@main.command("replay-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless you mean it).")
@click.option("--port", default=8765, show_default=True, type=int, help="Port (0 = any free port).")
@click.option("--seed", default=7, show_default=True, type=int, help="Seed of the synthetic market.")
@click.option("--trades-per-day", default=6000, show_default=True, type=int, help="aggTrades per symbol-day.")
@click.option(
    "--real-dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="Also serve real Vision files from this folder (they win over the synthetic market).",
)
@click.option(
    "--clock-origin",
    default=None,
    help="Run a market clock from this UTC instant (e.g. 2024-06-03T10:00:00) instead of real time: "
    "REST serves the market as of that clock and Vision publishes only days before it.",
)
@click.option("--clock-speed", default=1.0, show_default=True, type=float, help="Market seconds per real second.")
def replay_server(
    host: str,
    port: int,
    seed: int,
    trades_per_day: int,
    real_dir: Path | None,
    clock_origin: str | None,
    clock_speed: float,
) -> None:
    """Serve Binance Vision files and the USD-M REST API (synthetic market and/or real files) locally."""
    from bml_assets.replay.server import serve

    origin = None
    if clock_origin is not None:
        try:
            origin = dt.datetime.fromisoformat(clock_origin)
        except ValueError:
            raise click.BadParameter(f"{clock_origin!r} is not an ISO time like 2024-06-03T10:00:00") from None
        origin = origin if origin.tzinfo else origin.replace(tzinfo=dt.UTC)
    serve(
        host,
        port,
        seed=seed,
        trades_per_day=trades_per_day,
        real_dir=real_dir,
        listing_dates={},
        clock_origin=origin,
        clock_speed=clock_speed,
    )


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
    """Print the 58 columns of the minute view (from the schema registry)."""
    from bml_assets.schema import column_table_markdown

    click.echo(column_table_markdown())
