"""Migrations of the ledger's tables (SPEC §7, §10): a deployed ledger is upgraded in place.

What belongs here: the Alembic environment, shipped inside the package and configured in
code (no ``alembic.ini``): ``env.py``, ``script.py.mako`` and ``versions/``, one frozen
revision per change of the ledger's tables, oldest first; and the runner around it.
``upgrade_to_head`` brings the database behind a connection to the newest revision inside
the caller's transaction (``Ledger.init`` and ``bml db upgrade`` call it);
``migration_state`` says where a database stands without changing it (``bml db current``).

What stays out: the tables as the code uses them (``ledger.py``'s ``metadata``; a revision
never imports it, so that history does not move when the code does), the REST budget's
tables (``sources/rest_budget.py`` keeps ``create_all``: its rows live two minutes), and
Dagster's storage. Dagster on PostgreSQL runs Alembic too, with its ``alembic_version``
table: the ledger's version table is ``bml_alembic_version``, and only the tables of
``metadata`` are compared, so the two can share a database.

Two processes starting at once: the upgrade runs in the caller's write transaction, which
on SQLite holds the write lock from its first statement (``BEGIN IMMEDIATE``), and on
PostgreSQL takes a transaction-scoped advisory lock first. The second process waits, then
finds the database at head and does nothing. On PostgreSQL that needs READ COMMITTED
(``Ledger`` asks for it): at REPEATABLE READ the waiter's snapshot predates the holder's
commit and it would migrate again. An error rolls the whole upgrade back.

A database at a revision this bml does not know was upgraded by a newer bml: it is refused
(``LedgerVersionError``, "upgrade bml") before anything is changed.

Ledgers older than the migrations (``ledger_meta.schema_version`` 1 or 2, no version
table) are adopted: stamped at the revision of their layout version, upgraded to head, then
compared with ``metadata``; any difference (a missing table or column, another type) refuses
the upgrade naming the differences, and the transaction leaves the database as it was.

A new revision, after changing ``metadata``: the next ``versions/NNNN_what_changed.py``
with ``revision = "NNNN"`` and ``down_revision`` the previous one, after the pattern of the
others (``script.py.mako`` is the template). Alembic drafts it from the difference between
a ledger at head (a scratch SQLite file is enough) and ``metadata``:
``alembic.command.revision(alembic_config(conn), "what changed", autogenerate=True,
rev_id="NNNN")`` on a connection to it in a transaction. Freeze what it wrote (plain
SQLAlchemy types: ``UTCDateTime`` is ``sa.DateTime(timezone=True)``), add the downgrade,
and bump ``SCHEMA_VERSION`` (in a revision setting ``ledger_meta``) when readers of the
tables must notice. The test suite fails while ``metadata`` and the head revision differ.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from bml_assets.lake.ledger import LedgerVersionError, ledger_meta_table, metadata

VERSION_TABLE: Final = "bml_alembic_version"

# Key of the PostgreSQL advisory lock held while the ledger is migrated: "bml_ledg" in ASCII.
ADVISORY_LOCK_KEY: Final = 0x626D6C5F6C656467

# A pre-migration ledger's ``schema_version`` -> the revision that leaves its layout.
PRE_MIGRATION_REVISIONS: Final[Mapping[str, str]] = {"1": "0001", "2": "0002"}

_HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Upgrade:
    """What ``upgrade_to_head`` did: from which revision (None: an empty database) to which.

    ``adopted``: the ``schema_version`` of a pre-migration ledger that was stamped and upgraded."""

    before: str | None
    after: str
    adopted: str | None = None

    @property
    def changed(self) -> bool:
        return self.before != self.after or self.adopted is not None


@dataclass(frozen=True)
class MigrationState:
    """Where a ledger database stands (``migration_state``); nothing was changed to learn it.

    ``current``: its revision (None: no version table). ``pre_migration``: the
    ``schema_version`` of a ledger older than the migrations. ``known``: ``current`` is a
    revision of this bml (False: a newer bml upgraded it). ``pending``: (revision, what it
    does) of every step ``bml db upgrade`` would run, oldest first. ``refused``: why the
    upgrade would refuse the database (ledger tables this bml cannot adopt), else None."""

    current: str | None
    head: str
    known: bool
    pre_migration: str | None
    pending: tuple[tuple[str, str], ...]
    refused: str | None = None

    @property
    def empty(self) -> bool:
        return self.current is None and self.pre_migration is None and self.refused is None


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration of the ledger: this folder, and the connection env.py migrates."""
    config = Config()
    config.set_main_option("script_location", str(_HERE).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache
def _known_revisions() -> frozenset[str]:
    return frozenset(r.revision for r in _script().walk_revisions())


def head_revision() -> str:
    """The newest revision this bml knows."""
    head = _script().get_current_head()
    assert head is not None, "the ledger's migrations have one head"
    return head


def _include_name(name: str | None, type_: str, _parents: Mapping[str, str | None]) -> bool:
    # Only the ledger's tables: Dagster's and the REST budget's may share the database.
    return type_ != "table" or name in metadata.tables


def context_options() -> dict[str, Any]:
    """The options every migration context of the ledger is configured with (env.py, the checks)."""
    return {
        "target_metadata": metadata,
        "version_table": VERSION_TABLE,
        "render_as_batch": True,  # SQLite alters most things by copying the table
        "include_name": _include_name,
        "compare_type": True,
    }


def schema_differences(conn: Connection, target: sa.MetaData = metadata) -> list[str]:
    """How the ledger's tables in the database differ from ``target`` (the ledger's
    ``metadata``), one line each; none when they are equal."""
    context = MigrationContext.configure(conn, opts={**context_options(), "target_metadata": target})
    return [_describe(diff) for diff in compare_metadata(context, target)]


def _describe(diff: Any) -> str:
    if isinstance(diff, list):  # the modify_* differences of one column come grouped
        return "; ".join(_describe(d) for d in diff)
    kind = diff[0]
    if kind == "add_table":
        return f"table {diff[1].name} is missing"
    if kind == "remove_table":
        return f"table {diff[1].name} is not in this bml's layout"
    if kind == "add_column":
        return f"column {diff[2]}.{diff[3].name} is missing"
    if kind == "remove_column":
        return f"column {diff[2]}.{diff[3].name} is not in this bml's layout"
    if kind.startswith("modify_"):
        _kind, _schema, table, column, _info, stored, expected = diff
        return f"column {table}.{column}: {kind.removeprefix('modify_')} is {stored}, this bml expects {expected}"
    return f"{kind}: {diff[1:]}"


def _current_revision(conn: Connection) -> str | None:
    heads = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    return heads[0] if heads else None


def _newer_bml(where: str, revision: str) -> LedgerVersionError:
    return LedgerVersionError(
        f"the ledger at {where} is at migration revision {revision!r}, which this version of bml does not "
        f"know (its newest is {head_revision()!r}): a newer bml upgraded it. Upgrade bml before opening this "
        "ledger; nothing was changed"
    )


def _pre_migration_version(conn: Connection, where: str) -> str | None:
    """The ``schema_version`` of a ledger older than the migrations; None for a database
    without the ledger's tables. A database that has some of them but no known version is refused."""
    inspector = sa.inspect(conn)
    present = sorted(name for name in metadata.tables if inspector.has_table(name))
    if not present:
        return None
    meta = ledger_meta_table
    version = None
    if meta.name in present:
        version = conn.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).scalar_one_or_none()
    if version not in PRE_MIGRATION_REVISIONS:
        stored = "no schema_version" if version is None else f"schema_version {version!r}"
        raise LedgerVersionError(
            f"the database at {where} holds ledger tables ({', '.join(present)}) with {stored} and no "
            f"{VERSION_TABLE} table: not a ledger this bml can adopt (it adopts schema_version "
            f"{', '.join(PRE_MIGRATION_REVISIONS)}); nothing was changed"
        )
    return version


