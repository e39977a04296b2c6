"""The shared REST weight budget and the 418 ban, end to end: real processes, real
``RestClient``s, one SQLite state file, the replay server as the exchange.

Everything is judged from the server's own ``rest_log`` (when each request
arrived, from which IP, what it was charged, what was answered), never from what
the clients believe they did. Budgets run on a 2-second window so the tests take
seconds, except the PostgreSQL one: the real minute, as distributed workers use it,
with the workers leaving by different loopback IPs (127.0.0.2, 127.0.0.3) as hosts
behind different egress IPs do.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from requests.adapters import HTTPAdapter

from bml_assets.domain.minutes import MINUTE_MS
from bml_assets.domain.streams import Stream
from bml_assets.replay.clock import MarketClock
from bml_assets.replay.faults import FaultRule
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.rest.log import RestLogEntry
from bml_assets.replay.server import ReplayServer
from bml_assets.sources import rest_budget
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpClient
from bml_assets.sources.rest import RestBanned, RestClient
from bml_assets.sources.rest_budget import WeightBudget, utc_iso

DAY = dt.date(2024, 6, 3)
DAY_MS = int(dt.datetime.combine(DAY, dt.time(), dt.UTC).timestamp() * 1000)
NOW = dt.datetime(2024, 6, 4, 12, tzinfo=dt.UTC)  # the exchange has all of DAY
WINDOW_S = 2.0
BUDGET = 60  # weight per WINDOW_S, shared by every process
HAMMER_S = 3.0
BAN_S = 3
SYMBOL = "BTCUSDT"
# Kline windows of 60 / 300 / 800 / 1200 minutes: weight 1 / 2 / 5 / 10 (limit = minutes).
KLINE_MINUTES = (60, 300, 800, 1200)
# The client stamps its budget events in whole milliseconds: a request can be let
# through up to 1 ms early on the server's float clock (rounding at both ends).
ROUNDING_S = 0.001
# The PostgreSQL test: the real minute, weight 120 per minute per egress IP, a little over a minute.
PG_BUDGET = 120
PG_HAMMER_S = 64.0
NAT_A, NAT_B = "127.0.0.2", "127.0.0.3"


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    market = SyntheticMarket(MarketConfig(seed=5, trades_per_day=20_000))
    # The server's own limit is far above the shared budget: it never answers 429,
    # so the budget alone is what keeps the weight down.
    with ReplayServer(
        market=market, clock=MarketClock.fixed(NOW), rest_weight_limit=100_000, rest_window_s=WINDOW_S
    ) as srv:
        yield srv


@pytest.fixture
def state_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/state.sqlite"
    WeightBudget(url, "init", 1).init()  # create the tables once, before processes race for them
    return url


# --- the worker processes (module level, plain arguments, plain results) --------------------


def _client(base_url: str, state_url: str, max_ban_wait_s: float = 0.0) -> RestClient:
    return RestClient(
        base_url, state_url=state_url, weight_budget=BUDGET, window_s=WINDOW_S, max_ban_wait_s=max_ban_wait_s
    )


def _one_kline_request(client: RestClient, rng: random.Random) -> None:
    stream = rng.choice(list(limits.KLINE_PATHS))
    minutes = rng.choice(KLINE_MINUTES)
    client.klines(stream, SYMBOL, DAY_MS, DAY_MS + minutes * MINUTE_MS)


def _one_agg_trades_request(client: RestClient, rng: random.Random) -> None:
    # One minute by time window: a single page (weight 20), never paged further.
    start = DAY_MS + rng.randrange(1440) * MINUTE_MS
    client.agg_trades(SYMBOL, start_ms=start, end_ms=start + MINUTE_MS)


def _hammer(base_url: str, state_url: str, seed: int, ready: Any, go: Any, out: Any) -> None:
    client = _client(base_url, state_url)
    rng = random.Random(seed)
    ready.put(seed)
    go.wait(60)
    stop_at = time.time() + HAMMER_S
    # Every weight class once first: a loaded machine may fit few requests in HAMMER_S.
    for minutes in KLINE_MINUTES:
        client.klines(rng.choice(list(limits.KLINE_PATHS)), SYMBOL, DAY_MS, DAY_MS + minutes * MINUTE_MS)
    _one_agg_trades_request(client, rng)
    while time.time() < stop_at:
        if rng.random() < 0.35:
            _one_agg_trades_request(client, rng)
        else:
            _one_kline_request(client, rng)
    out.put((seed, client.requests_sent, client.weight_spent))
    client.close()


def _banned_first(base_url: str, state_url: str, ready: Any, go: Any, out: Any) -> None:
    """Process A: its very first request is answered 418."""
    client = _client(base_url, state_url)
    ready.put("A")
    go.wait(60)
    try:
        client.klines(Stream.KLINES, SYMBOL, DAY_MS, DAY_MS + 60 * MINUTE_MS)
        out.put(("A", "ok", None, None, client.requests_sent))
    except RestBanned as exc:
        out.put(("A", "banned", exc.until_ms, str(exc), client.requests_sent))
    client.close()


def _after_the_ban(base_url: str, state_url: str, ready: Any, go: Any, out: Any) -> None:
    """Process B: once without waiting for bans (refused locally), then willing to wait 10 s."""
    refusing = _client(base_url, state_url, max_ban_wait_s=0.0)
    waiting = _client(base_url, state_url, max_ban_wait_s=10.0)
    ready.put("B")
    go.wait(60)
    try:
        refusing.klines(Stream.KLINES, SYMBOL, DAY_MS, DAY_MS + 60 * MINUTE_MS)
        out.put(("B0", "ok", None, None, refusing.requests_sent, time.time()))
    except RestBanned as exc:
        out.put(("B0", "banned", exc.until_ms, str(exc), refusing.requests_sent, time.time()))
    table = waiting.klines(Stream.KLINES, SYMBOL, DAY_MS, DAY_MS + 60 * MINUTE_MS)
    out.put(("B10", "ok", table.num_rows, None, waiting.requests_sent, time.time()))
    refusing.close()
    waiting.close()


class _Processes:
    """Spawned workers that have imported everything and wait for ``go``; joined (or
    terminated, if a test failed) on exit."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.ready = self.ctx.Queue()
        self.out = self.ctx.Queue()
        self.procs: list[Any] = []

    def start(self, target: Any, *args: Any) -> Any:
        go = self.ctx.Event()
        proc = self.ctx.Process(target=target, args=(*args, self.ready, go, self.out), daemon=True)
        proc.start()
        self.procs.append(proc)
        return go

    def wait_ready(self, n: int) -> None:
        for _ in range(n):
            self.ready.get(timeout=60)

    def result(self, timeout_s: float = 60) -> Any:
        return self.out.get(timeout=timeout_s)

    def __enter__(self) -> _Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc in self.procs:
            proc.join(timeout=30)
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        assert all(proc.exitcode == 0 for proc in self.procs), [proc.exitcode for proc in self.procs]


