"""HttpClient: retries, passthrough, exchange error messages, streamed downloads."""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
import requests

from bml_assets.sources.http import HttpClient, HttpError, Traffic, traffic

from .conftest import FakeHost, Reply


def test_get_returns_body_and_sends_user_agent(fake_host: FakeHost, http: HttpClient) -> None:
    fake_host.set("/a", Reply(200, b"hello"))
    response = http.get(fake_host.url("/a"), params={"symbol": "BTCUSDT"})
    assert response.status_code == 200
    assert response.content == b"hello"
    assert fake_host.requests == ["/a?symbol=BTCUSDT"]
    assert fake_host.headers_seen[0]["User-Agent"] == "bml/0.1"


def test_5xx_burst_is_retried_with_bounded_jittered_backoff(
    fake_host: FakeHost, http: HttpClient, sleeps: list[float]
) -> None:
    fake_host.set("/a", Reply(500), Reply(502), Reply(503), Reply(200, b"ok"))
    assert http.get(fake_host.url("/a")).content == b"ok"
    assert fake_host.count("/a") == 4
    assert len(sleeps) == 3
    # Full jitter: attempt i sleeps in [0, min(cap 8, 0.5 * 2**i)].
    for i, s in enumerate(sleeps):
        assert 0.0 <= s <= min(8.0, 0.5 * 2**i)


def test_5xx_forever_gives_up_after_max_retries(fake_host: FakeHost, http: HttpClient, sleeps: list[float]) -> None:
    fake_host.set("/a", Reply(503, b"busy"))
    with pytest.raises(HttpError, match=r": busy \(after 4 attempts\)") as info:
        http.get(fake_host.url("/a"))
    assert info.value.status == 503
    assert fake_host.url("/a") in str(info.value)
    assert fake_host.count("/a") == 4  # 1 + max_retries 3
    assert len(sleeps) == 3


@pytest.mark.parametrize("status", [404, 403])
def test_passthrough_statuses_are_returned(fake_host: FakeHost, http: HttpClient, status: int) -> None:
    fake_host.set("/a", Reply(status, b"nope"))
    assert http.get(fake_host.url("/a")).status_code == status
    assert fake_host.count("/a") == 1


def test_400_with_binance_json_names_url_code_and_msg(fake_host: FakeHost, http: HttpClient) -> None:
    fake_host.set("/fapi/v1/ticker/24hr", Reply(400, b'{"code":-1121,"msg":"Invalid symbol."}'))
    url = fake_host.url("/fapi/v1/ticker/24hr")
    with pytest.raises(HttpError) as info:
        http.get(url)
    err = info.value
    assert (err.status, err.code, err.msg) == (400, -1121, "Invalid symbol.")
    assert url in str(err) and "400" in str(err) and "-1121" in str(err) and "Invalid symbol." in str(err)
    assert fake_host.count("/fapi/v1/ticker/24hr") == 1  # a 4xx is not retried


def test_404_raises_when_not_in_passthrough(fake_host: FakeHost, http: HttpClient) -> None:
    with pytest.raises(HttpError) as info:
        http.get(fake_host.url("/missing"), passthrough=())
    assert info.value.status == 404


def test_451_is_explained(fake_host: FakeHost, http: HttpClient) -> None:
    fake_host.set("/a", Reply(451, b"{}"))
    with pytest.raises(HttpError, match="refuses requests from your location") as info:
        http.get(fake_host.url("/a"))
    assert info.value.status == 451


@pytest.mark.parametrize("status", [429, 418])
def test_rate_limit_statuses_show_retry_after(fake_host: FakeHost, http: HttpClient, status: int) -> None:
    body = b'{"code":-1003,"msg":"Way too much request weight used"}'
    fake_host.set("/a", Reply(status, body, headers={"Retry-After": "7"}))
    with pytest.raises(HttpError, match="retry after 7 s") as info:
        http.get(fake_host.url("/a"))
    assert info.value.retry_after_s == 7.0
    assert info.value.code == -1003
    assert fake_host.count("/a") == 1


def test_connection_refused_is_retried_then_raises(http: HttpClient, sleeps: list[float]) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(HttpError, match="after 4 attempts") as info:
        http.get(f"http://127.0.0.1:{port}/a")
    assert info.value.status is None
    assert len(sleeps) == 3


