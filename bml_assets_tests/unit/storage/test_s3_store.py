"""``S3Store`` against a real moto server: conditional writes, reads, the start-up check, retries.

A small forwarding proxy in front of moto plays the servers moto is not: one that drops
the conditional headers (an S3 clone without conditional writes), one that answers 503,
one whose answer to a PUT that landed is lost.
"""

from __future__ import annotations

import hashlib
import http.client
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

boto3 = pytest.importorskip("boto3", reason="the S3 store tests need boto3 (pip install 'bml-assets[s3]')")

from bml_assets.storage.s3 import ConditionalWritesUnsupported, S3Store, StoreUnavailable  # noqa: E402
from bml_assets.storage.store import (  # noqa: E402
    ABSENT,
    PreconditionFailed,
    StoreNotWritable,
    UnsupportedStore,
    store_for,
)

HELLO_SHA256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"  # sha256(b"hello")
WORLD_SHA256 = "486ea46224d1bb4fb680f34f7c9ad96a8f24ec88be73ea8e5a6c65260e9cb8a7"  # sha256(b"world")
KEY = "futures/um/minute/symbol=BTCUSDT/date=2024-03-05/part.parquet"


def _bucket_and_prefix(root: str) -> tuple[str, str]:
    parts = urlsplit(root)
    return parts.netloc, parts.path.strip("/")


@pytest.fixture
def store(s3_root: str, moto_endpoint: str) -> S3Store:
    return S3Store(s3_root, endpoint_url=moto_endpoint)


@pytest.fixture
def s3(moto_endpoint: str, aws_env: dict[str, str]) -> Any:
    """A plain boto3 client, to look at the bucket without the store."""
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


# --------------------------------------------------------------------------- a proxy in front of moto


