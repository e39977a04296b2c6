"""Building the definitions prints no Dagster beta/preview notice, and silences nothing else."""

from __future__ import annotations

import datetime as dt
import warnings

from dagster import BetaWarning, PreviewWarning

from bml_assets.definitions import build_definitions, quiet_dagster_notices
from bml_assets.domain.settings import Settings


def test_building_the_definitions_raises_no_beta_or_preview_notice() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")  # the project's pytest config ignores them: undo that here
        build_definitions(Settings(symbols=("BTCUSDT",), start_date=dt.date(2024, 1, 1)))
    notices = [w for w in seen if issubclass(w.category, (BetaWarning, PreviewWarning))]
    assert notices == [], [str(w.message) for w in notices]


def test_the_filter_is_scoped_to_dagster_notices_and_to_the_build() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_dagster_notices():
            # Raised from this module, not Dagster's: still shown; so is any other category.
            warnings.warn("ours", BetaWarning, stacklevel=1)
            warnings.warn("something else", UserWarning, stacklevel=1)
        warnings.warn_explicit("after the build", BetaWarning, "x.py", 1, module="dagster._core.decorator_utils")
    assert [str(w.message) for w in seen] == ["ours", "something else", "after the build"]
    # The notice Dagster raises inside: gone.
    with warnings.catch_warnings(record=True) as inside:
        warnings.simplefilter("always")
        with quiet_dagster_notices():
            warnings.warn_explicit("beta", BetaWarning, "x.py", 1, module="dagster._core.decorator_utils")
    assert inside == []
