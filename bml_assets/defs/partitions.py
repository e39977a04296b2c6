"""The Dagster partitions definition of every asset: symbol × UTC date (SPEC §2).

What belongs here: building the ``MultiPartitionsDefinition`` from the settings.
What stays out: what a key means (``domain/partitions.py``).
"""

from __future__ import annotations

from dagster import DailyPartitionsDefinition, MultiPartitionsDefinition, StaticPartitionsDefinition

from bml_assets.domain.partitions import DATE_DIM, SYMBOL_DIM
from bml_assets.domain.settings import Settings


def build_partitions_def(settings: Settings) -> MultiPartitionsDefinition:
    """symbol × date, the current UTC day included (``end_offset=1``)."""
    return MultiPartitionsDefinition(
        {
            DATE_DIM: DailyPartitionsDefinition(
                start_date=settings.start_date.isoformat(), end_offset=1, timezone="UTC"
            ),
            SYMBOL_DIM: StaticPartitionsDefinition(list(settings.symbols)),
        }
    )
