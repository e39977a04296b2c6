"""The project's one HTTP client: retries, backoff and exchange error messages.

What belongs here: issuing GET requests with a bounded retry policy (5xx and
transport errors, exponential backoff with full jitter), turning error responses
into ``HttpError`` messages a person can act on (the exchange's ``code``/``msg``,
451 explained, ``Retry-After`` shown), streaming a download to disk while
hashing it, this process's count of the bytes received and the REST weight spent
(``Traffic``: the progress of long work reads it), and ``redact_url``: the one place where the credentials of a URL
(``http://user:password@mirror/``) are hidden before the URL is shown, logged or
stored. Requests still carry them (requests sends the userinfo as basic auth).

What stays out: anything that knows about Binance Vision paths, CHECKSUM files
or the cache (``vision.py``), and REST weight accounting / rate limiting
(``rest.py`` and ``rest_budget.py`` plug into ``get`` through its per-attempt hooks). Nothing here parses CSV.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from bml_assets.domain.redaction import redact_url

# Status codes the exchange uses with a specific meaning (SPEC §4, REST).
STATUS_TOO_MANY_REQUESTS = 429  # slow down; honour Retry-After
STATUS_IP_BANNED = 418  # banned after ignoring 429s; honour Retry-After
STATUS_UNAVAILABLE_FOR_LEGAL_REASONS = 451  # the host refuses this location

DEFAULT_PASSTHROUGH: tuple[int, ...] = (404, 403)
DOWNLOAD_CHUNK_BYTES = 1 << 20  # 1 MiB: few Python calls per file, small memory

# Failures of the connection or of the body, as opposed to an answer from the
# server: all worth another try. requests raises ChunkedEncodingError for a body
# shorter than its Content-Length (urllib3 enforces the length).
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)


@dataclass(frozen=True)
class Traffic:
    """What this process has received over HTTP (bodies, in bytes: downloads and answers) and
    spent of the exchange's REST weight, since it started. Counted here, by the one client, so
    a progress display needs no client of its own: it takes the difference of two readings
    (``traffic()``) around the work, in the process that did it."""

    bytes_received: int = 0
    rest_weight: int = 0

    def __sub__(self, other: Traffic) -> Traffic:
        return Traffic(self.bytes_received - other.bytes_received, self.rest_weight - other.rest_weight)

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(self.bytes_received + other.bytes_received, self.rest_weight + other.rest_weight)


_traffic = Traffic()
_traffic_lock = threading.Lock()  # the hot band's steps fetch from threads


def count_traffic(*, bytes_received: int = 0, rest_weight: int = 0) -> None:
    """Add to this process's ``Traffic`` (the REST client adds the weight of each request it sends)."""
    global _traffic
    with _traffic_lock:
        _traffic = _traffic + Traffic(bytes_received, rest_weight)


def traffic() -> Traffic:
    """This process's ``Traffic`` so far."""
    return _traffic


