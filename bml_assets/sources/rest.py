"""The Binance USD-M REST client (SPEC §4, REST): weight-limited GETs and history pages as Arrow.

What belongs here: sending each request through the shared weight budget
(``rest_budget.py``), the exchange's rate-limit answers (429 back-off, 418 ban),
paging each history endpoint correctly, an answer as received with the local times
around its request (``timed_get``: the live collector's clock offset and depth
snapshots), and turning the JSON into Arrow tables in
EXACTLY the layouts of the Vision parser (``vision_csv.output_schema``) or the
``metrics_5m`` dataset, so the same feature code consumes REST and Vision data;
each history table remembers which request's answer held each of its rows
(``request_urls_of``), so an error about a row names its request.

A 200 whose body is not JSON (cut short, or a proxy's HTML page) is retried like a
transport error, with the HTTP client's backoff and attempt count: only this module
knows the body must be JSON.

What stays out: retries of 5xx and transport errors and the error texts of
HTTP statuses (``http.py``), weights and endpoint facts (``rest_limits.py``), and
any decision about which minutes to fetch or what the values mean (assets and
features). Times are int64 epoch milliseconds, except ``observation_time``
(the metrics dataset's UTC timestamp column).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urlsplit

import pyarrow as pa
import requests

from bml_assets.domain.minutes import HOUR_MS, MINUTE_MS, floor_minute_ms
from bml_assets.domain.redaction import redact_url
from bml_assets.domain.schema import METRICS
from bml_assets.domain.settings import Settings, validate_symbol
from bml_assets.domain.streams import Stream
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import STATUS_IP_BANNED, STATUS_TOO_MANY_REQUESTS, HttpClient, HttpError, count_traffic
from bml_assets.sources.rest_budget import DEFAULT_WINDOW_S, RestBanned, WeightBudget, utc_iso
from bml_assets.sources.vision_csv import output_schema

__all__ = [
    "REST_POOL",
    "AggTradeGap",
    "HttpError",
    "OutsideHistoryWindow",
    "RestBanned",
    "RestClient",
    "RestError",
    "TimedAnswer",
]

REST_POOL: Final = "binance_rest"
"""Dagster concurrency pool of every op that calls the REST host."""

DEFAULT_BAN_S: Final = 120.0  # a 418 that says neither Retry-After nor "banned until": Binance's shortest ban
DEFAULT_MAX_RATE_LIMIT_RETRIES: Final = 3
_BANNED_UNTIL = re.compile(r"banned until (\d{10,})")
_NUMBER = re.compile(r"-?\d+(\.\d+)?([eE][-+]?\d+)?")
_EXCERPT_BYTES = 120
REQUEST_URLS_KEY: Final = "bml.request_urls"


class RestError(Exception):
    """A REST answer that cannot be used (malformed JSON, an unexpected shape); names the URL
    (redacted: ``redact_url``)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        super().__init__(redact_url(message))
        self.url = url if url is None else redact_url(url)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (str(self),), {"url": self.url})


class OutsideHistoryWindow(RestError):
    """The 5-minute history endpoints serve only the latest 30 days; the request starts before that."""

    def __init__(self, symbol: str, start_ms: int, earliest_ms: int) -> None:
        self.symbol = symbol
        self.start_ms = start_ms
        self.earliest_ms = earliest_ms
        super().__init__(
            f"{symbol}: 5-minute history from {utc_iso(start_ms)} is not served by the REST host: it keeps only "
            f"the latest 30 days (nothing before {utc_iso(earliest_ms)}); use the Vision metrics files for older days"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.symbol, self.start_ms, self.earliest_ms))


class AggTradeGap(RestError):
    """Aggregate trade ids are contiguous; the exchange skipped from ``after_id`` to ``next_id``."""

    def __init__(self, symbol: str, after_id: int, next_id: int, url: str) -> None:
        self.symbol = symbol
        self.after_id = after_id
        self.next_id = next_id
        super().__init__(
            f"{symbol}: aggTrades gap: id {after_id} is followed by {next_id} "
            f"({next_id - after_id - 1} ids missing) in {url}",
            url=url,
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.symbol, self.after_id, self.next_id, self.url))