def upgrade_to_head(conn: Connection, *, where: str) -> Upgrade:
    """Bring the ledger behind ``conn`` to the newest revision, inside ``conn``'s transaction
    (the caller commits it; an error rolls everything back). ``where`` names the database in
    errors. A no-op at head; ``LedgerVersionError`` for a database from a newer bml or a
    pre-migration ledger that differs from its layout. On PostgreSQL ``conn`` must be at READ
    COMMITTED (see the module docstring)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(ADVISORY_LOCK_KEY)))
    head = head_revision()
    current = _current_revision(conn)
    if current == head:
        return Upgrade(before=head, after=head)
    if current is not None and current not in _known_revisions():
        raise _newer_bml(where, current)
    adopted = None
    config = alembic_config(conn)
    if current is None:
        adopted = _pre_migration_version(conn, where)
        if adopted is not None:
            current = PRE_MIGRATION_REVISIONS[adopted]
            command.stamp(config, current)
    if adopted is None:
        command.upgrade(config, "head")
        return Upgrade(before=current, after=head)
    try:
        command.upgrade(config, "head")
    except sa.exc.DBAPIError as exc:
        raise LedgerVersionError(
            f"the ledger at {where} predates migrations (schema_version {adopted}) and its tables do not have "
            f"that version's layout: upgrading them failed ({exc.orig}); nothing was changed"
        ) from exc
    differences = schema_differences(conn)
    if differences:
        raise LedgerVersionError(
            f"the ledger at {where} predates migrations (schema_version {adopted}) and its tables do not have "
            f"that version's layout: {'; '.join(differences)}; nothing was changed"
        )
    return Upgrade(before=current, after=head, adopted=adopted)


def migration_state(conn: Connection, *, where: str) -> MigrationState:
    """Where the ledger behind ``conn`` stands; reads only. ``where`` names it in ``refused``."""
    head = head_revision()
    current = _current_revision(conn)
    known = current is None or current in _known_revisions()
    pre_migration = None
    if current is None:
        try:
            pre_migration = _pre_migration_version(conn, where)
        except LedgerVersionError as exc:  # the upgrade would refuse it the same way
            return MigrationState(current, head, known, None, (), refused=str(exc))
    start = current if current is not None else PRE_MIGRATION_REVISIONS.get(pre_migration or "")
    pending: tuple[tuple[str, str], ...] = ()
    if known and start != head:
        steps = _script().iterate_revisions(head, start if start is not None else "base")
        pending = tuple((s.revision, (s.doc or "").strip()) for s in reversed(list(steps)))
    return MigrationState(current=current, head=head, known=known, pre_migration=pre_migration, pending=pending)
