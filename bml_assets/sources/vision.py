"""Binance Vision (data.binance.vision): file URLs, verified downloads, the zip cache.

What belongs here: the exchange's facts about Vision files (streams, path layout,
which streams are daily or monthly, publication quirks), building a file's URL,
fetching its ``.CHECKSUM``, downloading and verifying the zip against it, and the
local content-addressed cache of verified zips (SPEC §4): its entries with their
size and last use (``cached_zips``) and the removal of one (``evict_cached``). Which
entries may go is decided above, from the ledger (``lake/cache_policy.py``).

What stays out: HTTP mechanics (retries, backoff, error texts live in
``http.py``), reading the CSV inside a zip (``vision_csv.py``), and any decision
about which days to fetch or what a missing day means for a partition (the
assets and the ledger decide that; here a missing file is just ``NotPublished``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from bml_assets.domain.redaction import redact_url
from bml_assets.domain.settings import validate_symbol
from bml_assets.domain.streams import DAILY_STREAMS, KLINE_STREAMS, MONTHLY_STREAMS, Stream
from bml_assets.sources.http import DownloadResult, HttpClient, HttpError
from bml_assets.storage.store import ObjectStat, file_sha256, fsync_dir, local_stat

# USD-M futures live under this path of the Vision host.
USDM_PATH = "data/futures/um"
# The kline family sits in an interval folder and the interval (not the dataset
# name) is in the file name: klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip.
KLINE_INTERVAL = "1m"
# A missing file is 404 on data.binance.vision; S3-style mirrors answer 403.
NOT_PUBLISHED_STATUSES: tuple[int, ...] = (404, 403)
CHECKSUM_SUFFIX = ".CHECKSUM"
# "<64 hex sha256><two spaces><file name>", as written by sha256sum.
_CHECKSUM_LINE = re.compile(r"([0-9a-fA-F]{64})  (\S+)")
_CHECKSUM_MAX_BYTES = 1024  # a real one is ~100 bytes; anything big is an error page


class NotPublished(Exception):
    """The file is not on the host (yet): HTTP 404 or 403. Not an error: Vision
    publishes a day one to several days late. ``url`` is redacted (``redact_url``)."""

    def __init__(self, url: str, status: int) -> None:
        url = redact_url(url)
        super().__init__(f"not published (yet): {url} (HTTP {status})")
        self.url = url
        self.status = status


class VisionError(Exception):
    """Any other failure to obtain or read a verified file; the message names the URL
    (redacted: ``redact_url``)."""

    def __init__(self, message: str, *, url: str | None = None) -> None:
        # Redacted here too, whoever builds the message (the parser names files by URL).
        super().__init__(redact_url(message))
        self.url = url if url is None else redact_url(url)


@dataclass(frozen=True)
class VisionFile:
    """A verified zip in the cache. ``fetched_at`` is when its bytes were downloaded
    (for a cache hit: the original download, from the cache's sidecar). ``url`` has
    its credentials redacted: it is what provenance, the ledger and messages show."""

    url: str
    path: Path
    sha256: str
    bytes: int
    from_cache: bool
    fetched_at: datetime


# --- URLs -------------------------------------------------------------------


def _stream_path(base_url: str, period: str, stream: Stream, symbol: str, label: str) -> str:
    stream = Stream(stream)
    validate_symbol(symbol)
    base = base_url.rstrip("/")
    if stream in KLINE_STREAMS:
        folder = f"{stream}/{symbol}/{KLINE_INTERVAL}"
        name = f"{symbol}-{KLINE_INTERVAL}-{label}.zip"
    else:
        folder = f"{stream}/{symbol}"
        name = f"{symbol}-{stream}-{label}.zip"
    return f"{base}/{USDM_PATH}/{period}/{folder}/{name}"


def daily_url(base_url: str, stream: Stream, symbol: str, day: date) -> str:
    """URL of a daily zip, e.g. ``{base}/data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-2024-01-01.zip``."""
    if Stream(stream) not in DAILY_STREAMS:
        raise ValueError(f"{stream} is not published as daily files; use monthly_url")
    return _stream_path(base_url, "daily", stream, symbol, f"{day:%Y-%m-%d}")


def monthly_url(base_url: str, stream: Stream, symbol: str, year: int, month: int) -> str:
    """URL of a monthly zip, e.g. ``{base}/data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-01.zip``."""
    if Stream(stream) not in MONTHLY_STREAMS:
        raise ValueError(f"{stream} is not published as monthly files; use daily_url")
    if not (1 <= month <= 12) or not (2000 <= year <= 9999):
        raise ValueError(f"invalid month {year}-{month}")
    return _stream_path(base_url, "monthly", stream, symbol, f"{year:04d}-{month:02d}")


def _file_name(url: str) -> str:
    name = urlsplit(url).path.rsplit("/", 1)[-1]
    if not name.endswith(".zip"):
        shown = redact_url(url)
        raise VisionError(f"not a Vision zip URL: {shown}", url=shown)
    return name


def parse_checksum(text: str | bytes, *, url: str) -> str:
    """The lower-case sha256 from a ``.CHECKSUM`` body for the zip at ``url``.

    Accepts the line with or without a final newline; rejects anything else,
    including a CHECKSUM that names a different file.
    """
    url = redact_url(url)  # only named in messages from here on
    checksum_url = url + CHECKSUM_SUFFIX
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise VisionError(f"malformed CHECKSUM at {checksum_url}: not ASCII text", url=url) from None
    line = text[:-1] if text.endswith("\n") else text
    line = line.removesuffix("\r")
    match = _CHECKSUM_LINE.fullmatch(line)
    if match is None:
        shown = text[:120].replace("\n", "\\n")
        raise VisionError(
            f"malformed CHECKSUM at {checksum_url}: expected '<64 hex>  <file name>', got {shown!r}",
            url=url,
        )
    digest, name = match.groups()
    expected_name = _file_name(url)
    if name != expected_name:
        raise VisionError(f"CHECKSUM at {checksum_url} is for {name!r}, not {expected_name!r}", url=url)
    return digest.lower()


# --- client -----------------------------------------------------------------


class VisionClient:
    """Fetches Vision zips, verified against their CHECKSUM, through a local cache.

    Cache layout: ``cache_dir/<sha256(url)[:2]>/<sha256(url)>/<sha256 of zip>.zip``
    with a ``<sha256 of zip>.json`` sidecar (url, sha256, bytes, fetched_at). A
    re-upload with a new checksum gets a new entry beside the old one.

    A base URL may carry credentials (``http://user:password@mirror``): requests
    send them; everything shown or stored (messages, ``VisionFile.url``, sidecars)
    has them redacted, and the cache key is the redacted URL, so rotating a password
    keeps the cache (a hit is still checked against the CHECKSUM the host serves).
    """

    def __init__(
        self,
        base_url: str,
        cache_dir: Path,
        http: HttpClient | None = None,
        *,
        verify_cache_hits: bool = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.cache_dir = Path(cache_dir)
        self.http = http if http is not None else HttpClient()
        # Re-hashing a hit costs ~0.1 s per 100 MB and catches a damaged cache.
        self.verify_cache_hits = verify_cache_hits

    # -- public ---------------------------------------------------------------

    def daily_url(self, stream: Stream, symbol: str, day: date) -> str:
        return daily_url(self.base_url, stream, symbol, day)

    def monthly_url(self, stream: Stream, symbol: str, year: int, month: int) -> str:
        return monthly_url(self.base_url, stream, symbol, year, month)

    def fetch_daily(self, stream: Stream, symbol: str, day: date) -> VisionFile:
        return self.fetch(self.daily_url(stream, symbol, day))

    def fetch_monthly(self, stream: Stream, symbol: str, year: int, month: int) -> VisionFile:
        return self.fetch(self.monthly_url(stream, symbol, year, month))

    def published_size(self, url: str) -> int | None:
        """The zip's size as the host says it (a HEAD, no download); None when it has no such file."""
        return self.http.head_size(url)

    def is_cached(self, url: str) -> bool:
        """The cache holds a verified zip of ``url`` (any checksum: a re-upload is rare)."""
        entry = self.entry_dir(url)
        try:
            return any(name.endswith(".zip") and not name.startswith(".") for name in os.listdir(entry))
        except (FileNotFoundError, NotADirectoryError):
            return False

    def refetch_daily(self, stream: Stream, symbol: str, day: date) -> VisionFile:
        """``fetch_daily`` downloading the zip again even when the cache holds it: the
        cached copy for the CHECKSUM published now is dropped first (a file that looks
        short is checked once more against what the host serves)."""
        url = self.daily_url(stream, symbol, day)
        entry, sha256 = self.entry_dir(url), self.checksum(url)
        (entry / f"{sha256}.zip").unlink(missing_ok=True)
        (entry / f"{sha256}.json").unlink(missing_ok=True)
        return self.fetch(url)

    def fetch(self, url: str) -> VisionFile:
        """The verified zip at ``url``, from the cache when it holds the checksummed bytes.

        Raises ``NotPublished`` (404/403 on the CHECKSUM or the zip) or ``VisionError``.
        """
        name = _file_name(url)
        shown = redact_url(url)
        expected = self.checksum(url)
        cached = self._cache_hit(url, expected)
        if cached is not None:
            return cached

        entry = self.entry_dir(url)
        entry.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            tmp = self._temp_path(entry, expected)
            try:
                result = self._download(url, tmp)
                if result.sha256 == expected:
                    break
                tmp.unlink(missing_ok=True)
                if attempt == 2:
                    raise VisionError(
                        f"checksum mismatch for {shown}: expected {expected} got {result.sha256}, twice",
                        url=shown,
                    )
                # Read the CHECKSUM again: a re-upload between our two requests
                # changes both files, and the new pair must then match.
                expected = self.checksum(url)
                cached = self._cache_hit(url, expected)
                if cached is not None:
                    return cached
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise

        try:
            self._check_zip(shown, tmp, name)
            final = entry / f"{expected}.zip"
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fetched_at = datetime.now(UTC)
        self._write_sidecar(entry, shown, expected, result.bytes, fetched_at)
        # Makes the renames durable; a lost entry is only downloaded again, so a platform
        # that cannot fsync a folder is no error here.
        with contextlib.suppress(OSError):
            fsync_dir(entry)
        return VisionFile(shown, final, expected, result.bytes, False, fetched_at)

    def checksum(self, url: str) -> str:
        """The sha256 the host publishes for ``url`` (its ``.CHECKSUM`` file)."""
        shown = redact_url(url)
        try:
            response = self.http.get(url + CHECKSUM_SUFFIX, passthrough=NOT_PUBLISHED_STATUSES)
        except HttpError as exc:
            raise VisionError(f"cannot read CHECKSUM of {shown}: {exc}", url=shown) from exc
        checksum_url = shown + CHECKSUM_SUFFIX
        if response.status_code in NOT_PUBLISHED_STATUSES:
            raise NotPublished(shown, response.status_code)
        if response.status_code != 200:
            raise VisionError(f"unexpected HTTP {response.status_code} for {checksum_url}", url=shown)
        body = response.content
        if len(body) > _CHECKSUM_MAX_BYTES:
            raise VisionError(
                f"malformed CHECKSUM at {checksum_url}: {len(body)} bytes is not a checksum line", url=shown
            )
        return parse_checksum(body, url=shown)

    def entry_dir(self, url: str) -> Path:
        """The cache folder of one URL (all checksums ever seen for it), keyed by the
        redacted URL: the same with any password, or none for a URL without one."""
        key = hashlib.sha256(redact_url(url).encode("utf-8")).hexdigest()
        return self.cache_dir / key[:2] / key

    # -- internals ------------------------------------------------------------

    @staticmethod
    def _temp_path(entry: Path, sha256: str) -> Path:
        # In the entry folder itself, so the final rename stays on one filesystem;
        # a unique name, so concurrent fetchers of one URL never share a file.
        fd, name = tempfile.mkstemp(prefix=f".{sha256[:16]}.", suffix=".part", dir=entry)
        os.close(fd)
        return Path(name)

    def _download(self, url: str, dest: Path) -> DownloadResult:
        try:
            return self.http.download(url, dest)
        except HttpError as exc:
            if exc.status in NOT_PUBLISHED_STATUSES:
                # The CHECKSUM exists but the zip does not: published half-way; retry later.
                raise NotPublished(exc.url, exc.status) from exc
            raise VisionError(f"download of {exc.url} failed: {exc}", url=exc.url) from exc

    @staticmethod
    def _check_zip(url: str, path: Path, name: str) -> None:
        # The sha256 already proves these are the published bytes; this catches a
        # broken upload. Member CRCs are checked when the CSV is read.
        member = name[: -len(".zip")] + ".csv"
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError) as exc:
            raise VisionError(f"corrupted zip {url}: {exc}", url=url) from exc
        if names != [member]:
            raise VisionError(
                f"unexpected contents of zip {url}: expected one member {member!r}, found {names}", url=url
            )

    def _cache_hit(self, url: str, sha256: str) -> VisionFile | None:
        url = redact_url(url)  # all that is kept of it from here on
        entry = self.entry_dir(url)
        path = entry / f"{sha256}.zip"
        if not path.is_file():
            return None
        if self.verify_cache_hits and file_sha256(path) != sha256:
            # Damaged cache entry (disk, manual edit): drop it and download again.
            path.unlink(missing_ok=True)
            (entry / f"{sha256}.json").unlink(missing_ok=True)
            return None
        size = path.stat().st_size
        fetched_at = self._read_fetched_at(entry / f"{sha256}.json")
        if fetched_at is not None:
            # The sidecar's mtime is the entry's last use: eviction goes least recently used first.
            with contextlib.suppress(OSError):
                os.utime(entry / f"{sha256}.json")
        if fetched_at is None:
            # The zip was renamed in but the sidecar never written (crash between the two).
            fetched_at = datetime.fromtimestamp(path.stat().st_mtime, UTC)
            self._write_sidecar(entry, url, sha256, size, fetched_at)
        return VisionFile(url, path, sha256, size, True, fetched_at)

    @staticmethod
    def _read_fetched_at(sidecar: Path) -> datetime | None:
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            return datetime.fromisoformat(meta["fetched_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @staticmethod
    def _write_sidecar(entry: Path, url: str, sha256: str, size: int, fetched_at: datetime) -> None:
        meta = {"url": url, "sha256": sha256, "bytes": size, "fetched_at": fetched_at.isoformat()}
        fd, tmp = tempfile.mkstemp(prefix=".sidecar.", suffix=".part", dir=entry)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, entry / f"{sha256}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


VISION_TEMP_STALE_S: Final = 3600
"""A cache ``*.part`` file untouched this long belongs to no live download: a download
writes its file at least every read timeout (30 s) and gives up after a few attempts
with backoffs of at most 8 s, minutes in all. Age, not a lock: the cache takes no lock,
and a name is never reused (``mkstemp``), so a stale file stays stale."""


def stale_cache_files(
    cache_dir: Path,
    *,
    now: datetime,
    buckets: Iterable[str] | None = None,
    stale_after_s: float = VISION_TEMP_STALE_S,
) -> list[tuple[Path, ObjectStat]]:
    """The cache's temporary files untouched for ``stale_after_s`` before ``now``, with
    their stat (``buckets``: only those first-level folders, see ``cache_temp_files``)."""
    limit = now.timestamp() - stale_after_s
    out: list[tuple[Path, ObjectStat]] = []
    for path in cache_temp_files(cache_dir, buckets):
        st = local_stat(path)
        if st is not None and st.mtime_ns / 1e9 <= limit:  # None: renamed in or cleaned up meanwhile
            out.append((path, st))
    return out


def cache_temp_files(cache_dir: Path, buckets: Iterable[str] | None = None) -> list[Path]:
    """The temporary files in ``VisionClient``'s cache, sorted: unfinished downloads
    (``.<sha256[:16]>.*.part``) and sidecars (``.sidecar.*.part``) in the entry folders.

    ``buckets`` limits the walk to those first-level folders (two hex digits of the
    URL's sha256, ``00``..``ff``), so a caller can spread a big cache over several
    passes. Whether a file is stale (its fetcher died) is the caller's judgement.
    """
    root = Path(cache_dir)
    if buckets is None:
        buckets = os.listdir(root) if root.is_dir() else []
    found: list[Path] = []
    for bucket in sorted(buckets):
        try:
            entries = os.listdir(root / bucket)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            try:
                files = os.listdir(root / bucket / entry)
            except (FileNotFoundError, NotADirectoryError):
                continue
            found += [root / bucket / entry / f for f in files if f.startswith(".") and f.endswith(".part")]
    return sorted(found)


@dataclass(frozen=True)
class CachedZip:
    """One verified zip in the cache: its (redacted) URL and sha256 from the sidecar, its size,
    and when it was last used (the sidecar's mtime: written at download, touched on every hit)."""

    path: Path
    url: str
    sha256: str
    bytes: int
    last_used: float  # seconds since the epoch


def cached_zips(cache_dir: Path) -> list[CachedZip]:
    """Every verified zip of the cache, least recently used first. An entry without a readable
    sidecar (a crash between the two renames) is listed with an empty URL: no ledger row can
    name it, so no policy evicts it; the next hit rewrites its sidecar."""
    root = Path(cache_dir)
    found: list[CachedZip] = []
    for bucket in sorted(os.listdir(root)) if root.is_dir() else []:
        try:
            entries = os.listdir(root / bucket)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            folder = root / bucket / entry
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if name.startswith(".") or not name.endswith(".zip"):
                    continue
                zip_stat = local_stat(folder / name)
                if zip_stat is None:
                    continue
                sha256 = name[: -len(".zip")]
                sidecar = folder / f"{sha256}.json"
                url, used = "", zip_stat.mtime_ns / 1e9
                try:
                    url = str(json.loads(sidecar.read_text(encoding="utf-8"))["url"])
                    used = sidecar.stat().st_mtime
                except (OSError, ValueError, KeyError, TypeError):
                    pass
                found.append(CachedZip(folder / name, url, sha256, zip_stat.size, used))
    return sorted(found, key=lambda z: (z.last_used, str(z.path)))


def evict_cached(zip_: CachedZip, *, unused_since: float) -> bool:
    """Remove one cache entry (zip and sidecar) unless it was used after ``unused_since``
    (seconds since the epoch): a fetch that hit it since the plan keeps it. A reader that
    already opened the zip keeps reading it (POSIX unlink). True when removed."""
    sidecar = zip_.path.with_suffix(".json")
    try:
        if sidecar.stat().st_mtime > unused_since:
            return False
    except FileNotFoundError:
        pass
    zip_.path.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        zip_.path.parent.rmdir()  # the URL's folder, once empty
    return True
