"""The exchange's answer forms: a REST response and the Binance error body.

What belongs here: ``RestResponse`` (status, headers, JSON body bytes),
``BinanceError`` (an answer of the form ``{"code": ..., "msg": ...}``), compact JSON
with ``<``, ``>`` and ``&`` escaped (``json_body``; error messages that quote the
request stay inert if a client sniffs a body as HTML), and the errors more than one
module answers with (``invalid_symbol``).

What stays out: when an endpoint errs (``endpoints.py``), the limiter's messages
(``limits.py``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

_JSON_CONTENT = "application/json"


@dataclass(frozen=True)
class RestResponse:
    """One answer: HTTP status, extra headers and the body bytes (JSON)."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = _JSON_CONTENT

    def json(self) -> Any:
        return json.loads(self.body)


class BinanceError(Exception):
    """An answer of the exchange's error form ``{"code": ..., "msg": ...}``."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def response(self, headers: dict[str, str] | None = None) -> RestResponse:
        return error_response(self.status, self.code, self.msg, headers)


_HTML_SIGNIFICANT = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def json_body(payload: Any) -> bytes:
    """Compact JSON with ``<``, ``>`` and ``&`` escaped (the same JSON value): a
    quoted request path stays inert if a browser is ever shown the body."""
    return json.dumps(payload, separators=(",", ":")).translate(_HTML_SIGNIFICANT).encode()


def error_body(code: int, msg: str) -> bytes:
    return json_body({"code": code, "msg": msg})


def error_response(status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> RestResponse:
    return RestResponse(int(status), error_body(code, msg), dict(headers or {}))


def invalid_symbol() -> BinanceError:
    return BinanceError(HTTPStatus.BAD_REQUEST, -1121, "Invalid symbol.")