class _FromAddress(HTTPAdapter):
    """Connections leave from ``source_ip``: another loopback address is another egress IP."""

    def __init__(self, source_ip: str) -> None:
        self.source_ip = source_ip
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = (self.source_ip, 0)
        super().init_poolmanager(*args, **kwargs)


class _TimeUp(Exception):
    """The hammering is over while a request waits for the budget."""


def _egress_hammer(
    base_url: str, state_url: str, egress: str, source_ip: str, seed: int, ready: Any, go: Any, out: Any
) -> None:
    """Requests of weight 5, 10 and 20 as fast as the budget of ``egress`` lets them, from
    ``source_ip``, for PG_HAMMER_S; a wait for the budget past the end is cut short."""
    session = requests.Session()
    session.trust_env = False
    for prefix in ("http://", "https://"):
        session.mount(prefix, _FromAddress(source_ip))
    stop_at = [float("inf")]

    def sleep(seconds: float) -> None:
        left = stop_at[0] - time.time()
        if left <= 0:
            raise _TimeUp
        time.sleep(min(seconds, left))

    client = RestClient(
        base_url,
        state_url=state_url,
        weight_budget=PG_BUDGET,
        http=HttpClient(timeout_s=10, max_retries=2, session=session),
        sleep=sleep,
        egress=egress,
    )
    rng = random.Random(seed)
    ready.put(seed)
    go.wait(60)
    stop_at[0] = time.time() + PG_HAMMER_S
    try:
        while time.time() < stop_at[0]:
            if rng.random() < 0.3:
                _one_agg_trades_request(client, rng)  # 20
            else:  # 800 or 1200 minutes: 5 or 10
                minutes = rng.choice(KLINE_MINUTES[2:])
                client.klines(rng.choice(list(limits.KLINE_PATHS)), SYMBOL, DAY_MS, DAY_MS + minutes * MINUTE_MS)
    except _TimeUp:
        pass
    out.put((seed, source_ip, client.requests_sent, client.weight_spent))
    client.close()


