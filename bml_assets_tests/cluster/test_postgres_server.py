"""cluster/postgres.py: a cluster in a folder started, stopped and started again on its port; a
stale pid file (a server that crashed) is not an error to stop.

Needs Debian's postgresql (``.ci/run`` installs it); skipped, saying so, where it is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from bml_assets.cluster import postgres
from bml_assets.cluster.services import free_port


def _answers(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SELECT 1")).scalar() == 1
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


def test_a_cluster_stops_and_starts_again_and_a_stale_pid_file_is_not_an_error(tmp_path: Path) -> None:
    folder, port = tmp_path / "pg", free_port()
    try:
        url = postgres.start(folder, port)
    except postgres.PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL here: {exc}")
    try:
        assert _answers(url)
        data = (folder / "home").resolve() / "data" if (folder / "home").is_symlink() else folder / "data"
        pid_file = (data / "postmaster.pid").read_bytes()
        postgres.stop(folder)
        assert not _answers(url)
        # A crashed server leaves its pid file: pg_ctl stop then fails, with nothing to stop.
        (data / "postmaster.pid").write_bytes(pid_file)
        shutil.chown(data / "postmaster.pid", data.owner(), data.group())
        postgres.stop(folder)
        assert postgres.start(folder, port) == url and _answers(url)  # the restart the e2e test uses
    finally:
        postgres.stop(folder)
        postgres.remove(folder)


def test_a_stop_that_failed_with_the_server_still_running_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_ctl stop fails and pg_ctl status says the server runs: raised, with pg_ctl's words."""
    import subprocess

    folder = tmp_path / "pg"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "postmaster.pid").write_text("4242\n")
    monkeypatch.setattr(postgres, "_home", lambda f: (f, []))
    monkeypatch.setattr(postgres, "binary", lambda name: name)

    def pg_ctl(args, **_):
        if args[-1] == "stop":
            return subprocess.CompletedProcess(args, 1, "", "pg_ctl: server does not shut down\n")
        return subprocess.CompletedProcess(args, 0, "pg_ctl: server is running (PID: 4242)\n", "")

    monkeypatch.setattr(postgres.subprocess, "run", pg_ctl)
    with pytest.raises(postgres.PostgresUnavailable) as failed:
        postgres.stop(folder)
    assert str(failed.value) == (
        f"pg_ctl stop failed (1) and the server in {folder / 'data'} still runs: pg_ctl: server does not shut down"
    )
