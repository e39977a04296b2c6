"""Real Vision files from a local folder, served by the replay server.

What belongs here: ``index_real_dir`` (request paths → ``RealFile``s under a
folder: laid out under ``data/futures/um/...`` and served at their own path, or
loose and mapped by file name; a ``.csv`` is served zipped), the guard that
nothing resolving outside the folder is ever indexed or served
(``resolves_inside``; links out are skipped with a warning), and the zip entry
time of a real CSV zipped here (``modified_of``).

Real files define their own symbols: one found here is served even for a symbol
outside the synthetic market's universe.

What stays out: reading, zipping and caching the bytes at request time
(``server.py`` with ``render.py``), the synthetic files (``vision_archive.py``).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from bml_assets.domain.streams import KLINE_STREAMS, Stream
from bml_assets.replay.vision_archive import CHECKSUM_SUFFIX, DAY_REGEX, SYMBOL_REGEX

log = logging.getLogger(__name__)

# Loose real files, by name.
_LOOSE_KLINE = re.compile(rf"^({SYMBOL_REGEX})-1m-({DAY_REGEX})$")
_LOOSE_DAILY = re.compile(rf"^({SYMBOL_REGEX})-(aggTrades|bookTicker|metrics)-({DAY_REGEX})$")
_LOOSE_MONTHLY = re.compile(rf"^({SYMBOL_REGEX})-fundingRate-(\d{{4}}-\d{{2}})$")
# Folders whose loose files belong to another market (spot, COIN-M) and must not
# be served as USD-M files.
_OTHER_MARKET_TOKENS = frozenset({"spot", "cm", "coin", "option", "options"})
_DERIVED_KLINE_FOLDERS = {s.value.lower(): s.value for s in KLINE_STREAMS if s is not Stream.KLINES}


@dataclass(frozen=True)
class RealFile:
    """A real file served at ``route``: a zip as is, or a CSV zipped on request."""

    route: str
    source: Path
    checksum: Path | None  # the .CHECKSUM beside a real zip, served as is
    laid_out: bool  # found under data/... rather than mapped by its name

    @property
    def is_csv(self) -> bool:
        return self.source.suffix == ".csv"


def _loose_route(rel: Path) -> str | None:
    stem = rel.name[: -len(rel.suffix)]
    folders = [p.lower() for p in rel.parts[:-1]]
    if any(tok in _OTHER_MARKET_TOKENS for f in folders for tok in re.split(r"[^a-z0-9]+", f)):
        return None
    if m := _LOOSE_KLINE.fullmatch(stem):
        stream = next((_DERIVED_KLINE_FOLDERS[f] for f in reversed(folders) if f in _DERIVED_KLINE_FOLDERS), "klines")
        return f"/data/futures/um/daily/{stream}/{m[1]}/1m/{stem}.zip"
    if m := _LOOSE_DAILY.fullmatch(stem):
        return f"/data/futures/um/daily/{m[2]}/{m[1]}/{stem}.zip"
    if m := _LOOSE_MONTHLY.fullmatch(stem):
        return f"/data/futures/um/monthly/fundingRate/{m[1]}/{stem}.zip"
    return None


def resolves_inside(path: Path, root: Path) -> bool:
    """Whether ``path``, links followed, is ``root`` (already resolved) or under it."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop or an unreadable link
        return False


def _files_inside(root: Path) -> Iterator[Path]:
    """The files under ``root`` that resolve inside it. A link (to a file or a
    folder) that leads outside is skipped with a warning naming it; links to
    folders are never descended (one inside ``root`` is indexed at its real path)."""
    base = root.resolve()
    for folder, dirs, files in os.walk(root):  # followlinks=False
        here = Path(folder)
        dirs.sort()
        for name in [*dirs, *files]:
            path = here / name
            if path.is_symlink() and not resolves_inside(path, base):
                log.warning("replay: not serving %s: it links outside %s", path, root)
            elif name in files:
                yield path


def index_real_dir(root: Path) -> dict[str, RealFile]:
    """Map request paths to the real files under ``root``. Files under a ``data``
    folder are served at their own path (``.csv`` as ``.zip``); loose files by
    their name. Laid-out beats loose and a zip beats a CSV for the same path.
    Nothing that resolves outside ``root`` is indexed (see ``_files_inside``)."""
    inside = set(_files_inside(root))
    found: dict[str, RealFile] = {}
    for path in sorted(p for p in inside if p.suffix in (".zip", ".csv") and p.is_file()):
        rel = path.relative_to(root)
        if "data" in rel.parts[:-1]:
            parts = rel.parts[rel.parts.index("data") :]
            route, laid_out = "/" + "/".join(parts[:-1] + (rel.stem + ".zip",)), True
        else:
            route, laid_out = _loose_route(rel), False
        if route is None:
            log.debug("replay: not serving %s (no USD-M Vision name)", path)
            continue
        checksum = path.with_name(path.name + CHECKSUM_SUFFIX)
        has_checksum = path.suffix == ".zip" and checksum in inside and checksum.is_file()
        candidate = RealFile(route, path, checksum if has_checksum else None, laid_out)
        current = found.get(route)
        if current is None or (not candidate.is_csv, candidate.laid_out) > (not current.is_csv, current.laid_out):
            found[route] = candidate
    return found


def modified_of(name: str) -> datetime:
    """A zip entry time for a real CSV zipped here: the morning after its period."""
    match = re.search(r"(\d{4})-(\d{2})(?:-(\d{2}))?$", name)
    if match is None:
        return datetime(1980, 1, 1)
    y, m, d = int(match[1]), int(match[2]), int(match[3] or 1)
    try:
        start = datetime(y, m, d)
    except ValueError:
        return datetime(1980, 1, 1)
    return start + timedelta(days=1 if match[3] else 31, hours=7, minutes=26)