# --- helpers -------------------------------------------------------------------------------


def _peak_window_weight(entries: list[RestLogEntry], window_s: float) -> float:
    """The largest weight charged within any rolling ``window_s`` on the server's clock
    (the requests that arrived in (t - window_s, t] for every arrival t)."""
    events = sorted((e.wall_time_s, e.weight) for e in entries if e.status == 200)
    peak = total = first = 0
    for t, weight in events:
        total += weight
        while events[first][0] <= t - window_s:
            total -= events[first][1]
            first += 1
        peak = max(peak, total)
    return peak


# --- tests ---------------------------------------------------------------------------------


def test_two_processes_never_exceed_the_shared_budget_on_the_servers_clock(
    server: ReplayServer, state_url: str
) -> None:
    with _Processes() as procs:
        gos = [procs.start(_hammer, server.base_url, state_url, seed) for seed in (1, 2)]
        procs.wait_ready(2)
        server.clear_rest_log()
        for go in gos:
            go.set()
        sent = sorted(procs.result() for _ in gos)
    log = server.rest_log
    assert log, "no request reached the server"
    assert {e.status for e in log} == {200}  # the server never had to say 429 or 418
    # The server saw exactly what the two clients sent: both took part.
    assert sum(requests for _, requests, _ in sent) == len(log)
    assert sum(weight for _, _, weight in sent) == sum(e.weight for e in log)
    assert all(requests > 0 for _, requests, _ in sent), sent
    assert {e.path for e in log} >= {limits.AGG_TRADES_PATH, limits.KLINES_PATH}
    assert {e.weight for e in log} >= {1, 2, 5, 10, 20}
    # More weight than one window allows was sent, so the budget had to hold requests back …
    total = sum(e.weight for e in log)
    assert total > 1.2 * BUDGET, total  # (margins leave room for a loaded CI machine)
    # … and in no rolling window did the server see more than the shared budget,
    # while the budget was actually approached (this test can fail both ways).
    peak = _peak_window_weight(log, WINDOW_S - ROUNDING_S)
    assert peak <= BUDGET, f"peak {peak} > budget {BUDGET} in a rolling {WINDOW_S} s window"
    assert peak >= 0.4 * BUDGET, f"peak {peak}: the budget was never approached, nothing was tested"


def test_a_418_to_one_process_stops_the_other_until_the_ban_ends(server: ReplayServer, state_url: str) -> None:
    with _Processes() as procs:
        go_a = procs.start(_banned_first, server.base_url, state_url)
        go_b = procs.start(_after_the_ban, server.base_url, state_url)
        procs.wait_ready(2)  # both started and imported: the ban below outlives their start-up
        server.clear_rest_log()
        server.faults.add(FaultRule("ban_418", limits.KLINES_PATH, times=1, retry_after_s=BAN_S))

        go_a.set()
        name, outcome, until_ms, message, a_sent = procs.result()
        assert (name, outcome, a_sent) == ("A", "banned", 1)
        go_b.set()  # B starts right after A was banned
        refused = procs.result()
        waited = procs.result()
    log = server.rest_log
    ban = log[0]
    assert ban.status == 418 and ban.path == limits.KLINES_PATH and ban.weight == 0
    # A names the end of the ban the exchange announced (Retry-After / "banned until").
    assert int((ban.wall_time_s + BAN_S) * 1000) <= until_ms <= (ban.wall_time_s + BAN_S + 0.5) * 1000
    assert f"until {utc_iso(until_ms)} UTC" in message

    # B without patience: refused locally, during the ban, without sending anything.
    name, outcome, b_until, b_message, b_sent, refused_at = refused
    assert (name, outcome, b_sent) == ("B0", "banned", 0)
    assert b_until == until_ms and f"until {utc_iso(until_ms)} UTC" in b_message
    assert refused_at < until_ms / 1000
    # B with max_ban_wait_s=10: waited for the end of the ban, then got its answer.
    name, outcome, rows, _, b10_sent, done_at = waited
    assert (name, outcome, rows, b10_sent) == ("B10", "ok", 60, 1)

    after = log[1:]
    # Nothing arrived while the ban lasted; the one request after it is B's (A had stopped).
    assert [e for e in after if e.wall_time_s < until_ms / 1000] == []
    assert len(after) == 1 and after[0].status == 200 and after[0].path == limits.KLINES_PATH
    assert until_ms / 1000 <= after[0].wall_time_s <= done_at
    assert after[0].wall_time_s - refused_at < BAN_S + 1  # it waited for the ban, not much longer


