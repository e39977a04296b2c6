"""The coverage heatmap: symbols × days coloured by state, as a PNG next to the lake and as
metadata of the ``minute_view`` asset.

What belongs here: drawing a ``lake.coverage.Coverage`` (matplotlib, the optional extra
``plot``: without it ``HeatmapUnavailable`` says how to install it), writing the PNG under
this host's work folder (``BML_WORK_DIR/_reports/coverage.png``, atomically), the metadata Dagster's UI shows (the
path, and the picture inline as markdown), and ``coverage_sensor``: every
``COVERAGE_SENSOR_INTERVAL_S`` it reads the ledger (one query), and when the counts of the
states changed since its last picture it draws a new one and reports it as an observation of
``minute_view``. ``bml coverage`` draws through the same function.

What stays out: what a day's state is (``lake/coverage.py``), the table and JSON
(``cli.py``), and any build: the sensor requests no run.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetKey,
    AssetObservation,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from bml_assets.defs.assets.minute_view import ASSET_NAME
from bml_assets.defs.resources import LakeResource, LedgerResource
from bml_assets.lake.coverage import Coverage, DayState, read_coverage

REPORT_DIR = "_reports"
HEATMAP_FILE = "coverage.png"
COVERAGE_SENSOR_INTERVAL_S = 600  # a picture of days: minutes late is fine, and a tick reads every row
# Colours of the states, in the legend's order: green done, blue waiting for Vision, orange to
# complete, greys where there is nothing to build, red missing.
STATE_COLOURS: dict[DayState, str] = {
    DayState.COMMITTED: "#2e7d32",
    DayState.PROVISIONAL: "#64b5f6",
    DayState.INCOMPLETE: "#fb8c00",
    DayState.NOT_LISTED: "#bdbdbd",
    DayState.NOT_PUBLISHED: "#eeeeee",
    DayState.MISSING: "#c62828",
}
PLOT_EXTRA_HINT = "the coverage heatmap needs matplotlib: pip install 'bml-assets[plot]' (or pip install matplotlib)"


class HeatmapUnavailable(RuntimeError):
    """matplotlib is not installed (the optional extra ``plot``)."""


def heatmap_path(work_dir: str | Path) -> Path:
    return Path(work_dir) / REPORT_DIR / HEATMAP_FILE


def draw_heatmap(cov: Coverage, dest: Path) -> Path:
    """Draw ``cov`` as a PNG at ``dest`` (written to a temporary file, then renamed); returns ``dest``."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display: a sensor and a terminal both draw to a file
        import matplotlib.pyplot as plt
        from matplotlib.colors import ListedColormap
        from matplotlib.patches import Patch
    except ImportError:
        raise HeatmapUnavailable(PLOT_EXTRA_HINT) from None
    states = list(STATE_COLOURS)
    index = {s: i for i, s in enumerate(states)}
    days = cov.days
    grid = [[index[cov.state(symbol, day)] for day in days] for symbol in cov.symbols]
    height = 1.2 + 0.28 * max(1, len(cov.symbols))
    fig, ax = plt.subplots(figsize=(11, height), dpi=80)
    try:
        ax.imshow(
            grid,
            aspect="auto",
            interpolation="nearest",
            cmap=ListedColormap([STATE_COLOURS[s] for s in states]),
            vmin=0,
            vmax=len(states) - 1,
        )
        ax.set_yticks(range(len(cov.symbols)), labels=list(cov.symbols), fontsize=8)
        step = max(1, len(days) // 8)
        ticks = list(range(0, len(days), step))
        ax.set_xticks(ticks, labels=[days[i].isoformat() for i in ticks], fontsize=8)
        counts = cov.counts()
        ax.set_title(
            f"minute view coverage {cov.start.isoformat()}..{cov.end.isoformat()}: "
            + ", ".join(f"{s.value} {counts[s.value]}" for s in states if counts[s.value]),
            fontsize=9,
        )
        ax.legend(
            handles=[Patch(color=STATE_COLOURS[s], label=s.value) for s in states],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.12 if len(cov.symbols) > 3 else -0.3),
            ncol=len(states),
            fontsize=8,
            frameon=False,
        )
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".coverage.", suffix=".png.tmp", dir=dest.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                fig.savefig(out, format="png", bbox_inches="tight")
            os.replace(tmp, dest)  # a reader sees the old picture or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    finally:
        plt.close(fig)
    return dest


def heatmap_metadata(png: Path, cov: Coverage) -> dict[str, object]:
    """What the UI shows on ``minute_view``: the picture inline (markdown, a data URL: the UI
    cannot read the lake's files), its path, and the count of each state."""
    encoded = base64.b64encode(png.read_bytes()).decode("ascii")
    return {
        "coverage": MetadataValue.md(f"![coverage heatmap](data:image/png;base64,{encoded})"),
        "coverage_png": MetadataValue.path(str(png)),
        "coverage_window": f"{cov.start.isoformat()}..{cov.end.isoformat()}",
        **{f"coverage/{state}": n for state, n in cov.counts().items()},
    }


@dataclass(frozen=True)
class CoverageReport:
    coverage: Coverage
    png: Path | None
    note: str | None = None  # why there is no picture


def write_coverage_report(cov: Coverage, work_dir: str | Path) -> CoverageReport:
    """Draw ``cov`` under ``work_dir`` (``BML_WORK_DIR``); without matplotlib, the report says why there is no picture."""
    try:
        return CoverageReport(cov, draw_heatmap(cov, heatmap_path(work_dir)))
    except HeatmapUnavailable as exc:
        return CoverageReport(cov, None, str(exc))


def _utc_today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def build_coverage_sensor(symbols: tuple[str, ...], *, today: Callable[[], dt.date] = _utc_today):
    """``today``: the last day of the picture (tests fix it)."""

    @sensor(
        name="coverage_sensor",
        minimum_interval_seconds=COVERAGE_SENSOR_INTERVAL_S,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            "Draws the minute view's coverage (symbols × days: committed, provisional, incomplete, not "
            f"listed, missing) to {{BML_WORK_DIR}}/{REPORT_DIR}/{HEATMAP_FILE} (the lake root when local) when it changed, and "
            "shows it on minute_view as an observation. Requests no run."
        ),
    )
    def coverage_sensor(context: SensorEvaluationContext, ledger: LedgerResource, lake: LakeResource):
        cov = read_coverage(ledger.ledger(), symbols, today=today())
        signature = json.dumps({"window": [cov.start.isoformat(), cov.end.isoformat()], **cov.counts()})
        if signature == context.cursor:
            return SkipReason("coverage unchanged since the last picture")
        report = write_coverage_report(cov, lake.work_dir)
        context.update_cursor(signature)
        metadata: dict[str, object] = (
            heatmap_metadata(report.png, cov)
            if report.png is not None
            else {"coverage_note": report.note or "", **{f"coverage/{k}": n for k, n in cov.counts().items()}}
        )
        return SensorResult(asset_events=[AssetObservation(AssetKey(ASSET_NAME), metadata=metadata)])

    return coverage_sensor
