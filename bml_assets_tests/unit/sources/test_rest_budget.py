"""The shared REST weight budget: rolling window, re-sync, 429/418 state, keys per host and
egress, several processes; on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import json
import multiprocessing
import pickle
import random
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import requests
import sqlalchemy as sa

from bml_assets.domain.settings import Settings
from bml_assets.sources import rest_budget
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpClient
from bml_assets.sources.rest import RestClient
from bml_assets.sources.rest_budget import RestBanned, WeightBudget, utc_iso

from .conftest import T0, FakeClock


@pytest.fixture(params=["sqlite", "postgresql"])
def state_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / '_state' / 'ledger.sqlite'}"
    postgres = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(postgres)
    rest_budget.metadata.drop_all(engine)  # each test starts with no weight and no ban
    engine.dispose()
    return postgres


def _budget(state_url: str, clock: FakeClock, budget: int = 100, **kw: Any) -> WeightBudget:
    return WeightBudget(state_url, "fapi.example", budget, clock=clock, sleep=clock.sleep, **kw)


def _max_window_sum(events: list[tuple[float, int]], window: float) -> int:
    """Largest total weight of events inside any [t, t + window) of the given times."""
    events = sorted(events)
    best = 0
    for i, (start, _) in enumerate(events):
        best = max(best, sum(w for t, w in events[i:] if t < start + window))
    return best


# --- one process, fake clock ------------------------------------------------------------------


def test_single_process_never_exceeds_the_budget_in_any_rolling_window(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, budget=100)
    rng = random.Random(7)
    granted: list[tuple[float, int]] = []
    for _ in range(400):
        clock.now += rng.choice([0.0, 0.0, 0.01, 0.3, 2.0])
        weight = rng.choice([1, 2, 5, 10, 20])
        event = budget.acquire(weight)
        granted.append((round(clock.now * 1000), weight))  # the budget's clock: whole ms
        if rng.random() < 0.5:
            budget.settle(event)
    total = sum(w for _, w in granted)
    assert _max_window_sum(granted, 60_000) <= 100
    assert _max_window_sum(granted, 60_000) >= 80  # the budget was actually the constraint
    elapsed = clock.now - T0
    assert elapsed >= (total / 100 - 1) * 60  # no faster than the budget allows
    assert clock.sleeps and all(s > 0 for s in clock.sleeps)


def test_waits_exactly_until_enough_weight_leaves_the_window(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, budget=10)
    budget.acquire(6)
    clock.now += 5
    budget.acquire(4)
    clock.now += 1
    budget.acquire(3)  # 6 + 4 + 3 > 10: wait for the first (t=0) to expire at t=60
    assert clock.sleeps == [pytest.approx(54.0)]
    assert clock.now == pytest.approx(T0 + 60.0)
    assert budget.used_in_window() == 7


def test_settle_counts_a_request_from_its_response(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, budget=10)
    event = budget.acquire(10)
    clock.now += 30  # a slow response
    budget.settle(event)
    clock.now += 40  # 70 s after acquire, 40 s after the response
    budget.acquire(1)
    assert clock.sleeps == [pytest.approx(20.0)]


def test_weight_larger_than_the_budget_is_refused(state_url: str) -> None:
    with pytest.raises(ValueError, match="can never fit"):
        _budget(state_url, FakeClock(), budget=10).acquire(11)


def test_two_budgets_on_one_store_share_the_weight(state_url: str) -> None:
    clock = FakeClock()
    a, b = _budget(state_url, clock, budget=10), _budget(state_url, clock, budget=10)
    a.acquire(8)
    b.acquire(2)
    b.acquire(1)
    assert clock.sleeps == [pytest.approx(60.0)]
    other_host = WeightBudget(state_url, "other.example", 10, clock=clock, sleep=clock.sleep)
    other_host.acquire(10)  # another host has its own budget
    assert len(clock.sleeps) == 1


def test_each_egress_has_its_own_budget_and_ban_and_no_egress_is_one_more(state_url: str) -> None:
    clock = FakeClock()
    a1 = _budget(state_url, clock, budget=10, egress="nat-a")
    a2 = _budget(state_url, clock, budget=10, egress="nat-a")
    b = _budget(state_url, clock, budget=10, egress="nat-b")
    shared = _budget(state_url, clock, budget=10)
    assert (a1.key, b.key, shared.key) == ("fapi.example via nat-a", "fapi.example via nat-b", "fapi.example")
    a1.acquire(8)
    b.acquire(10)  # another egress IP: the exchange's full limit again
    shared.acquire(10)
    assert clock.sleeps == []
    a2.acquire(3)  # the same egress as a1: 8 + 3 > 10, waits for a1's 8 to leave the window
    assert clock.sleeps == [pytest.approx(60.0)]
    until = round(clock.now * 1000) + 600_000
    a1.record_ban(until, "HTTP 418")
    with pytest.raises(RestBanned) as info:
        a2.acquire(1)
    assert (info.value.host, info.value.egress, info.value.until_ms) == ("fapi.example", "nat-a", until)
    assert "banned this IP (egress 'nat-a')" in str(info.value)
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.egress, str(again)) == ("nat-a", str(info.value))
    b.acquire(1)  # the ban is nat-a's only
    shared.acquire(1)
    assert b.banned_until_ms() is None and shared.banned_until_ms() is None
    assert len(clock.sleeps) == 1


def test_an_egress_too_long_for_the_key_column_is_refused(state_url: str) -> None:
    with pytest.raises(ValueError, match="longer than 255 characters: shorten the egress name"):
        WeightBudget(state_url, "fapi.example", 10, egress="x" * 240)


def test_old_events_are_pruned(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, budget=1000)
    for _ in range(50):
        budget.acquire(1)
        clock.now += 10
    engine = sa.create_engine(state_url)
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT COUNT(*) FROM rest_weight_events")).scalar_one()
    engine.dispose()
    assert count <= 13  # two windows of 60 s at one event per 10 s, plus the newest


# --- re-sync from X-MBX-USED-WEIGHT-1M -------------------------------------------------------------


def test_observe_used_weight_records_what_others_spent(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, budget=100)
    budget.settle(budget.acquire(10))
    assert budget.observe_used_weight("25") == 15  # 15 spent by another client on this IP
    assert budget.used_in_window() == 25
    assert budget.observe_used_weight(20) == 0  # the exchange saw less than recorded: nothing to add
    assert budget.observe_used_weight(None) == 0
    assert budget.observe_used_weight("junk") == 0
    clock.now += 1
    assert budget.observe_used_weight(95) == 70
    budget.acquire(10)  # 95 + 10 > 100: waits for the first 10 to leave the window
    assert clock.sleeps == [pytest.approx(59.0)]


def test_observe_counts_only_the_current_minute(state_url: str) -> None:
    clock = FakeClock(now=T0 + 50)
    budget = _budget(state_url, clock, budget=100)
    budget.settle(budget.acquire(30))
    clock.now = T0 + 61  # a new minute on the exchange's count: our 30 were in the last one
    assert budget.observe_used_weight(5) == 5
    assert budget.used_in_window() == 35


def test_the_resync_counts_only_its_own_egress(state_url: str) -> None:
    clock = FakeClock()
    a = _budget(state_url, clock, budget=100, egress="nat-a")
    b = _budget(state_url, clock, budget=100, egress="nat-b")
    b.settle(b.acquire(10))
    a.settle(a.acquire(5), "25")  # nat-a's IP was charged 25: 20 spent elsewhere on it
    assert (a.used_in_window(), b.used_in_window()) == (25, 10)
    b.settle(b.acquire(10), "20")  # nat-b's IP: exactly what nat-b recorded, nothing to add
    assert (a.used_in_window(), b.used_in_window()) == (25, 20)


def test_no_resync_from_a_response_to_a_request_sent_the_minute_before(state_url: str) -> None:
    clock = FakeClock(now=T0 + 59.5)  # T0 is a minute boundary
    budget = _budget(state_url, clock, budget=100)
    event = budget.acquire(10)
    clock.now = T0 + 60.2
    # The exchange may have counted it in the old minute (with 40 others) and reported that
    # minute: taken as this minute's count, it would record a phantom 40.
    budget.settle(event, "50")
    assert budget.used_in_window() == 10
    # A request sent and answered in one minute is re-synced.
    budget.settle(budget.acquire(10), "50")
    assert budget.used_in_window() == 50


def test_postgres_a_waiter_for_the_lock_sees_what_its_holder_committed(postgres_url: str) -> None:
    """Even where the server's default isolation is REPEATABLE READ: the budget forces READ
    COMMITTED, else its sum would come from the snapshot taken while it waited for the lock."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text("DROP DATABASE IF EXISTS budget_rr"))
        conn.execute(sa.text("CREATE DATABASE budget_rr"))
        conn.execute(sa.text("ALTER DATABASE budget_rr SET default_transaction_isolation = 'repeatable read'"))
    admin.dispose()
    url = sa.engine.make_url(postgres_url).set(database="budget_rr").render_as_string(hide_password=False)
    clock = FakeClock()
    budget = _budget(url, clock, budget=10)
    budget.init()
    holder = sa.create_engine(url)
    try:
        with holder.connect() as conn:
            assert conn.execute(sa.text("SHOW transaction_isolation")).scalar_one() == "repeatable read"
            conn.commit()
            with conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": budget._lock_key})
                conn.execute(
                    sa.insert(rest_budget.weight_events_table).values(
                        host=budget.key, at_ms=round(clock.now * 1000), weight=8
                    )
                )
                waiter = threading.Thread(target=budget.acquire, args=(5,))
                waiter.start()
                deadline = time.monotonic() + 30
                while not _waiting_for_an_advisory_lock(holder):
                    assert time.monotonic() < deadline, "acquire never waited for the lock"
                    time.sleep(0.01)
            # committed: the waiter gets the lock, must see 8 + 5 > 10 and wait out the window
            waiter.join(timeout=30)
        assert not waiter.is_alive()
        assert clock.sleeps == [pytest.approx(60.0)]
        assert budget.used_in_window() == 5
    finally:
        holder.dispose()
        budget.close()


