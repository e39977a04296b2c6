"""The REST weight budget and ban state, shared by every process that talks to a host.

What belongs here: a rolling-window weight limiter whose state lives in the
SQL store (``BML_STATE_URL``, the ledger's database by default), so that every
Dagster run, sensor and CLI process sharing that store draws from one budget;
the 418 ban and 429 back-off state of a host; and the re-sync from the
exchange's ``X-MBX-USED-WEIGHT-1M`` header.

Whose budget. Binance counts request weight, and bans, per IP address. A budget
(and its ban state) is therefore keyed by the REST host *and the egress*: the
IP the requests leave from (``BML_REST_EGRESS``, any name for it). Processes on
hosts behind one NAT leave by one IP and must share one budget: give them the
same egress (or none). Workers that leave by different IPs each have the
exchange's full limit: give each egress IP its own ``BML_REST_EGRESS`` on every
process leaving by it, all sharing one state database. The default, no egress,
is the safe one: every process sharing the state database shares one budget per
host, whatever IPs it leaves by. The key is ``host`` without an egress and
``host via egress`` with one (``budget_key``), in the ``host`` column of both
tables; rows of another key are never read.

What stays out: HTTP, endpoints and weights (``rest.py``, ``rest_limits.py``).

How it works. Each request is a row of ``rest_weight_events(host, at_ms,
weight)``. ``acquire`` takes the store's write lock (SQLite ``BEGIN
IMMEDIATE``; a transaction-scoped advisory lock per key on PostgreSQL), sums
the weight of the key's rows younger than the window and, when the new weight
fits, inserts its row and commits: two processes can never both see the same
free weight. On PostgreSQL that needs READ COMMITTED (forced on the budget's
transactions, whatever the server's default): each statement after the lock
then sees what the lock's previous holder committed, where REPEATABLE READ
would keep the snapshot taken while waiting for the lock. When the weight does
not fit, the caller sleeps (outside the transaction) until enough old weight
leaves the window, then tries again. ``settle`` moves a request's row to the
moment its response arrived, so a request counts from before it was sent until
a full window after the exchange saw it, whatever the network latency; this is
what makes the budget hold on the exchange's clock, not only on ours. The
header re-sync compares the exchange's count for its current clock minute with
the key's rows of that minute; it is skipped for a response whose request was
sent in the previous minute (the exchange counted it, and reports, either
minute: guessing wrong would record a phantom minute of weight). ``rest_bans``
holds, per key, the end of a 418 ban (callers raise ``RestBanned`` unless it
ends within ``max_ban_wait_s``) and of a 429 back-off (callers wait).
Everything uses the wall clock of the machine, so all processes sharing a
store must run on the same host clock.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from bml_assets.storage.state_db import create_state_engine

DEFAULT_WINDOW_S: Final = 60.0
DEFAULT_BUSY_TIMEOUT_S: Final = 60.0
BAN: Final = "ban"  # HTTP 418: the IP is banned; requests would extend the ban
BACKOFF: Final = "backoff"  # HTTP 429: slow down until then
# Rows older than this many windows are deleted (kept a little longer than needed
# so that the current-minute re-sync still sees them).
_PRUNE_AFTER_WINDOWS: Final = 2
_MIN_SLEEP_S: Final = 0.001
_KEY_LENGTH: Final = 255  # the host column's

metadata = sa.MetaData()

weight_events_table = sa.Table(
    "rest_weight_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
    sa.Column("host", sa.String(_KEY_LENGTH), nullable=False),  # the budget's key (budget_key)
    sa.Column("at_ms", sa.BigInteger, nullable=False),
    sa.Column("weight", sa.Integer, nullable=False),
    sa.Index("ix_rest_weight_events_host_at", "host", "at_ms"),
)

bans_table = sa.Table(
    "rest_bans",
    metadata,
    sa.Column("host", sa.String(_KEY_LENGTH), primary_key=True),  # the budget's key
    sa.Column("kind", sa.String(16), primary_key=True),  # BAN or BACKOFF
    sa.Column("until_ms", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text),
    sa.Column("recorded_at_ms", sa.BigInteger, nullable=False),
)

_E = weight_events_table
_B = bans_table


def budget_key(host: str, egress: str = "") -> str:
    """The key of ``host``'s budget for requests leaving by ``egress`` (empty: shared by all)."""
    return f"{host} via {egress}" if egress else host


