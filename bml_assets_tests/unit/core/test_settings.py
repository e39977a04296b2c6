"""Settings from the environment: defaults, parsing, and errors that name the variable."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from bml_assets.domain.settings import Settings, SettingsError, parse_symbols, validate_symbol


def test_defaults_follow_the_spec(tmp_path: Path) -> None:
    s = Settings.from_env({}, dotenv_path=tmp_path / "absent.env")
    assert s.symbols == ("BTCUSDT",)
    assert s.start_date == dt.date(2020, 1, 1)
    assert s.lake_root == Path("lake")
    assert s.state_url == "sqlite:///lake/_state/ledger.sqlite"
    assert s.vision_base_url == "https://data.binance.vision"
    assert (s.safety_lag_minutes, s.max_ffill_minutes, s.rest_weight_budget) == (1, 60, 1800)
    assert s.ws_base_url == "wss://fstream.binance.com"
    assert (s.live_shard_size, s.live_rotate_seconds) == (50, 85_800)  # 23 h 50 min


def test_environment_wins_over_dotenv(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("BML_SYMBOLS=ETHUSDT\nBML_MAX_FFILL_MINUTES=5\n")
    s = Settings.from_env({"BML_SYMBOLS": "BTCUSDT, SOLUSDT", "BML_LAKE_ROOT": "/data/lake"}, dotenv_path=dotenv)
    assert s.symbols == ("BTCUSDT", "SOLUSDT")
    assert s.max_ffill_minutes == 5
    assert s.state_url == "sqlite:////data/lake/_state/ledger.sqlite"


@pytest.mark.parametrize("bad", ["../x", "btc usdt", "btcusdt", "B", "BTC/USDT", ""])
def test_symbols_that_could_escape_a_path_are_refused(bad: str) -> None:
    with pytest.raises(SettingsError, match="invalid symbol"):
        validate_symbol(bad)


def test_bad_values_name_their_variable(tmp_path: Path) -> None:
    absent = tmp_path / "absent.env"
    with pytest.raises(SettingsError, match="BML_SYMBOLS"):
        Settings.from_env({"BML_SYMBOLS": "BTCUSDT,../x"}, dotenv_path=absent)
    with pytest.raises(SettingsError, match="BML_START_DATE"):
        Settings.from_env({"BML_START_DATE": "yesterday"}, dotenv_path=absent)
    with pytest.raises(SettingsError, match="BML_MAX_FFILL_MINUTES"):
        Settings.from_env({"BML_MAX_FFILL_MINUTES": "-1"}, dotenv_path=absent)
    with pytest.raises(SettingsError, match="BML_VISION_BASE_URL"):
        Settings.from_env({"BML_VISION_BASE_URL": "ftp://x"}, dotenv_path=absent)
    with pytest.raises(SettingsError, match="twice"):
        parse_symbols("BTCUSDT,BTCUSDT")


def test_every_variable_is_read_and_an_unset_one_keeps_its_field_default(tmp_path: Path) -> None:
    env = {
        "BML_SYMBOLS": "ETHUSDT",
        "BML_START_DATE": "2023-05-06",
        "BML_LAKE_ROOT": "/data/lake",
        "BML_STATE_URL": "sqlite:////data/state.sqlite",
        "BML_VISION_BASE_URL": "http://127.0.0.1:8765/",
        "BML_REST_BASE_URL": "http://127.0.0.1:8766",
        "BML_WS_BASE_URL": "ws://127.0.0.1:8767",
        "BML_SAFETY_LAG_MINUTES": "2",
        "BML_MAX_FFILL_MINUTES": "30",
        "BML_REST_WEIGHT_BUDGET": "900",
        "BML_VISION_MAX_CSV_BYTES": "4096",
        "BML_LIVE_SHARD_SIZE": "20",
        "BML_LIVE_ROTATE_SECONDS": "3600",
    }
    s = Settings.from_env(env, dotenv_path=tmp_path / "absent.env")
    assert s == Settings(
        symbols=("ETHUSDT",),
        start_date=dt.date(2023, 5, 6),
        lake_root=Path("/data/lake"),
        state_url="sqlite:////data/state.sqlite",
        vision_base_url="http://127.0.0.1:8765",
        rest_base_url="http://127.0.0.1:8766",
        ws_base_url="ws://127.0.0.1:8767",
        safety_lag_minutes=2,
        max_ffill_minutes=30,
        rest_weight_budget=900,
        vision_max_csv_bytes=4096,
        live_shard_size=20,
        live_rotate_seconds=3600,
    )
    # Unset, or set empty where empty means "the default" (the lake, the ledger inside it).
    default = Settings.from_env({"BML_LAKE_ROOT": "", "BML_STATE_URL": " "}, dotenv_path=tmp_path / "absent.env")
    assert default == Settings()
    with pytest.raises(SettingsError, match="BML_WS_BASE_URL"):
        Settings.from_env({"BML_WS_BASE_URL": "http://x"}, dotenv_path=tmp_path / "absent.env")


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("BML_LIVE_SHARD_SIZE", "0", "must be at least 1"),
        ("BML_LIVE_SHARD_SIZE", "342", "must be at most 341"),  # 3 market streams a symbol, 1024 a connection
        ("BML_LIVE_ROTATE_SECONDS", "86400", "must be at most 86340"),  # the exchange cuts at 24 h
        ("BML_LIVE_ROTATE_SECONDS", "5", "must be at least 10"),
    ],
)
def test_live_settings_out_of_range_name_their_variable(
    tmp_path: Path, variable: str, value: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=f"{variable}={value} {message}"):
        Settings.from_env({variable: value}, dotenv_path=tmp_path / "absent.env")


# --------------------------------------------------------------------------- an object-store lake (SPEC §10)


def test_an_s3_lake_root_stays_a_url_and_needs_a_postgresql_state_url() -> None:
    with pytest.raises(SettingsError, match="set BML_STATE_URL to a PostgreSQL"):
        Settings.from_env({"BML_LAKE_ROOT": "s3://bucket/lake/"}, dotenv_path=None)
    s = Settings.from_env(
        {
            "BML_LAKE_ROOT": "s3://bucket/lake/",
            "BML_STATE_URL": "postgresql+psycopg2://bml@127.0.0.1:5432/bml",
            "BML_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
        },
        dotenv_path=None,
    )
    assert s.lake_root == "s3://bucket/lake"
    assert s.s3_endpoint_url == "http://127.0.0.1:9000"
    # This host's files cannot live in a bucket: they default to ./bml-work.
    assert s.host_dir == Path("bml-work")
    assert s.cache_dir == Path("bml-work/_cache/vision")


def test_a_local_lake_keeps_its_files_in_it_and_file_urls_are_folders() -> None:
    s = Settings.from_env({"BML_LAKE_ROOT": "file:///data/lake"}, dotenv_path=None)
    assert s.lake_root == Path("/data/lake")
    assert s.host_dir == Path("/data/lake")
    assert s.state_url == "sqlite:////data/lake/_state/ledger.sqlite"
    w = Settings.from_env({"BML_LAKE_ROOT": "/data/lake", "BML_WORK_DIR": "/scratch/bml"}, dotenv_path=None)
    assert w.cache_dir == Path("/scratch/bml/_cache/vision")
    # A derived lake (bml demo --lake-root) takes this host's files with it, unless they were set.
    moved = s.with_(lake_root=Path("/elsewhere"), state_url="")
    assert moved.cache_dir == Path("/elsewhere/_cache/vision")
    assert moved.state_url == "sqlite:////elsewhere/_state/ledger.sqlite"
    assert w.with_(lake_root=Path("/elsewhere")).cache_dir == Path("/scratch/bml/_cache/vision")
    assert Settings(lake_root="file:///data/lake").lake_root == Path("/data/lake")


@pytest.mark.parametrize(
    ("root", "message"),
    [("gs://bucket/lake", "unknown scheme 'gs'"), ("s3:///lake", "names no bucket")],
)
def test_a_lake_root_url_must_be_a_store_we_implement(root: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"BML_LAKE_ROOT": root}, dotenv_path=None)
