"""A local HTTP server that answers like data.binance.vision and the USD-M REST
host, with fault switches, and its WebSocket side beside it.

What belongs here: ``ReplayServer`` (a ThreadingHTTPServer on a background thread
serving GET/HEAD for the USD-M Vision paths and their ``.CHECKSUM``, and routing
``/fapi/...`` and ``/futures/data/...`` to the REST side, ``rest/``, with
``X-MBX-USED-WEIGHT-1M`` on every REST answer; starting and stopping the
WebSocket side, ``ws/``, on a port of its own: ``ws_base_url``, over the same
market, order book, clock and fault rules, and routing ``/fapi/v1/depth`` of a
symbol a recording replays to that replay), the optional shared
``MarketClock`` (Vision's "today" and REST's "now"), choosing between a real file
and the synthetic market for a path, the byte-bounded cache of rendered zips,
carrying out the fault rules on the wire (also settable over HTTP at
``/_replay/faults``), the log of every HTTP request, and ``serve()``, the blocking
entry point of the ``bml replay-server`` command.

It is a local test tool and guards itself as one: it listens on loopback unless
told ``allow_public``; it answers only requests whose ``Host`` is a loopback name
or its own host (a DNS-rebinding page gets 421); nothing under ``real_dir`` that
resolves outside it is ever served (checked again at each request); error bodies
never carry the request path unescaped (XML-escaped in the S3-style errors, JSON
with ``<>&`` escaped elsewhere); and the fault switches take ``POST``/``DELETE``
only with ``Content-Type: application/json`` (415 otherwise), which a page in a
browser cannot send cross-site without a CORS preflight — and no request gets any
``Access-Control-Allow-*`` header.

What stays out: what the files contain (``market.py``), which exist and their
URL layout (``vision_archive.py``), how they are rendered (``render.py``), the
real-file index (``real_files.py``), the fault rules themselves (``faults.py``),
what REST answers, how weight is counted and the REST log (``rest/``), the clock
(``clock.py``), and the project's own Vision URL builder and client
(``sources/vision.py``), which this server is a test double for, and the
streams themselves (``ws/``). The WebSocket side has its own port rather than
sharing this one: ``http.server`` cannot hand an upgraded socket to an asyncio
``websockets`` server without framing of our own.
"""

from __future__ import annotations

import html
import json
import logging
import signal
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl

from bml_assets.replay.clock import MarketClock, to_ms
from bml_assets.replay.faults import FaultDecision, FaultKind, FaultRule, FaultSet, flipped, garbage
from bml_assets.replay.hosts import host_allowed, is_loopback_host
from bml_assets.replay.market import MarketConfig, SyntheticMarket
from bml_assets.replay.order_book import OrderBookModel
from bml_assets.replay.real_files import RealFile, index_real_dir, modified_of, resolves_inside
from bml_assets.replay.render import checksum_text, zip_bytes, zip_csv
from bml_assets.replay.rest.endpoints import RestApi
from bml_assets.replay.rest.limits import DEFAULT_FUNDING_LIMIT, DEFAULT_WEIGHT_LIMIT, RateLimiter, ban_message
from bml_assets.replay.rest.log import RestLogEntry
from bml_assets.replay.rest.paths import is_rest_path
from bml_assets.replay.rest.responses import RestResponse, error_response, invalid_symbol, json_body
from bml_assets.replay.rest.service import RestService
from bml_assets.replay.vision_archive import CHECKSUM_SUFFIX, parse_vision_path, vision_file
from bml_assets.replay.ws.recording import Recording, RecordingReplay
from bml_assets.replay.ws.service import StreamCatalog, WsLogEntry, WsOptions, WsService
from bml_assets.replay.ws.synthetic import SyntheticStreams

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_replay/"
DEFAULT_CACHE_BYTES = 512 << 20


# --- rendered files cache ------------------------------------------------------------


