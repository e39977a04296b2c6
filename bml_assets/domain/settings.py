"""Typed configuration from the environment (SPEC §3): the one settings object.

What belongs here: the ``BML_*`` variables, their defaults, their parsing and
validation (symbols are part of paths, so they are checked here), and nothing
else. Reading happens only when ``Settings.from_env()`` is called, never at
import time; Dagster code reaches settings through the ``BmlSettings`` resource
(``resources.py``), the CLI and the demo through ``from_env()``.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path

from dotenv import dotenv_values

from bml_assets.sources.http import redact_url

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")
# The most CSV bytes one Vision zip may unpack to before reading stops. The biggest
# real daily files, aggTrades of the busiest symbols on the busiest days, are a few
# hundred MB of CSV (the whole day is parsed into Arrow, so that is also roughly the
# memory a sorted fallback needs); 1.5 GiB leaves them a 3-5x margin and still
# refuses a zip bomb (a 16 MB zip unpacking to 2 GB) long before it fills memory or
# disk. A genuine file over it is reported with this variable's name.
DEFAULT_VISION_MAX_CSV_BYTES = 1536 << 20

DEFAULTS: dict[str, str] = {
    "BML_SYMBOLS": "BTCUSDT",
    "BML_START_DATE": "2020-01-01",
    "BML_LAKE_ROOT": "./lake",
    "BML_STATE_URL": "",  # derived from the lake root when empty
    "BML_VISION_BASE_URL": "https://data.binance.vision",
    "BML_REST_BASE_URL": "https://fapi.binance.com",
    "BML_WS_BASE_URL": "wss://fstream.binance.com",
    "BML_SAFETY_LAG_MINUTES": "1",
    "BML_MAX_FFILL_MINUTES": "60",
    "BML_REST_WEIGHT_BUDGET": "1800",
    "BML_VISION_MAX_CSV_BYTES": str(DEFAULT_VISION_MAX_CSV_BYTES),
}
# Fields that may hold credentials (``http://user:password@mirror``): shown redacted.
_URL_FIELDS = frozenset({"state_url", "vision_base_url", "rest_base_url", "ws_base_url"})


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def validate_symbol(symbol: str, *, what: str = "symbol") -> str:
    """Return ``symbol`` if it is safe to use as a path part, else raise."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise SettingsError(f"invalid {what} {symbol!r}: expected 2-20 characters of A-Z and 0-9 (e.g. BTCUSDT)")
    return symbol


def parse_symbols(text: str, *, variable: str = "BML_SYMBOLS") -> tuple[str, ...]:
    symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    if not symbols:
        raise SettingsError(f"{variable} is empty: give at least one symbol, e.g. BTCUSDT")
    for s in symbols:
        validate_symbol(s, what=f"symbol in {variable}")
    if len(set(symbols)) != len(symbols):
        raise SettingsError(f"{variable} lists a symbol twice: {text!r}")
    return symbols


def _int(env: Mapping[str, str], name: str, minimum: int) -> int:
    raw = env[name]
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise SettingsError(f"{name}={value} must be at least {minimum}")
    return value


def _url(env: Mapping[str, str], name: str, schemes: tuple[str, ...]) -> str:
    raw = env[name].strip().rstrip("/")
    if not raw.startswith(tuple(f"{s}://" for s in schemes)):
        shown = redact_url(raw)
        raise SettingsError(f"{name}={shown!r} must start with one of {', '.join(s + '://' for s in schemes)}")
    return raw


@dataclass(frozen=True)
class Settings:
    symbols: tuple[str, ...] = ("BTCUSDT",)
    start_date: dt.date = dt.date(2020, 1, 1)
    lake_root: Path = Path("lake")
    state_url: str = ""
    vision_base_url: str = DEFAULTS["BML_VISION_BASE_URL"]
    rest_base_url: str = DEFAULTS["BML_REST_BASE_URL"]
    ws_base_url: str = DEFAULTS["BML_WS_BASE_URL"]
    safety_lag_minutes: int = 1
    max_ffill_minutes: int = 60
    rest_weight_budget: int = 1800
    vision_max_csv_bytes: int = DEFAULT_VISION_MAX_CSV_BYTES

    def __repr__(self) -> str:
        # A URL's password must not reach a log or a traceback through a repr.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={(redact_url(value) if f.name in _URL_FIELDS else value)!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        if not self.state_url:
            object.__setattr__(
                self, "state_url", f"sqlite:///{(self.lake_root / '_state' / 'ledger.sqlite').as_posix()}"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Settings:
        """Read ``BML_*`` from ``environ`` (default ``os.environ``), then a ``.env`` file
        for what the environment does not set, then the SPEC defaults."""
        env: dict[str, str] = dict(DEFAULTS)
        if dotenv_path is not None and Path(dotenv_path).is_file():
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if k.startswith("BML_") and v is not None})
        source = os.environ if environ is None else environ
        env.update({k: v for k, v in source.items() if k.startswith("BML_")})
        try:
            start = dt.date.fromisoformat(env["BML_START_DATE"].strip())
        except ValueError:
            raise SettingsError(f"BML_START_DATE={env['BML_START_DATE']!r} is not a date like 2020-01-01") from None
        lake_root = Path(env["BML_LAKE_ROOT"].strip() or "./lake")
        return cls(
            symbols=parse_symbols(env["BML_SYMBOLS"]),
            start_date=start,
            lake_root=lake_root,
            state_url=env["BML_STATE_URL"].strip(),
            vision_base_url=_url(env, "BML_VISION_BASE_URL", ("http", "https")),
            rest_base_url=_url(env, "BML_REST_BASE_URL", ("http", "https")),
            ws_base_url=_url(env, "BML_WS_BASE_URL", ("ws", "wss")),
            safety_lag_minutes=_int(env, "BML_SAFETY_LAG_MINUTES", 0),
            max_ffill_minutes=_int(env, "BML_MAX_FFILL_MINUTES", 0),
            rest_weight_budget=_int(env, "BML_REST_WEIGHT_BUDGET", 1),
            vision_max_csv_bytes=_int(env, "BML_VISION_MAX_CSV_BYTES", 1),
        )

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def cache_dir(self) -> Path:
        """Verified Vision zips, keyed by URL and sha256 (see sources/vision.py)."""
        return self.lake_root / "_cache" / "vision"
