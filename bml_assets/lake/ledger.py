"""The ledger (SPEC §7): what the lake holds, where it came from, and how far each symbol is complete.

What belongs here: the SQLAlchemy tables (``partitions``, ``source_files``,
``watermark``, ``ledger_meta``, and ``symbols``: the exchange's symbol universe
as ``bml symbols sync`` last saw it), the ``Ledger`` class that opens the store and
applies compare-and-swap updates in single transactions, and the record types
and exceptions of that API.

What stays out: files (``commit.py`` writes the parquet and then calls
``Ledger.commit_partition``), paths (``layout.py``), Dagster, and any policy about
*when* a partition may be committed or how far a day's minutes are complete (the
callers decide; the ledger guarantees that concurrent writers cannot silently
overwrite each other, and that the watermark, moved with the minute view's commit in
one transaction, only ever continues without a hole:
``commit_partition_and_watermark``).

Portability: only SQLAlchemy Core constructs that SQLite and PostgreSQL both
understand. SQLite is the default store; it is opened in WAL mode with a busy
timeout, and write transactions start with ``BEGIN IMMEDIATE`` so that two
processes never both read-then-write and deadlock: the second writer waits for
the first, then sees its result. On PostgreSQL the CAS ``UPDATE ... WHERE
content_hash = :expected`` is safe under READ COMMITTED because a blocked
UPDATE re-evaluates its WHERE clause against the row the winner committed.

Migrations (SPEC §10): the tables are created and upgraded in place by Alembic
revisions (``lake/migrations/``), never by ``create_all``. ``init()`` (run by the first
use of a ``Ledger``) upgrades the database to the newest revision in one write
transaction, under SQLite's write lock or a PostgreSQL advisory lock, so two processes
starting at once upgrade it once; a no-op at head. A database that a newer bml upgraded
(a revision this code does not know) is refused with ``LedgerVersionError`` before
anything changes: upgrade bml. A ledger older than the migrations (``schema_version`` 1
or 2, created by ``init()``'s former ``create_all``) is stamped at its layout's revision,
upgraded, and checked against ``metadata``; one that differs is refused, naming the
differences. A deployed ledger is upgraded with ``bml db upgrade`` (``bml db current``
shows where it stands), or simply by the next command that opens it. Changing the tables
means changing ``metadata`` below *and* adding a revision (see ``lake/migrations``); the
tests fail while the two differ. Alembic's version table is ``bml_alembic_version``, apart
from Dagster's ``alembic_version`` on a shared PostgreSQL database. The REST budget's
tables (``sources/rest_budget.py``) are not migrated: their rows live two minutes, so they
keep ``create_all``.

Timestamps are stored in UTC and returned timezone-aware (UTC). ``min_ts`` and
``max_ts`` are int milliseconds since the epoch. ``path`` is relative to the lake
root (POSIX form), so a lake can be moved or mounted elsewhere without
rewriting the ledger.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, get_args

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import IntegrityError

from bml_assets.domain.schema import Dataset
from bml_assets.domain.settings import validate_symbol
from bml_assets.lake.layout import dataset_name, day_text
from bml_assets.storage.state_db import WRITE_OPTION, create_state_engine

if TYPE_CHECKING:
    from bml_assets.lake.migrations import MigrationState, Upgrade

SCHEMA_VERSION: Final = 2
"""Version of the table layout below, as readers of the tables see it; the migrations
keep ``ledger_meta.schema_version`` at it, and ``init()`` checks it after upgrading (bml
releases older than the migrations refuse a ledger whose version they do not know).

Version 2 added to ``partitions`` the committed file's size and mtime (the shallow
scan compares them with the store's stat), the fillable streams a committed partition
lacks (``missing_streams``: an incomplete partition, SPEC §8) and how many builds
in a row left it so (``incomplete_builds``, the repair backoff): revision ``0002``."""

PartitionStatus = Literal["committed", "not_listed", "not_published"]
PARTITION_STATUSES: tuple[str, ...] = get_args(PartitionStatus)
UNAVAILABLE_STATUSES: tuple[str, ...] = ("not_listed", "not_published")

DEFAULT_BUSY_TIMEOUT_S: Final = 60.0


# --------------------------------------------------------------------------- errors


class LedgerError(RuntimeError):
    """Base class of the ledger's own errors."""


