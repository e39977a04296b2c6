"""lake/migrations: the ledger's Alembic revisions and the upgrade ``Ledger.init()`` runs.

Tests taking ``url`` run on SQLite and on PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from bml_assets.cli import main
from bml_assets.domain.schema import KLINES
from bml_assets.lake.ledger import Ledger, LedgerVersionError, PartitionRecord, SymbolRecord, metadata
from bml_assets.lake.migrations import (
    VERSION_TABLE,
    MigrationState,
    Upgrade,
    alembic_config,
    context_options,
    schema_differences,
)
from bml_assets.storage.state_db import create_state_engine
from bml_assets_tests.unit.lake._helpers import COMMITTED_AT, DAY, upgrade_worker

HASH = "a" * 64
SHA = "b" * 64
MINUTE = datetime(2024, 3, 5, 23, 59, tzinfo=UTC)
LISTED = date(2019, 9, 8)
STEPS = ("0001", "0002", "0003")


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    # The ledger's own engine setup (on SQLite: the folder, WAL, BEGIN IMMEDIATE for writers).
    engine = create_state_engine(url, busy_timeout_s=30, write_by_default=True)
    yield engine
    engine.dispose()


def _version_rows(engine: Engine) -> list[str] | None:
    """The rows of the migrations' version table, or None when it does not exist."""
    with engine.connect() as conn:
        if not sa.inspect(conn).has_table(VERSION_TABLE):
            return None
        return [r for (r,) in conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}"))]


def _columns(engine: Engine, table: str) -> list[str]:
    with engine.connect() as conn:
        return [c["name"] for c in sa.inspect(conn).get_columns(table)]


def _tables(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(sa.inspect(conn).get_table_names())


# --------------------------------------------------------------------------- a fresh database


def test_a_fresh_database_migrated_to_head_has_exactly_the_tables_of_metadata(url: str, engine: Engine) -> None:
    """The guard that keeps migrations honest: whoever changes ``metadata`` without a revision
    (or a revision without ``metadata``) fails here, on both dialects."""
    with Ledger(url) as ledger:
        before = ledger.migration_state()
        assert before == MigrationState(
            current=None,
            head="0003",
            known=True,
            pre_migration=None,
            pending=(
                ("0001", "The ledger's layout version 1: partitions, source_files, watermark, ledger_meta."),
                ("0002", "The ledger's layout version 2: what a committed partition's file and completeness are."),
                ("0003", "The exchange's symbol universe (``bml symbols sync``) joins the migrated tables."),
            ),
        )
        assert before.empty
        assert ledger.upgrade() == Upgrade(before=None, after="0003")
        assert ledger.schema_version() == 2
        after = ledger.migration_state()
        assert (after.current, after.pending, after.empty) == ("0003", (), False)
    assert _version_rows(engine) == ["0003"]
    # Alembic's own comparison, with the options env.py migrates with.
    with engine.connect() as conn:
        differences = compare_metadata(MigrationContext.configure(conn, opts=context_options()), metadata)
    assert differences == [], (
        "the ledger's tables in ledger.py and its migrations differ: add a revision in "
        f"bml_assets/lake/migrations/versions (see that package's docstring): {differences}"
    )
    # Every table of metadata is there, and the migrations' version table beside them.
    assert _tables(engine) >= {*metadata.tables, VERSION_TABLE}
    assert _columns(engine, "partitions")[-4:] == [
        "file_bytes",
        "file_mtime_ns",
        "missing_streams",
        "incomplete_builds",
    ]


def test_the_guard_names_a_change_of_the_tables_that_has_no_migration(url: str, engine: Engine) -> None:
    """A layout that differs from the migrated database is seen (so the guard above can fail)."""
    with Ledger(url) as ledger:
        ledger.init()
    changed = sa.MetaData()
    for table in metadata.tables.values():
        if table.name != "symbols":  # a table the code dropped
            table.to_metadata(changed)
    changed.tables["partitions"].append_column(sa.Column("replaced_by", sa.Text))  # a column it added
    changed.tables["source_files"].c.rows.type = sa.Text()  # a type it changed
    with engine.connect() as conn:
        assert sorted(schema_differences(conn, changed)) == [
            "column partitions.replaced_by is missing",
            "column source_files.rows: type is BIGINT, this bml expects TEXT",
            "table symbols is not in this bml's layout",
        ]
        # Another program's tables beside the ledger's (Dagster's, the REST budget's) are no difference.
        conn.execute(sa.text("CREATE TABLE runs (id INTEGER PRIMARY KEY)"))
        assert schema_differences(conn) == []
        conn.rollback()


def test_upgrading_a_database_at_head_changes_nothing(url: str, engine: Engine) -> None:
    with Ledger(url) as first:
        first.commit_partition(_committed_record(), expected_content_hash=None)
    with Ledger(url) as second:
        done = second.upgrade()
        assert done == Upgrade(before="0003", after="0003") and not done.changed
        assert second.upgrade() is done  # once per ledger object
        assert second.get_partition(KLINES, "BTCUSDT", DAY) == _committed_record()
    assert _version_rows(engine) == ["0003"]


def _committed_record() -> PartitionRecord:
    return PartitionRecord(
        dataset="klines_1m",
        symbol="BTCUSDT",
        day=DAY,
        status="committed",
        committed_at=COMMITTED_AT,
        path="futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/part.parquet",
        row_count=1440,
        content_hash=HASH,
        file_bytes=2048,
        file_mtime_ns=7,
    )


def test_two_processes_opening_a_fresh_ledger_at_once_migrate_it_once(url: str, engine: Engine) -> None:
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=upgrade_worker, args=(url, start, out)) for _ in range(3)]
    for w in workers:
        w.start()
    start.set()
    outcomes = sorted(out.get(timeout=120) for _ in workers)
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    # One created the tables; the others waited for its lock and found them at head.
    assert outcomes == [("0003", "0003"), ("0003", "0003"), ("None", "0003")], outcomes
    assert _version_rows(engine) == ["0003"]


