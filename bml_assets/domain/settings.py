"""Typed configuration from the environment (SPEC §3): the one settings object.

What belongs here: the ``BML_*`` variables, their defaults (declared once, as the
field defaults of ``Settings``), their parsing and validation (symbols are part of
paths, so they are checked here), and nothing else. Reading happens only when
``Settings.from_env()`` is called, never at import time, and nothing else in the
package reads the environment for ``BML_*``: the Dagster code location calls it once
when Dagster loads the definitions (``definitions.defs``) and builds its resources
from the result (``defs/resources.py``); the CLI and the demo call it once for their
own process.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from bml_assets.domain.redaction import redact_url

SYMBOL_PATTERN = re.compile(r"^[A-Z0-9]{2,20}$")
# The most CSV bytes one Vision zip may unpack to before reading stops. The biggest
# real daily files, aggTrades of the busiest symbols on the busiest days, are a few
# hundred MB of CSV (the whole day is parsed into Arrow, so that is also roughly the
# memory a sorted fallback needs); 1.5 GiB leaves them a 3-5x margin and still
# refuses a zip bomb (a 16 MB zip unpacking to 2 GB) long before it fills memory or
# disk. A genuine file over it is reported with this variable's name.
DEFAULT_VISION_MAX_CSV_BYTES = 1536 << 20
# The Vision cache's size bound (BML_VISION_CACHE_MAX_BYTES). A verified zip is only needed
# again to rebuild its partition, and a committed one is rebuilt rarely; every zip kept
# costs ~15x its partition's parquet (bench/results.md). 2 GiB holds a few hundred
# partition-days of busy symbols, enough for the backfill in flight and the repairs after.
DEFAULT_VISION_CACHE_MAX_BYTES = 2 << 30
# A combined-stream connection carries at most 1024 streams; the market one has three per
# symbol (aggTrade, markPrice@1s, forceOrder), so 341 symbols at most per shard.
LIVE_MAX_SHARD_SIZE = 1024 // 3
# The exchange closes a connection at 24 h; the rotation must open the next one before that,
# and a rotation every few seconds would only churn.
LIVE_MIN_ROTATE_SECONDS = 10
LIVE_MAX_ROTATE_SECONDS = 24 * 3600 - 60
# Fields that may hold credentials (``http://user:password@mirror``): shown redacted.
URL_FIELDS = frozenset(
    {
        "state_url",
        "vision_base_url",
        "rest_base_url",
        "ws_base_url",
        "s3_endpoint_url",
        "celery_broker_url",
        "celery_backend_url",
    }
)
# The lake roots that are not local folders (``storage/store.py`` implements each).
LAKE_URL_SCHEMES = ("s3",)
DEFAULT_WORK_DIR = "bml-work"


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


def _date(raw: str, name: str) -> dt.date:
    try:
        return dt.date.fromisoformat(raw.strip())
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a date like 2020-01-01") from None


def _whole(minimum: int, maximum: int | None = None) -> Callable[[str, str], int]:
    def parse(raw: str, name: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r} is not a whole number") from None
        if value < minimum:
            raise SettingsError(f"{name}={value} must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise SettingsError(f"{name}={value} must be at most {maximum}")
        return value

    return parse


def _url(*schemes: str) -> Callable[[str, str], str]:
    def parse(raw: str, name: str) -> str:
        value = raw.strip().rstrip("/")
        if not value.startswith(tuple(f"{s}://" for s in schemes)):
            raise SettingsError(
                f"{name}={redact_url(value)!r} must start with one of {', '.join(s + '://' for s in schemes)}"
            )
        return value

    return parse


def is_url(root: str) -> bool:
    """Whether a lake root names an object store (``s3://...``) rather than a local folder."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]+://", root) is not None and not root.startswith("file://")


def _lake_root(raw: str, name: str) -> Path | str:
    value = raw.strip()
    if not is_url(value):
        return Path(value.removeprefix("file://")) if value.startswith("file://") else Path(value)
    scheme = value.split("://", 1)[0].lower()
    if scheme not in LAKE_URL_SCHEMES:
        raise SettingsError(f"{name}={value!r}: unknown scheme {scheme!r}; use a local folder or s3://bucket/prefix")
    if not value.split("://", 1)[1].split("/", 1)[0]:
        raise SettingsError(f"{name}={value!r} names no bucket: use s3://bucket/prefix")
    return value.rstrip("/")


def variable(field_name: str) -> str:
    """The environment variable of a ``Settings`` field: ``lake_root`` → ``BML_LAKE_ROOT``."""
    return f"BML_{field_name.upper()}"


@dataclass(frozen=True)
class Settings:
    """The ``BML_*`` configuration; each field's default is the SPEC §3 default of its
    variable (``variable(name)``)."""

    symbols: tuple[str, ...] = ("BTCUSDT",)
    start_date: dt.date = dt.date(2020, 1, 1)
    # A local folder (a ``Path``), or an object store's URL kept as text (``s3://bucket/prefix``).
    lake_root: Path | str = Path("lake")
    # The ledger's SQLAlchemy URL; empty: ``{lake_root}/_state/ledger.sqlite`` (a local lake only).
    state_url: str = ""
    # The S3 endpoint of an ``s3://`` lake (moto, MinIO, ...); empty: AWS's own. Credentials come
    # from the standard AWS variables, read by boto3 and pyarrow themselves.
    s3_endpoint_url: str = ""
    # This host's own files: the Vision cache, the bml commands' Dagster home, reports, the live
    # spool. Empty: the lake root when it is a local folder, else ``./bml-work``.
    work_dir: Path | None = None
    # Whose REST weight a request spends: Binance counts it per IP, so every process behind one
    # egress IP must share one key (and one state database). Empty: one budget for all of them.
    rest_egress: str = ""
    # Set: the minute view's backfill steps run on Celery workers through this broker (SPEC §10,
    # deploy/); empty: in the run's own process. The result backend defaults to the broker.
    celery_broker_url: str = ""
    celery_backend_url: str = ""
    vision_base_url: str = "https://data.binance.vision"
    rest_base_url: str = "https://fapi.binance.com"
    # The live collector's WebSocket host (SPEC §9): /public/stream and /market/stream below it.
    ws_base_url: str = "wss://fstream.binance.com"
    safety_lag_minutes: int = 1
    max_ffill_minutes: int = 60
    rest_weight_budget: int = 1800
    vision_max_csv_bytes: int = DEFAULT_VISION_MAX_CSV_BYTES
    # Bytes of verified Vision zips kept; beyond it, zips of committed partitions go, least recently used first.
    vision_cache_max_bytes: int = DEFAULT_VISION_CACHE_MAX_BYTES
    # Symbols per pair of live connections (``bml live-collect``): see LIVE_MAX_SHARD_SIZE.
    live_shard_size: int = 50
    # A live connection is replaced after this long: the exchange cuts it at 24 h.
    live_rotate_seconds: int = 23 * 3600 + 50 * 60
    # The variables read from the .env file and not from the environment: another process
    # (Dagster resolving a config's ``env:``, a Celery worker) does not see them.
    dotenv_only: frozenset[str] = field(default=frozenset(), compare=False)

    def __repr__(self) -> str:
        # A URL's password must not reach a log or a traceback through a repr.
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            shown.append(f"{f.name}={(redact_url(value) if f.name in URL_FIELDS else value)!r}")
        return f"Settings({', '.join(shown)})"

    def __post_init__(self) -> None:
        if isinstance(self.lake_root, str) and not is_url(self.lake_root):
            object.__setattr__(self, "lake_root", Path(self.lake_root.removeprefix("file://")))
        if not self.state_url:
            if not isinstance(self.lake_root, Path):
                raise SettingsError(
                    f"BML_LAKE_ROOT={self.lake_root!r} is an object store: set BML_STATE_URL to a PostgreSQL "
                    "database (postgresql+psycopg2://user:password@host/db); its advisory locks serialise the "
                    "writers of a partition across hosts, which a SQLite file inside the lake cannot"
                )
            object.__setattr__(
                self, "state_url", f"sqlite:///{(self.lake_root / '_state' / 'ledger.sqlite').as_posix()}"
            )

    @property
    def celery(self) -> dict[str, str] | None:
        """The Celery executor's broker and backend when steps run on Celery workers, else None."""
        if not self.celery_broker_url:
            return None
        return {"broker": self.celery_broker_url, "backend": self.celery_backend_url or self.celery_broker_url}

    @property
    def host_dir(self) -> Path:
        """``work_dir``, or its default (see the field): derived on each call, so that
        ``with_(lake_root=...)`` moves this host's files with the lake."""
        if self.work_dir is not None:
            return self.work_dir
        return self.lake_root if isinstance(self.lake_root, Path) else Path(DEFAULT_WORK_DIR)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv_path: str | Path | None = ".env") -> Settings:
        """Read ``BML_*`` from ``environ`` (default ``os.environ``), then a ``.env`` file
        for what the environment does not set; a variable set nowhere keeps its field's default."""
        env: dict[str, str] = {}
        if dotenv_path is not None and Path(dotenv_path).is_file():
            env.update({k: v for k, v in dotenv_values(dotenv_path).items() if k.startswith("BML_") and v is not None})
        source = os.environ if environ is None else environ
        from_dotenv = frozenset(env) - frozenset(source)
        env.update({k: v for k, v in source.items() if k.startswith("BML_")})
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in _PARSERS:  # not a variable (dotenv_only)
                continue
            raw = env.get(variable(f.name))
            if raw is None or (f.name in _EMPTY_IS_UNSET and not raw.strip()):
                continue
            values[f.name] = _PARSERS[f.name](raw, variable(f.name))
        return cls(**values, dotenv_only=from_dotenv)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @property
    def cache_dir(self) -> Path:
        """Verified Vision zips, keyed by URL and sha256 (see sources/vision.py)."""
        return self.host_dir / "_cache" / "vision"