class LedgerVersionError(LedgerError):
    """The store's tables are not at this code's layout and cannot be upgraded to it
    (a newer bml's revision, a foreign or damaged pre-migration ledger)."""


class CommitConflict(LedgerError):
    """A partition's compare-and-swap lost: its row changed since the caller read it."""

    def __init__(self, partition: str, expected: str | None, actual: str | None, *, row_exists: bool) -> None:
        self.partition = partition
        self.expected_content_hash = expected
        self.actual_content_hash = actual
        self.row_exists = row_exists
        stored = f"content_hash {actual}" if actual else "no content_hash"
        if not row_exists:
            stored = "no row"
        super().__init__(
            f"commit conflict on partition {partition}: expected the ledger to hold "
            f"{'content_hash ' + expected if expected else 'no content_hash'}, but it holds {stored}; "
            "another writer changed it — re-read the partition and retry"
        )


class WatermarkConflict(LedgerError):
    """A watermark's compare-and-swap lost: the stored value is not the expected one."""

    def __init__(self, symbol: str, expected: datetime | None, actual: datetime | None) -> None:
        self.symbol = symbol
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"watermark conflict for {symbol}: expected {_show(expected)}, but the ledger holds {_show(actual)}; "
            "re-read the watermark and retry"
        )


class WatermarkRegression(LedgerError, ValueError):
    """An attempt to move a watermark backwards."""


def _show(value: datetime | None) -> str:
    return "no watermark" if value is None else value.isoformat()


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class PartitionRecord:
    """One row of ``partitions``. Treat ``provenance`` and ``source_gaps`` as read-only.

    ``committed`` rows describe a file (path, content_hash and row_count are set);
    ``not_listed`` / ``not_published`` rows say why there is no file (``message``)
    and carry no content_hash.
    """

    dataset: str
    symbol: str
    day: date
    status: PartitionStatus
    committed_at: datetime
    path: str | None = None
    row_count: int | None = None
    min_ts: int | None = None
    max_ts: int | None = None
    schema_hash: str | None = None
    content_hash: str | None = None
    provenance: Mapping[str, Any] = field(default_factory=dict, hash=False)
    source_gaps: Sequence[Mapping[str, Any]] = field(default_factory=list, hash=False)
    message: str | None = None
    # The committed file as the store's stat saw it right after its publication.
    file_bytes: int | None = None
    file_mtime_ns: int | None = None
    # Fillable streams the partition lacks, ``{"stream": ..., "reason": ...}`` each (SPEC §8),
    # and how many builds in a row ended so (the repair backoff counts them).
    missing_streams: Sequence[Mapping[str, Any]] = field(default_factory=list, hash=False)
    incomplete_builds: int = 0

    def __post_init__(self) -> None:
        dataset_name(self.dataset)
        validate_symbol(self.symbol)
        day_text(self.day)
        if self.status not in PARTITION_STATUSES:
            raise ValueError(f"partition status {self.status!r} is not one of {', '.join(PARTITION_STATUSES)}")
        _require_aware(self.committed_at, "committed_at")
        if self.status == "committed":
            missing = [n for n in ("path", "content_hash", "row_count") if getattr(self, n) is None]
            if missing:
                raise ValueError(f"{self.label}: a committed row needs {', '.join(missing)}")
        elif self.content_hash is not None:
            raise ValueError(f"{self.label}: a {self.status} row has no file, so no content_hash")

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.symbol}/{self.day.isoformat()}"

    @property
    def incomplete(self) -> bool:
        """A committed partition that lacks a stream some source could fill (SPEC §8)."""
        return self.status == "committed" and bool(self.missing_streams)


@dataclass(frozen=True)
class FileState:
    """What one ``partitions`` row says about its file, without provenance, gaps or note
    (``Ledger.file_states``): the shallow scan reads it for every stream table each tick,
    where decoding and validating full ``PartitionRecord`` rows would cost several times
    more. Rows come from the store as written (through a validated ``PartitionRecord``)."""

    dataset: str
    symbol: str
    day: date
    status: str
    committed_at: datetime
    row_count: int | None
    min_ts: int | None
    max_ts: int | None
    schema_hash: str | None
    content_hash: str | None
    file_bytes: int | None
    file_mtime_ns: int | None
    missing_streams: Sequence[Mapping[str, Any]] = field(default_factory=list, hash=False)
    incomplete_builds: int = 0

    @property
    def label(self) -> str:
        return f"{self.dataset}/{self.symbol}/{self.day.isoformat()}"

    @property
    def incomplete(self) -> bool:
        return self.status == "committed" and bool(self.missing_streams)


