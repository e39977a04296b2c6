"""``AdvisoryLocks`` on a real PostgreSQL server, and ``locks_for`` choosing them for an S3 lake."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from bml_assets.storage.locks import AdvisoryLocks, FileLocks, LockLost, LockTimeout, lock_key, locks_for
from bml_assets.storage.store import UnsupportedStore

NAME = "minute_view/BTCUSDT/2024-03-05"


@pytest.fixture
def locks(postgres_url: str) -> AdvisoryLocks:
    return AdvisoryLocks(postgres_url)


def _holder_pid(postgres_url: str, name: str) -> int | None:
    key = lock_key(name)
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as c:
            return c.execute(
                sa.text(
                    "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
                    "AND classid::text::bigint = :high AND objid::text::bigint = :low"
                ),
                {"high": (key >> 32) & 0xFFFFFFFF, "low": key & 0xFFFFFFFF},
            ).scalar()
    finally:
        engine.dispose()


def test_the_lock_key_is_a_fixed_64_bit_hash_of_the_name() -> None:
    # blake2b(b"bml:minute_view/BTCUSDT/2024-03-05", digest_size=8), big-endian, signed.
    assert lock_key(NAME) == -8547958985472431440
    assert lock_key("minute_view/BTCUSDT/2024-03-06") != lock_key(NAME)


def test_a_held_lock_excludes_others_until_released(locks: AdvisoryLocks, postgres_url: str) -> None:
    other = AdvisoryLocks(postgres_url)  # each hold is a session of its own: another writer to PostgreSQL
    assert not locks.busy(NAME)
    with locks.hold(NAME, timeout=0):
        assert other.busy(NAME)
        assert not other.busy("minute_view/BTCUSDT/2024-03-06")
        with pytest.raises(LockTimeout) as timed_out:
            with other.hold(NAME, timeout=0.2, what="minute_view BTCUSDT 2024-03-05"):
                pytest.fail("a second holder got the lock")
        message = str(timed_out.value)
        assert message.startswith("minute_view BTCUSDT 2024-03-05: another writer held the lock")
        assert str(lock_key(NAME)) in message and "for more than 0.2 s" in message
        with other.hold("minute_view/BTCUSDT/2024-03-06", timeout=0):
            pass  # another name is another lock
    assert not other.busy(NAME)
    with other.hold(NAME, timeout=0):
        pass


def test_a_waiter_gets_the_lock_when_it_is_released(locks: AdvisoryLocks, postgres_url: str) -> None:
    other = AdvisoryLocks(postgres_url)
    order: list[str] = []
    held = threading.Event()

    def first() -> None:
        with locks.hold(NAME, timeout=5):
            held.set()
            time.sleep(0.3)
            order.append("first done")

    thread = threading.Thread(target=first)
    thread.start()
    assert held.wait(10)
    with other.hold(NAME, timeout=10):
        order.append("second in")
    thread.join()
    assert order == ["first done", "second in"]


def test_the_lock_is_released_when_the_block_fails(locks: AdvisoryLocks) -> None:
    with pytest.raises(RuntimeError, match="boom"):
        with locks.hold(NAME, timeout=0):
            raise RuntimeError("boom")
    assert not locks.busy(NAME)


def test_a_connection_lost_while_holding_is_lock_lost(locks: AdvisoryLocks, postgres_url: str) -> None:
    admin = sa.create_engine(postgres_url)
    with pytest.raises(LockLost, match="was lost while held") as lost:
        with locks.hold(NAME, timeout=0):
            pid = _holder_pid(postgres_url, NAME)
            assert pid is not None
            with admin.connect() as c:
                assert c.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
            deadline = time.monotonic() + 10
            while locks.busy(NAME) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not locks.busy(NAME)  # PostgreSQL dropped the lock with the session
    assert str(lock_key(NAME)) in str(lost.value)
    admin.dispose()
    with locks.hold(NAME, timeout=0):  # the broken connection was not handed out again
        pass


def test_locks_for_an_s3_lake_are_advisory_locks_in_postgresql(postgres_url: str) -> None:
    assert isinstance(locks_for("s3://bucket/lake", state_url=postgres_url), AdvisoryLocks)
    assert isinstance(locks_for("/tmp/lake", state_url=postgres_url), FileLocks)


@pytest.mark.parametrize("state_url", ["sqlite:////tmp/ledger.sqlite", "", "not a url"])
def test_locks_for_an_s3_lake_refuse_anything_but_postgresql(state_url: str) -> None:
    with pytest.raises(UnsupportedStore, match="advisory locks in a PostgreSQL state database") as refused:
        locks_for("s3://bucket/lake", state_url=state_url)
    assert "s3://bucket/lake" in str(refused.value)
    assert "postgresql+psycopg2://" in str(refused.value)


def test_the_state_url_password_stays_out_of_messages() -> None:
    with pytest.raises(UnsupportedStore) as refused:
        locks_for("s3://bucket/lake", state_url="mysql://bml:s3cret@db/bml")
    assert "s3cret" not in str(refused.value)
    assert "mysql://***@db/bml" in str(refused.value)
