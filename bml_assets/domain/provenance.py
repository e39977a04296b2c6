"""Provenance, typed: where each stream of a partition came from, or why it has none.

What belongs here: ``StreamStatus`` (vision / rest / live / polled / not_published /
not_listed / missing), the record of one stream (``StreamProvenance``, with the Vision
files it was read from, ``SourceFile``, and the REST repair of a short Vision file,
``Repair``), a partition's ``Provenance`` (stream name -> record), their JSON form as
the ledger stores it, and the questions the code asks of them (from Vision? from
REST? which streams are provisional, what REST weight they cost, which sources to
name in an error, what a partition still lacks).

What stays out: deciding a stream's source (the day builders), storing it (the
ledger keeps the JSON, ``to_json()``), and any I/O.

The JSON form is the one the ledger has always held: a stream's record is an object
with ``status`` and only the keys that are set; keys this module does not know are
kept as they are (``extra``) and written back, so an older or newer row survives a
read and a write. An entry that is not a stream record (no ``status``) is kept the
same way, at the partition level.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar

from bml_assets.domain.streams import Stream


class StreamStatus(StrEnum):
    """Where a stream of a partition came from, or why it has nothing."""

    VISION = "vision"  # verified Binance Vision files
    REST = "rest"  # the REST API: provisional for a Vision stream until Vision publishes it
    LIVE = "live"  # the live collector
    POLLED = "polled"  # REST snapshots taken while the day was live: final as taken
    NOT_PUBLISHED = "not_published"  # no source has it (yet, or ever)
    NOT_LISTED = "not_listed"  # the symbol did not trade that day
    MISSING = "missing"  # a fillable stream no source could give now: the partition is incomplete


_VISION_STREAMS = frozenset(s.value for s in Stream)
_NO_EXTRA: Mapping[str, Any] = MappingProxyType({})


def _keep(value: Any) -> Any:
    return value


def _codec(decode: Callable[[Any], Any], encode: Callable[[Any], Any]) -> dict[str, Any]:
    """Field metadata: how its JSON value is read and written (default: as is)."""
    return {"decode": decode, "encode": encode}


def _no_extra() -> Mapping[str, Any]:
    return _NO_EXTRA


class _JsonRecord:
    """Conversion of a frozen dataclass to and from a JSON object: a key per field that
    is set (not None; each field is the key of its name), plus the unknown keys it was
    read with (``extra``)."""

    extra: Mapping[str, Any]
    _known: ClassVar[dict[str, Any]]

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        cls._known = {}

    @classmethod
    def _fields(cls) -> dict[str, Any]:
        if not cls._known:
            cls._known.update({f.name: f for f in fields(cls) if f.name != "extra"})  # type: ignore[arg-type]
        return cls._known

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Any:
        if not isinstance(raw, Mapping):
            raise ValueError(f"{cls.__name__}: expected a JSON object, got {raw!r}")
        known = cls._fields()
        values: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in raw.items():
            f = known.get(key)
            if f is None:
                extra[key] = value
            elif value is not None:
                try:
                    values[key] = f.metadata.get("decode", _keep)(value)
                except (TypeError, ValueError) as err:
                    raise ValueError(f"{cls.__name__}: {key} = {value!r} is not valid: {err}") from None
        try:
            return cls(**values, extra=MappingProxyType(extra) if extra else _NO_EXTRA)
        except TypeError as err:  # a required key is absent
            raise ValueError(f"{cls.__name__}: {err}") from None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, f in self._fields().items():
            value = getattr(self, name)
            if value is not None:
                out[name] = f.metadata.get("encode", _keep)(value)
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class SourceFile(_JsonRecord):
    """A verified Vision file a stream table was read from."""

    url: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    rows: int | None = None
    from_cache: bool | None = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra, compare=False)


@dataclass(frozen=True)
class Repair(_JsonRecord):
    """What a second source (REST) added to a Vision table short of minutes or trades."""

    source: str | None = None
    base_url: str | None = None
    minutes: int | None = None  # minutes taken from it
    absent_from_rest: int | None = None  # klines: missing minutes REST lacks too
    short_in_every_source: int | None = None  # aggTrades: minutes still short
    rest_weight: int | None = None
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=_no_extra, compare=False)


def _files(raw: Any) -> tuple[SourceFile, ...]:
    return tuple(SourceFile.from_json(f) for f in raw)


def _files_json(files: tuple[SourceFile, ...]) -> list[dict[str, Any]]:
    return [f.to_json() for f in files]


@dataclass(frozen=True)
class StreamProvenance(_JsonRecord):
    """How one stream of a partition was sourced.

    ``status`` says where it came from; the rest is what the builder knew: the Vision
    files read (``files``), the Vision URL and HTTP status of a file that is not there
    (``url``, ``http_status``; ``vision_url``, ``vision_http_status`` when REST filled
    the hole), the REST host and the instant a REST table reaches (``base_url``,
    ``through``), ``rows``, ``reason``, the REST weight a fill cost (``rest_weight``),
    ``fillable`` (False: no source can fill it, so it is not ``incomplete``), what the
    partition still lacks that a source could fill (``incomplete``), a second download
    (``redownloaded``) and a REST repair (``repaired``).
    """

    status: StreamStatus = field(metadata=_codec(StreamStatus, str))
    files: tuple[SourceFile, ...] | None = field(default=None, metadata=_codec(_files, _files_json))
    url: str | None = None
    http_status: int | None = None
    base_url: str | None = None
    through: dt.datetime | None = field(default=None, metadata=_codec(dt.datetime.fromisoformat, dt.datetime.isoformat))
    rows: int | None = None
    reason: str | None = None
    vision_url: str | None = None
    vision_http_status: int | None = None
    rest_weight: int | None = None
    fillable: bool | None = None
    incomplete: str | None = None
    redownloaded: str | None = None
    repaired: Repair | None = field(default=None, metadata=_codec(Repair.from_json, Repair.to_json))
    extra: Mapping[str, Any] = field(default_factory=_no_extra, compare=False)

    @property
    def is_vision(self) -> bool:
        return self.status is StreamStatus.VISION

    @property
    def is_rest(self) -> bool:
        return self.status is StreamStatus.REST

    @property
    def total_rest_weight(self) -> int:
        """The REST weight its fill and its repair cost."""
        repaired = self.repaired.rest_weight if self.repaired is not None else None
        return int(self.rest_weight or 0) + int(repaired or 0)

    def sources(self) -> list[str]:
        """The Vision file URLs and the REST host it names, for error texts."""
        names = [f.url for f in self.files or () if f.url is not None]
        if self.base_url:
            names.append(f"REST {self.base_url}")
        return names

    def summary(self) -> str:
        """One line: which source filled it or why nothing did (SPEC §8)."""
        text = str(self.status)
        if self.repaired is not None:
            text += f", completed from {self.repaired.source} ({self.repaired.minutes} minutes)"
        if self.incomplete:
            text += f"; incomplete: {self.incomplete}"
        elif self.status not in _SOURCED and self.reason:
            text += f": {self.reason}"
        return text


_SOURCED = frozenset({StreamStatus.VISION, StreamStatus.REST, StreamStatus.POLLED, StreamStatus.LIVE})


class Provenance(Mapping[str, StreamProvenance]):
    """A partition's provenance: stream name (a ``Stream`` value, or ``snapshots`` for the
    polled snapshots, ``exchangeInfo`` for a listing verdict) -> ``StreamProvenance``.

    Immutable; ``|`` gives a new one with the right side's streams replacing the left's.
    ``Provenance.of`` takes the ledger's JSON (or a mapping mixing records and JSON). A
    stream's JSON record is read when it is first asked for, and ``status_of`` reads only
    its status: a pass over every ledger row (the promotion sensor, the scan) asks just
    that, and must stay as cheap as a dict lookup.
    """

    __slots__ = ("_entries", "_extra")

    def __init__(
        self, streams: Mapping[str, StreamProvenance] | None = None, *, extra: Mapping[str, Any] | None = None
    ) -> None:
        # Each entry is a StreamProvenance, or its JSON object until it is first read.
        self._entries: dict[str, StreamProvenance | Mapping[str, Any]] = {str(k): v for k, v in (streams or {}).items()}
        # Entries that are not stream records, kept for the JSON round trip.
        self._extra: dict[str, Any] = dict(extra or {})

    @classmethod
    def of(cls, value: Provenance | Mapping[str, Any] | None) -> Provenance:
        """``value`` as a ``Provenance``: itself, or read from its JSON form (a stream's
        entry may also be a ``StreamProvenance`` already)."""
        if isinstance(value, Provenance):
            return value
        made = cls()
        entries, extra = made._entries, made._extra
        for key, entry in (value or {}).items():
            if isinstance(entry, StreamProvenance) or (isinstance(entry, Mapping) and "status" in entry):
                entries[str(key)] = entry
            else:
                extra[str(key)] = entry
        return made

    from_json = of

    def to_json(self) -> dict[str, Any]:
        """The JSON form the ledger stores."""
        return {
            **self._extra,
            **{k: v.to_json() if isinstance(v, StreamProvenance) else dict(v) for k, v in self._entries.items()},
        }

    def __getitem__(self, stream: str) -> StreamProvenance:
        entry = self._entries[stream]
        if isinstance(entry, StreamProvenance):
            return entry
        try:
            parsed = StreamProvenance.from_json(entry)
        except ValueError as err:
            raise ValueError(f"provenance of {stream}: {err}") from None
        self._entries[stream] = parsed  # read once; the value it stands for does not change
        return parsed

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __or__(self, other: Mapping[str, Any]) -> Provenance:
        right = Provenance.of(other)
        merged = Provenance(extra=self._extra | right._extra)
        merged._entries = self._entries | right._entries
        return merged

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Provenance):
            return NotImplemented
        return dict(self.items()) == dict(other.items()) and self._extra == other._extra

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Provenance({self.to_json()!r})"

    def status_of(self, stream: str) -> StreamStatus | None:
        """The stream's status; None when the partition names no such stream."""
        entry = self._entries.get(stream)
        if entry is None:
            return None
        if isinstance(entry, StreamProvenance):
            return entry.status
        try:
            return StreamStatus(entry["status"])
        except ValueError:
            raise ValueError(
                f"provenance of {stream}: status {entry['status']!r} is not one of {[str(s) for s in StreamStatus]}"
            ) from None

    def _has_status(self, stream: str, status: StreamStatus) -> bool:
        # The cheap test of a pass over many rows: no record read, no enum built.
        entry = self._entries.get(stream)
        if entry is None:
            return False
        return (entry.status if isinstance(entry, StreamProvenance) else entry["status"]) == status

    def is_vision(self, stream: str) -> bool:
        return self._has_status(stream, StreamStatus.VISION)

    def is_rest(self, stream: str) -> bool:
        return self._has_status(stream, StreamStatus.REST)

    def any_vision(self) -> bool:
        return any(self._has_status(s, StreamStatus.VISION) for s in self._entries)

    def provisional_streams(self) -> list[str]:
        """Vision streams taken from REST: provisional until Vision publishes them."""
        return sorted(s for s in self._entries if s in _VISION_STREAMS and self._has_status(s, StreamStatus.REST))

    def rest_weight(self) -> int:
        """The REST weight the streams' fills and repairs cost."""
        return sum(p.total_rest_weight for p in self.values())

    def sources(self, stream: str | None = None) -> str | None:
        """The sources it names — Vision file URLs, the REST host — of one stream (or of
        all), comma-separated, for error texts; None when it names none."""
        if stream is not None:
            entries = [self[stream]] if stream in self._entries else []
        else:
            entries = list(self.values())
        names = [name for p in entries for name in p.sources()]
        return ", ".join(dict.fromkeys(names)) or None

    def incomplete(self) -> dict[str, str]:
        """Stream -> why the partition still lacks it (wholly or in part) though a source could fill it."""
        return {s: p.incomplete for s, p in self.items() if p.incomplete}

    def summaries(self) -> dict[str, str]:
        """Per stream, in name order, which source filled it or why nothing did."""
        return {s: self[s].summary() for s in sorted(self._entries)}


def provisional_streams(provenance: Provenance | Mapping[str, Any]) -> list[str]:
    """``Provenance.provisional_streams`` of a partition's provenance, typed or as the ledger stores it."""
    return Provenance.of(provenance).provisional_streams()