@pytest.fixture
def postgres_state_url(postgres_url: str) -> str:
    engine = sa.create_engine(postgres_url)
    rest_budget.metadata.drop_all(engine)  # no weight, no ban left by another test
    engine.dispose()
    WeightBudget(postgres_url, "init", 1).init()
    return postgres_url


def test_postgres_workers_share_the_budget_of_their_egress_ip_in_every_rolling_minute(
    postgres_state_url: str,
) -> None:
    """Three worker processes, one PostgreSQL state database, the real 60-second window:
    two leave by 127.0.0.2 (egress nat-a) and share its budget, one by 127.0.0.3 (nat-b)
    has its own. Judged per client IP from the server's log."""
    market = SyntheticMarket(MarketConfig(seed=5, trades_per_day=20_000))
    # The server's own limit is far above the budget: it never answers 429, so the budget
    # alone keeps the weight down; its X-MBX-USED-WEIGHT-1M counts per IP in real minutes.
    with (
        ReplayServer(market=market, clock=MarketClock.fixed(NOW), rest_weight_limit=100_000) as server,
        _Processes() as procs,
    ):
        workers = [("nat-a", NAT_A, 1), ("nat-a", NAT_A, 2), ("nat-b", NAT_B, 3)]
        gos = [procs.start(_egress_hammer, server.base_url, postgres_state_url, *w) for w in workers]
        procs.wait_ready(len(gos))
        server.clear_rest_log()
        for go in gos:
            go.set()
        sent = sorted(procs.result(PG_HAMMER_S + 60) for _ in gos)
        log = server.rest_log
    assert log, "no request reached the server"
    assert {e.status for e in log} == {200}
    assert {e.client for e in log} == {NAT_A, NAT_B}
    assert {e.weight for e in log} == {5, 10, 20}
    # The server saw exactly what each worker sent, and every worker took part.
    for ip in (NAT_A, NAT_B):
        from_ip = [e for e in log if e.client == ip]
        assert len(from_ip) == sum(n for _, source, n, _ in sent if source == ip)
        assert sum(e.weight for e in from_ip) == sum(w for _, source, _, w in sent if source == ip)
    assert all(n > 0 for _, _, n, _ in sent), sent
    span = max(e.wall_time_s for e in log) - min(e.wall_time_s for e in log)
    assert 60 < span < 120, span  # the run crossed one window, not two
    for ip in (NAT_A, NAT_B):
        from_ip = [e for e in log if e.client == ip]
        peak = _peak_window_weight(from_ip, 60.0 - ROUNDING_S)
        assert peak <= PG_BUDGET, f"{ip}: peak {peak} > budget {PG_BUDGET} in a rolling minute"
        # Over a span of one to two minutes the budget allows 2 × PG_BUDGET; a worker that
        # waits has more than PG_BUDGET - 20 in the window, so at least ~2 × 100 was sent.
        total = sum(e.weight for e in from_ip)
        assert total >= 0.75 * 2 * PG_BUDGET, f"{ip}: only {total} sent: the budget was never used up"
    # Two egress IPs: two budgets, so together they exceeded one.
    assert _peak_window_weight(log, 60.0 - ROUNDING_S) > PG_BUDGET


def test_the_window_check_itself_catches_an_overspend() -> None:
    """The judge of the first test is not vacuous: a burst over the budget is seen."""
    entry = RestLogEntry
    burst = [entry(100.0 + i * 0.1, "/fapi/v1/aggTrades", {}, 200, 20) for i in range(4)]
    assert _peak_window_weight(burst, WINDOW_S) == 80
    spread = [entry(100.0 + i * 1.0, "/fapi/v1/aggTrades", {}, 200, 20) for i in range(4)]
    assert _peak_window_weight(spread, WINDOW_S) == 40
    rejected = [entry(100.0, "/fapi/v1/aggTrades", {}, 429, 20), *spread]
    assert _peak_window_weight(rejected, WINDOW_S) == 40
