"""Credentials in URLs never leave the process: the one redaction of a URL's userinfo.

What belongs here: ``redact_url``, applied wherever a URL is logged, stored or put in
an error (``BML_REST_BASE_URL`` and ``BML_VISION_BASE_URL`` may point at a private
mirror as ``http://user:password@host``). What stays out: where it is applied (the
sources, the settings, the resources each call it) and any I/O.
"""

from __future__ import annotations

import re

# The userinfo of every URL in a text: from "scheme://" to the last "@" before the
# host's path, query or fragment (a password may hold a raw "@", urlsplit agrees).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/?#\s]*@)")
REDACTED_USERINFO = "***@"


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) with each URL's userinfo replaced by
    ``***``: ``http://user:pw@host/x`` → ``http://***@host/x``. The user name goes too
    (it is often the token itself); the host, port, path and query stay, so the text
    still says where a request went. A text without credentials is returned unchanged.
    """
    return _USERINFO.sub(lambda m: m["scheme"] + REDACTED_USERINFO, text)