def utc_iso(ms: int) -> str:
    """``2025-11-20T09:23:48.570+00:00`` for epoch milliseconds."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


class RestBanned(Exception):
    """The host has banned this IP (HTTP 418) until ``until_ms``; no request may be sent
    before from this ``egress`` (empty: from any process sharing the state database)."""

    def __init__(self, host: str, until_ms: int, reason: str | None = None, egress: str = "") -> None:
        self.host = host
        self.until_ms = int(until_ms)
        self.until = datetime.fromtimestamp(self.until_ms / 1000, UTC)
        self.reason = reason
        self.egress = egress
        because = f" ({reason})" if reason else ""
        ip = f"this IP (egress {egress!r})" if egress else "this IP"
        super().__init__(
            f"{host} has banned {ip} for exceeding its request weight limit until {utc_iso(self.until_ms)} UTC"
            f"{because}; no request is sent to it before then (raise max_ban_wait_s to wait instead)"
        )

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.host, self.until_ms, self.reason, self.egress))


class WeightBudget:
    """A request-weight budget per rolling window for one host and egress, shared through
    the store at ``state_url``.

    ``egress`` names the IP the requests leave from (``BML_REST_EGRESS``; empty: one
    budget per host for every process sharing the store). ``budget_per_minute`` is the
    weight allowed in any ``window_s`` seconds (60 by default; tests shorten it).
    ``clock`` returns epoch seconds and ``sleep`` waits; both are injectable. Safe for
    several threads and processes at once.
    """

    def __init__(
        self,
        state_url: str,
        host: str,
        budget_per_minute: int,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_ban_wait_s: float = 0.0,
        window_s: float = DEFAULT_WINDOW_S,
        busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S,
        egress: str = "",
    ) -> None:
        if budget_per_minute < 1:
            raise ValueError(f"budget_per_minute must be >= 1, got {budget_per_minute}")
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if not host:
            raise ValueError("a weight budget needs a host")
        self.host = host
        self.egress = egress
        self.key = budget_key(host, egress)
        if len(self.key) > _KEY_LENGTH:
            raise ValueError(
                f"the REST budget key {self.key!r} is longer than {_KEY_LENGTH} characters: shorten the egress name"
            )
        self.budget = int(budget_per_minute)
        self.window_ms = round(window_s * 1000)
        self.max_ban_wait_s = max(0.0, float(max_ban_wait_s))
        self._clock = clock
        self._sleep = sleep
        parsed = make_url(state_url)
        self.display_url = parsed.render_as_string(hide_password=True)
        self._dialect = parsed.get_backend_name()
        # Rate-limit rows are cheap to lose on power failure: not worth an fsync per request.
        self._engine = create_state_engine(
            state_url, busy_timeout_s=busy_timeout_s, synchronous="NORMAL", write_by_default=True
        )
        # PostgreSQL: see the module docstring; SQLite's BEGIN IMMEDIATE needs nothing more.
        self._tx_engine = (
            self._engine.execution_options(isolation_level="READ COMMITTED")
            if self._dialect == "postgresql"
            else self._engine
        )
        self._lock_key = zlib.crc32(f"bml-rest-budget:{self.key}".encode())
        self._initialised = False
        self._init_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"WeightBudget({self.display_url!r}, key={self.key!r}, budget={self.budget}/{self.window_ms} ms)"

    def close(self) -> None:
        self._engine.dispose()

    # ---- store

    def init(self) -> None:
        """Create the tables if absent; idempotent and safe to race."""
        with self._init_lock:
            if self._initialised:
                return
            for attempt in range(3):
                try:
                    with self._engine.begin() as conn:
                        metadata.create_all(conn)
                    break
                except (IntegrityError, ProgrammingError, OperationalError):
                    # PostgreSQL: two processes racing CREATE TABLE; the loser retries
                    # and then finds the tables.
                    if attempt == 2:
                        raise
            self._initialised = True

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction holding this key's lock (SQLite: the database write lock)."""
        self.init()
        with self._tx_engine.begin() as conn:
            if self._dialect == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": self._lock_key})
            yield conn

    def _now_ms(self) -> int:
        return round(self._clock() * 1000)

    def _window_sum(self, conn: Connection, since_ms: int) -> int:
        total = conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(_E.c.weight), 0)).where(_E.c.host == self.key, _E.c.at_ms > since_ms)
        ).scalar_one()
        return int(total)

    def _active_blocks(self, conn: Connection, now_ms: int) -> dict[str, tuple[int, str | None]]:
        rows = conn.execute(
            sa.select(_B.c.kind, _B.c.until_ms, _B.c.reason).where(_B.c.host == self.key, _B.c.until_ms > now_ms)
        ).all()
        return {kind: (int(until), reason) for kind, until, reason in rows}

    def _insert(self, conn: Connection, at_ms: int, weight: int) -> int:
        result = conn.execute(sa.insert(_E).values(host=self.key, at_ms=at_ms, weight=weight))
        return int(result.inserted_primary_key[0])

    # ---- public

    def acquire(self, weight: int) -> int:
        """Block until ``weight`` fits in the budget, record it, and return the event's id
        (pass it to ``settle`` when the response arrives).

        Raises ``RestBanned`` if the host has banned us beyond ``max_ban_wait_s``.
        """
        weight = int(weight)
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        if weight > self.budget:
            raise ValueError(f"a request of weight {weight} can never fit a budget of {self.budget} per window")
        while True:
            attempt = self._try_acquire(weight)
            if attempt.event_id is not None:
                return attempt.event_id
            if attempt.banned is not None:
                raise attempt.banned
            self._sleep(max(_MIN_SLEEP_S, attempt.wait_ms / 1000))

    def _try_acquire(self, weight: int) -> _Attempt:
        with self._transaction() as conn:
            now = self._now_ms()
            blocks = self._active_blocks(conn, now)
            if BAN in blocks:
                until, reason = blocks[BAN]
                if until - now > self.max_ban_wait_s * 1000:
                    return _Attempt(banned=RestBanned(self.host, until, reason, self.egress))
                return _Attempt(wait_ms=until - now)
            if BACKOFF in blocks:
                return _Attempt(wait_ms=blocks[BACKOFF][0] - now)
            since = now - self.window_ms
            conn.execute(
                sa.delete(_E).where(_E.c.host == self.key, _E.c.at_ms <= now - _PRUNE_AFTER_WINDOWS * self.window_ms)
            )
            used = self._window_sum(conn, since)
            if used + weight <= self.budget:
                return _Attempt(event_id=self._insert(conn, now, weight))
            # Walk the window's events oldest first until enough weight has left it.
            excess = used + weight - self.budget
            rows = conn.execute(
                sa.select(_E.c.at_ms, _E.c.weight).where(_E.c.host == self.key, _E.c.at_ms > since).order_by(_E.c.at_ms)
            ).all()
            freed = 0
            for at_ms, w in rows:
                freed += int(w)
                if freed >= excess:
                    return _Attempt(wait_ms=int(at_ms) + self.window_ms - now)
            return _Attempt(wait_ms=self.window_ms)  # not reached: the rows sum to `used`

    def settle(self, event_id: int, used_weight: int | str | None = None) -> None:
        """The response of request ``event_id`` arrived: count it from now on (a request
        counts from its ``acquire`` until one window after its response), and re-sync
        from the exchange's used-weight header when given (not when the request was sent
        in an earlier minute: see the module docstring)."""
        with self._transaction() as conn:
            now = self._now_ms()
            sent = conn.execute(sa.select(_E.c.at_ms).where(_E.c.id == event_id)).scalar_one_or_none()
            conn.execute(sa.update(_E).where(_E.c.id == event_id, _E.c.at_ms < now).values(at_ms=now))
            if sent is None or int(sent) // self.window_ms == now // self.window_ms:
                # Re-sync only when sent and answered in the same minute: one sent in an earlier
                # minute may have been counted, and reported, in either.
                self._observe(conn, now, used_weight)

    def observe_used_weight(self, used: int | str | None) -> int:
        """Re-sync from ``X-MBX-USED-WEIGHT-1M``: when the exchange counts more weight in the
        current minute than recorded here (another client on this IP, or requests from
        before a restart on another store), record the difference now. Returns it."""
        with self._transaction() as conn:
            return self._observe(conn, self._now_ms(), used)

    def _observe(self, conn: Connection, now: int, used: int | str | None) -> int:
        try:
            reported = int(str(used).strip()) if used is not None else None
        except ValueError:
            reported = None
        if reported is None or reported <= 0:
            return 0
        # The exchange counts per clock minute (window), starting at its boundary.
        minute_start = now - now % self.window_ms
        recorded = self._window_sum(conn, minute_start - 1)
        missing = reported - recorded
        if missing <= 0:
            return 0
        self._insert(conn, now, missing)
        return missing

    def record_ban(self, until_ms: int, reason: str | None = None) -> None:
        """HTTP 418: no request to this host from this egress until ``until_ms`` (any process)."""
        self._block(BAN, until_ms, reason)

    def record_backoff(self, until_ms: int, reason: str | None = None) -> None:
        """HTTP 429: no request to this host from this egress until ``until_ms``; callers wait it out."""
        self._block(BACKOFF, until_ms, reason)

    def _block(self, kind: str, until_ms: int, reason: str | None) -> None:
        until_ms = int(until_ms)
        with self._transaction() as conn:
            now = self._now_ms()
            current = conn.execute(
                sa.select(_B.c.until_ms).where(_B.c.host == self.key, _B.c.kind == kind)
            ).scalar_one_or_none()
            values = {"until_ms": until_ms, "reason": reason, "recorded_at_ms": now}
            if current is None:
                conn.execute(sa.insert(_B).values(host=self.key, kind=kind, **values))
            elif int(current) < until_ms:  # a later end wins; never shorten a ban
                conn.execute(sa.update(_B).where(_B.c.host == self.key, _B.c.kind == kind).values(**values))

    def banned_until_ms(self) -> int | None:
        """End of the current 418 ban of this host and egress, or None."""
        with self._transaction() as conn:
            now = self._now_ms()
            block = self._active_blocks(conn, now).get(BAN)
        return None if block is None else block[0]

    def used_in_window(self) -> int:
        """Weight recorded for this host and egress in the last window (for reports and tests)."""
        with self._transaction() as conn:
            now = self._now_ms()
            return self._window_sum(conn, now - self.window_ms)


@dataclass(frozen=True)
class _Attempt:
    """One try of ``acquire``: the recorded event, or how long to wait, or a ban to raise."""

    event_id: int | None = None
    wait_ms: int = 0
    banned: RestBanned | None = None
