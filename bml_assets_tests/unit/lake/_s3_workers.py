"""Bodies of the spawned worker processes of the S3 lake tests (``test_s3_commit.py``).

In an importable module because the ``spawn`` start method re-imports the target by
name in a fresh interpreter. Each worker opens its own lake (moto + PostgreSQL locks)
and ledger, as a process on another host would; the AWS credentials come from the
environment the test set, which the children inherit.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from bml_assets_tests.unit.lake._helpers import DAY, make_table, no_validation


def based_on_worker(root: str, endpoint: str, state_url: str, worker: int, based_on: str, start: Any, out: Any) -> None:
    """One incremental commit of this worker's own table, built on ``based_on``."""
    from bml_assets.domain.schema import KLINES
    from bml_assets.lake.commit import commit_table
    from bml_assets.lake.lake import Lake
    from bml_assets.lake.ledger import CommitConflict, Ledger

    lake, ledger = Lake.at(root, state_url=state_url, s3_endpoint_url=endpoint), Ledger(state_url)
    start.wait(60)
    try:
        result = commit_table(
            make_table(KLINES, rows=5, base=1000.0 * (worker + 1)),
            lake=lake,
            ledger=ledger,
            dataset=KLINES,
            symbol="BTCUSDT",
            day=DAY,
            validate=no_validation,
            provenance={"worker": worker},
            based_on=based_on,
            lock_timeout=60,
        )
        out.put((worker, "won", result.content_hash))
    except CommitConflict as exc:
        out.put((worker, "conflict", str(exc)))
    except Exception as exc:
        out.put((worker, "error", f"{type(exc).__name__}: {exc}"))
    finally:
        ledger.close()


def killed_after_put_worker(root: str, endpoint: str, state_url: str) -> None:
    """Commit a new table and die (SIGKILL) right after its PUT, before the ledger's write."""
    from bml_assets.domain.schema import KLINES
    from bml_assets.lake.commit import commit_table
    from bml_assets.lake.lake import Lake
    from bml_assets.lake.ledger import Ledger

    def die(*args: Any, **kwargs: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    Ledger.commit_partition = die  # type: ignore[method-assign]  # the ledger write is the commit point
    lake, ledger = Lake.at(root, state_url=state_url, s3_endpoint_url=endpoint), Ledger(state_url)
    commit_table(
        make_table(KLINES, rows=5, base=7000.0),
        lake=lake,
        ledger=ledger,
        dataset=KLINES,
        symbol="BTCUSDT",
        day=DAY,
        validate=no_validation,
        provenance={"worker": "killed"},
    )


def lock_holder_worker(root: str, endpoint: str, state_url: str, held: Any) -> None:
    """Take the partition's lock and keep it until killed."""
    from bml_assets.domain.schema import KLINES
    from bml_assets.lake.lake import Lake

    lake = Lake.at(root, state_url=state_url, s3_endpoint_url=endpoint)
    with lake.lock(KLINES, "BTCUSDT", DAY, timeout=30):
        held.set()
        time.sleep(600)
