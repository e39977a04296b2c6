"""storage/store.py and storage/locks.py: atomic, conditional publication on the local file
system, its refusals, stat/list/delete, temporaries and their sweep, a writer killed between
staging and publishing, choosing a store by the root's URL, and the flock locks."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import pytest

from bml_assets.storage import store as store_module
from bml_assets.storage.locks import FileLocks, LockTimeout, locks_for
from bml_assets.storage.store import (
    ABSENT,
    LocalStore,
    PreconditionFailed,
    PublishIncomplete,
    StoreNotWritable,
    UnsupportedStore,
    file_sha256,
    is_temp_name,
    local_stat,
    store_for,
)

KEY = "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05/part.parquet"
FOLDER = "futures/um/klines_1m/symbol=BTCUSDT/date=2024-03-05"


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    return LocalStore(tmp_path / "lake")


def _file(store: LocalStore, key: str = KEY) -> Path:
    return store.path / key


def _temps(store: LocalStore) -> list[Path]:
    return sorted(p for p in store.path.rglob("*") if p.is_file() and is_temp_name(p.name))


def test_put_publishes_the_bytes_at_the_key_and_leaves_no_temporary(store: LocalStore) -> None:
    assert store.stat(KEY) is None
    st = store.put(KEY, b"first version", expect=ABSENT)
    assert _file(store).read_bytes() == b"first version" == store.read(KEY)
    assert (st.size, st.mtime_ns) == (13, os.stat(_file(store)).st_mtime_ns)
    assert store.stat(KEY) == st
    assert store.sha256(KEY) == hashlib.sha256(b"first version").hexdigest()
    assert store.location(KEY) == str(_file(store)) and store.source(KEY) == str(_file(store))
    assert _temps(store) == []


def test_put_if_absent_is_refused_when_an_object_is_there(store: LocalStore) -> None:
    first = store.put(KEY, b"first")
    with pytest.raises(PreconditionFailed, match=rf"{KEY}: expected no object, found version {first.version}"):
        store.put(KEY, b"second", expect=ABSENT)
    assert store.read(KEY) == b"first" and store.stat(KEY) == first
    assert _temps(store) == []


def test_put_if_match_needs_the_current_version(store: LocalStore) -> None:
    first = store.put(KEY, b"first")
    second = store.put(KEY, b"2nd!!", expect=first.version)  # same size: the version still changes
    assert store.read(KEY) == b"2nd!!" and second.version != first.version and second.size == first.size
    with pytest.raises(PreconditionFailed, match=f"expected version {first.version}, found version {second.version}"):
        store.put(KEY, b"third", expect=first.version)  # a stale version: another writer came first
    assert store.read(KEY) == b"2nd!!"
    with pytest.raises(PreconditionFailed, match="found no object"):
        store.put("futures/um/other/part.parquet", b"x", expect=second.version)
    assert store.stat("futures/um/other/part.parquet") is None
    assert _temps(store) == []


def test_stat_list_and_delete(store: LocalStore) -> None:
    keys = [KEY, f"{FOLDER}/notes.txt", "futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"]
    for key in keys:
        store.put(key, key.encode())
    staged = store.stage(KEY, b"in flight")  # a temporary is no object
    assert store.list("futures/um/klines_1m") == sorted(keys[:2])
    assert store.list("") == sorted(keys) == store.list("futures/")
    assert store.list("nowhere") == []
    assert store.stat(FOLDER) is None  # a folder is no object
    assert store.stat("futures/um/none/part.parquet") is None
    current = store.stat(keys[1])
    assert current is not None
    with pytest.raises(PreconditionFailed):
        store.delete(keys[1], expect="0:0")
    assert store.delete(keys[1], expect=current.version) is True
    assert store.delete(keys[1]) is False  # already gone
    assert store.list("futures/um/klines_1m") == [KEY]
    staged.discard()


@pytest.mark.parametrize("key", ["", "/etc/passwd", "../outside", "a/../../b", "a//b", "a/./b", "a\\b"])
def test_a_key_cannot_leave_the_store(store: LocalStore, key: str) -> None:
    with pytest.raises(ValueError, match="invalid store key"):
        store.put(key, b"x")
    with pytest.raises(ValueError, match="invalid store key"):
        store.delete(key)
    assert not store.path.exists() or _temps(store) == []


def test_staging_writes_a_hidden_temporary_beside_the_target(store: LocalStore) -> None:
    staged = store.stage(KEY, b"staged bytes")
    tmp = Path(staged.location)
    assert tmp.parent == _file(store).parent and tmp.read_bytes() == b"staged bytes"
    assert tmp.name.startswith(".part.parquet.") and tmp.name.endswith(".tmp") and is_temp_name(tmp.name)
    assert staged.source() == str(tmp) and staged.sha256() == hashlib.sha256(b"staged bytes").hexdigest()
    assert store.stat(KEY) is None  # not visible under its key before it is published
    assert store.temp_files(FOLDER) == [f"{FOLDER}/{tmp.name}"]
    other = store.stage(KEY, b"another writer")
    assert other.location != staged.location and len(store.temp_files(FOLDER)) == 2
    staged.discard()
    other.discard()
    assert store.temp_files(FOLDER) == [] and not tmp.exists()
    assert store.temp_files("no/such/folder") == []
    assert not is_temp_name("part.parquet") and not is_temp_name(".part.parquet.x.tmp")
    assert not is_temp_name("notes.tmp")


def test_leaving_a_staged_block_discards_what_was_not_published(store: LocalStore) -> None:
    with pytest.raises(RuntimeError, match="checked and refused"), store.stage(KEY, b"bad") as staged:
        assert Path(staged.location).exists()
        raise RuntimeError("checked and refused")
    assert store.stat(KEY) is None and _temps(store) == []
    with store.stage(KEY, b"good") as staged:
        published = staged.publish(expect=ABSENT)
    assert store.stat(KEY) == published and store.read(KEY) == b"good"
    with pytest.raises(OSError, match="already published"):
        staged.publish(expect=None)


def test_a_failing_rename_leaves_the_target_and_drops_the_temporary(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = store.put(KEY, b"committed")

    def broken_replace(src: Any, dst: Any) -> None:
        raise OSError(5, "simulated I/O error")

    monkeypatch.setattr(store_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated I/O error"):
        store.put(KEY, b"new bytes", expect=before.version)
    assert store.read(KEY) == b"committed" and store.stat(KEY) == before and _temps(store) == []


def test_a_failing_folder_fsync_after_the_rename_is_publish_incomplete(
    store: LocalStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.put(KEY, b"committed")

    def broken_fsync_dir(directory: Any) -> None:
        raise OSError(5, "simulated fsync failure")

    monkeypatch.setattr(store_module, "fsync_dir", broken_fsync_dir)
    with pytest.raises(PublishIncomplete, match=r"the new object is in place, but OSError: .*simulated fsync failure"):
        store.put(KEY, b"new bytes")
    assert store.read(KEY) == b"new bytes" and _temps(store) == []  # in place, as the error says


def _stage_then_die(root: str, key: str) -> None:
    """Stage new bytes for ``key``, then die by SIGKILL before publishing: no cleanup at all."""
    LocalStore(root).stage(key, b"the new version, never published")
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_writer_killed_between_staging_and_publishing_leaves_the_target_as_it_was(store: LocalStore) -> None:
    before = store.put(KEY, b"the committed version")
    ctx = multiprocessing.get_context("spawn")
    writer = ctx.Process(target=_stage_then_die, args=(store.root, KEY))
    writer.start()
    writer.join(60)
    assert writer.exitcode == -signal.SIGKILL
    assert store.read(KEY) == b"the committed version" and store.stat(KEY) == before
    (left,) = store.temp_files(FOLDER)  # its temporary stays, recognisable, for a sweep
    assert store.read(left) == b"the new version, never published"
    assert store.delete(left) is True and store.temp_files(FOLDER) == []
    assert store.read(KEY) == b"the committed version"


def test_local_file_primitives(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = os.urandom(3 << 20)  # several blocks
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest() == file_sha256(str(path))
    st = local_stat(path)
    assert st is not None and st.size == len(data)
    assert local_stat(tmp_path) is None and local_stat(tmp_path / "absent") is None
    store_module.fsync_dir(tmp_path)  # a folder can be fsynced
    with pytest.raises(FileNotFoundError):
        store_module.fsync_dir(tmp_path / "absent")


def test_the_root_must_be_writable(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "new" / "lake")
    assert store.ensure_writable() == str((tmp_path / "new" / "lake").resolve())
    assert (tmp_path / "new" / "lake").is_dir() and list((tmp_path / "new" / "lake").iterdir()) == []
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreNotWritable, match=f"{blocker / 'lake'} is not writable") as info:
        LocalStore(blocker / "lake").ensure_writable()
    assert info.value.root == str(blocker / "lake") and info.value.reason


def test_a_store_is_chosen_by_the_roots_scheme(tmp_path: Path) -> None:
    for root in (tmp_path / "lake", str(tmp_path / "lake"), f"file://{tmp_path / 'lake'}"):
        chosen = store_for(root)
        assert isinstance(chosen, LocalStore) and chosen.root == str(tmp_path / "lake")
    assert isinstance(store_for("relative/lake"), LocalStore)
    s3 = store_for("s3://bucket/lake")  # S3Store (storage/s3.py; its tests: test_s3_store.py)
    assert type(s3).__name__ == "S3Store" and s3.root == "s3://bucket/lake"
    with pytest.raises(UnsupportedStore, match="unknown scheme 'http'"):
        store_for("http://host/lake")
    with pytest.raises(UnsupportedStore, match="must name this host"):
        store_for("file://otherhost/lake")
    with pytest.raises(UnsupportedStore, match="advisory locks"):
        locks_for("s3://bucket/lake")
    assert isinstance(locks_for(tmp_path / "lake"), FileLocks)


def test_file_locks_exclude_time_out_and_report_busy(tmp_path: Path) -> None:
    locks = locks_for(tmp_path / "lake")
    name = "klines_1m/BTCUSDT/2024-03-05"
    where = str(tmp_path / "lake" / "_state" / "locks" / "klines_1m" / "BTCUSDT" / "2024-03-05.lock")
    assert locks.location(name) == where
    assert locks.busy(name) is False and not Path(where).exists()  # asking creates nothing
    with locks.hold(name, timeout=1):
        assert locks.busy(name) is True
        with pytest.raises(
            LockTimeout, match=f"the partition: another writer held the lock {where} for more than 0.1 s"
        ):
            with locks.hold(name, timeout=0.1, what="the partition"):
                pass
        with locks.hold("klines_1m/BTCUSDT/2024-03-06", timeout=0):  # another name: its own lock
            pass
    assert locks.busy(name) is False
    with locks.hold(name, timeout=0):  # released
        pass
    assert Path(where).exists()  # never deleted (see the module docstring)
