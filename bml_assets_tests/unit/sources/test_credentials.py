"""Credentials in a base URL (``http://user:password@mirror``): sent with every request,
never shown or stored — ``redact_url`` is the one place that hides them."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import Settings, SettingsError
from bml_assets.sources import rest_limits as limits
from bml_assets.sources.http import HttpClient, HttpError
from bml_assets.sources.rest import RestBanned, RestClient, RestError
from bml_assets.sources.vision import NotPublished, VisionClient, VisionError

from .conftest import FakeClock, FakeHost, Reply, make_zip

SECRET = "s3cret"
PATH = "/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-01.zip"
ZIP = make_zip("BTCUSDT-fundingRate-2024-01.csv", b"calc_time,funding_interval_hours,last_funding_rate\n1,8,0.1\n")
ZIP_SHA = hashlib.sha256(ZIP).hexdigest()
BASIC = "Basic " + base64.b64encode(f"user:{SECRET}".encode()).decode()


def with_credentials(base_url: str, password: str = SECRET) -> str:
    return base_url.replace("http://", f"http://user:{password}@", 1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://user:pw@host/x", "http://***@host/x"),
        ("https://token@host:8443/a?b=c", "https://***@host:8443/a?b=c"),
        ("http://user:p@ss@host/x", "http://***@host/x"),  # a raw "@" in the password
        ("http://host/x?mail=a@b", "http://host/x?mail=a@b"),  # an "@" after the host is not userinfo
        ("http://host:1/x", "http://host:1/x"),
        ("GET http://a:b@h/x failed, then http://c:d@k/y", "GET http://***@h/x failed, then http://***@k/y"),
        ("postgresql://bml:pw@db:5432/state", "postgresql://***@db:5432/state"),
        ("sqlite:////tmp/ledger.sqlite", "sqlite:////tmp/ledger.sqlite"),
    ],
)
def test_redact_url(text: str, expected: str) -> None:
    assert redact_url(text) == expected


def test_requests_carry_the_credentials_errors_do_not(fake_host: FakeHost, http: HttpClient) -> None:
    fake_host.set("/a", Reply(200, b"ok"))
    fake_host.set("/b", Reply(400, b'{"code":-1121,"msg":"Invalid symbol."}'))
    fake_host.set("/c", Reply(503, b"busy"))
    assert http.get(with_credentials(fake_host.url("/a"))).content == b"ok"
    assert fake_host.headers_seen[0]["Authorization"] == BASIC  # requests turns the userinfo into basic auth
    for path in ("/b", "/c"):
        with pytest.raises(HttpError) as info:
            http.get(with_credentials(fake_host.url(path)))
        assert SECRET not in str(info.value) and SECRET not in info.value.url
        assert info.value.url == fake_host.url(path).replace("http://", "http://***@")
        assert info.value.url in str(info.value)
    assert all(h["Authorization"] == BASIC for h in fake_host.headers_seen)


def test_a_transport_failure_names_the_redacted_url(http: HttpClient) -> None:
    with pytest.raises(HttpError) as info:
        http.get(f"http://user:{SECRET}@127.0.0.1:9/x")  # the discard port: nothing listens
    assert "http://***@127.0.0.1:9/x" in str(info.value) and SECRET not in str(info.value)
    assert info.value.__cause__ is None  # a chained requests error could repeat the URL


def test_vision_file_sidecar_and_errors_are_redacted(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    fake_host.set(PATH + ".CHECKSUM", Reply(200, f"{ZIP_SHA}  BTCUSDT-fundingRate-2024-01.zip\n".encode()))
    fake_host.set(PATH, Reply(200, ZIP))
    client = VisionClient(with_credentials(fake_host.base_url), tmp_path / "cache", http)
    shown = fake_host.url(PATH).replace("http://", "http://***@")
    file = client.fetch(client.base_url + PATH)
    assert file.url == shown
    assert json.loads(file.path.with_suffix(".json").read_text())["url"] == shown
    assert all(h["Authorization"] == BASIC for h in fake_host.headers_seen)

    missing = "/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-02.zip"
    with pytest.raises(NotPublished) as gone:
        client.fetch(client.base_url + missing)
    assert gone.value.url == fake_host.url(missing).replace("http://", "http://***@")
    broken = "/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-03.zip"
    fake_host.set(broken + ".CHECKSUM", Reply(500, b"down"))
    with pytest.raises(VisionError) as failed:
        client.fetch(client.base_url + broken)
    for error in (gone.value, failed.value):
        assert SECRET not in str(error) and SECRET not in (error.url or "")
    assert "http://***@" in str(failed.value)
    every_file = b"".join(p.read_bytes() for p in client.cache_dir.rglob("*") if p.is_file())
    assert SECRET.encode() not in every_file


def test_a_new_password_keeps_the_cache(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    fake_host.set(PATH + ".CHECKSUM", Reply(200, f"{ZIP_SHA}  BTCUSDT-fundingRate-2024-01.zip\n".encode()))
    fake_host.set(PATH, Reply(200, ZIP))
    first = VisionClient(with_credentials(fake_host.base_url), tmp_path / "cache", http)
    second = VisionClient(with_credentials(fake_host.base_url, "rotated"), tmp_path / "cache", http)
    assert first.fetch(first.base_url + PATH).from_cache is False
    again = second.fetch(second.base_url + PATH)
    assert again.from_cache is True and fake_host.count(PATH) == 1  # only the CHECKSUM was asked again
    # The key is the redacted URL: a URL without credentials keeps the key it always had.
    plain = fake_host.url(PATH)
    key = hashlib.sha256(plain.replace("http://", "http://***@").encode()).hexdigest()
    assert again.path.parent == tmp_path / "cache" / key[:2] / key
    assert VisionClient(fake_host.base_url, tmp_path / "c2", http).entry_dir(plain).name == (
        hashlib.sha256(plain.encode()).hexdigest()
    )


def test_rest_client_shows_and_stores_no_credentials(fake_host: FakeHost, http: HttpClient, tmp_path: Path) -> None:
    state = tmp_path / "state.sqlite"
    clock = FakeClock()
    fake_host.set(limits.PREMIUM_INDEX_PATH, Reply(200, b"<html>proxy says hi</html>"))
    fake_host.set(limits.OPEN_INTEREST_PATH, Reply(418, b"", {"Retry-After": "120"}))
    client = RestClient(
        with_credentials(fake_host.base_url),
        state_url=f"sqlite:///{state}",
        weight_budget=1800,
        http=http,
        clock=clock,
        sleep=clock.sleep,
    )
    assert client.base_url == fake_host.base_url.replace("http://", "http://***@")
    assert client.host == fake_host.base_url.removeprefix("http://")  # the budget's key: host:port only
    assert SECRET not in repr(client)
    with pytest.raises(RestError) as malformed:
        client.premium_index("BTCUSDT")
    with pytest.raises(RestBanned) as banned:  # the ban and its reason are stored in the state database
        client.open_interest("BTCUSDT")
    for error in (malformed.value, banned.value):
        assert SECRET not in str(error), error
    assert "http://***@" in str(malformed.value)
    assert all(h["Authorization"] == BASIC for h in fake_host.headers_seen)
    client.close()
    assert SECRET.encode() not in state.read_bytes()


def test_settings_repr_and_errors_hide_credentials() -> None:
    settings = Settings.from_env(
        {
            "BML_VISION_BASE_URL": f"http://user:{SECRET}@mirror:8080/",
            "BML_REST_BASE_URL": f"https://user:{SECRET}@rest.mirror",
            "BML_STATE_URL": f"postgresql://bml:{SECRET}@db/state",
        },
        dotenv_path=None,
    )
    assert settings.vision_base_url == f"http://user:{SECRET}@mirror:8080"  # requests still get them
    for text in (repr(settings), str(settings), f"{settings}"):
        assert SECRET not in text
        assert "vision_base_url='http://***@mirror:8080'" in text
        assert "rest_base_url='https://***@rest.mirror'" in text
        assert "state_url='postgresql://***@db/state'" in text
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"BML_REST_BASE_URL": f"ftp://user:{SECRET}@host"}, dotenv_path=None)
    assert SECRET not in str(info.value) and "ftp://***@host" in str(info.value)
