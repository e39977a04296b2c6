"""The lake as one object: its store, its layout and its partition locks.

What belongs here: ``Lake`` — where a partition's file is (the layout's key, the
store's location), what is there (stat, hash, temporaries) and reading it back as a
table, including a file written under an older schema (below); holding or probing a
partition's lock; the errors of reading; ``schema_differences``. What stays out:
writing (the commit protocol, ``commit.py``, is written once against the store and
these locks), the ledger (``ledger.py``), the bytes' home (``storage/``), Dagster.

A lake is built from its root (``Lake.at``): a local folder (or ``file://`` URL) is a
``LocalStore`` with ``flock`` locks in ``_state/locks``; an ``s3://bucket/prefix`` URL is an
``S3Store`` with advisory locks in the PostgreSQL state database, behind the same two
protocols, so the commit, the scan and the assets do not change.

Schema evolution. A file whose schema differs from its dataset's only by nullable
columns it lacks (appended or inserted; the others in the registry's order, with the
registry's types) is read with those columns added as NULL, in the registry's order:
adding a nullable column to the registry does not make the existing lake unreadable.
The scan reports such a file as ``schema_outdated`` and the repair rebuilds it in the
background. Any other difference (a missing non-nullable column, another type, an
unexpected column, another order) is refused with ``SchemaMismatch``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Final

import pyarrow as pa
import pyarrow.parquet as pq

from bml_assets.domain.schema import Dataset
from bml_assets.domain.settings import Settings
from bml_assets.lake.layout import file_key, folder_key, partition_label
from bml_assets.storage.locks import Locks, locks_for
from bml_assets.storage.store import ObjectStat, Store, store_for

DEFAULT_LOCK_TIMEOUT_S: Final = 300.0


# --------------------------------------------------------------------------- errors


class LakeError(RuntimeError):
    """Base class of the lake's own errors."""


class SchemaMismatch(LakeError, ValueError):
    """A table (or a stored file) does not have the dataset's schema."""

    def __init__(self, partition: str, differences: Sequence[str], *, what: str = "the table") -> None:
        self.partition = partition
        self.differences = list(differences)
        super().__init__(f"{partition}: {what} does not match the dataset schema: " + "; ".join(self.differences))


class PartitionNotFound(LakeError, FileNotFoundError):
    """No committed file at the partition's key."""


class PartitionUnreadable(LakeError):
    """The partition's file exists but cannot be read as parquet."""


# --------------------------------------------------------------------------- schemas


def schema_differences(actual: pa.Schema, expected: pa.Schema) -> list[str]:
    """Human-readable differences in names, order and types (nullability and metadata ignored)."""
    out: list[str] = []
    a_names, e_names = list(actual.names), list(expected.names)
    duplicated = sorted({n for n in a_names if a_names.count(n) > 1})
    missing = [n for n in e_names if n not in a_names]
    extra = [n for n in a_names if n not in e_names]
    if duplicated:
        out.append(f"duplicated columns: {', '.join(duplicated)}")
    if missing:
        out.append(f"missing columns: {', '.join(missing)}")
    if extra:
        out.append(f"unexpected columns: {', '.join(extra)}")
    if not (duplicated or missing or extra) and a_names != e_names:
        i = next(i for i, (a, e) in enumerate(zip(a_names, e_names, strict=True)) if a != e)
        out.append(f"columns out of order: position {i + 1} holds {a_names[i]!r} where {e_names[i]!r} belongs")
    if not duplicated:
        for f in expected:
            if f.name in a_names:
                got = actual.field(f.name).type
                if got != f.type:
                    out.append(f"column {f.name!r} has type {got}, expected {f.type}")
    return out


def absent_nullable_columns(actual: pa.Schema, expected: pa.Schema) -> list[str] | None:
    """The nullable columns of ``expected`` that ``actual`` lacks, when that is its only
    difference (see the module docstring); None when it differs otherwise or not at all."""
    present = set(actual.names)
    absent = [f for f in expected if f.name not in present]
    if not absent or any(not f.nullable for f in absent):
        return None
    kept = pa.schema([f for f in expected if f.name in present])
    return None if schema_differences(actual, kept) else [f.name for f in absent]