def _waiting_for_an_advisory_lock(engine: sa.Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                sa.text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
            ).scalar_one()
        )


# --- 429 and 418 state ---------------------------------------------------------------------------


def test_backoff_blocks_until_its_end(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock)
    budget.record_backoff(int(T0 * 1000) + 3_000, "429")
    budget.acquire(1)
    assert clock.sleeps == [pytest.approx(3.0)]


def test_ban_raises_naming_its_end_in_utc(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock)
    until = int(T0 * 1000) + 600_000
    budget.record_ban(until, "HTTP 418")
    with pytest.raises(RestBanned) as info:
        budget.acquire(1)
    assert info.value.until_ms == until
    assert f"until {utc_iso(until)} UTC" in str(info.value)
    assert "2023-11-14T22:24:00.000+00:00" in str(info.value)
    assert "HTTP 418" in str(info.value)
    assert clock.sleeps == []
    # pickled across processes intact
    again = pickle.loads(pickle.dumps(info.value))
    assert (again.host, again.until_ms, str(again)) == (info.value.host, until, str(info.value))


def test_ban_within_max_ban_wait_is_waited_out(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock, max_ban_wait_s=700)
    budget.record_ban(int(T0 * 1000) + 600_000)
    budget.acquire(1)
    assert clock.sleeps == [pytest.approx(600.0)]
    assert budget.banned_until_ms() is None


