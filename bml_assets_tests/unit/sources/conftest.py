"""A scripted local HTTP host for the sources tests (127.0.0.1, a free port, no internet)."""

from __future__ import annotations

import io
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import pytest
import requests

from bml_assets.sources.http import HttpClient

# A whole minute (seconds since the epoch), for the fake clocks of the REST tests.
T0 = 1_700_000_040.0


@dataclass
class FakeClock:
    """An injectable clock and sleep: sleeping advances time, and is recorded."""

    now: float = T0
    sleeps: list[float] = field(default_factory=list)

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    # Send only this many body bytes (Content-Length still announces all), then close.
    truncate_to: int | None = None


class FakeHost:
    """Answers each path from a queue of replies; the last reply repeats. Unknown paths are 404."""

    def __init__(self) -> None:
        self.routes: dict[str, list[Reply]] = {}
        self.requests: list[str] = []
        self.headers_seen: list[dict[str, str]] = []
        self._lock = threading.Lock()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = urlsplit(self.path).path
                with host._lock:
                    host.requests.append(self.path)
                    host.headers_seen.append(dict(self.headers))
                    queue = host.routes.get(path)
                    reply = (queue.pop(0) if len(queue) > 1 else queue[0]) if queue else Reply(404)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command == "HEAD":
                    return  # the headers of the GET, no body
                if reply.truncate_to is None:
                    self.wfile.write(reply.body)
                else:
                    self.wfile.write(reply.body[: reply.truncate_to])
                    self.close_connection = True

            do_HEAD = do_GET

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def set(self, path: str, *replies: Reply) -> None:
        with self._lock:
            self.routes[path] = list(replies)

    def url(self, path: str) -> str:
        return self.base_url + path

    def count(self, path: str) -> int:
        return sum(1 for p in self.requests if urlsplit(p).path == path)


@pytest.fixture
def fake_host() -> Iterator[FakeHost]:
    host = FakeHost()
    host._thread.start()
    try:
        yield host
    finally:
        host.server.shutdown()
        host.server.server_close()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def http(sleeps: list[float]) -> HttpClient:
    """A client that records its backoff sleeps instead of waiting, and ignores proxy settings."""
    session = requests.Session()
    session.trust_env = False  # a proxy from the environment must not see 127.0.0.1 traffic
    return HttpClient(timeout_s=5, max_retries=3, sleep=sleeps.append, session=session)


def make_zip(member: str, body: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, body)
    return buf.getvalue()
