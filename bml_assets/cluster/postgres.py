"""A PostgreSQL server of Debian's ``postgresql`` package: ``initdb`` and ``pg_ctl`` on a loopback port.

What belongs here: finding the binaries (Debian keeps them off PATH), creating a cluster in
a folder (as the ``postgres`` user when run as root: ``initdb`` refuses root), starting and
stopping it, creating a database, and its SQLAlchemy URL (``postgresql+psycopg2://``: the
scheme Dagster's PostgreSQL storage needs with SQLAlchemy 2). What stays out: what is stored
in it. Trust authentication on 127.0.0.1 only: a local cluster for tests and demos.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bml_assets.cluster.services import ServiceUnavailable, free_port

INSTALL_HINT = "Debian: apt-get install postgresql"


class PostgresUnavailable(ServiceUnavailable):
    """No PostgreSQL server can be started here (the reason is the message)."""


def binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[4]))
    if candidates:
        return candidates[-1]
    raise PostgresUnavailable(f"PostgreSQL is not installed: no {name} ({INSTALL_HINT})")


def _as_owner(folder: Path) -> list[str]:
    """The prefix that runs a command as the owner the cluster needs (``postgres`` under root)."""
    if os.geteuid() != 0:
        return []
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable("running as root and there is no postgres user to run initdb as") from None
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    return ["runuser", "-u", "postgres", "--"]


def _run(prefix: list[str], *args: str) -> None:
    proc = subprocess.run([*prefix, *args], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PostgresUnavailable(f"{Path(args[0]).name} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


def url(port: int, database: str = "postgres") -> str:
    return f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{database}"


def _home(folder: Path) -> tuple[Path, list[str]]:
    """Where the cluster's files go (data, socket, log) and the command prefix. As root, the
    server runs as ``postgres``, who may not be able to reach ``folder`` (pytest's temporary
    folders are private to root): the files then go to a folder of its own in the system's
    temporary folder, linked from ``folder/home``."""
    link = folder / "home"
    if link.is_symlink():
        home = link.resolve()
        return home, _as_owner(home)
    prefix = _as_owner(folder)
    if not prefix or subprocess.run([*prefix, "test", "-w", str(folder)], capture_output=True).returncode == 0:
        return folder, prefix
    home = Path(tempfile.mkdtemp(prefix="bml-pg-"))
    link.symlink_to(home)
    return home, _as_owner(home)


def start(folder: Path, port: int, *, durable: bool = False) -> str:
    """Create (first time) and start the cluster in ``folder`` on ``port``; return its URL.
    ``durable=False`` turns fsync off: a scratch cluster thrown away with its folder."""
    folder.mkdir(parents=True, exist_ok=True)
    home, prefix = _home(folder)
    data = home / "data"
    if not (data / "PG_VERSION").exists():
        _run(prefix, binary("initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    options = f"-p {port} -k {home} -c listen_addresses=127.0.0.1" + ("" if durable else " -c fsync=off")
    _run(prefix, binary("pg_ctl"), "-D", str(data), "-o", options, "-l", str(home / "server.log"), "-w", "start")
    return url(port)


def stop(folder: Path, *, fast: bool = True) -> None:
    """Stop the cluster in ``folder`` (``immediate`` mode when ``fast``: crash-safe, no checkpoint)."""
    home, prefix = _home(folder)
    data = home / "data"
    if not (data / "postmaster.pid").exists():
        return
    pg_ctl = binary("pg_ctl")
    done = subprocess.run(
        [*prefix, pg_ctl, "-D", str(data), "-m", "immediate" if fast else "fast", "stop"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # pg_ctl also fails on a stale pid file with no server behind it: only a server still
    # running is an error (``pg_ctl status`` exits 0 then).
    if (
        done.returncode != 0
        and subprocess.run([*prefix, pg_ctl, "-D", str(data), "status"], capture_output=True).returncode == 0
    ):
        raise PostgresUnavailable(
            f"pg_ctl stop failed ({done.returncode}) and the server in {data} still runs: {done.stderr.strip()[-500:]}"
        )


def remove(folder: Path) -> None:
    """Delete the cluster's files (stop it first), including a home outside ``folder``."""
    link = folder / "home"
    if link.is_symlink():
        shutil.rmtree(link.resolve(), ignore_errors=True)
        link.unlink()
    shutil.rmtree(folder, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server (if missing); return its URL."""
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.execute(sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first()
            if exists is None:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def postgres_server() -> Iterator[str]:
    """A scratch PostgreSQL cluster in a temporary folder for the duration of the block (tests,
    benchmarks); yields its URL (``postgresql+psycopg2://postgres@127.0.0.1:<port>/postgres``)."""
    folder = Path(tempfile.mkdtemp(prefix="bml-pg-"))
    try:
        url = start(folder, free_port())
        try:
            yield url
        finally:
            stop(folder)
    finally:
        remove(folder)
