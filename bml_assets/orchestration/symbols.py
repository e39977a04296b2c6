"""The symbol universe: the exchange's USD-M perpetuals in the ledger, and when each traded.

What belongs here: ``exchangeInfo`` → ledger records (onboard date, status, last
trading day) and their sync into the ledger's ``symbols`` table (``bml symbols
sync``); the listing rules the scans and the plan apply: a day before a symbol's
listing or after its last trading day is not listed, and the part of a range a
symbol traded in.

What stays out: the REST client (``sources/rest.py``), the ``symbols`` table itself
(``lake/ledger.py``), and which symbols a command works on (``state.py``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bml_assets.domain.minutes import day_of_ms
from bml_assets.domain.settings import Settings, validate_symbol
from bml_assets.lake.ledger import SymbolRecord, SymbolSync
from bml_assets.orchestration.state import open_ledger


def _ms_date(value: Any) -> dt.date | None:
    try:
        ms = int(value)
    except (TypeError, ValueError):
        return None
    if ms <= 0:
        return None
    return day_of_ms(ms)


# exchangeInfo gives perpetuals a deliveryDate far in the future (2100-12-25): not a delisting.
_FAR_FUTURE = dt.date(2100, 1, 1)


def perpetual_symbols(exchange_info: Mapping[str, Any], *, now: dt.datetime | None = None) -> list[SymbolRecord]:
    """The USD-M PERPETUAL symbols of an ``exchangeInfo`` answer, as ledger records.

    ``onboardDate`` gives the first listed day. A symbol that no longer trades
    (status other than ``TRADING``) gets a delist date when exchangeInfo says when
    it stopped (``deliveryDate`` in the past): its last trading day.
    """
    stamp = now or dt.datetime.now(dt.UTC)
    records: list[SymbolRecord] = []
    for entry in exchange_info.get("symbols") or []:
        if not isinstance(entry, Mapping) or entry.get("contractType") != "PERPETUAL":
            continue
        symbol = entry.get("symbol")
        try:
            validate_symbol(symbol)  # type: ignore[arg-type]
        except ValueError:
            continue  # a name that cannot be a path part is not ours to store
        status = str(entry.get("status") or "UNKNOWN")
        delist = None
        if status != "TRADING":
            delivery = _ms_date(entry.get("deliveryDate"))
            if delivery is not None and delivery < _FAR_FUTURE and delivery <= stamp.date():
                delist = delivery
        records.append(
            SymbolRecord(
                symbol=symbol,  # type: ignore[arg-type]
                onboard_date=_ms_date(entry.get("onboardDate")),
                status=status,
                delist_date=delist,
                updated_at=stamp,
            )
        )
    return records


@dataclass(frozen=True)
class SymbolsSyncResult:
    perpetuals: int
    trading: int
    not_trading: int
    delisted_with_date: int
    sync: SymbolSync
    ledger_url: str
    symbols: tuple[str, ...] = ()
    unlisted_configured: tuple[str, ...] = ()  # in BML_SYMBOLS, but not in exchangeInfo


def sync_symbols(settings: Settings) -> SymbolsSyncResult:
    """exchangeInfo (REST, ``BML_REST_BASE_URL``) → the ledger's ``symbols`` table."""
    from bml_assets.sources.rest import RestClient

    ledger = open_ledger(settings)
    try:
        rest = RestClient.from_settings(settings)
        records = perpetual_symbols(rest.exchange_info())
        sync = ledger.upsert_symbols(records)
        listed = tuple(r.symbol for r in records)
        return SymbolsSyncResult(
            perpetuals=len(records),
            trading=sum(r.trading for r in records),
            not_trading=sum(not r.trading for r in records),
            delisted_with_date=sum(r.delist_date is not None for r in records),
            sync=sync,
            ledger_url=ledger.display_url,
            symbols=listed,
            unlisted_configured=tuple(s for s in settings.symbols if s not in listed),
        )
    finally:
        ledger.close()


def not_listed_reason(record: SymbolRecord, day: dt.date) -> str | None:
    """Why ``day`` is not a listed day of the record's symbol, or None when it traded then."""
    if record.onboard_date is not None and day < record.onboard_date:
        return f"before its listing on {record.onboard_date.isoformat()}"
    if record.delist_date is not None and day > record.delist_date:
        return f"after its last trading day {record.delist_date.isoformat()} ({record.status})"
    return None


def listed_span(
    symbol: str, start: dt.date, end: dt.date, listings: Mapping[str, SymbolRecord]
) -> tuple[dt.date, dt.date] | None:
    """The part of ``start..end`` the symbol traded in (the whole range when unknown), or None."""
    record = listings.get(symbol)
    if record is None:
        return start, end
    first = max(start, record.onboard_date) if record.onboard_date else start
    last = min(end, record.delist_date) if record.delist_date else end
    return (first, last) if first <= last else None