class _Proxy(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, target: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        parts = urlsplit(target)
        self.target = (parts.hostname or "", parts.port or 80)
        self.drop_conditions = False
        self.fail_next = 0  # answer 503 to this many requests without forwarding them
        self.lose_next_answers = 0  # forward, then answer 503 instead of moto's answer
        self.stall_next = 0  # hold this many requests unanswered for stall_s, then drop them
        self.stall_s = 0.0
        self.requests: list[str] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Proxy

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _unavailable(self) -> None:
        body = b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>ServiceUnavailable</Code><Message>busy</Message></Error>"
        self.send_response(503)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _forward(self) -> None:
        proxy = self.server
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        with proxy.lock:
            proxy.requests.append(self.command)
            refuse = proxy.fail_next > 0
            proxy.fail_next -= refuse
            lose = not refuse and proxy.lose_next_answers > 0
            proxy.lose_next_answers -= lose
            stall = not refuse and not lose and proxy.stall_next > 0
            proxy.stall_next -= stall
        if stall:  # a slow endpoint: nothing comes back before the client's read timeout
            time.sleep(proxy.stall_s)
            self.close_connection = True
            return
        if refuse:
            self._unavailable()
            return
        dropped = {"host", "connection", "expect", "content-length"}
        if proxy.drop_conditions:
            dropped |= {"if-none-match", "if-match"}
        headers = {k: v for k, v in self.headers.items() if k.lower() not in dropped}
        upstream = http.client.HTTPConnection(*proxy.target, timeout=30)
        try:
            upstream.request(self.command, self.path, body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
        finally:
            upstream.close()
        if lose:
            self._unavailable()
            return
        self.send_response(answer.status, answer.reason)
        for name, value in answer.getheaders():
            if name.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(name, value)
        # A HEAD's Content-Length is the object's size, not the (empty) body's.
        self.send_header(
            "Content-Length", answer.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
        )
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward


@pytest.fixture
def proxy(moto_endpoint: str) -> Iterator[_Proxy]:
    server = _Proxy(moto_endpoint)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- writes


def test_put_if_absent_creates_and_then_refuses_leaving_the_object(store: S3Store) -> None:
    first = store.put(KEY, b"hello", expect=ABSENT)
    assert first.size == 5
    with pytest.raises(PreconditionFailed) as refused:
        store.put(KEY, b"world", expect=ABSENT)
    assert store.location(KEY) in str(refused.value)
    assert f"found version {first.version}" in str(refused.value)
    assert store.read(KEY) == b"hello"
    assert store.stat(KEY) == first


def test_put_if_match_replaces_only_the_version_it_names(store: S3Store) -> None:
    first = store.put(KEY, b"hello", expect=ABSENT)
    second = store.put(KEY, b"world", expect=first.version)
    assert second.version != first.version
    with pytest.raises(PreconditionFailed, match="nothing was changed"):
        store.put(KEY, b"again", expect=first.version)  # stale version
    assert store.read(KEY) == b"world"
    with pytest.raises(PreconditionFailed, match="found no object"):
        store.put("other/part.parquet", b"x", expect=second.version)
    assert store.stat("other/part.parquet") is None


def test_an_unconditional_put_replaces(store: S3Store) -> None:
    store.put(KEY, b"hello")
    store.put(KEY, b"world")
    assert store.read(KEY) == b"world"


def test_staged_bytes_are_invisible_until_published(store: S3Store) -> None:
    with store.stage(KEY, b"hello") as staged:
        assert staged.sha256() == HELLO_SHA256
        assert store.stat(KEY) is None
        assert store.list("futures") == []
    assert store.stat(KEY) is None  # discarded on leaving the block
    with store.stage(KEY, b"hello") as staged:
        published = staged.publish(expect=ABSENT)
    assert store.stat(KEY) == published


def test_the_published_stat_is_what_stat_reports(store: S3Store) -> None:
    published = store.put(KEY, b"hello", expect=ABSENT)
    assert store.stat(KEY) == published
    assert published.mtime_ns % 1_000_000_000 == 0  # Last-Modified has whole seconds
    assert abs(published.mtime_ns / 1e9 - time.time()) < 3600


def test_the_sha256_travels_in_the_object_metadata(store: S3Store, s3: Any) -> None:
    store.put(KEY, b"hello", expect=ABSENT)
    head = s3.head_object(Bucket=store.bucket, Key=f"lake/{KEY}")
    assert head["Metadata"] == {"sha256": HELLO_SHA256}
    assert store.recorded_sha256(KEY) == HELLO_SHA256


def test_sha256_hashes_the_bytes_not_the_metadata(store: S3Store, s3: Any) -> None:
    store.put(KEY, b"hello", expect=ABSENT)
    # Another tool replaces the bytes and carries the old metadata over.
    s3.put_object(Bucket=store.bucket, Key=f"lake/{KEY}", Body=b"world", Metadata={"sha256": HELLO_SHA256})
    assert store.sha256(KEY) == WORLD_SHA256
    assert store.recorded_sha256(KEY) == HELLO_SHA256


# --------------------------------------------------------------------------- reads, listing, deleting


def test_stat_read_sha256_of_a_missing_object(store: S3Store) -> None:
    assert store.stat(KEY) is None
    with pytest.raises(FileNotFoundError, match=store.location(KEY)):
        store.read(KEY)
    with pytest.raises(FileNotFoundError):
        store.sha256(KEY)


def test_locations_and_listing_stay_under_the_prefix(store: S3Store, s3: Any) -> None:
    assert store.root == f"s3://{store.bucket}/lake"
    assert store.location("a/b.parquet") == f"s3://{store.bucket}/lake/a/b.parquet"
    store.put("futures/b/part.parquet", b"1")
    store.put("futures/a/part.parquet", b"2")
    store.put("futuresX/part.parquet", b"3")  # a sibling prefix, not under "futures/"
    s3.put_object(Bucket=store.bucket, Key="elsewhere/futures/part.parquet", Body=b"4")
    assert store.list("futures") == ["futures/a/part.parquet", "futures/b/part.parquet"]
    assert store.list("futures/") == ["futures/a/part.parquet", "futures/b/part.parquet"]
    assert store.list("") == ["futures/a/part.parquet", "futures/b/part.parquet", "futuresX/part.parquet"]
    assert store.list("nothing") == []
    assert store.temp_files("futures/a") == []


def test_listing_pages_through_more_than_a_thousand_keys(store: S3Store, s3: Any) -> None:
    for i in range(1005):
        s3.put_object(Bucket=store.bucket, Key=f"lake/many/{i:04d}", Body=b"")
    listed = store.list("many")
    assert len(listed) == 1005
    assert listed[0] == "many/0000" and listed[-1] == "many/1004"


def test_keys_that_leave_the_prefix_are_refused(store: S3Store) -> None:
    for key in ("../escape", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError, match="invalid store key"):
            store.put(key, b"x")


def test_delete_checks_its_condition(store: S3Store) -> None:
    first = store.put(KEY, b"hello")
    second = store.put(KEY, b"world", expect=first.version)
    with pytest.raises(PreconditionFailed):
        store.delete(KEY, expect=first.version)
    with pytest.raises(PreconditionFailed):
        store.delete(KEY, expect=ABSENT)
    assert store.read(KEY) == b"world"
    assert store.delete(KEY, expect=second.version) is True
    assert store.stat(KEY) is None
    assert store.delete(KEY) is False


def test_pyarrow_reads_a_parquet_object_through_source(store: S3Store) -> None:
    table = pa.table({"minute": pa.array([1, 2, 3], pa.int64()), "close": pa.array([1.5, 2.5, 3.5])})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    store.put(KEY, sink.getvalue().to_pybytes(), expect=ABSENT)
    with pq.ParquetFile(store.source(KEY)) as f:
        read = f.read()
    assert read.equals(table)
    assert pq.read_metadata(store.source(KEY)).num_rows == 3


def test_store_for_picks_the_s3_store(s3_root: str, moto_endpoint: str) -> None:
    chosen = store_for(s3_root, s3_endpoint_url=moto_endpoint)
    assert isinstance(chosen, S3Store)
    assert chosen.root == s3_root


def test_a_missing_boto3_says_which_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "bml_assets.storage.s3")
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(UnsupportedStore, match=r"pip install 'bml-assets\[s3\]'") as refused:
        store_for("s3://bucket/lake")
    assert "s3://bucket/lake" in str(refused.value)


# --------------------------------------------------------------------------- start-up check


def test_ensure_writable_passes_on_moto_and_leaves_nothing(store: S3Store, s3: Any) -> None:
    assert store.ensure_writable() == store.root
    assert s3.list_objects_v2(Bucket=store.bucket).get("KeyCount") == 0


def test_ensure_writable_names_a_missing_bucket(moto_endpoint: str, aws_env: dict[str, str]) -> None:
    store = S3Store("s3://bml-no-such-bucket/lake", endpoint_url=moto_endpoint)
    with pytest.raises(StoreNotWritable, match="no bucket 'bml-no-such-bucket'"):
        store.ensure_writable()


def test_ensure_writable_refuses_a_server_that_ignores_conditions(s3_root: str, proxy: _Proxy, s3: Any) -> None:
    store = S3Store(s3_root, endpoint_url=proxy.url)
    assert store.ensure_writable() == s3_root  # the proxy itself forwards faithfully
    proxy.drop_conditions = True
    with pytest.raises(ConditionalWritesUnsupported) as refused:
        store.ensure_writable()
    assert "If-None-Match" in str(refused.value)
    assert proxy.url in str(refused.value)
    bucket, _ = _bucket_and_prefix(s3_root)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount") == 0  # the probe was removed


# --------------------------------------------------------------------------- retries


def test_a_few_503s_are_retried_to_success(s3_root: str, proxy: _Proxy) -> None:
    store = S3Store(s3_root, endpoint_url=proxy.url, max_attempts=4)
    proxy.fail_next = 2
    published = store.put(KEY, b"hello", expect=ABSENT)
    assert proxy.requests == ["PUT", "PUT", "PUT", "HEAD"]
    assert store.stat(KEY) == published
    assert store.sha256(KEY) == HELLO_SHA256


def test_persistent_503s_end_in_a_clear_error_within_the_attempts(s3_root: str, proxy: _Proxy) -> None:
    store = S3Store(s3_root, endpoint_url=proxy.url, max_attempts=3)
    proxy.fail_next = 1000
    with pytest.raises(StoreUnavailable) as failed:
        store.put(KEY, b"hello", expect=ABSENT)
    message = str(failed.value)
    assert store.location(KEY) in message
    assert proxy.url in message
    assert "HTTP 503" in message and "after 3 attempts" in message
    # Bounded by attempts, not by a clock: exactly three requests, then the error.
    assert proxy.requests == ["PUT", "PUT", "PUT"]
    with pytest.raises(StoreUnavailable, match="after 3 attempts"):
        store.stat(KEY)


def test_a_slow_server_is_timed_out_and_retried_to_success(s3_root: str, proxy: _Proxy) -> None:
    # Timeouts of seconds, not fractions: a loaded machine's moto must answer the others in time.
    store = S3Store(s3_root, endpoint_url=proxy.url, max_attempts=4, read_timeout=2.0)
    proxy.stall_next, proxy.stall_s = 2, 5.0
    published = store.put(KEY, b"hello", expect=ABSENT)
    assert proxy.requests == ["PUT", "PUT", "PUT", "HEAD"]  # two stalled, the third answered
    assert store.stat(KEY) == published


def test_a_server_that_stays_slow_ends_in_a_clear_error_within_the_attempts(s3_root: str, proxy: _Proxy) -> None:
    store = S3Store(s3_root, endpoint_url=proxy.url, max_attempts=3, read_timeout=2.0)
    proxy.stall_next, proxy.stall_s = 1000, 5.0
    with pytest.raises(StoreUnavailable) as failed:
        store.put(KEY, b"hello", expect=ABSENT)
    message = str(failed.value)
    assert store.location(KEY) in message and proxy.url in message
    assert "did not answer" in message and "after 3 attempts" in message, message
    assert proxy.requests == ["PUT", "PUT", "PUT"]  # bounded by attempts


def test_an_unreachable_server_is_a_clear_error(s3_root: str) -> None:
    from bml_assets.cluster.services import free_port

    where = f"http://127.0.0.1:{free_port()}"
    store = S3Store(s3_root, endpoint_url=where, max_attempts=2, connect_timeout=1)
    with pytest.raises(StoreUnavailable, match=f"{where} did not answer") as failed:
        store.read(KEY)
    assert store.location(KEY) in str(failed.value)
    with pytest.raises(StoreNotWritable, match="did not answer"):
        store.ensure_writable()


def test_a_put_whose_answer_was_lost_is_recognised_as_our_own(s3_root: str, proxy: _Proxy) -> None:
    store = S3Store(s3_root, endpoint_url=proxy.url, max_attempts=3)
    proxy.lose_next_answers = 1  # the PUT lands, its answer is a 503; the retry meets our object
    published = store.put(KEY, b"hello", expect=ABSENT)
    assert proxy.requests[:2] == ["PUT", "PUT"]
    assert store.stat(KEY) == published
    assert store.read(KEY) == b"hello"
    # Someone else's object under the same refusal is still a refusal.
    proxy.lose_next_answers = 1
    with pytest.raises(PreconditionFailed):
        store.put(KEY, b"world", expect='"0123456789abcdef0123456789abcdef"')
    assert hashlib.sha256(store.read(KEY)).hexdigest() == HELLO_SHA256
