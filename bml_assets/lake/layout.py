"""Where things live in the lake (SPEC §2): pure key arithmetic, no I/O.

What belongs here: the hive-style key of a partition's parquet file (a POSIX path
relative to the lake root, the store's key and the ledger's ``path``), the key of its
folder, the name of its lock, and the validation of every part (dataset name, symbol,
day) so nothing from outside can climb out of the lake.

What stays out: the store that holds the bytes and where its root is
(``storage/store.py``, ``lake.py``), reading or writing anything (``commit.py``),
the ledger (``ledger.py``), and any knowledge of Dagster.

Layout, relative to the lake root::

    futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/part.parquet
    futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/.part.parquet.{uuid}.tmp   (in-flight commit, local store)
    _state/locks/{dataset}/{SYMBOL}/{YYYY-MM-DD}.lock                                (lock {dataset}/{SYMBOL}/{YYYY-MM-DD})

The canonical view's dataset is named ``minute``, so its files land exactly where
SPEC §2 puts them. Names starting with ``.`` or ``_`` are skipped by the hive
readers (pyarrow datasets, DuckDB, Polars), which is why temporary files and the
state folder are named that way.
"""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Final

from bml_assets.domain.schema import Dataset
from bml_assets.domain.settings import validate_symbol

MARKET_PREFIX: Final[tuple[str, ...]] = ("futures", "um")
PART_FILE_NAME: Final = "part.parquet"
_MARKET: Final = "/".join(MARKET_PREFIX)

# Dataset names become a path part; the registry uses lower snake case only.
_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def dataset_name(dataset: Dataset | str) -> str:
    """The validated name of ``dataset`` (a ``Dataset`` or its name)."""
    name = dataset.name if isinstance(dataset, Dataset) else dataset
    if not isinstance(name, str) or not _DATASET_NAME.fullmatch(name):
        raise ValueError(
            f"invalid dataset name {name!r}: expected 1-64 characters of a-z, 0-9 and _, starting with a letter"
        )
    return name


def day_text(day: date) -> str:
    """``YYYY-MM-DD`` of a UTC day; a ``datetime`` is refused (it would hide a time of day)."""
    if isinstance(day, datetime) or not isinstance(day, date):
        raise TypeError(f"a partition day must be a datetime.date, got {type(day).__name__} {day!r}")
    return day.isoformat()


def partition_label(dataset: Dataset | str, symbol: str, day: date) -> str:
    """``dataset/SYMBOL/YYYY-MM-DD``, the partition's name in messages and its lock's name."""
    return f"{dataset_name(dataset)}/{validate_symbol(symbol)}/{day_text(day)}"


def symbol_folder_key(dataset: Dataset | str, symbol: str) -> str:
    """``futures/um/{dataset}/symbol={SYMBOL}``: the folder of one symbol's days."""
    return f"{_MARKET}/{dataset_name(dataset)}/symbol={validate_symbol(symbol)}"


def day_folder_key(symbol_folder: str, day_iso: str) -> str:
    """The folder of one day inside ``symbol_folder_key`` (no checks: for validated parts)."""
    return f"{symbol_folder}/date={day_iso}"


def day_file_key(symbol_folder: str, day_iso: str) -> str:
    """The file of one day inside ``symbol_folder_key`` (no checks: for validated parts)."""
    return f"{symbol_folder}/date={day_iso}/{PART_FILE_NAME}"


def file_key_of(dataset: str, symbol: str, day_iso: str) -> str:
    """``file_key`` of parts that are already valid (a ledger row's), without checking them:
    the whole-lake file check formats a million of these per tick."""
    return f"{_MARKET}/{dataset}/symbol={symbol}/date={day_iso}/{PART_FILE_NAME}"


def file_key(dataset: Dataset | str, symbol: str, day: date) -> str:
    """``futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/part.parquet``: the partition
    file's key in the store, and its ``path`` in the ledger."""
    return file_key_of(dataset_name(dataset), validate_symbol(symbol), day_text(day))


def folder_key(dataset: Dataset | str, symbol: str, day: date) -> str:
    """The folder holding one partition's file (and nothing else but its temporary files)."""
    return day_folder_key(symbol_folder_key(dataset, symbol), day_text(day))