# --- parsing helpers ---------------------------------------------------------------


def _numbers(obj: Any, url: str) -> dict[str, Any]:
    """A JSON object with its numeric strings turned into floats (ints stay ints)."""
    if not isinstance(obj, dict):
        raise RestError(f"expected a JSON object from {url}, got {type(obj).__name__}", url=url)
    return {k: float(v) if isinstance(v, str) and _NUMBER.fullmatch(v) else v for k, v in obj.items()}


def _list(data: Any, url: str) -> list[Any]:
    if not isinstance(data, list):
        raise RestError(f"expected a JSON array from {url}, got {_short(data)}", url=url)
    return data


def _short(data: Any) -> str:
    text = json.dumps(data)
    return text if len(text) <= 200 else text[:200] + "…"


def _table(
    columns: Mapping[str, list[Any]], schema: pa.Schema, request_urls: Sequence[Sequence[str | None]] = ()
) -> pa.Table:
    """The table, carrying in its schema metadata the request whose answer held each
    row (``request_urls``: one sequence per endpoint, one URL per row), so that an
    error about a row can name its request (``request_urls_of``)."""
    table = pa.Table.from_arrays([pa.array(columns[f.name], type=f.type) for f in schema], schema=schema)
    spans: list[list[Any]] = []  # [first row, end row, url]: runs of rows from one answer
    for urls in request_urls:
        runs: list[list[Any]] = []
        for row, url in enumerate(urls):
            if url is None:
                continue
            if runs and runs[-1][2] == url and runs[-1][1] == row:
                runs[-1][1] = row + 1
            else:
                runs.append([row, row + 1, url])
        spans += runs
    return table.replace_schema_metadata({REQUEST_URLS_KEY: json.dumps(spans)}) if spans else table


def request_urls_of(table: pa.Table, row: int) -> list[str]:
    """The request URLs whose answers held ``row`` of a table this client returned."""
    raw = (table.schema.metadata or {}).get(REQUEST_URLS_KEY.encode())
    if raw is None:
        return []
    return [url for first, end, url in json.loads(raw) if first <= row < end]


@dataclass(frozen=True)
class TimedAnswer:
    """One JSON answer: ``data`` parsed, ``text`` as received, the ``url`` asked (redacted), and
    the local clock (``time.time_ns``) just before the answered request was sent (``sent_ns``,
    after any wait for the budget) and just after its whole answer arrived (``received_ns``)."""

    data: Any
    text: str
    url: str
    sent_ns: int
    received_ns: int


class _MalformedBody(Exception):
    """A 2xx answer whose body is not JSON: worth another request."""