def test_a_ban_is_never_shortened(state_url: str) -> None:
    clock = FakeClock()
    budget = _budget(state_url, clock)
    now_ms = int(T0 * 1000)
    budget.record_ban(now_ms + 100_000, "long")
    budget.record_ban(now_ms + 10_000, "short")
    assert budget.banned_until_ms() == now_ms + 100_000


# --- two real processes ------------------------------------------------------------------------------


class WeightLoggingStub:
    """A REST stand-in that logs (wall-clock arrival, weight) of every request and reports
    the weight of its current window in X-MBX-USED-WEIGHT-1M. ``script`` may override replies."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self.log: list[tuple[float, int, str]] = []
        self.script: dict[str, list[tuple[int, bytes, dict[str, str]]]] = {}
        self._lock = threading.Lock()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                arrived = time.time()
                parts = urlsplit(self.path)
                params = dict(parse_qsl(parts.query))
                weight = limits.weight_of(parts.path, params)
                with stub._lock:
                    stub.log.append((arrived, weight, parts.path))
                    start = arrived - arrived % stub.window_s
                    used = sum(w for t, w, _ in stub.log if t >= start)
                    queue = stub.script.get(parts.path)
                    status, body, headers = queue.pop(0) if queue else (200, b"{}", {})
                self.send_response(status)
                self.send_header("X-MBX-USED-WEIGHT-1M", str(used))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)


@pytest.fixture
def stub_factory() -> Iterator[Callable[[float], WeightLoggingStub]]:
    started: list[WeightLoggingStub] = []

    def make(window_s: float) -> WeightLoggingStub:
        stub = WeightLoggingStub(window_s)
        stub._thread.start()
        started.append(stub)
        return stub

    yield make
    for stub in started:
        stub.server.shutdown()
        stub.server.server_close()


def _client(base_url: str, state_url: str, budget: int, window_s: float, max_ban_wait_s: float = 0.0) -> RestClient:
    session = requests.Session()
    session.trust_env = False
    http = HttpClient(timeout_s=10, max_retries=2, session=session)
    return RestClient(
        base_url, state_url=state_url, weight_budget=budget, http=http, window_s=window_s, max_ban_wait_s=max_ban_wait_s
    )


def test_the_client_from_settings_spends_its_egress_budget(tmp_path: Path) -> None:
    state = f"sqlite:///{tmp_path / 'state.sqlite'}"
    settings = Settings(
        symbols=("BTCUSDT",),
        lake_root=tmp_path / "lake",
        state_url=state,
        rest_base_url="http://user:pw@127.0.0.1:9",
        rest_weight_budget=77,
        rest_egress="nat-a",
    )
    client = RestClient.from_settings(settings)
    assert (client.budget.key, client.budget.budget, client.budget.egress) == ("127.0.0.1:9 via nat-a", 77, "nat-a")
    assert client.funding_budget.key == "127.0.0.1:9 fundingRate via nat-a"
    default = RestClient.from_settings(Settings(symbols=("BTCUSDT",), lake_root=tmp_path / "lake", state_url=state))
    assert (default.budget.key, default.budget.egress) == ("fapi.binance.com", "")
    client.close()
    default.close()


# Run in spawned processes: module level, plain arguments, plain results.
_CALLS: list[tuple[str, dict[str, Any]]] = [
    (limits.KLINES_PATH, {"symbol": "BTCUSDT", "interval": "1m", "limit": 50}),  # 1
    (limits.MARK_PRICE_KLINES_PATH, {"symbol": "BTCUSDT", "interval": "1m", "limit": 200}),  # 2
    (limits.PREMIUM_INDEX_KLINES_PATH, {"symbol": "BTCUSDT", "interval": "1m", "limit": 700}),  # 5
    (limits.INDEX_PRICE_KLINES_PATH, {"pair": "BTCUSDT", "interval": "1m", "limit": 1200}),  # 10
    (limits.BOOK_TICKER_PATH, {"symbol": "BTCUSDT"}),  # 2
    (limits.PREMIUM_INDEX_PATH, {"symbol": "BTCUSDT"}),  # 1
]


def _hammer(base_url: str, state_url: str, budget: int, window_s: float, total_weight: int, seed: int) -> int:
    client = _client(base_url, state_url, budget, window_s)
    rng = random.Random(seed)
    while client.weight_spent < total_weight:
        path, params = rng.choice(_CALLS)
        client.get(path, params)
    return client.weight_spent


def _ready(queue: Any) -> None:
    """Pool initializer: this module (and bml) are imported once the worker says so."""
    queue.put(True)


def _one_call(base_url: str, state_url: str, max_ban_wait_s: float) -> tuple[str, Any, float]:
    client = _client(base_url, state_url, 100, 60.0, max_ban_wait_s=max_ban_wait_s)
    try:
        return "ok", client.get(limits.SERVER_TIME_PATH), time.time()
    except RestBanned as exc:
        return "banned", (exc.until_ms, str(exc)), time.time()


def test_two_processes_share_one_budget_on_the_servers_clock(
    state_url: str, stub_factory: Callable[[float], WeightLoggingStub]
) -> None:
    window_s, budget = 1.0, 30
    stub = stub_factory(window_s)
    WeightBudget(state_url, "init", 1).init()  # create the tables once, before the race
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        jobs = [pool.apply_async(_hammer, (stub.base_url, state_url, budget, window_s, 45, seed)) for seed in (1, 2)]
        spent = [job.get(timeout=60) for job in jobs]
    events = [(t, w) for t, w, _ in stub.log]
    assert sum(w for _, w in events) == sum(spent) >= 90
    assert _max_window_sum(events, window_s) <= budget
    assert _max_window_sum(events, window_s) >= budget - 10  # the limit was reached, so it was tested
    span = max(t for t, _ in events) - min(t for t, _ in events)
    assert span >= (sum(spent) / budget - 1) * window_s


def test_a_ban_recorded_by_one_process_stops_the_others(
    state_url: str, stub_factory: Callable[[float], WeightLoggingStub]
) -> None:
    stub = stub_factory(60.0)
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Queue()
    with ctx.Pool(2, initializer=_ready, initargs=(ready,)) as pool:
        for _ in range(2):  # both workers started and imported: the ban below outlives their start-up
            ready.get(timeout=60)
        until = int((time.time() + 1.5) * 1000)
        body = json.dumps({"code": -1003, "msg": f"Way too much request weight used; IP banned until {until}."})
        stub.script[limits.SERVER_TIME_PATH] = [(418, body.encode(), {"Retry-After": "2"})]
        first = _client(stub.base_url, state_url, 100, 60.0)
        with pytest.raises(RestBanned) as info:
            first.get(limits.SERVER_TIME_PATH)
        assert info.value.until_ms == until
        assert f"until {utc_iso(until)} UTC" in str(info.value)
        stub.script[limits.SERVER_TIME_PATH] = [(200, b'{"serverTime": 1}', {})]
        refuse = pool.apply_async(_one_call, (stub.base_url, state_url, 0.0))
        wait = pool.apply_async(_one_call, (stub.base_url, state_url, 30.0))
        refused, waited = refuse.get(timeout=60), wait.get(timeout=60)
    assert refused[0] == "banned"
    assert refused[1][0] == until and f"until {utc_iso(until)} UTC" in refused[1][1]
    assert waited[0] == "ok" and waited[1] == {"serverTime": 1}
    assert waited[2] >= until / 1000
    after_ban = [t for t, _, path in stub.log[1:]]
    assert len(after_ban) == 1  # only the waiting process sent a request, and only after the ban
    assert after_ban[0] >= until / 1000
