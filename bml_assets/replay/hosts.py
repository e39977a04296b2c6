"""Which host names the replay servers answer: the guard against a web page.

What belongs here: loopback names (``is_loopback_host``) and the ``Host`` header
check both sides of the replay server make (``host_allowed``): a page whose DNS
name was rebound to 127.0.0.1 is same-origin to the browser, so only this check
stops it reaching the HTTP side or the WebSocket side.

What stays out: answering a refused request (``server.py``, ``ws/service.py``).
"""

from __future__ import annotations

import ipaddress

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def is_loopback_host(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The host part of a ``Host`` header (``[::1]:80`` → ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def host_allowed(header: str | None, own_host: str, *, allow_public: bool) -> bool:
    """Whether a request's ``Host`` header names a server listening on ``own_host``:
    a loopback name or that host (anything, with ``allow_public``; no header: yes)."""
    if allow_public or header is None:
        return True
    name = host_name(header)
    return is_loopback_host(name) or name == own_host.lower()
