"""Stream names, the two combined-stream paths, and the frame the service sends.

What belongs here: the endpoints (``/public/stream`` and ``/market/stream``, split
so on the exchange since 2026-04-23, SPEC §4), the grammar of a stream name
(``<symbol>@<kind>[@<speed>]``, lowercase symbol) as ``StreamName``, which path
serves which kind (``FAMILY_OF``), the ``streams=`` query of a combined-stream
URL, and ``Frame``: one ``{"stream": name, "data": event}`` text ready to send,
with what the faults and the ordering need to know about it.

What stays out: what a stream carries (``synthetic.py``, ``recording.py``) and
the sockets (``service.py``).

A name that does not parse (an unknown kind, an uppercase or malformed symbol)
is no error: like a stream on the wrong path, the exchange accepts the
connection and then sends nothing for it, and so does the replay.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import parse_qsl


class Family(StrEnum):
    PUBLIC = "public"
    MARKET = "market"


PATHS: dict[str, Family] = {"/public/stream": Family.PUBLIC, "/market/stream": Family.MARKET}


class Kind(StrEnum):
    DEPTH = "depth"
    BOOK_TICKER = "bookTicker"
    TRADE = "trade"
    AGG_TRADE = "aggTrade"
    MARK_PRICE = "markPrice"
    FORCE_ORDER = "forceOrder"
    KLINE = "kline"


FAMILY_OF: dict[Kind, Family] = {
    Kind.DEPTH: Family.PUBLIC,
    Kind.BOOK_TICKER: Family.PUBLIC,
    Kind.TRADE: Family.PUBLIC,
    Kind.AGG_TRADE: Family.MARKET,
    Kind.MARK_PRICE: Family.MARKET,
    Kind.FORCE_ORDER: Family.MARKET,
    Kind.KLINE: Family.MARKET,
}

# Within one millisecond, frames go out in this order of kinds (then by id).
RANK: dict[Kind, int] = {kind: i for i, kind in enumerate(Kind)}

# Diff-depth update speeds: ``@depth`` alone is 250 ms; 0 ms is "as fast as the
# engine publishes".
_DEPTH_SPEEDS: dict[str, int] = {"": 250, "@0ms": 0, "@100ms": 100, "@250ms": 250, "@500ms": 500}
_MARK_PRICE_SPEEDS: dict[str, int] = {"": 3000, "@1s": 1000}
_NAME = re.compile(r"(?P<symbol>[a-z0-9]{2,20})@(?P<kind>[A-Za-z]+)(?P<rest>(?:_[0-9a-zA-Z]+)?(?:@[0-9a-z]+)?)")


@dataclass(frozen=True)
class StreamName:
    """A parsed stream name: ``btcusdt@depth@100ms`` → (BTCUSDT, depth, 100)."""

    name: str
    symbol: str  # uppercase, as the REST API spells it
    kind: Kind
    interval_ms: int = 0  # depth: update speed (0 = real time); markPrice: push period

    @property
    def family(self) -> Family:
        return FAMILY_OF[self.kind]


def parse_stream(name: str) -> StreamName | None:
    """The stream ``name`` names, or None when it names nothing the exchange serves."""
    match = _NAME.fullmatch(name)
    if match is None:
        return None
    symbol, kind, rest = match["symbol"].upper(), match["kind"], match["rest"]
    if kind == "depth" and rest in _DEPTH_SPEEDS:
        return StreamName(name, symbol, Kind.DEPTH, _DEPTH_SPEEDS[rest])
    if kind == "markPrice" and rest in _MARK_PRICE_SPEEDS:
        return StreamName(name, symbol, Kind.MARK_PRICE, _MARK_PRICE_SPEEDS[rest])
    if kind == "kline" and rest.startswith("_") and "@" not in rest:
        return StreamName(name, symbol, Kind.KLINE)
    if rest == "" and kind in ("bookTicker", "trade", "aggTrade", "forceOrder"):
        return StreamName(name, symbol, Kind(kind))
    return None


def requested_streams(query: str) -> list[str]:
    """The stream names of a combined-stream query (``streams=a/b/c``), in order,
    each once; empty names are ignored."""
    names: list[str] = []
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "streams":
            continue
        for name in value.split("/"):
            if name and name not in names:
                names.append(name)
    return names


@dataclass(frozen=True)
class Frame:
    """One frame to send: the combined-stream text, when it goes out (``at_ms``,
    market time), its event time ``E`` and, for depth, its ids U and u."""

    at_ms: int
    rank: int
    seq: int  # orders frames of one rank within a millisecond (an id, a line number)
    stream: str
    kind: Kind
    event_ms: int
    text: str
    first_id: int | None = None
    last_id: int | None = None

    @property
    def order(self) -> tuple[int, int, int]:
        return (self.at_ms, self.rank, self.seq)
