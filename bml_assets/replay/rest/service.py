"""One REST request end to end: admit it under the limits, answer it, log it.

What belongs here: ``RestService``, what the HTTP handler calls for a REST path:
the request's weight and the limiter's verdict (a 429/418 with ``Retry-After``
charges nothing), the API's answer (a bug in it becomes the exchange's -1000 500,
never a dead server), the ``X-MBX-USED-WEIGHT-1M`` header on every answer, and
one log entry per request.

What stays out: the answers themselves (``endpoints.py``), how weight is counted
(``limits.py``), the log's storage (``log.py``), HTTP and injected faults
(``server.py``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus

from bml_assets.replay.rest.endpoints import RestApi
from bml_assets.replay.rest.limits import WEIGHT_HEADER, RateLimiter, endpoint_weight
from bml_assets.replay.rest.log import RestLog, RestLogEntry
from bml_assets.replay.rest.paths import FUNDING_RATE_PATH
from bml_assets.replay.rest.responses import RestResponse, error_response

log = logging.getLogger(__name__)


class RestService:
    """What the HTTP handler calls: rate limiting, the API and the REST log."""

    def __init__(self, api: RestApi, limiter: RateLimiter, wall: Callable[[], float] = time.time) -> None:
        self.api = api
        self.limiter = limiter
        self.wall = wall
        self._log = RestLog()

    @property
    def log(self) -> list[RestLogEntry]:
        return self._log.entries()

    def clear_log(self) -> None:
        self._log.clear()

    def record(
        self, wall: float, path: str, params: Mapping[str, str], status: int, weight: int, client: str = ""
    ) -> None:
        self._log.record(wall, path, params, status, weight, client)

    def weight_headers(self, ip: str, wall: float) -> dict[str, str]:
        return {WEIGHT_HEADER: str(self.limiter.used(ip, wall))}

    def request(self, ip: str, path: str, params: Mapping[str, str], wall: float | None = None) -> RestResponse:
        """Admit, answer and log one request from ``ip``."""
        wall = self.wall() if wall is None else wall
        weight = endpoint_weight(path, params)
        admission = self.limiter.admit(ip, weight, wall, funding=path == FUNDING_RATE_PATH)
        headers = {WEIGHT_HEADER: str(admission.used)}
        if admission.status != HTTPStatus.OK:
            headers["Retry-After"] = str(admission.retry_after_s)
            response = error_response(admission.status, -1003, admission.message, headers)
            self.record(wall, path, params, response.status, 0, ip)
            return response
        try:
            response = self.api.handle(path, params)
        except Exception as exc:  # a bug must not take the server down: answer like the exchange's 500
            log.exception("replay: REST %s failed", path)
            response = error_response(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                -1000,
                f"An unknown error occurred while processing the request. {exc}",
            )
        response = RestResponse(response.status, response.body, {**response.headers, **headers}, response.content_type)
        self.record(wall, path, params, response.status, weight, ip)
        return response