class HttpError(Exception):
    """A request that failed for good: an error status or retries exhausted.

    ``status`` is None when no response arrived (transport failure). ``code`` and
    ``msg`` are the exchange's JSON error fields when the body had them.
    ``retry_after_s`` is the server's ``Retry-After`` when it sent one. ``url`` and
    the message name the URL with its credentials redacted (``redact_url``).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        code: int | None = None,
        msg: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(redact_url(message))
        self.url = redact_url(url)
        self.status = status
        self.code = code
        self.msg = msg
        self.retry_after_s = retry_after_s


class IncompleteBody(requests.exceptions.ChunkedEncodingError):
    """The body ended before its Content-Length: a transport error, retried."""


@dataclass(frozen=True)
class DownloadResult:
    bytes: int
    sha256: str


def _content(response: requests.Response) -> bytes:
    """The body of an error response, or b"" when even that fails to arrive."""
    try:
        return response.content or b""
    except (*TRANSPORT_ERRORS, RuntimeError):  # RuntimeError: body already consumed
        return b""


def _exchange_error(response: requests.Response) -> tuple[int | None, str | None]:
    """The Binance JSON error body ``{"code": -1121, "msg": "..."}``, if that is what came back."""
    try:
        body = json.loads(_content(response)[:64_000])
    except (ValueError, UnicodeDecodeError):
        return None, None
    if not isinstance(body, dict):
        return None, None
    code = body.get("code")
    msg = body.get("msg")
    return (code if isinstance(code, int) else None), (msg if isinstance(msg, str) else None)


def _retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    raw = headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        # The HTTP-date form is allowed by the RFC but Binance sends seconds;
        # an unparsable value is reported as absent rather than guessed.
        return None


def _body_excerpt(response: requests.Response, limit: int = 200) -> str:
    text = _content(response)[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split())


class HttpClient:
    """GET with bounded retries. One instance may be shared by threads that do
    not share a ``requests.Session`` concurrently (pass one session per thread)."""

    def __init__(
        self,
        timeout_s: float = 30,
        max_retries: int = 4,
        backoff_base_s: float = 0.5,
        backoff_cap_s: float = 8,
        sleep: Callable[[float], None] = time.sleep,
        session: requests.Session | None = None,
        user_agent: str = "bml/0.1",
        rng: random.Random | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.sleep = sleep
        self.session = session if session is not None else requests.Session()
        self.user_agent = user_agent
        self._rng = rng if rng is not None else random.Random()

    # -- policy ---------------------------------------------------------------

    def backoff_s(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)] (attempt counts from 0).
        Spreads the retries of many workers instead of synchronising them."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * (2**attempt))
        return self._rng.uniform(0.0, ceiling)

    def _error_for(self, url: str, response: requests.Response) -> HttpError:
        status = response.status_code
        code, msg = _exchange_error(response)
        exchange = f" (exchange code {code}: {msg})" if code is not None or msg is not None else ""
        retry_after = _retry_after_seconds(response.headers)
        if status == STATUS_UNAVAILABLE_FOR_LEGAL_REASONS:
            text = (
                f"HTTP 451 for {url}: this host refuses requests from your location "
                f"(Binance blocks some countries); use a host or network that is allowed{exchange}"
            )
        elif status in (STATUS_TOO_MANY_REQUESTS, STATUS_IP_BANNED):
            what = "rate limited" if status == STATUS_TOO_MANY_REQUESTS else "IP banned for exceeding the rate limit"
            wait = f"; retry after {retry_after:g} s" if retry_after is not None else "; no Retry-After given"
            text = f"HTTP {status} for {url}: {what}{wait}{exchange}"
        else:
            excerpt = _body_excerpt(response)
            detail = exchange or (f": {excerpt}" if excerpt else "")
            text = f"HTTP {status} for {url}{detail}"
        # The body is the server's: a mirror may echo the request URL back in it.
        return HttpError(redact_url(text), url=url, status=status, code=code, msg=msg, retry_after_s=retry_after)

    # -- requests -------------------------------------------------------------

    def get(
        self,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        stream: bool = False,
        passthrough: Collection[int] = DEFAULT_PASSTHROUGH,
        before_attempt: Callable[[], object] | None = None,
        after_attempt: Callable[[requests.Response | None], object] | None = None,
        method: str = "GET",
    ) -> requests.Response:
        """GET ``url`` (or ``method``: ``head_size`` sends HEAD). 2xx and statuses in ``passthrough`` are returned as they are;
        5xx and transport errors are retried; everything else raises ``HttpError``.

        ``before_attempt`` runs before every request sent (retries included; it may
        block or raise, e.g. a rate limiter), ``after_attempt`` after each one with
        its response, or None when none arrived (e.g. to read rate-limit headers)."""
        headers = {"User-Agent": self.user_agent}
        shown = redact_url(url)
        last_problem = ""
        for attempt in range(self.max_retries + 1):
            if before_attempt is not None:
                before_attempt()
            try:
                response = self.session.request(
                    method, url, params=params, stream=stream, timeout=self.timeout_s, headers=headers
                )
            except TRANSPORT_ERRORS as exc:
                last_problem = redact_url(f"{type(exc).__name__}: {exc}")
                if after_attempt is not None:
                    after_attempt(None)
            except requests.RequestException as exc:
                if after_attempt is not None:
                    after_attempt(None)
                # Not worth a retry (bad URL, redirect loop): one exception type for callers.
                # Not chained: the original text may hold the URL with its credentials.
                problem = redact_url(f"{type(exc).__name__}: {exc}")
                raise HttpError(f"{method} {shown} failed: {problem}", url=shown) from None
            else:
                if after_attempt is not None:
                    after_attempt(response)
                status = response.status_code
                if status in passthrough or 200 <= status < 400:
                    if not stream:  # a streamed body is counted as it is read (``download``)
                        count_traffic(bytes_received=len(response.content))
                    return response
                if status >= 500:
                    last_problem = f"HTTP {status}"
                    if attempt == self.max_retries:
                        error = self._error_for(shown, response)
                        error.args = (f"{error} (after {attempt + 1} attempts)",)
                        raise error
                    response.close()
                else:
                    error = self._error_for(shown, response)
                    response.close()
                    raise error
            if attempt < self.max_retries:
                self.sleep(self.backoff_s(attempt))
        raise HttpError(
            f"{method} {shown} failed after {self.max_retries + 1} attempts: {last_problem}",
            url=shown,
        )

    def head_size(self, url: str) -> int | None:
        """The size of ``url``'s body as a HEAD tells it (``Content-Length``), with the retries of
        ``get``; None when the host has no such file (404/403) or does not say. Receives no body."""
        with self.get(url, method="HEAD") as response:
            if response.status_code in DEFAULT_PASSTHROUGH:
                return None
            length = response.headers.get("Content-Length", "")
            return int(length) if length.isdigit() else None

    def download(self, url: str, dest: Path) -> DownloadResult:
        """Stream ``url`` into ``dest`` (overwritten), hashing on the fly; fsynced on return.

        Any status other than 2xx raises ``HttpError`` (callers map 404/403 as they
        need). A body shorter than its Content-Length, or cut by the connection,
        restarts the whole download, up to ``max_retries`` times.
        """
        dest = Path(dest)
        shown = redact_url(url)
        last_problem = ""
        written = False  # a failed download leaves no partial file behind
        try:
            for attempt in range(self.max_retries + 1):
                response = self.get(url, stream=True, passthrough=())
                try:
                    written = True
                    return self._write_body(shown, response, dest)
                except TRANSPORT_ERRORS as exc:
                    last_problem = redact_url(f"{type(exc).__name__}: {exc}")
                finally:
                    response.close()
                if attempt < self.max_retries:
                    self.sleep(self.backoff_s(attempt))
            raise HttpError(
                f"download of {shown} failed after {self.max_retries + 1} attempts: {last_problem}",
                url=shown,
            )
        except BaseException:
            if written:
                dest.unlink(missing_ok=True)
            raise

    @staticmethod
    def _write_body(url: str, response: requests.Response, dest: Path) -> DownloadResult:
        expected: int | None = None
        # Content-Length counts the encoded bytes; only compare it when the body
        # arrives as is (zips are never re-encoded by the Vision CDN, but be safe).
        encoding = response.headers.get("Content-Encoding", "identity").lower()
        if encoding in ("", "identity") and response.headers.get("Content-Length", "").isdigit():
            expected = int(response.headers["Content-Length"])
        digest = hashlib.sha256()
        size = 0
        with open(dest, "wb") as out:
            for chunk in response.iter_content(chunk_size=DOWNLOAD_CHUNK_BYTES):
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                count_traffic(bytes_received=len(chunk))
            if expected is not None and size != expected:
                raise IncompleteBody(f"body of {url} has {size} bytes, Content-Length says {expected}")
            out.flush()
            # The caller renames this file into a cache; without fsync a crash
            # could leave a renamed but empty file.
            os.fsync(out.fileno())
        return DownloadResult(bytes=size, sha256=digest.hexdigest())