# How each variable's text becomes its field's value (and what it may be).
_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "symbols": lambda raw, name: parse_symbols(raw, variable=name),
    "start_date": _date,
    "lake_root": lambda raw, name: _lake_root(raw, name),
    "state_url": lambda raw, name: raw.strip(),
    "s3_endpoint_url": _url("http", "https"),
    "work_dir": lambda raw, name: Path(raw.strip()),
    "rest_egress": lambda raw, name: raw.strip(),
    "celery_broker_url": _url("redis", "rediss", "amqp", "pyamqp"),
    "celery_backend_url": _url("redis", "rediss", "db+postgresql", "db+postgresql+psycopg2"),
    "vision_base_url": _url("http", "https"),
    "rest_base_url": _url("http", "https"),
    "ws_base_url": _url("ws", "wss"),
    "safety_lag_minutes": _whole(0),
    "max_ffill_minutes": _whole(0),
    "rest_weight_budget": _whole(1),
    "vision_max_csv_bytes": _whole(1),
    "vision_cache_max_bytes": _whole(0),
    "live_shard_size": _whole(1, LIVE_MAX_SHARD_SIZE),
    "live_rotate_seconds": _whole(LIVE_MIN_ROTATE_SECONDS, LIVE_MAX_ROTATE_SECONDS),
}
# Set but empty, these keep their default (the lake in ./lake, the ledger inside it).
_EMPTY_IS_UNSET = frozenset(
    {"lake_root", "state_url", "s3_endpoint_url", "work_dir", "celery_broker_url", "celery_backend_url"}
)