# --------------------------------------------------------------------------- ledgers older than the migrations


def _old_layout(version: int) -> sa.MetaData:
    """The tables as ``init()`` created them with ``create_all`` before the migrations
    (version 1 as of commit 09c2fc2, version 2 as of 646c9f7), frozen here."""
    old = sa.MetaData()
    extra = (
        [
            sa.Column("file_bytes", sa.BigInteger),
            sa.Column("file_mtime_ns", sa.BigInteger),
            sa.Column("missing_streams", sa.JSON),
            sa.Column("incomplete_builds", sa.Integer),
        ]
        if version == 2
        else []
    )
    sa.Table(
        "partitions",
        old,
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
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        *extra,
        sa.CheckConstraint("status IN ('committed', 'not_listed', 'not_published')", name="ck_partitions_status"),
        sa.CheckConstraint(
            "status <> 'committed' OR content_hash IS NOT NULL", name="ck_partitions_committed_has_hash"
        ),
    )
    sa.Table(
        "source_files",
        old,
        sa.Column("url", sa.Text, primary_key=True),
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("rows", sa.BigInteger),
        sa.Column("checksum_verified", sa.Boolean, nullable=False),
        sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "watermark",
        old,
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("last_complete_minute", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    sa.Table(
        "ledger_meta",
        old,
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    # Created on the first ``symbols sync`` (any version), so only some old ledgers have it.
    sa.Table(
        "symbols",
        old,
        sa.Column("symbol", sa.String(20), primary_key=True),
        sa.Column("onboard_date", sa.Date),
        sa.Column("delist_date", sa.Date),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    return old


def _create_old_ledger(engine: Engine, version: int, *, synced: bool, skip: tuple[str, ...] = ()) -> None:
    """A ledger as bml wrote it before the migrations, with a row in each table."""
    old = _old_layout(version)
    tables = [t for t in old.sorted_tables if t.name not in skip and (synced or t.name != "symbols")]
    with engine.begin() as conn:
        old.create_all(conn, tables=tables)
        t = old.tables
        conn.execute(sa.insert(t["ledger_meta"]).values(key="schema_version", value=str(version)))
        conn.execute(sa.insert(t["ledger_meta"]).values(key="last_backfill_rate", value="12.5"))
        conn.execute(
            sa.insert(t["partitions"]).values(
                dataset="klines_1m",
                symbol="BTCUSDT",
                date=DAY,
                status="committed",
                path="p",
                row_count=1440,
                content_hash=HASH,
                provenance={"klines": []},
                source_gaps=[],
                committed_at=datetime(2024, 3, 6, 1, 2, 3) if engine.dialect.name == "sqlite" else COMMITTED_AT,
            )
        )
        if "source_files" not in skip:
            conn.execute(
                sa.insert(t["source_files"]).values(
                    url="https://x/a.zip", sha256=SHA, bytes=10, rows=1440, checksum_verified=True, fetched_at=MINUTE
                )
            )
        if "watermark" not in skip:
            conn.execute(
                sa.insert(t["watermark"]).values(symbol="BTCUSDT", last_complete_minute=MINUTE, updated_at=MINUTE)
            )
        if synced:
            conn.execute(
                sa.insert(t["symbols"]).values(
                    symbol="BTCUSDT", onboard_date=LISTED, status="TRADING", updated_at=MINUTE
                )
            )


@pytest.mark.parametrize(("version", "synced"), [(1, False), (1, True), (2, False), (2, True)])
def test_a_ledger_older_than_the_migrations_is_adopted_in_place_and_keeps_its_rows(
    url: str, engine: Engine, version: int, synced: bool
) -> None:
    _create_old_ledger(engine, version, synced=synced)
    with Ledger(url) as ledger:
        state = ledger.migration_state()
        assert (state.current, state.pre_migration, state.known) == (None, str(version), True)
        assert [r for r, _ in state.pending] == list(STEPS[version:])
        assert ledger.upgrade() == Upgrade(before=f"000{version}", after="0003", adopted=str(version))
        assert ledger.schema_version() == 2
        assert ledger.meta(Ledger.BACKFILL_RATE_KEY) == "12.5"
        old = ledger.get_partition(KLINES, "BTCUSDT", DAY)
        assert old is not None
        assert (old.status, old.row_count, old.content_hash, old.committed_at) == (
            "committed",
            1440,
            HASH,
            COMMITTED_AT,
        )
        assert (old.file_bytes, old.file_mtime_ns, list(old.missing_streams), old.incomplete_builds) == (
            None,
            None,
            [],
            0,
        )
        source = ledger.get_source_file("https://x/a.zip", SHA)
        assert source is not None and (source.bytes, source.rows, source.checksum_verified) == (10, 1440, True)
        assert ledger.watermarks() == {"BTCUSDT": MINUTE}
        expected_symbols = {"BTCUSDT": SymbolRecord("BTCUSDT", LISTED, "TRADING", updated_at=MINUTE)} if synced else {}
        assert ledger.symbols() == expected_symbols
        # The new columns are usable.
        ledger.commit_partition(_committed_record(), expected_content_hash=HASH)
        new = ledger.get_partition(KLINES, "BTCUSDT", DAY)
        assert new is not None and (new.file_bytes, new.file_mtime_ns) == (2048, 7)
    assert _version_rows(engine) == ["0003"]
    with engine.connect() as conn:
        assert schema_differences(conn) == []
    with Ledger(url) as again:
        assert again.upgrade() == Upgrade(before="0003", after="0003")


def _old_ledger_state(engine: Engine) -> tuple[object, ...]:
    with engine.connect() as conn:
        inspector = sa.inspect(conn)
        layout = {t: [c["name"] for c in inspector.get_columns(t)] for t in sorted(inspector.get_table_names())}
        meta = sorted(conn.execute(sa.text("SELECT key, value FROM ledger_meta")).all())
        partitions = conn.execute(sa.text("SELECT dataset, symbol, row_count, content_hash FROM partitions")).all()
    return layout, meta, partitions


def test_an_old_ledger_that_differs_from_its_layout_is_refused_naming_the_differences(url: str, engine: Engine) -> None:
    _create_old_ledger(engine, 2, synced=False, skip=("watermark",))
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE source_files ADD COLUMN mirror TEXT"))
    before = _old_ledger_state(engine)
    with pytest.raises(LedgerVersionError) as info:
        Ledger(url).init()
    message = str(info.value)
    assert "predates migrations (schema_version 2)" in message
    assert "table watermark is missing" in message
    assert "column source_files.mirror is not in this bml's layout" in message
    assert "nothing was changed" in message
    # Left as it was: no version table, no symbols table, the rows and the version untouched.
    assert _old_ledger_state(engine) == before
    assert _version_rows(engine) is None


def test_an_old_ledger_whose_upgrade_step_fails_is_refused_and_left_as_it_was(url: str, engine: Engine) -> None:
    # Says version 1, but partitions already has a column that version 2 adds.
    _create_old_ledger(engine, 1, synced=False)
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE partitions ADD COLUMN file_bytes BIGINT"))
    before = _old_ledger_state(engine)
    with pytest.raises(LedgerVersionError, match=r"schema_version 1\) and its tables do not have that version's"):
        Ledger(url).init()
    assert _old_ledger_state(engine) == before
    assert _version_rows(engine) is None


@pytest.mark.parametrize(
    ("setup", "stored"),
    [
        (["CREATE TABLE partitions (dataset TEXT PRIMARY KEY)"], "no schema_version"),
        (
            [
                "CREATE TABLE ledger_meta (key VARCHAR(64) PRIMARY KEY, value TEXT NOT NULL)",
                "INSERT INTO ledger_meta VALUES ('schema_version', '7')",
            ],
            "schema_version '7'",
        ),
    ],
)
def test_ledger_tables_of_no_known_version_are_refused(url: str, engine: Engine, setup: list[str], stored: str) -> None:
    with engine.begin() as conn:
        for statement in setup:
            conn.execute(sa.text(statement))
    # `bml db current` says the same before anything is tried, and lists no steps.
    state = Ledger(url).migration_state()
    assert state.refused is not None and f"with {stored} and no {VERSION_TABLE}" in state.refused
    assert (state.pending, state.empty) == ((), False)
    with pytest.raises(LedgerVersionError, match=f"holds ledger tables .* with {stored} and no {VERSION_TABLE}"):
        Ledger(url).init()
    assert _version_rows(engine) is None


# --------------------------------------------------------------------------- a database from a newer bml


def test_a_ledger_a_newer_bml_upgraded_is_refused_and_left_as_it_was(url: str, engine: Engine) -> None:
    Ledger(url).init()
    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
        # What that newer bml's revision did: a column this code does not know.
        conn.execute(sa.text("ALTER TABLE watermark ADD COLUMN source TEXT"))
    with Ledger(url) as newer:
        with pytest.raises(LedgerVersionError, match="revision '0042'") as info:
            newer.init()
        assert "does not know (its newest is '0003')" in str(info.value)
        assert "Upgrade bml" in str(info.value) and "nothing was changed" in str(info.value)
        state = newer.migration_state()
        assert (state.current, state.known, state.pending) == ("0042", False, ())
    assert _version_rows(engine) == ["0042"]
    assert _columns(engine, "watermark") == ["symbol", "last_complete_minute", "updated_at", "source"]


# --------------------------------------------------------------------------- downgrades


def _migrate(engine: Engine, to: str, *, down: bool) -> None:
    with engine.begin() as conn:
        config = alembic_config(conn)
        (command.downgrade if down else command.upgrade)(config, to)


def _differences(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return schema_differences(conn)


def test_every_revision_downgrades_and_upgrades_again(url: str, engine: Engine) -> None:
    with Ledger(url) as ledger:
        ledger.commit_partition(_committed_record(), expected_content_hash=None)
        ledger.upsert_symbols([SymbolRecord("BTCUSDT", LISTED, "TRADING", updated_at=MINUTE)])

    _migrate(engine, "0002", down=True)
    assert "symbols" not in _tables(engine) and _version_rows(engine) == ["0002"]
    _migrate(engine, "0001", down=True)
    assert _version_rows(engine) == ["0001"]
    assert "file_bytes" not in _columns(engine, "partitions")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT value FROM ledger_meta WHERE key = 'schema_version'")).scalar() == "1"
        assert conn.execute(sa.text("SELECT row_count, content_hash FROM partitions")).all() == [(1440, HASH)]
    _migrate(engine, "base", down=True)
    assert not _tables(engine) & set(metadata.tables) and _version_rows(engine) == []

    _migrate(engine, "head", down=False)
    assert _differences(engine) == [] and _version_rows(engine) == ["0003"]
    for step in reversed(STEPS[:-1]):  # one step down and up again from each revision
        _migrate(engine, step, down=True)
        _migrate(engine, "head", down=False)
        assert _differences(engine) == [], step
    with Ledger(url) as ledger:
        assert ledger.schema_version() == 2


# --------------------------------------------------------------------------- bml db


def test_bml_db_current_and_upgrade(url: str, engine: Engine, tmp_path: Path) -> None:
    env = {"BML_STATE_URL": url, "BML_LAKE_ROOT": str(tmp_path)}
    runner = CliRunner()
    _create_old_ledger(engine, 1, synced=False)

    current = runner.invoke(main, ["db", "current"], env=env)
    assert current.exit_code == 0, current.output
    assert "revision: none (a ledger older than the migrations, schema_version 1)" in current.output
    assert "head:     0003 (the newest this bml knows)" in current.output
    assert "2 migration(s) pending (`bml db upgrade` runs them):" in current.output
    assert "  0002  The ledger's layout version 2" in current.output
    assert _version_rows(engine) is None  # `current` changes nothing

    upgraded = runner.invoke(main, ["db", "upgrade"], env=env)
    assert upgraded.exit_code == 0, upgraded.output
    assert "revision: 0003 (upgraded from schema_version 1 (before migrations), as 0001)" in upgraded.output
    again = runner.invoke(main, ["db", "upgrade"], env=env)
    assert "revision: 0003 (up to date, nothing to do)" in again.output
    assert "up to date" in runner.invoke(main, ["db", "current"], env=env).output

    with engine.begin() as conn:
        conn.execute(sa.text(f"UPDATE {VERSION_TABLE} SET version_num = '0042'"))
    refused = runner.invoke(main, ["db", "upgrade"], env=env)
    assert refused.exit_code == 1
    assert "revision '0042'" in refused.output and "Upgrade bml" in refused.output and "what to do" in refused.output
    assert "a newer bml upgraded this ledger" in runner.invoke(main, ["db", "current"], env=env).output


def test_bml_db_current_on_a_sqlite_ledger_not_yet_created_does_not_create_it(tmp_path: Path) -> None:
    ledger = tmp_path / "lake" / "_state" / "ledger.sqlite"
    current = CliRunner().invoke(main, ["db", "current"], env={"BML_LAKE_ROOT": str(tmp_path / "lake")})
    assert current.exit_code == 0, current.output
    assert f"ledger:   sqlite:///{ledger} (no such file)" in current.output
    assert "revision: none (no ledger yet" in current.output
    assert "3 migration(s) pending" in current.output
    assert not ledger.exists() and not ledger.parent.exists()


def test_the_migration_lock_holds_under_a_repeatable_read_server_default(empty_postgres_url: str) -> None:
    """A server (or role) whose default isolation is REPEATABLE READ: processes that waited for
    the migration lock while another migrated must see its commit, not migrate again. The test
    holds the lock itself, migrating, until both processes wait for it."""
    from bml_assets.lake.migrations import upgrade_to_head

    url = empty_postgres_url + "?options=-c%20default_transaction_isolation%3Drepeatable%5C%20read"
    engine = sa.create_engine(url)
    ctx = multiprocessing.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    workers = [ctx.Process(target=upgrade_worker, args=(url, start, out)) for _ in range(2)]
    try:
        with engine.begin() as conn:
            assert conn.execute(sa.text("SHOW transaction_isolation")).scalar() == "repeatable read"
            assert upgrade_to_head(conn, where="test").after == "0003"  # takes the lock, migrates
            for w in workers:
                w.start()
            start.set()
            waiting = sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            with engine.connect() as probe:
                for _ in range(600):
                    if probe.execute(waiting).scalar() == 2:
                        break
                    probe.rollback()  # a fresh snapshot for the next look
                    time.sleep(0.1)
                else:
                    pytest.fail("the two processes never waited for the migration lock")
        outcomes = sorted(out.get(timeout=120) for _ in workers)
    finally:
        for w in workers:
            w.join(30)
        engine.dispose()
    assert outcomes == [("0003", "0003"), ("0003", "0003")], outcomes