@dataclass(frozen=True)
class _Rendered:
    zip: bytes
    checksum: bytes  # the CHECKSUM file's bytes
    modified: datetime


class _RenderCache:
    """Rendered files by path, least recently used dropped beyond ``max_bytes``.
    Concurrent requests for one path render it once."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._items: OrderedDict[str, _Rendered] = OrderedDict()
        self._size = 0
        self._inflight: dict[str, threading.Lock] = {}

    def get_or_render(self, key: str, render: Any) -> _Rendered | None:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
            key_lock = self._inflight.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                hit = self._items.get(key)
                if hit is not None:
                    return hit
            value = render()
            with self._lock:
                self._inflight.pop(key, None)
                if value is not None and len(value.zip) <= self.max_bytes:
                    self._items[key] = value
                    self._size += len(value.zip)
                    while self._size > self.max_bytes:
                        _, old = self._items.popitem(last=False)
                        self._size -= len(old.zip)
            return value

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._size = 0


# --- the server -------------------------------------------------------------------


def _not_found_body(key: str, code: str = "NoSuchKey", message: str = "The specified key does not exist.") -> bytes:
    # Vision sits on S3 and answers misses with a small XML error document; the key
    # is the request path, so it is escaped (quotes too, as S3 does).
    code, message, key = (html.escape(text, quote=True) for text in (code, message, key.lstrip("/")))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message><Key>{key}</Key></Error>"
    ).encode()


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    replay: ReplayServer


class ReplayServer:
    """Serve a synthetic market and/or real files as a Binance Vision host, and the
    synthetic market as a USD-M REST host (``/fapi/...``, ``/futures/data/...``).

    ``market`` defaults to ``SyntheticMarket()`` when neither it nor ``real_dir`` is
    given. Real files win over the market for the same path.

    ``clock``: the market time shared by Vision and REST. With it, Vision's "today"
    is the clock's UTC date (it overrides ``MarketConfig.today``) and REST answers
    at the clock's now; without it, Vision behaves as before (``MarketConfig.today``
    or the real UTC date) and REST uses the real time. Rate limits always count the
    wall time (the clock's ``wall_time``, else ``time.time``).

    REST limits (per client IP, see ``rest.limits.RateLimiter``): ``rest_weight_limit``
    weight per fixed ``rest_window_s`` window; 429 when over, and after
    ``rest_ban_after`` 429s in a window a 418 ban of ``rest_ban_s`` seconds;
    fundingRate also ``rest_funding_limit`` requests per ``rest_funding_window_s``.

    ``ws``: the WebSocket side (``ws.service.WsOptions``: its port, a recording to
    replay, pings, limits), started and stopped with the HTTP side; None: no
    WebSocket side. A recording is loaded here (a bad file fails now) and laid on
    the clock when the server starts.
    """

    def __init__(
        self,
        market: SyntheticMarket | None = None,
        real_dir: Path | str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        allow_public: bool = False,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
        clock: MarketClock | None = None,
        rest_weight_limit: int = DEFAULT_WEIGHT_LIMIT,
        rest_window_s: float = 60.0,
        rest_ban_after: int = 3,
        rest_ban_s: float = 120.0,
        rest_funding_limit: int = DEFAULT_FUNDING_LIMIT,
        rest_funding_window_s: float = 300.0,
        ws: WsOptions | None = WsOptions(),  # noqa: B008 - a frozen dataclass
    ) -> None:
        if not allow_public and not is_loopback_host(host):
            raise ValueError(
                f"refusing to listen on non-loopback host {host!r}: the replay server is for local tests; "
                "pass allow_public=True to expose it"
            )
        self.market = market if market is not None or real_dir is not None else SyntheticMarket()
        self.real_dir = Path(real_dir) if real_dir is not None else None
        if self.real_dir is not None and not self.real_dir.is_dir():
            raise FileNotFoundError(f"real_dir {self.real_dir} is not a directory")
        self._real_root = self.real_dir.resolve() if self.real_dir is not None else None
        self.allow_public = allow_public
        self.real_files: dict[str, RealFile] = index_real_dir(self.real_dir) if self.real_dir else {}
        self.host = host
        self.faults = FaultSet()
        self._requested_port = port
        self._cache = _RenderCache(cache_bytes)
        self._log: list[tuple[str, str, int]] = []
        self._log_lock = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.clock = clock
        limiter = RateLimiter(
            rest_weight_limit,
            rest_window_s,
            ban_after=rest_ban_after,
            ban_s=rest_ban_s,
            funding_limit=rest_funding_limit,
            funding_window_s=rest_funding_window_s,
        )
        # REST needs the synthetic market; a real-files-only server answers REST with 404.
        self.rest: RestService | None = None
        self._rest_api: RestApi | None = None
        self.order_book: OrderBookModel | None = None
        if self.market is not None:
            self.order_book = OrderBookModel(self.market)
            self._rest_api = RestApi(self.market, clock, weight_limit=rest_weight_limit, order_book=self.order_book)
            self.rest = RestService(self._rest_api, limiter, clock.wall_time if clock is not None else time.time)
        self.ws_options = ws
        self.recording = Recording.load(ws.recording) if ws is not None and ws.recording is not None else None
        if self.recording is not None and self.market is None:
            raise ValueError("a WebSocket recording needs the synthetic market: its /fapi/v1/depth is served over REST")
        self.recording_replay: RecordingReplay | None = None
        self._ws: WsService | None = None

    # --- lifecycle --------------------------------------------------------------

    def start(self) -> ReplayServer:
        if self._httpd is not None:
            return self
        server_class = _HTTPServer
        if ":" in self.host:
            server_class = type("_HTTPServer6", (_HTTPServer,), {"address_family": socket.AF_INET6})
        httpd = server_class((self.host, self._requested_port), _Handler)
        httpd.replay = self
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, args=(0.1,), name="bml-replay-server", daemon=True)
        self._thread.start()
        try:
            self._start_ws()
        except BaseException:
            self.stop()
            raise
        return self

    def market_now_ms(self) -> int:
        """Market time: the clock's, else the real time."""
        return self.clock.now_ms() if self.clock is not None else time.time_ns() // 1_000_000

    def _start_ws(self) -> None:
        options = self.ws_options
        if options is None:
            return
        if self.recording is not None:
            origin = options.recording_origin
            origin_ms = to_ms(origin) if origin is not None else self.market_now_ms()
            self.recording_replay = RecordingReplay(self.recording, origin_ms)
            if self._rest_api is not None:
                self._rest_api.depth_override = self.recording_replay.depth_answer
        synthetic = None
        if self.market is not None and self._rest_api is not None and self.order_book is not None:
            synthetic = SyntheticStreams(self.market, self.order_book, self._rest_api)
        self._ws = WsService(
            StreamCatalog(synthetic, self.recording_replay),
            self.market_now_ms,
            self.faults,
            options,
            host=self.host,
            allow_public=self.allow_public,
        )
        self._ws.start()

    def stop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            ws.stop()
        httpd, thread = self._httpd, self._thread
        self._httpd, self._thread = None, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the replay server is not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def ws_port(self) -> int:
        if self._ws is None:
            raise RuntimeError("the replay server's WebSocket side is not started")
        return self._ws.port

    @property
    def ws_base_url(self) -> str:
        """``BML_WS_BASE_URL`` for this server: streams are at ``{ws_base_url}/public/stream?streams=…``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.ws_port}"

    @property
    def ws_log(self) -> list[WsLogEntry]:
        """A copy of what happened to every WebSocket connection so far, in order."""
        return self._ws.log if self._ws is not None else []

    def clear_ws_log(self) -> None:
        if self._ws is not None:
            self._ws.clear_log()

    @property
    def request_log(self) -> list[tuple[str, str, int]]:
        """A copy of (method, path, status) of every request so far, in order."""
        with self._log_lock:
            return list(self._log)

    def clear_request_log(self) -> None:
        with self._log_lock:
            self._log.clear()

    @property
    def rest_log(self) -> list[RestLogEntry]:
        """A copy of every REST request so far, in order (wall time, path, params,
        status, weight charged)."""
        return self.rest.log if self.rest is not None else []

    def clear_rest_log(self) -> None:
        if self.rest is not None:
            self.rest.clear_log()

    def wall_time(self) -> float:
        return self.clock.wall_time() if self.clock is not None else time.time()

    def clear_cache(self) -> None:
        self._cache.clear()

    def _record(self, method: str, path: str, status: int) -> None:
        with self._log_lock:
            self._log.append((method, path, int(status)))

    # --- content ------------------------------------------------------------------

    def resolve(self, zip_path: str) -> _Rendered | None:
        """The zip at ``zip_path`` and its CHECKSUM, or None (404)."""
        real = self.real_files.get(zip_path)
        if real is not None:
            # Checked again at each request: a link may have been changed since indexing.
            root = self._real_root
            if root is None or not all(resolves_inside(p, root) for p in (real.source, real.checksum) if p is not None):
                log.warning("replay: not serving %s: %s now links outside %s", zip_path, real.source, self.real_dir)
                return None
            return self._cache.get_or_render("real:" + zip_path, lambda: self._render_real(real))
        if self.market is None:
            return None
        parsed = parse_vision_path(zip_path)
        if parsed is None:
            return None
        stream, symbol, period = parsed
        # Publication depends on "today", so ask the market before the cache.
        today = self.clock.today() if self.clock is not None else None
        file = vision_file(self.market, stream, symbol, period, today=today)
        if file is None:
            return None

        def render() -> _Rendered:
            data = zip_csv(file.csv_name, file.columns(), header=file.header, modified=file.modified)
            return _Rendered(data, checksum_text(file.zip_name, data).encode(), file.modified)

        return self._cache.get_or_render("market:" + zip_path, render)

    @staticmethod
    def _render_real(real: RealFile) -> _Rendered:
        zip_name = real.route.rsplit("/", 1)[1]
        modified = modified_of(zip_name[: -len(".zip")])
        if real.is_csv:
            data = zip_bytes(zip_name[: -len(".zip")] + ".csv", real.source.read_bytes(), modified=modified)
        else:
            data = real.source.read_bytes()
        checksum = real.checksum.read_bytes() if real.checksum else checksum_text(zip_name, data).encode()
        return _Rendered(data, checksum, modified)


_READ_ONLY = {"Allow": "GET, HEAD"}
_CONTROL_METHODS = {"Allow": "GET, HEAD, POST, DELETE"}


class _Handler(BaseHTTPRequestHandler):
    server: _HTTPServer
    protocol_version = "HTTP/1.1"
    server_version = "bml-replay/1"

    @property
    def replay(self) -> ReplayServer:
        return self.server.replay

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without NODELAY, Nagle plus
        # delayed ACKs add ~40 ms to every small keep-alive response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("replay: " + format, *args)

    # --- plumbing ---------------------------------------------------------------

    def _path(self) -> str:
        return self.path.split("?", 1)[0].split("#", 1)[0]

    def _send(
        self, status: int, body: bytes, content_type: str, *, head: bool = False, extra: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        # Logged before the client can see the answer: a test reading the log right
        # after its request finds the entry.
        self.replay._record(self.command, self._path(), status)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _send_json(self, status: int, payload: Any) -> None:
        self._send(status, json_body(payload), "application/json")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _host_allowed(self) -> bool:
        """Whether the ``Host`` header names this server: a loopback name or its own
        host (anything, with ``allow_public``). A page whose DNS name was rebound to
        127.0.0.1 is same-origin to the browser, so only this check stops it."""
        if host_allowed(self.headers.get("Host"), self.replay.host, allow_public=self.replay.allow_public):
            return True
        self._send(
            HTTPStatus.MISDIRECTED_REQUEST, b"this replay server answers loopback host names only\n", "text/plain"
        )
        return False

    def _control_write_allowed(self) -> bool:
        """Whether a POST/DELETE may change the faults: the faults path, and a JSON
        body type (a browser sends that cross-site only after a CORS preflight,
        which ``do_OPTIONS`` never grants)."""
        if self._path() != CONTROL_PREFIX + "faults":
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"only GET and HEAD\n", "text/plain", extra=_READ_ONLY)
            return False
        media_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            message = f"{self.command} {CONTROL_PREFIX}faults needs Content-Type: application/json"
            self._send_json(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, {"error": message})
            return False
        return True

    # --- methods ---------------------------------------------------------------------

    def do_GET(self) -> None:
        if self._host_allowed():
            self._serve(head=False)

    def do_HEAD(self) -> None:
        if self._host_allowed():
            self._serve(head=True)

    def do_OPTIONS(self) -> None:
        # A CORS preflight gets no Access-Control-Allow-* headers: the browser then
        # refuses to send the JSON request it asked about.
        self._read_body()
        if self._host_allowed():
            allow = _CONTROL_METHODS if self._path() == CONTROL_PREFIX + "faults" else _READ_ONLY
            self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"no CORS here\n", "text/plain", extra=allow)

    def do_POST(self) -> None:
        body = self._read_body()
        if not (self._host_allowed() and self._control_write_allowed()):
            return
        try:
            payload = json.loads(body or b"[]")
            items = payload if isinstance(payload, list) else [payload]
            rules = [FaultRule.from_json(item) for item in items]
        except (ValueError, KeyError, TypeError) as exc:
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": f"bad fault rules: {exc}"})
            return
        for rule in rules:
            self.replay.faults.add(rule)
        self._send_json(HTTPStatus.OK, self.replay.faults.describe())

    def do_DELETE(self) -> None:
        self._read_body()
        if not (self._host_allowed() and self._control_write_allowed()):
            return
        self.replay.faults.clear()
        self._send_json(HTTPStatus.OK, [])

    def _serve(self, *, head: bool) -> None:
        path = self._path()
        if path.startswith(CONTROL_PREFIX):
            self._control(path, head=head)
            return
        if is_rest_path(path):
            self._serve_rest(path, head=head)
            return
        decision = self.replay.faults.decide(path)
        if decision.delay_s:
            time.sleep(decision.delay_s)
        kind = decision.kind
        if kind in (FaultKind.RATE_LIMIT_429, FaultKind.BAN_418):
            self._send_limited(decision, head=head)
            return
        if kind is FaultKind.MISSING:
            self._send(HTTPStatus.NOT_FOUND, _not_found_body(path), "application/xml", head=head)
            return
        if kind is FaultKind.FORBIDDEN:
            self._send(
                HTTPStatus.FORBIDDEN,
                _not_found_body(path, "AccessDenied", "Access Denied"),
                "application/xml",
                head=head,
            )
            return
        if kind is FaultKind.ERROR_500:
            body = _not_found_body(path, "InternalError", "We encountered an internal error. Please try again.")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, body, "application/xml", head=head)
            return

        is_checksum = path.endswith(CHECKSUM_SUFFIX)
        try:
            rendered = self.replay.resolve(path[: -len(CHECKSUM_SUFFIX)] if is_checksum else path)
        except Exception as exc:  # a bug or a config the market cannot serve: say so, keep serving
            log.exception("replay: failed to render %s", path)
            body = _not_found_body(path, "InternalError", f"replay server failed: {exc}")
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, body, "application/xml", head=head)
            return
        if rendered is None:
            self._send(HTTPStatus.NOT_FOUND, _not_found_body(path), "application/xml", head=head)
            return
        if is_checksum:
            body = rendered.checksum
            if kind is FaultKind.CORRUPT_ZIP:
                body = checksum_text(path.rsplit("/", 1)[1][: -len(CHECKSUM_SUFFIX)], garbage(rendered.zip)).encode()
            content_type = "text/plain; charset=utf-8"
        else:
            body = rendered.zip
            if kind is FaultKind.CORRUPT_ZIP:
                body = garbage(body)
            elif kind is FaultKind.CHECKSUM_MISMATCH:
                body = flipped(body)
            content_type = "application/zip"
        extra = {"Last-Modified": rendered.modified.strftime("%a, %d %b %Y %H:%M:%S GMT")}
        if kind is FaultKind.TRUNCATED and not head:
            self._send_truncated(body, content_type, extra)
            return
        self._send(HTTPStatus.OK, body, content_type, head=head, extra=extra)

    def _send_limited(self, decision: FaultDecision, *, head: bool) -> None:
        self._send_rest(self._limited_response(decision, {}), head=head)

    def _limited_response(self, decision: FaultDecision, extra: dict[str, str]) -> RestResponse:
        """A 429 or 418 from a fault rule, with its Retry-After and a Binance body."""
        retry = decision.rule.retry_after_s if decision.rule is not None else 1
        headers = {**extra, "Retry-After": str(retry)}
        if decision.kind is FaultKind.BAN_418:
            until_ms = int((self.replay.wall_time() + retry) * 1000)
            return error_response(HTTPStatus.IM_A_TEAPOT, -1003, ban_message(until_ms), headers)
        return error_response(HTTPStatus.TOO_MANY_REQUESTS, -1003, "Too many requests; please slow down.", headers)

    # --- REST ----------------------------------------------------------------------------

    def _serve_rest(self, path: str, *, head: bool) -> None:
        query = self.path.split("?", 1)[1].split("#", 1)[0] if "?" in self.path else ""
        params: dict[str, str] = {}
        for name, value in parse_qsl(query, keep_blank_values=True):
            params.setdefault(name, value)
        service = self.replay.rest
        ip = str(self.client_address[0])
        decision = self.replay.faults.decide(path)
        if decision.delay_s:
            time.sleep(decision.delay_s)
        wall = self.replay.wall_time()
        if service is None:
            response = error_response(HTTPStatus.NOT_FOUND, -5000, "REST needs a synthetic market")
            self._send_rest(response, head=head)
            return
        kind = decision.kind
        if kind is not None and kind not in (FaultKind.TRUNCATED, FaultKind.MALFORMED_JSON):
            # An injected answer: the limiter is not consulted and nothing is charged.
            headers = service.weight_headers(ip, wall)
            if kind in (FaultKind.RATE_LIMIT_429, FaultKind.BAN_418):
                response = self._limited_response(decision, headers)
            elif kind is FaultKind.BAD_SYMBOL:
                response = invalid_symbol().response(headers)
            elif kind is FaultKind.MISSING:
                response = error_response(HTTPStatus.NOT_FOUND, -5000, "Not found.", headers)
            elif kind is FaultKind.FORBIDDEN:
                response = error_response(HTTPStatus.FORBIDDEN, -5000, "Forbidden.", headers)
            else:  # error_500
                msg = "An unknown error occurred while processing the request."
                response = error_response(HTTPStatus.INTERNAL_SERVER_ERROR, -1000, msg, headers)
            service.record(wall, path, params, response.status, 0, ip)
            self._send_rest(response, head=head)
            return
        response = service.request(ip, path, params, wall)
        if kind is FaultKind.MALFORMED_JSON and response.status == HTTPStatus.OK:
            # A body cut in the middle, with a Content-Length that matches it.
            cut = max(1, len(response.body) // 2)
            response = RestResponse(response.status, response.body[:cut], response.headers, response.content_type)
        if kind is FaultKind.TRUNCATED and not head:
            self._send_truncated(response.body, response.content_type, response.headers, status=response.status)
            return
        self._send_rest(response, head=head)

    def _send_rest(self, response: RestResponse, *, head: bool) -> None:
        self._send(response.status, response.body, response.content_type, head=head, extra=response.headers)

    def _send_truncated(
        self, body: bytes, content_type: str, extra: dict[str, str], *, status: int = HTTPStatus.OK
    ) -> None:
        # Promise the whole body, send half, hang up: the client sees a short read.
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.send_header("Connection", "close")
        self.replay._record(self.command, self._path(), status)
        self.end_headers()
        self.wfile.write(body[: len(body) // 2])
        self.wfile.flush()
        self.close_connection = True

    def _control(self, path: str, *, head: bool) -> None:
        if path == CONTROL_PREFIX + "faults":
            self._send(HTTPStatus.OK, json_body(self.replay.faults.describe()), "application/json", head=head)
        elif path == CONTROL_PREFIX + "health":
            self._send(HTTPStatus.OK, b"ok\n", "text/plain", head=head)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"unknown control path\n", "text/plain", head=head)


# --- command-line entry point ------------------------------------------------------


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    seed: int = 7,
    trades_per_day: int = 6000,
    real_dir: Path | str | None = None,
    listing_dates: dict[str, date] | None = None,
    symbols: Sequence[str] | None = None,
    allow_public: bool = False,
    clock_origin: datetime | None = None,
    clock_speed: float = 1.0,
    ws_port: int | None = None,
    ws_recording: Path | str | None = None,
    ws_recording_origin: datetime | None = None,
) -> None:
    """Run a replay server in the foreground until Ctrl-C (``bml replay-server``).
    With ``clock_origin``, market time starts there and runs at ``clock_speed``.
    ``symbols``: the market's universe (default: ``MarketConfig``'s). The WebSocket
    side listens on ``ws_port`` (None: ``port + 1``, or any free port when ``port``
    is 0) and replays ``ws_recording`` from ``ws_recording_origin`` (default: the
    market clock's now)."""
    config = MarketConfig(
        seed=seed,
        trades_per_day=trades_per_day,
        listing_dates=listing_dates or {},
        symbols=tuple(symbols) if symbols is not None else None,
    )
    market = SyntheticMarket(config)
    clock = MarketClock.live(clock_origin, clock_speed) if clock_origin is not None else None
    if ws_port is None:
        ws_port = port + 1 if port else 0
    ws = WsOptions(
        port=ws_port,
        recording=Path(ws_recording) if ws_recording is not None else None,
        recording_origin=ws_recording_origin,
    )
    server = ReplayServer(
        market, real_dir=real_dir, host=host, port=port, allow_public=allow_public, clock=clock, ws=ws
    )
    server.start()
    if threading.current_thread() is threading.main_thread():
        # A service manager stops with SIGTERM: stop as cleanly as on Ctrl-C.
        signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        print(f"bml replay server (Binance Vision) at {server.base_url}", flush=True)
        if server.real_files:
            print(f"serving {len(server.real_files)} real file(s) from {server.real_dir}", flush=True)
        print(f"export BML_VISION_BASE_URL={server.base_url}", flush=True)
        print(f"export BML_REST_BASE_URL={server.base_url}", flush=True)
        print(f"synthetic market symbols: {','.join(market.universe())}", flush=True)
        print(f"export BML_WS_BASE_URL={server.ws_base_url}", flush=True)
        replay = server.recording_replay
        if replay is not None:
            symbols_text = ",".join(sorted(replay.symbols))
            print(
                f"replaying {replay.recording.path} ({symbols_text}) from market time {replay.origin_ms}",
                flush=True,
            )
        if clock is not None:
            print(f"market clock: {clock!r}", flush=True)
        print("Ctrl-C stops it.", flush=True)
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        print("replay server stopped", flush=True)