@dataclass(frozen=True)
class SourceFileRecord:
    """One row of ``source_files``: a downloaded source file, identified by (url, sha256)."""

    url: str
    sha256: str
    bytes: int
    fetched_at: datetime
    rows: int | None = None
    checksum_verified: bool = False

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("a source file needs a url")
        if len(self.sha256) != 64 or any(c not in "0123456789abcdef" for c in self.sha256):
            raise ValueError(f"{self.url}: sha256 {self.sha256!r} is not 64 lower-case hex characters")
        _require_aware(self.fetched_at, "fetched_at")


@dataclass(frozen=True)
class SymbolRecord:
    """One row of ``symbols``: a USD-M perpetual as exchangeInfo describes it.

    ``onboard_date`` is the first UTC day the symbol traded (days before it are
    "not listed"); ``delist_date`` the last day it traded, when it has stopped
    and the exchange says so; ``status`` the exchange's (``TRADING``, ``SETTLING``,
    ``PENDING_TRADING``, ``CLOSE`` …). ``updated_at`` is when the row last changed.
    """

    symbol: str
    onboard_date: date | None
    status: str
    delist_date: date | None = None
    updated_at: datetime | None = None

    def __post_init__(self) -> None:
        validate_symbol(self.symbol)
        for name in ("onboard_date", "delist_date"):
            value = getattr(self, name)
            if value is not None:
                day_text(value)
        if not isinstance(self.status, str) or not self.status:
            raise ValueError(f"{self.symbol}: a symbol needs a status (e.g. TRADING)")
        if self.updated_at is not None:
            _require_aware(self.updated_at, "updated_at")

    @property
    def trading(self) -> bool:
        return self.status == "TRADING"


@dataclass(frozen=True)
class SymbolSync:
    """What ``upsert_symbols`` did: rows added, changed, and left as they were."""

    added: int
    changed: int
    unchanged: int


def _require_aware(value: datetime, what: str) -> None:
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")


def _now() -> datetime:
    return datetime.now(UTC)


