"""What an asset hands to the lake IO manager for one partition, and gets back.

What belongs here: the value object that travels between assets and the IO
manager — a table (or the reason there is none), its provenance, its source
gaps, the watermark its commit may move to, how to find where one of its rows came
from, and the verdict of the blocking rules when its builder judged them already.
What stays out: how it is written (``lake/commit.py``) or recorded
(``lake/ledger.py``), and the rules (``quality.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import pyarrow as pa

from bml_assets.domain.provenance import Provenance
from bml_assets.quality import BlockingVerdict

Status = Literal["committed", "not_listed", "not_published"]


@dataclass(frozen=True)
class PartitionData:
    """One (symbol, day) of one dataset.

    ``table`` is None exactly when ``status`` is ``not_listed`` (the symbol did not
    trade that day) or ``not_published`` (the source has no file for it, yet or
    ever); ``message`` then says why, naming the URL.

    ``missing_streams``: the streams a committed table lacks although some source could
    fill them, ``{"stream": ..., "reason": ...}`` each (SPEC §8: an incomplete partition).
    """

    table: pa.Table | None
    # Given as a ``Provenance`` or in its JSON form (the ledger's), held as a ``Provenance``.
    provenance: Provenance
    status: Status = "committed"
    message: str | None = None
    source_gaps: Sequence[Mapping[str, Any]] = ()
    warnings: Sequence[str] = field(default_factory=tuple)
    missing_streams: Sequence[Mapping[str, Any]] = ()
    # An incremental update (the hot band) names the committed content it extended;
    # the commit then fails rather than overwrite a newer one (see lake/commit.py).
    incremental: bool = False
    base_content_hash: str | None = None
    # The minute view's last committed grid minute: the commit moves the symbol's watermark
    # there, in its own ledger transaction, when that continues it (``Ledger.commit_partition_and_watermark``).
    watermark: dt.datetime | None = None
    # Where a row of ``table`` came from, for the error texts of the blocking checks:
    # (minute, column) -> "https://…/BTCUSDT-1m-2024-01-02.zip, data row 6" (or None).
    # Asked only when a check fails; never stored.
    locate: Callable[[dt.datetime, str], str | None] | None = field(default=None, compare=False, repr=False)
    # The blocking rules judged on ``table`` by its builder (the minute view's asset, with
    # its checks): the commit does not judge that very table again. It is bound to the
    # table object, so a ``replace`` with another table is judged at the commit as usual.
    blocking: BlockingVerdict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "provenance", Provenance.of(self.provenance))
        if (self.table is None) != (self.status != "committed"):
            raise ValueError(f"PartitionData: status {self.status!r} does not match table presence")

    @property
    def available(self) -> bool:
        return self.table is not None

    @classmethod
    def unavailable(
        cls,
        status: Literal["not_listed", "not_published"],
        message: str,
        provenance: Provenance | Mapping[str, Any],
    ) -> PartitionData:
        return cls(table=None, provenance=Provenance.of(provenance), status=status, message=message)