def test_backoff_is_capped() -> None:
    client = HttpClient(backoff_base_s=0.5, backoff_cap_s=8)
    assert all(0.0 <= client.backoff_s(a) <= 8.0 for a in range(30))


def test_download_streams_and_hashes(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    body = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk
    fake_host.set("/f.zip", Reply(200, body))
    dest = tmp_path / "f.zip"
    result = http.download(fake_host.url("/f.zip"), dest)
    assert result.bytes == len(body)
    assert result.sha256 == hashlib.sha256(body).hexdigest()
    assert dest.read_bytes() == body


def test_truncated_download_is_retried(
    fake_host: FakeHost, http: HttpClient, sleeps: list[float], tmp_path: Path
) -> None:
    body = b"x" * 100_000
    fake_host.set("/f.zip", Reply(200, body, truncate_to=10_000), Reply(200, body))
    result = http.download(fake_host.url("/f.zip"), tmp_path / "f.zip")
    assert result.bytes == 100_000
    assert fake_host.count("/f.zip") == 2
    assert len(sleeps) == 1


def test_truncated_get_body_is_retried(fake_host: FakeHost, http: HttpClient) -> None:
    fake_host.set("/a", Reply(200, b"0123456789", truncate_to=4), Reply(200, b"0123456789"))
    assert http.get(fake_host.url("/a")).content == b"0123456789"
    assert fake_host.count("/a") == 2


def test_download_always_truncated_fails_and_leaves_no_file(
    fake_host: FakeHost, http: HttpClient, tmp_path: Path
) -> None:
    fake_host.set("/f.zip", Reply(200, b"x" * 1000, truncate_to=10))
    dest = tmp_path / "f.zip"
    with pytest.raises(HttpError, match=r"download of .*/f\.zip failed after 4 attempts"):
        http.download(fake_host.url("/f.zip"), dest)
    assert not dest.exists()


def test_download_error_status_raises_with_status(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    with pytest.raises(HttpError) as info:
        http.download(fake_host.url("/missing.zip"), tmp_path / "m.zip")
    assert info.value.status == 404


def test_session_is_injectable() -> None:
    session = requests.Session()
    assert HttpClient(session=session).session is session


def test_download_failing_midway_removes_the_partial_file(
    fake_host: FakeHost, http: HttpClient, tmp_path: Path
) -> None:
    fake_host.set("/f.zip", Reply(200, b"x" * 1000, truncate_to=10), Reply(500))
    dest = tmp_path / "f.zip"
    with pytest.raises(HttpError) as info:
        http.download(fake_host.url("/f.zip"), dest)
    assert info.value.status == 500
    assert not dest.exists()


def test_invalid_url_is_an_http_error(http: HttpClient) -> None:
    with pytest.raises(HttpError, match="failed"):
        http.get("http://")


def test_traffic_counts_the_bodies_received(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    fake_host.set("/a", Reply(200, b"a" * 1000))
    fake_host.set("/f.zip", Reply(200, b"z" * 1_280_000))
    fake_host.set("/gone", Reply(404, b"nope"))  # a passthrough answer's body is received too
    before = traffic()
    http.get(fake_host.url("/a"))
    http.download(fake_host.url("/f.zip"), tmp_path / "f.zip")
    http.get(fake_host.url("/gone"))
    assert traffic() - before == Traffic(bytes_received=1000 + 1_280_000 + 4, rest_weight=0)


def test_head_size_reads_the_length_without_the_body(fake_host: FakeHost, http: HttpClient, sleeps: list) -> None:
    fake_host.set("/f.zip", Reply(200, b"z" * 12_345))
    fake_host.set("/broken.zip", Reply(500))
    before = traffic()
    assert http.head_size(fake_host.url("/f.zip")) == 12_345
    assert http.head_size(fake_host.url("/missing.zip")) is None  # 404: no such file
    assert traffic() - before == Traffic()  # a HEAD receives no body
    # The same error as a GET's: the status, the URL and the attempts.
    with pytest.raises(HttpError, match=r"^HTTP 500 for http://127\.0\.0\.1:\d+/broken\.zip \(after 4 attempts\)$"):
        http.head_size(fake_host.url("/broken.zip"))
    assert len(sleeps) == 3