# --------------------------------------------------------------------------- tables


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """An instant stored in UTC and always returned timezone-aware.

    SQLite has no time zones: the value is converted to UTC and stored naive, and
    read back as UTC. PostgreSQL gets a ``timestamptz``.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        _require_aware(value, "a ledger timestamp")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData()

partitions_table = sa.Table(
    "partitions",
    metadata,
    sa.Column("dataset", sa.String(64), primary_key=True),
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("date", sa.Date, primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("path", sa.Text),
    sa.Column("row_count", sa.BigInteger),
    sa.Column("min_ts", sa.BigInteger),
    sa.Column("max_ts", sa.BigInteger),
    sa.Column("schema_hash", sa.String(64)),
    sa.Column("content_hash", sa.String(64)),
    sa.Column("provenance", sa.JSON, nullable=False),
    sa.Column("source_gaps", sa.JSON, nullable=False),
    sa.Column("message", sa.Text),
    sa.Column("committed_at", UTCDateTime, nullable=False),
    # Version 2, revision 0002 (nullable, so rows already there keep NULL).
    sa.Column("file_bytes", sa.BigInteger),
    sa.Column("file_mtime_ns", sa.BigInteger),
    sa.Column("missing_streams", sa.JSON),
    sa.Column("incomplete_builds", sa.Integer),
    sa.CheckConstraint(
        "status IN (" + ", ".join(f"'{s}'" for s in PARTITION_STATUSES) + ")", name="ck_partitions_status"
    ),
    sa.CheckConstraint("status <> 'committed' OR content_hash IS NOT NULL", name="ck_partitions_committed_has_hash"),
)

source_files_table = sa.Table(
    "source_files",
    metadata,
    # (url, sha256): Vision re-uploads a file under the same URL with a new
    # checksum; both versions stay on record because provenance names either.
    sa.Column("url", sa.Text, primary_key=True),
    sa.Column("sha256", sa.String(64), primary_key=True),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("rows", sa.BigInteger),
    sa.Column("checksum_verified", sa.Boolean, nullable=False),
    sa.Column("fetched_at", UTCDateTime, nullable=False),
)

watermark_table = sa.Table(
    "watermark",
    metadata,
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("last_complete_minute", UTCDateTime, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

ledger_meta_table = sa.Table(
    "ledger_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

symbols_table = sa.Table(
    "symbols",
    metadata,
    sa.Column("symbol", sa.String(20), primary_key=True),
    sa.Column("onboard_date", sa.Date),
    sa.Column("delist_date", sa.Date),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False),
)

_P = partitions_table
_PARTITION_VALUE_COLUMNS: tuple[str, ...] = tuple(c.name for c in _P.columns if not c.primary_key)
# ``FileState`` fields after (dataset, symbol, day), in order.
_FILE_STATE_COLUMNS: Final = (
    "status",
    "committed_at",
    "row_count",
    "min_ts",
    "max_ts",
    "schema_hash",
    "content_hash",
    "file_bytes",
    "file_mtime_ns",
    "missing_streams",
    "incomplete_builds",
)


def _jsonable(value: Any, what: str) -> Any:
    """A plain-JSON copy of ``value`` (so what is stored is what is read back), or a clear error."""
    try:
        return json.loads(json.dumps(value, allow_nan=False, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be plain JSON (str, int, float, bool, None, lists, dicts): {exc}") from None


def _partition_values(record: PartitionRecord) -> dict[str, Any]:
    return {
        "status": record.status,
        "path": record.path,
        "row_count": record.row_count,
        "min_ts": record.min_ts,
        "max_ts": record.max_ts,
        "schema_hash": record.schema_hash,
        "content_hash": record.content_hash,
        "provenance": _jsonable(dict(record.provenance), f"{record.label}: provenance"),
        "source_gaps": _jsonable([dict(g) for g in record.source_gaps], f"{record.label}: source_gaps"),
        "message": record.message,
        "committed_at": record.committed_at,
        "file_bytes": record.file_bytes,
        "file_mtime_ns": record.file_mtime_ns,
        "missing_streams": _jsonable([dict(m) for m in record.missing_streams], f"{record.label}: missing_streams"),
        "incomplete_builds": record.incomplete_builds,
    }


def _partition_from_row(row: sa.Row[Any]) -> PartitionRecord:
    m = row._mapping
    values = {name: m[name] for name in _PARTITION_VALUE_COLUMNS}
    # Rows written before version 2 hold NULL there.
    values["missing_streams"] = values["missing_streams"] or []
    values["incomplete_builds"] = values["incomplete_builds"] or 0
    return PartitionRecord(dataset=m["dataset"], symbol=m["symbol"], day=m["date"], **values)


def _partition_key(dataset: str, symbol: str, day: date) -> sa.ColumnElement[bool]:
    return sa.and_(_P.c.dataset == dataset, _P.c.symbol == symbol, _P.c.date == day)


def _require_minute(value: datetime, what: str) -> datetime:
    _require_aware(value, what)
    value = value.astimezone(UTC)
    if value.second or value.microsecond:
        raise ValueError(f"{what} must be the start of a minute, got {value.isoformat()}")
    return value


def _swap_partition(conn: Connection, record: PartitionRecord, expected_content_hash: str | None) -> None:
    """The partition row's compare-and-swap (``Ledger.commit_partition``) inside ``conn``'s transaction."""
    values = _partition_values(record)
    key = _partition_key(record.dataset, record.symbol, record.day)
    guard = _P.c.content_hash.is_(None) if expected_content_hash is None else _P.c.content_hash == expected_content_hash
    if conn.execute(sa.update(_P).where(key, guard).values(**values)).rowcount == 1:
        return
    if expected_content_hash is None:
        try:
            # A savepoint, so a duplicate key leaves the transaction
            # usable on PostgreSQL for the SELECT below.
            with conn.begin_nested():
                conn.execute(
                    sa.insert(_P).values(dataset=record.dataset, symbol=record.symbol, date=record.day, **values)
                )
            return
        except IntegrityError:
            pass
    current = conn.execute(sa.select(_P.c.content_hash).where(key)).one_or_none()
    raise CommitConflict(
        record.label,
        expected_content_hash,
        None if current is None else current[0],
        row_exists=current is not None,
    )


def _continue_watermark(conn: Connection, symbol: str, day_start: datetime, minute: datetime) -> datetime | None:
    """Move ``symbol``'s watermark to ``minute`` of the day starting at ``day_start`` when that
    continues it (``Ledger.commit_partition_and_watermark``); the new value, or None."""
    t = watermark_table
    current = conn.execute(sa.select(t.c.last_complete_minute).where(t.c.symbol == symbol)).scalar_one_or_none()
    if current is not None and (current >= minute or current < day_start - timedelta(minutes=1)):
        return None
    if current is None:
        try:
            with conn.begin_nested():
                conn.execute(sa.insert(t).values(symbol=symbol, last_complete_minute=minute, updated_at=_now()))
            return minute
        except IntegrityError:
            return None  # another writer set the first watermark: the next commit continues from it
    updated = conn.execute(
        sa.update(t)
        .where(t.c.symbol == symbol, t.c.last_complete_minute == current)
        .values(last_complete_minute=minute, updated_at=_now())
    )
    return minute if updated.rowcount == 1 else None


# --------------------------------------------------------------------------- the ledger


class Ledger:
    """The ledger store behind a SQLAlchemy URL (``BML_STATE_URL``).

    Safe to use from several threads and processes at once; each method is one
    transaction. The first use runs ``init()``: the tables are migrated to this code's layout.
    """

    def __init__(self, url: str, *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        parsed = make_url(url)
        self.url = url
        self.display_url = parsed.render_as_string(hide_password=True)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._engine = create_state_engine(url, busy_timeout_s=busy_timeout_s)
        # Same pool, but transactions opened through it take the write lock first (SQLite).
        self._write_engine = self._engine.execution_options(**{WRITE_OPTION: True})
        self._upgraded: Upgrade | None = None
        self._init_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Ledger({self.display_url!r})"

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release pooled connections (the ledger reconnects if used again)."""
        self._engine.dispose()

    # ---- setup

    def init(self) -> None:
        """Migrate the tables to this code's layout and check its version; idempotent."""
        self.upgrade()

    def upgrade(self) -> Upgrade:
        """``init()``, saying what it did: the revision the database was at and the one it is at.

        One write transaction (see the module docstring); a second call returns the first's result."""
        with self._init_lock:
            if self._upgraded is None:
                self._upgraded = self._upgrade_and_check()
            return self._upgraded

    def _upgrade_and_check(self) -> Upgrade:
        # Imported here: the migrations import this module's tables.
        from bml_assets.lake.migrations import upgrade_to_head

        meta = ledger_meta_table
        engine = self._write_engine
        if engine.dialect.name == "postgresql":
            # The upgrade reads the revision after waiting for the migration lock: under a server
            # default of REPEATABLE READ its snapshot would predate the holder's commit.
            engine = engine.execution_options(isolation_level="READ COMMITTED")
        with engine.begin() as conn:
            done = upgrade_to_head(conn, where=self.display_url)
            stored = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one_or_none()
            if stored != str(SCHEMA_VERSION):
                raise LedgerVersionError(
                    f"the ledger at {self.display_url} has schema_version {stored!r} at migration revision "
                    f"{done.after!r}, but this version of bml reads and writes schema_version {SCHEMA_VERSION} "
                    "there: ledger_meta was changed by hand or by another program; restore it, or point "
                    "BML_STATE_URL at another ledger"
                )
        return done

    def migration_state(self) -> MigrationState:
        """Where the database stands against this code's migrations (``bml db current``); changes nothing."""
        from bml_assets.lake.migrations import migration_state

        with self._engine.connect() as conn:
            return migration_state(conn, where=self.display_url)

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        self.init()
        with self._engine.connect() as conn:
            yield conn

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        self.init()
        with self._write_engine.begin() as conn:
            yield conn

    def schema_version(self) -> int:
        with self._read() as conn:
            meta = ledger_meta_table
            return int(conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one())

    # Keys of ``ledger_meta`` the code may set besides the schema version.
    BACKFILL_RATE_KEY = "last_backfill_rate"

    def meta(self, key: str) -> str | None:
        """A value of ``ledger_meta`` (None when never set)."""
        with self._read() as conn:
            meta = ledger_meta_table
            return conn.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar_one_or_none()

    def set_meta(self, key: str, value: str) -> None:
        """Set a value of ``ledger_meta`` (e.g. the last backfill's measured rate); not the schema version."""
        if key == "schema_version":
            raise ValueError("the schema version is set by init() alone")
        meta = ledger_meta_table
        with self._write() as conn:
            conn.execute(sa.delete(meta).where(meta.c.key == key))
            conn.execute(sa.insert(meta).values(key=key, value=value))

    # ---- partitions

    def get_partition(self, dataset: Dataset | str, symbol: str, day: date) -> PartitionRecord | None:
        """The row of one partition, or None when the ledger has never heard of it."""
        key = _partition_key(dataset_name(dataset), validate_symbol(symbol), _checked_day(day))
        with self._read() as conn:
            row = conn.execute(sa.select(_P).where(key)).one_or_none()
        return None if row is None else _partition_from_row(row)

    def commit_partition(self, record: PartitionRecord, *, expected_content_hash: str | None) -> PartitionRecord:
        """Write ``record`` if the stored content_hash is still ``expected_content_hash``.

        One transaction, compare-and-swap:

        * ``expected_content_hash=None`` means "the partition has no file yet":
          it succeeds when there is no row, or when the row carries no hash (a
          ``not_listed`` / ``not_published`` row being replaced).
        * a hash means "the row still describes that file": ``UPDATE ... WHERE
          content_hash = :expected``.

        Anything else raises ``CommitConflict`` naming the partition and both hashes.
        Returns the record as stored.
        """
        with self._write() as conn:
            _swap_partition(conn, record, expected_content_hash)
        return record

    def commit_partition_and_watermark(
        self,
        record: PartitionRecord,
        *,
        expected_content_hash: str | None,
        watermark: datetime,
        row_unchanged: bool = False,
    ) -> datetime | None:
        """``commit_partition`` and, in the same transaction, move ``record.symbol``'s watermark
        to ``watermark`` (a minute of ``record.day``) when that continues it. Returns the new
        watermark, or None when it stays.

        The watermark has no holes: it moves only when there is none yet, or when it lies
        between the minute before ``record.day`` began and ``watermark`` (exclusive) — a
        watermark further back would leap over days never committed, one further on is not
        moved back. The move is a compare-and-swap on the value read in this transaction; a
        concurrent writer that moved it first wins and this commit leaves it (the partition's
        row is committed either way). ``row_unchanged``: the row already describes the file
        (same bytes): it is not rewritten, only checked to still hold ``expected_content_hash``
        (else ``CommitConflict``). That every minute up to ``watermark`` is in the file or a
        confirmed source gap is the caller's to check (``commit.commit_table`` does).
        """
        minute = _require_minute(watermark, "the watermark minute")
        day_start = datetime.combine(record.day, time(), UTC)
        if not day_start <= minute < day_start + timedelta(days=1):
            raise ValueError(f"{record.label}: the watermark {minute.isoformat()} is not a minute of that day")
        key = _partition_key(record.dataset, record.symbol, record.day)
        with self._write() as conn:
            if row_unchanged:
                current = conn.execute(sa.select(_P.c.content_hash).where(key)).one_or_none()
                if current is None or current[0] != expected_content_hash:
                    raise CommitConflict(
                        record.label,
                        expected_content_hash,
                        None if current is None else current[0],
                        row_exists=current is not None,
                    )
            else:
                _swap_partition(conn, record, expected_content_hash)
            return _continue_watermark(conn, record.symbol, day_start, minute)

    def partitions(
        self,
        dataset: Dataset | str | None = None,
        symbols: Iterable[str] | None = None,
        start: date | None = None,
        end: date | None = None,
        *,
        status: PartitionStatus | None = None,
    ) -> list[PartitionRecord]:
        """Rows matching every given filter (``start``/``end`` inclusive), ordered by dataset, symbol, day."""
        query = sa.select(_P).order_by(_P.c.dataset, _P.c.symbol, _P.c.date)
        if dataset is not None:
            query = query.where(_P.c.dataset == dataset_name(dataset))
        if symbols is not None:
            wanted = [validate_symbol(s) for s in symbols]
            if not wanted:
                return []
            query = query.where(_P.c.symbol.in_(wanted))
        if start is not None:
            query = query.where(_P.c.date >= _checked_day(start))
        if end is not None:
            query = query.where(_P.c.date <= _checked_day(end))
        if status is not None:
            query = query.where(_P.c.status == status)
        with self._read() as conn:
            return [_partition_from_row(row) for row in conn.execute(query)]

    def file_states(
        self, datasets: Iterable[Dataset | str], symbols: Iterable[str], start: date, end: date
    ) -> list[FileState]:
        """``FileState`` of every row of ``datasets`` × ``symbols`` × ``start..end`` (inclusive),
        ordered by dataset, symbol, day: one query, only the columns that describe the file."""
        names = [dataset_name(d) for d in datasets]
        wanted = [validate_symbol(s) for s in symbols]
        if not names or not wanted:
            return []
        columns = [_P.c[n] for n in ("dataset", "symbol", "date", *_FILE_STATE_COLUMNS)]
        query = (
            sa.select(*columns)
            .where(
                _P.c.dataset.in_(names),
                _P.c.symbol.in_(wanted),
                _P.c.date >= _checked_day(start),
                _P.c.date <= _checked_day(end),
            )
            .order_by(_P.c.dataset, _P.c.symbol, _P.c.date)
        )
        with self._read() as conn:
            return [
                FileState(d, s, day, *values, missing or [], builds or 0)
                for d, s, day, *values, missing, builds in conn.execute(query)
            ]

    def committed_file_stats(self) -> Iterator[tuple[str, str, str, int, int]]:
        """(dataset, symbol, ``YYYY-MM-DD``, size, mtime_ns) of every committed file whose
        stat the commit recorded, unordered: the whole-lake integrity pass of the repair
        sensor reads it every tick, so only plain columns are decoded (a million rows in
        about a second on SQLite; full rows cost several times more)."""
        query = sa.select(
            _P.c.dataset,
            _P.c.symbol,
            sa.type_coerce(_P.c.date, sa.String),  # no date parsing: the text is the path part
            _P.c.file_bytes,
            _P.c.file_mtime_ns,
        ).where(_P.c.status == "committed", _P.c.file_bytes.is_not(None), _P.c.file_mtime_ns.is_not(None))
        with self._read() as conn:
            # Streamed (a server-side cursor on PostgreSQL): the rows are never all held.
            for dataset, symbol, day, size, mtime in conn.execution_options(stream_results=True).execute(query):
                yield dataset, symbol, str(day), size, mtime

    # ---- source files

    def record_source_file(
        self,
        *,
        url: str,
        sha256: str,
        bytes: int,  # shadows the builtin on purpose: the column is named so (SPEC §7)
        checksum_verified: bool,
        rows: int | None = None,
        fetched_at: datetime | None = None,
    ) -> SourceFileRecord:
        """Insert or update the row of (url, sha256); ``fetched_at`` defaults to now. Returns the stored row."""
        record = SourceFileRecord(
            url=url,
            sha256=sha256,
            bytes=bytes,
            rows=rows,
            checksum_verified=checksum_verified,
            fetched_at=fetched_at if fetched_at is not None else _now(),
        )
        t = source_files_table
        key = sa.and_(t.c.url == record.url, t.c.sha256 == record.sha256)
        values = {
            "bytes": record.bytes,
            "rows": record.rows,
            "checksum_verified": record.checksum_verified,
            "fetched_at": record.fetched_at,
        }
        with self._write() as conn:
            # Portable upsert: update, else insert; a racing insert (PostgreSQL)
            # turns into the update it should have been.
            if conn.execute(sa.update(t).where(key).values(**values)).rowcount:
                return record
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(t).values(url=record.url, sha256=record.sha256, **values))
            except IntegrityError:
                conn.execute(sa.update(t).where(key).values(**values))
        return record

    def get_source_file(self, url: str, sha256: str | None = None) -> SourceFileRecord | None:
        """The row of (url, sha256), or with no sha256 the most recently fetched version of url."""
        t = source_files_table
        query = sa.select(t).where(t.c.url == url)
        query = query.where(t.c.sha256 == sha256) if sha256 is not None else query.order_by(t.c.fetched_at.desc())
        with self._read() as conn:
            row = conn.execute(query.limit(1)).one_or_none()
        if row is None:
            return None
        m = row._mapping
        return SourceFileRecord(
            url=m["url"],
            sha256=m["sha256"],
            bytes=m["bytes"],
            rows=m["rows"],
            checksum_verified=bool(m["checksum_verified"]),
            fetched_at=m["fetched_at"],
        )

    # ---- watermark

    def get_watermark(self, symbol: str) -> datetime | None:
        """The symbol's last complete minute (its start, UTC), or None."""
        t = watermark_table
        with self._read() as conn:
            return conn.execute(
                sa.select(t.c.last_complete_minute).where(t.c.symbol == validate_symbol(symbol))
            ).scalar_one_or_none()

    def watermarks(self) -> dict[str, datetime]:
        """Every symbol's watermark."""
        t = watermark_table
        with self._read() as conn:
            return {s: m for s, m in conn.execute(sa.select(t.c.symbol, t.c.last_complete_minute))}

    def advance_watermark(self, symbol: str, minute: datetime, *, expected: datetime | None) -> datetime:
        """Set the watermark to ``minute`` if it still is ``expected`` (None: no watermark yet).

        Never moves backwards: ``minute < expected`` raises ``WatermarkRegression``;
        ``minute == expected`` is an idempotent no-op. A stale ``expected`` raises
        ``WatermarkConflict``. Returns the stored minute.
        """
        t = watermark_table
        symbol = validate_symbol(symbol)
        minute = _require_minute(minute, "the watermark minute")
        if expected is not None:
            expected = _require_minute(expected, "the expected watermark")
            if minute < expected:
                raise WatermarkRegression(
                    f"watermark of {symbol} cannot move backwards from {expected.isoformat()} to {minute.isoformat()}"
                )
        with self._write() as conn:
            if expected is None:
                try:
                    with conn.begin_nested():
                        conn.execute(sa.insert(t).values(symbol=symbol, last_complete_minute=minute, updated_at=_now()))
                    return minute
                except IntegrityError:
                    pass
            else:
                updated = conn.execute(
                    sa.update(t)
                    .where(t.c.symbol == symbol, t.c.last_complete_minute == expected)
                    .values(last_complete_minute=minute, updated_at=_now())
                )
                if updated.rowcount == 1:
                    return minute
            current = conn.execute(sa.select(t.c.last_complete_minute).where(t.c.symbol == symbol)).scalar_one_or_none()
        raise WatermarkConflict(symbol, expected, current)

    # ---- symbols (the exchange's universe, from ``bml symbols sync``)

    def upsert_symbols(self, records: Iterable[SymbolRecord]) -> SymbolSync:
        """Insert or update one row per record (one transaction); rows of other symbols stay.

        A row whose onboard date, delist date and status are unchanged keeps its
        ``updated_at``; a changed or new row gets the record's ``updated_at`` (now if unset).
        """
        t = symbols_table
        batch = {r.symbol: r for r in records}
        added = changed = unchanged = 0
        with self._write() as conn:
            stored = {
                row.symbol: (row.onboard_date, row.delist_date, row.status)
                for row in conn.execute(sa.select(t.c.symbol, t.c.onboard_date, t.c.delist_date, t.c.status))
            }
            for symbol, record in sorted(batch.items()):
                values = {
                    "onboard_date": record.onboard_date,
                    "delist_date": record.delist_date,
                    "status": record.status,
                    "updated_at": record.updated_at if record.updated_at is not None else _now(),
                }
                previous = stored.get(symbol)
                if previous == (record.onboard_date, record.delist_date, record.status):
                    unchanged += 1
                elif previous is not None:
                    conn.execute(sa.update(t).where(t.c.symbol == symbol).values(**values))
                    changed += 1
                else:
                    try:
                        with conn.begin_nested():
                            conn.execute(sa.insert(t).values(symbol=symbol, **values))
                        added += 1
                    except IntegrityError:  # PostgreSQL: a concurrent sync inserted it first
                        conn.execute(sa.update(t).where(t.c.symbol == symbol).values(**values))
                        changed += 1
        return SymbolSync(added=added, changed=changed, unchanged=unchanged)

    def symbols(self) -> dict[str, SymbolRecord]:
        """Every synced symbol by name (empty when the universe was never synced)."""
        t = symbols_table
        with self._read() as conn:
            rows = conn.execute(sa.select(t).order_by(t.c.symbol)).all()
        return {
            m["symbol"]: SymbolRecord(
                symbol=m["symbol"],
                onboard_date=m["onboard_date"],
                delist_date=m["delist_date"],
                status=m["status"],
                updated_at=m["updated_at"],
            )
            for m in (row._mapping for row in rows)
        }


def _checked_day(day: date) -> date:
    day_text(day)
    return day