class RestClient:
    """GETs against the USD-M REST host at ``base_url``, every one inside the weight budget
    shared through ``state_url`` (``BML_STATE_URL``) with every other process.

    A ``base_url`` with credentials (``http://user:password@mirror``) sends them with
    every request; ``self.base_url`` (shown in provenance and messages) and the budget's
    host key have them redacted, so they never reach the ledger or a log.

    ``weight_budget`` is the weight per minute allowed to every process leaving by this
    ``egress`` (``BML_REST_WEIGHT_BUDGET``, ``BML_REST_EGRESS``: Binance counts weight and
    bans per IP; see ``rest_budget``). ``clock``/``sleep`` are injectable; ``window_s``
    shortens the budget's minute for tests. ``weight_spent`` and ``requests_sent``
    count what this client sent (retries included).
    """

    def __init__(
        self,
        base_url: str,
        *,
        state_url: str,
        weight_budget: int,
        http: HttpClient | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        max_ban_wait_s: float = 0.0,
        max_rate_limit_retries: int = DEFAULT_MAX_RATE_LIMIT_RETRIES,
        window_s: float = DEFAULT_WINDOW_S,
        egress: str = "",
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"REST base URL {redact_url(base_url)!r} is not an http(s) URL")
        self._request_base_url = base_url.rstrip("/")
        self.base_url = redact_url(self._request_base_url)
        # host[:port]: the budget's key in the state database, credentials left out
        self.host = parts.netloc.rpartition("@")[2]
        self.http = http if http is not None else HttpClient(sleep=sleep)
        self._clock = clock
        self.max_rate_limit_retries = max_rate_limit_retries
        self.budget = WeightBudget(
            state_url,
            self.host,
            weight_budget,
            clock=clock,
            sleep=sleep,
            max_ban_wait_s=max_ban_wait_s,
            window_s=window_s,
            egress=egress,
        )
        # fundingRate's own request limit, shared the same way (its bans are the host's).
        self.funding_budget = WeightBudget(
            state_url,
            f"{self.host} fundingRate",
            limits.FUNDING_RATE_REQUESTS_PER_WINDOW,
            clock=clock,
            sleep=sleep,
            window_s=limits.FUNDING_RATE_WINDOW_S,
            egress=egress,
        )
        self.weight_spent = 0
        self.requests_sent = 0
        self._count_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> RestClient:
        """The client of ``settings``: its REST host, state database, budget and egress."""
        return cls(
            settings.rest_base_url,
            state_url=settings.state_url,
            weight_budget=settings.rest_weight_budget,
            egress=settings.rest_egress,
            **kwargs,
        )

    def __repr__(self) -> str:
        return f"RestClient({self.base_url!r}, budget={self.budget.budget}, key={self.budget.key!r})"

    def close(self) -> None:
        self.budget.close()
        self.funding_budget.close()

    # ---- requests

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        """The parsed JSON of ``GET path?params``, sent within the budget."""
        return self._get(path, params)[0]

    def timed_get(self, path: str, params: Mapping[str, Any] | None = None) -> TimedAnswer:
        """``GET path?params`` within the budget, with the body's text and the local times
        around the request that answered (``TimedAnswer``): for a clock offset, whose error
        the budget's own bookkeeping must not enter, and for a raw spool of the answer."""
        times: list[int] = []
        data, shown, response = self._get_response(path, params, times)
        text = response.content.decode("utf-8", errors="replace")
        return TimedAnswer(data, text, shown, times[0], times[1])

    def _get(self, path: str, params: Mapping[str, Any] | None = None) -> tuple[Any, str]:
        """(parsed JSON, the full URL requested, redacted)."""
        data, shown, _ = self._get_response(path, params)
        return data, shown

    def _get_response(
        self, path: str, params: Mapping[str, Any] | None = None, times: list[int] | None = None
    ) -> tuple[Any, str, requests.Response]:
        """(parsed JSON, the full URL requested (redacted), the response).

        A body that is not JSON is asked for again, up to the HTTP client's
        ``max_retries`` times with its backoff (each attempt spends weight), then
        ``RestError`` names the URL and the body's first bytes. ``times``, when given,
        ends as [ns just before the last request was sent, ns just after its answer arrived]."""
        weight = limits.weight_of(path, params)
        # The query is part of the URL so that every error message names it in full.
        url = self._request_base_url + path + (f"?{urlencode(params)}" if params else "")
        rate_limited = 0
        malformed = 0
        while True:
            try:
                response = self._send(url, path, weight, times)
            except HttpError as exc:
                self._on_rate_limit(exc, rate_limited)  # raises unless a 429 worth another try
                rate_limited += 1
                continue
            shown = redact_url(response.url)
            try:
                return self._json(response), shown, response
            except _MalformedBody as exc:
                malformed += 1
                if malformed > self.http.max_retries:
                    raise RestError(f"{exc} (after {malformed} attempts)", url=shown) from None
                self.http.sleep(self.http.backoff_s(malformed - 1))

    def _send(self, url: str, path: str, weight: int, times: list[int] | None = None) -> requests.Response:
        tickets: list[tuple[WeightBudget, int]] = []

        def before() -> None:
            if path == limits.FUNDING_RATE_PATH:
                tickets.append((self.funding_budget, self.funding_budget.acquire(1)))
            tickets.append((self.budget, self.budget.acquire(weight)))
            with self._count_lock:
                self.weight_spent += weight
                self.requests_sent += 1
            count_traffic(rest_weight=weight)
            if times is not None:  # after the budget's wait: only the request's own round trip counts
                times[:] = [time.time_ns()]

        def after(response: requests.Response | None) -> None:
            if times is not None:
                times.append(time.time_ns())
            used = None if response is None else response.headers.get(limits.USED_WEIGHT_HEADER)
            while tickets:
                budget, ticket = tickets.pop()
                budget.settle(ticket, used if budget is self.budget else None)

        return self.http.get(url, passthrough=(), before_attempt=before, after_attempt=after)

    def _on_rate_limit(self, exc: HttpError, attempt: int) -> None:
        """Record a 418 ban (and raise ``RestBanned``) or a 429 back-off (and return to retry);
        re-raise anything else."""
        now_ms = int(self._clock() * 1000)
        banned = _BANNED_UNTIL.search(exc.msg or "")
        if exc.status == STATUS_IP_BANNED or (exc.status == STATUS_TOO_MANY_REQUESTS and banned):
            if banned:
                until = int(banned.group(1))
            elif exc.retry_after_s is not None:
                until = now_ms + math.ceil(exc.retry_after_s * 1000)
            else:
                until = now_ms + int(DEFAULT_BAN_S * 1000)
            reason = f"HTTP {exc.status} from {exc.url}" + (f": {exc.msg}" if exc.msg else "")
            self.budget.record_ban(until, reason)
            raise RestBanned(self.host, until, reason, self.budget.egress) from exc
        if exc.status != STATUS_TOO_MANY_REQUESTS or attempt >= self.max_rate_limit_retries:
            raise exc
        if exc.retry_after_s is not None:
            wait_ms = math.ceil(exc.retry_after_s * 1000)
        else:  # the exchange counts per minute: wait for the next one
            wait_ms = self.budget.window_ms - now_ms % self.budget.window_ms
        self.budget.record_backoff(now_ms + wait_ms, f"HTTP 429 from {exc.url}")

    @staticmethod
    def _json(response: requests.Response) -> Any:
        body = response.content
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError):
            excerpt = body[:_EXCERPT_BYTES]
            raise _MalformedBody(
                f"malformed JSON from {redact_url(response.url)} (HTTP {response.status_code}, {len(body)} bytes): "
                f"first bytes {excerpt!r}"
            ) from None

    # ---- snapshots

    def server_time_ms(self) -> int:
        data, url = self._get(limits.SERVER_TIME_PATH)
        try:
            return int(data["serverTime"])
        except (TypeError, KeyError, ValueError):
            raise RestError(f"no serverTime in the answer of {url}: {_short(data)}", url=url) from None

    def exchange_info(self) -> dict[str, Any]:
        data, url = self._get(limits.EXCHANGE_INFO_PATH)
        if not isinstance(data, dict):
            raise RestError(f"expected a JSON object from {url}, got {_short(data)}", url=url)
        return data

    def premium_index(self, symbol: str) -> dict[str, Any]:
        """markPrice, indexPrice, lastFundingRate (the predicted rate), nextFundingTime, time…"""
        data, url = self._get(limits.PREMIUM_INDEX_PATH, {"symbol": validate_symbol(symbol)})
        return _numbers(data, url)

    def open_interest(self, symbol: str) -> dict[str, Any]:
        data, url = self._get(limits.OPEN_INTEREST_PATH, {"symbol": validate_symbol(symbol)})
        return _numbers(data, url)

    def book_ticker(self, symbol: str) -> dict[str, Any]:
        data, url = self._get(limits.BOOK_TICKER_PATH, {"symbol": validate_symbol(symbol)})
        return _numbers(data, url)

    # ---- history

    def klines(self, stream: Stream, symbol: str, start_ms: int, end_ms: int) -> pa.Table:
        """1m bars with start_ms ≤ open_time < end_ms in ``output_schema(stream)``, sorted and unique.

        Pages in windows of at most 1500 minutes; each request asks for exactly the
        minutes of its window, so a short hot-band poll costs weight 1, a full page 10.
        """
        stream = Stream(stream)
        if stream not in limits.KLINE_PATHS:
            raise ValueError(f"{stream} is not a kline stream; expected one of {', '.join(limits.KLINE_PATHS)}")
        validate_symbol(symbol)
        path, key = limits.KLINE_PATHS[stream], limits.KLINE_SYMBOL_PARAM[stream]
        schema = output_schema(stream)
        rows: dict[int, tuple[list[Any], str]] = {}
        window_start = floor_minute_ms(start_ms)
        while window_start < end_ms:
            minutes = min(limits.KLINES_MAX_LIMIT, -(-(end_ms - window_start) // MINUTE_MS))
            window_end = window_start + minutes * MINUTE_MS
            params = {
                key: symbol,
                "interval": "1m",
                "startTime": window_start,
                "endTime": min(window_end, end_ms) - 1,
                "limit": minutes,
            }
            data, url = self._get(path, params)
            for row in _list(data, url):
                if not isinstance(row, list) or len(row) < 11:
                    raise RestError(f"unexpected kline row {_short(row)} in {url}", url=url)
                open_time = int(row[0])
                if start_ms <= open_time < end_ms:
                    rows.setdefault(open_time, (row, url))
            window_start = window_end
        return _kline_table(rows, schema)

    def agg_trades(self, symbol: str, *, start_ms: int, end_ms: int, from_id: int | None = None) -> pa.Table:
        """Every aggregate trade with start_ms ≤ transact_time < end_ms, in ``output_schema(aggTrades)``.

        Without ``from_id`` the first id comes from one startTime/endTime request per
        hour (< 1 h windows, widened hour by hour while empty); then pages go by
        ``fromId`` (never by time: many trades share a millisecond) until a trade
        reaches end_ms or a page is short. Ids must be contiguous (``AggTradeGap``).
        """
        validate_symbol(symbol)
        limit = limits.AGG_TRADES_MAX_LIMIT
        collected = _AggTradeCollector(symbol, start_ms, end_ms, last_id=None if from_id is None else from_id - 1)
        next_id = from_id
        if next_id is None:
            window_start = start_ms
            while window_start < end_ms:
                window_end = min(window_start + limits.AGG_TRADES_MAX_WINDOW_MS, end_ms - 1)  # inclusive
                params = {"symbol": symbol, "startTime": window_start, "endTime": window_end, "limit": limit}
                data, url = self._get(limits.AGG_TRADES_PATH, params)
                page = _list(data, url)
                if page:
                    if collected.take(page, url) or (len(page) < limit and window_end >= end_ms - 1):
                        return collected.table()
                    next_id = collected.next_id
                    break
                window_start = window_end + 1
            if next_id is None:  # no trade at all in [start_ms, end_ms)
                return collected.table()
        while True:
            data, url = self._get(limits.AGG_TRADES_PATH, {"symbol": symbol, "fromId": next_id, "limit": limit})
            page = _list(data, url)
            if not page or collected.take(page, url) or len(page) < limit:
                return collected.table()
            if collected.next_id == next_id:  # a full page of ids already seen: it would loop forever
                raise RestError(f"{symbol}: aggTrades page {url} holds no id from {next_id} on", url=url)
            next_id = collected.next_id

    def funding_history(self, symbol: str, start_ms: int, end_ms: int) -> pa.Table:
        """Settled funding with start_ms ≤ fundingTime < end_ms, in ``output_schema(fundingRate)``:
        calc_time = fundingTime, last_funding_rate = fundingRate, funding_interval_hours = hours
        since the previous settlement (looked up to 8 h before start_ms), else 8."""
        validate_symbol(symbol)
        limit = limits.FUNDING_RATE_MAX_LIMIT
        rates: dict[int, float] = {}
        urls: dict[int, str] = {}
        page_start = start_ms - limits.DEFAULT_FUNDING_INTERVAL_HOURS * HOUR_MS - MINUTE_MS
        while page_start < end_ms:
            params = {"symbol": symbol, "startTime": page_start, "endTime": end_ms - 1, "limit": limit}
            data, url = self._get(limits.FUNDING_RATE_PATH, params)
            page = _list(data, url)
            try:
                times = [int(r["fundingTime"]) for r in page]
                for t, r in zip(times, page, strict=True):
                    rates.setdefault(t, float(r["fundingRate"]))
                    urls.setdefault(t, url)
            except (TypeError, KeyError, ValueError) as exc:
                raise RestError(f"unexpected fundingRate row in {url}: {exc!r}", url=url) from None
            if len(page) < limit:
                break
            page_start = max(times) + 1
        columns: dict[str, list[Any]] = {"calc_time": [], "funding_interval_hours": [], "last_funding_rate": []}
        row_urls: list[str | None] = []
        previous: int | None = None
        for t in sorted(rates):
            if start_ms <= t < end_ms:
                hours = limits.DEFAULT_FUNDING_INTERVAL_HOURS
                if previous is not None:
                    hours = max(1, round((t - previous) / HOUR_MS))
                columns["calc_time"].append(t)
                columns["funding_interval_hours"].append(hours)
                columns["last_funding_rate"].append(rates[t])
                row_urls.append(urls[t])
            previous = t
        return _table(columns, output_schema(Stream.FUNDING_RATE), [row_urls])

    def metrics_history(self, symbol: str, start_ms: int, end_ms: int) -> pa.Table:
        """5-minute open interest and long/short ratios with start_ms ≤ timestamp < end_ms, in
        ``schema.METRICS.arrow_schema``, outer-joined on the rows' ``timestamp``.

        Raises ``OutsideHistoryWindow`` when start_ms is older than the 30 days the host keeps.
        """
        validate_symbol(symbol)
        earliest = self.server_time_ms() - limits.HIST_MAX_AGE_MS
        if start_ms < earliest:
            raise OutsideHistoryWindow(symbol, start_ms, earliest)
        wanted = {
            limits.OPEN_INTEREST_HIST_PATH: (
                ("oi_contracts", "sumOpenInterest"),
                ("oi_value_usdt", "sumOpenInterestValue"),
            ),
            limits.TOP_LS_ACCOUNT_RATIO_PATH: (("top_trader_ls_ratio_acct", "longShortRatio"),),
            limits.GLOBAL_LS_ACCOUNT_RATIO_PATH: (("global_ls_ratio_acct", "longShortRatio"),),
        }
        values: dict[int, dict[str, float]] = {}
        urls: dict[str, dict[int, str]] = {path: {} for path in wanted}
        for path, fields in wanted.items():
            for row, url in self._hist_rows(path, symbol, start_ms, end_ms):
                try:
                    t = int(row["timestamp"])
                    if start_ms <= t < end_ms:
                        slot = values.setdefault(t, {})
                        urls[path].setdefault(t, url)
                        for column, name in fields:
                            raw = row.get(name)
                            slot.setdefault(column, None if raw in (None, "") else float(raw))
                except (TypeError, KeyError, ValueError, AttributeError) as exc:
                    raise RestError(f"unexpected row {_short(row)} in {url}: {exc!r}", url=url) from None
        schema = METRICS.arrow_schema
        times = sorted(values)
        columns: dict[str, list[Any]] = {"observation_time": times}
        for name in schema.names[1:]:
            columns[name] = [values[t].get(name) for t in times]
        return _table(columns, schema, [[by_time.get(t) for t in times] for by_time in urls.values()])

    def _hist_rows(self, path: str, symbol: str, start_ms: int, end_ms: int) -> Iterator[tuple[Any, str]]:
        """Rows of a 5m history endpoint, in windows of at most ``limit`` periods (so a page
        can never be cut, whichever end the host counts its limit from)."""
        span = limits.HIST_MAX_LIMIT * limits.HIST_PERIOD_MS
        window_start = start_ms
        while window_start < end_ms:
            window_end = min(window_start + span, end_ms)
            params = {
                "symbol": symbol,
                "period": limits.HIST_PERIOD,
                "startTime": window_start,
                "endTime": window_end - 1,
                "limit": limits.HIST_MAX_LIMIT,
            }
            data, url = self._get(path, params)
            for row in _list(data, url):
                yield row, url
            window_start = window_end


# --- tables ------------------------------------------------------------------------------

# Position of each Vision kline column in a REST kline array.
_KLINE_ARRAY_INDEX: Final[Mapping[str, int]] = {
    "open_time": 0,
    "open": 1,
    "high": 2,
    "low": 3,
    "close": 4,
    "volume": 5,
    "close_time": 6,
    "quote_volume": 7,
    "count": 8,
    "taker_buy_volume": 9,
    "taker_buy_quote_volume": 10,
}


def _kline_table(rows: Mapping[int, tuple[list[Any], str]], schema: pa.Schema) -> pa.Table:
    """Kline arrays ``[open_time, open, high, low, close, volume, close_time, quote_volume,
    count, taker_buy_volume, taker_buy_quote_volume, ignore]`` in the Vision layout."""
    columns: dict[str, list[Any]] = {n: [] for n in schema.names}
    row_urls: list[str | None] = []
    for open_time in sorted(rows):
        row, url = rows[open_time]
        row_urls.append(url)
        try:
            for field in schema:
                value = row[_KLINE_ARRAY_INDEX[field.name]]
                columns[field.name].append(int(value) if pa.types.is_integer(field.type) else float(value))
        except (TypeError, ValueError) as exc:
            raise RestError(f"unexpected kline row {_short(row)} in {url}: {exc}", url=url) from None
    return _table(columns, schema, [row_urls])


class _AggTradeCollector:
    """Accumulates aggTrades pages: checks id contiguity, keeps start_ms ≤ T < end_ms."""

    def __init__(self, symbol: str, start_ms: int, end_ms: int, *, last_id: int | None) -> None:
        self.symbol = symbol
        self.start_ms = start_ms
        self.end_ms = end_ms
        self.last_id = last_id
        self.schema = output_schema(Stream.AGG_TRADES)
        self.columns: dict[str, list[Any]] = {n: [] for n in self.schema.names}
        self.urls: list[str | None] = []

    @property
    def next_id(self) -> int:
        assert self.last_id is not None
        return self.last_id + 1

    def take(self, page: list[Any], url: str) -> bool:
        """Add a page; True once a trade at or after end_ms was seen (nothing more is needed)."""
        c = self.columns
        for trade in page:
            try:
                agg_id = int(trade["a"])
                if self.last_id is not None:
                    if agg_id <= self.last_id:  # overlap with the previous page
                        continue
                    if agg_id != self.last_id + 1:
                        raise AggTradeGap(self.symbol, self.last_id, agg_id, url)
                self.last_id = agg_id
                transact_time = int(trade["T"])
                if transact_time >= self.end_ms:
                    return True
                if transact_time < self.start_ms:
                    continue
                c["agg_trade_id"].append(agg_id)
                c["price"].append(float(trade["p"]))
                c["quantity"].append(float(trade["q"]))
                c["first_trade_id"].append(int(trade["f"]))
                c["last_trade_id"].append(int(trade["l"]))
                c["transact_time"].append(transact_time)
                c["is_buyer_maker"].append(bool(trade["m"]))
                self.urls.append(url)
            except (TypeError, KeyError, ValueError) as exc:
                raise RestError(f"unexpected aggTrade {_short(trade)} in {url}: {exc!r}", url=url) from None
        return False

    def table(self) -> pa.Table:
        return _table(self.columns, self.schema, [self.urls])