def conform(table: pa.Table, dataset: Dataset, label: str, *, what: str) -> pa.Table:
    """``table`` as the dataset's schema has it: unchanged when it matches, with the nullable
    columns it lacks added as NULL when that is its only difference, else ``SchemaMismatch``."""
    expected = dataset.arrow_schema
    differences = schema_differences(table.schema, expected)
    if not differences:
        return table
    if absent_nullable_columns(table.schema, expected) is None:
        raise SchemaMismatch(label, differences, what=what)
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(table.num_rows, f.type) for f in expected
    ]
    return pa.Table.from_arrays(columns, schema=expected)


# --------------------------------------------------------------------------- the lake


class Lake:
    """A lake: ``store`` (where the bytes are), the layout (``layout.py``: which key holds
    which partition) and ``locks`` (one per partition, held by every writer)."""

    def __init__(self, store: Store, locks: Locks) -> None:
        self.store = store
        self.locks = locks

    @classmethod
    def at(cls, root: str | Path, *, state_url: str = "", s3_endpoint_url: str = "") -> Lake:
        """The lake at ``root``: a local folder or ``file://`` URL, or an ``s3://`` URL whose
        locks are advisory locks in the PostgreSQL database at ``state_url``."""
        return cls(store_for(root, s3_endpoint_url=s3_endpoint_url), locks_for(root, state_url=state_url))

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake the settings name (``BML_LAKE_ROOT``, ``BML_STATE_URL``, ``BML_S3_ENDPOINT_URL``)."""
        return cls.at(settings.lake_root, state_url=settings.state_url, s3_endpoint_url=settings.s3_endpoint_url)

    def __repr__(self) -> str:
        return f"Lake({self.store!r}, {self.locks!r})"

    @property
    def root(self) -> str:
        """Where the lake is, for messages."""
        return self.store.root

    # ---- where

    def key(self, dataset: Dataset | str, symbol: str, day: date) -> str:
        return file_key(dataset, symbol, day)

    def location(self, dataset: Dataset | str, symbol: str, day: date) -> str:
        """Where the partition's file is, for messages (a local path, or an ``s3://`` URL)."""
        return self.store.location(file_key(dataset, symbol, day))

    # ---- what is there

    def stat(self, dataset: Dataset | str, symbol: str, day: date) -> ObjectStat | None:
        return self.store.stat(file_key(dataset, symbol, day))

    def sha256(self, dataset: Dataset | str, symbol: str, day: date) -> str:
        """The sha256 of the partition's file (``FileNotFoundError`` when there is none)."""
        return self.store.sha256(file_key(dataset, symbol, day))

    def temp_files(self, dataset: Dataset | str, symbol: str, day: date) -> list[str]:
        """The keys of temporary files in the partition's folder (a live or a dead writer's)."""
        return self.store.temp_files(folder_key(dataset, symbol, day))

    def read(self, dataset: Dataset, symbol: str, day: date, *, check_schema: bool = True) -> pa.Table:
        """The committed table of one partition, in the dataset's schema (a file of an older
        schema that lacks only nullable columns reads with them NULL, see the module docstring).

        Raises ``PartitionNotFound`` / ``PartitionUnreadable`` naming the file, and
        ``SchemaMismatch`` for any other schema."""
        label = partition_label(dataset, symbol, day)
        key = file_key(dataset, symbol, day)
        where = self.store.location(key)
        if self.store.stat(key) is None:
            raise PartitionNotFound(f"{label}: no committed file at {where}")
        try:
            # ParquetFile, not pq.read_table: the latter would treat the hive folder
            # names as partition columns and add symbol/date to the table.
            with pq.ParquetFile(self.store.source(key)) as f:
                table = f.read()
        except (OSError, pa.ArrowException) as exc:
            raise PartitionUnreadable(f"{label}: cannot read {where} as parquet: {exc}") from exc
        if not check_schema:
            return table
        return conform(table, dataset, label, what=f"the file {where}")

    # ---- locks

    @contextmanager
    def lock(
        self, dataset: Dataset | str, symbol: str, day: date, *, timeout: float = DEFAULT_LOCK_TIMEOUT_S
    ) -> Iterator[None]:
        """Hold the partition's exclusive lock, waiting up to ``timeout`` seconds, then
        ``LockTimeout`` naming the partition and the lock."""
        label = partition_label(dataset, symbol, day)
        with self.locks.hold(label, timeout=timeout, what=label):
            yield

    def busy(self, dataset: Dataset | str, symbol: str, day: date) -> bool:
        """Whether a writer holds the partition's lock at this moment (creates nothing).

        A temporary file in a partition whose lock is free belongs to a writer that died:
        a live commit holds the lock from before it stages its file until after it publishes."""
        return self.locks.busy(partition_label(dataset, symbol, day))
