"""Where things live in the lake (SPEC §2): pure path arithmetic, no I/O.

What belongs here: the hive-style path of a partition's parquet file, the path of
its lock file, the name of the temporary file a commit writes beside the target,
and the validation of every path part (dataset name, symbol, day) so nothing
from outside can climb out of the lake root.

What stays out: creating, reading or writing anything (``commit.py``), the ledger
(``ledger.py``), and any knowledge of Dagster.

Layout, relative to the lake root::

    futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/part.parquet
    futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/.part.parquet.{uuid}.tmp   (in-flight commit)
    _state/locks/{dataset}/{SYMBOL}/{YYYY-MM-DD}.lock

The canonical view's dataset is named ``minute``, so its files land exactly where
SPEC §2 puts them. Names starting with ``.`` or ``_`` are skipped by the hive
readers (pyarrow datasets, DuckDB, Polars), which is why temporary files and the
state folder are named that way.
"""

from __future__ import annotations

import re
import uuid
from datetime import date, datetime
from pathlib import Path, PurePosixPath

from bml_assets.domain.schema import Dataset
from bml_assets.domain.settings import validate_symbol

MARKET_PREFIX: tuple[str, ...] = ("futures", "um")
PART_FILE_NAME = "part.parquet"
TEMP_GLOB = f".{PART_FILE_NAME}.*.tmp"
STATE_DIR_NAME = "_state"
LOCKS_DIR_NAME = "locks"

# Dataset names become a path part; the registry uses lower snake case only.
_DATASET_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TEMP_NAME = re.compile(rf"^\.{re.escape(PART_FILE_NAME)}\.[0-9a-f]{{32}}\.tmp$")


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
    """``dataset/SYMBOL/YYYY-MM-DD``, the partition's name in messages."""
    return f"{dataset_name(dataset)}/{validate_symbol(symbol)}/{day_text(day)}"


def relative_partition_path(dataset: Dataset | str, symbol: str, day: date) -> PurePosixPath:
    """The partition file's path relative to the lake root (what the ledger stores)."""
    return PurePosixPath(
        *MARKET_PREFIX,
        dataset_name(dataset),
        f"symbol={validate_symbol(symbol)}",
        f"date={day_text(day)}",
        PART_FILE_NAME,
    )


def partition_path(lake_root: Path, dataset: Dataset | str, symbol: str, day: date) -> Path:
    """``{lake_root}/futures/um/{dataset}/symbol={SYMBOL}/date={YYYY-MM-DD}/part.parquet``."""
    return Path(lake_root).joinpath(*relative_partition_path(dataset, symbol, day).parts)


def partition_dir(lake_root: Path, dataset: Dataset | str, symbol: str, day: date) -> Path:
    """The folder holding one partition's file (and nothing else but its temporary files)."""
    return partition_path(lake_root, dataset, symbol, day).parent


def lock_path(lake_root: Path, dataset: Dataset | str, symbol: str, day: date) -> Path:
    """``{lake_root}/_state/locks/{dataset}/{SYMBOL}/{YYYY-MM-DD}.lock``.

    Locks live outside the data tree so readers never see them and so a lock
    file can outlive (and never be confused with) the partition folder.
    """
    return Path(lake_root).joinpath(
        STATE_DIR_NAME,
        LOCKS_DIR_NAME,
        dataset_name(dataset),
        validate_symbol(symbol),
        f"{day_text(day)}.lock",
    )


def temp_path(target: Path) -> Path:
    """A fresh temporary name beside ``target``: ``.part.parquet.{uuid}.tmp``.

    Same folder, so the final ``os.replace`` is a rename within one file system
    (atomic), never a copy.
    """
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one ``temp_path`` would produce."""
    return _TEMP_NAME.fullmatch(name) is not None


def temp_files(directory: Path) -> list[Path]:
    """The temporary files in a partition folder, sorted (empty when the folder is absent)."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.glob(TEMP_GLOB) if is_temp_name(p.name))
