"""How a ``bml`` process's log lines reach the terminal.

What belongs here: the one handler on stderr that the CLI and the backfill's worker
processes install first, and its two formats: by default WARNING and above, the
orchestration's own lines (a run released, a partition run again: each names what it is
about) as they are and a library's with its level and logger; for ``bml live-collect``,
INFO and above with the time. What stays out: the commands' progress and summaries (the
CLI echoes them) and the runs' own logs (Dagster keeps them with the run).
"""

from __future__ import annotations

import logging
import sys

OWN = "bml_assets.orchestration."
TIMED = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleFormat(logging.Formatter):
    # formatMessage, not format: Formatter.format appends a record's traceback after it.
    def formatMessage(self, record: logging.LogRecord) -> str:
        if record.name.startswith(OWN):
            return record.message
        return f"{record.levelname}:{record.name}: {record.message}"


class _ConsoleHandler(logging.StreamHandler):
    """The console's handler, told apart from a caller's own."""


def console_logging(*, timed_info: bool = False) -> None:
    """Send this process's log lines to stderr: WARNING and above, the orchestration's plain;
    with ``timed_info``, INFO and above, each with its time, level and logger (the live
    collector's log). Without it the first library to call ``logging.warning`` gave the root
    logger Python's default format, and a release read
    ``WARNING:bml_assets.orchestration.runner:2024-05-01|BTCUSDT: …``. A root logger with
    handlers of its own (a caller's, pytest's) is left as it is."""
    root = logging.getLogger()
    handler = next((h for h in root.handlers if isinstance(h, _ConsoleHandler)), None)
    if handler is None:
        if root.handlers:
            return
        handler = _ConsoleHandler(sys.stderr)
        root.addHandler(handler)
    if timed_info:
        handler.setFormatter(logging.Formatter(TIMED))
        handler.setLevel(logging.INFO)
        root.setLevel(logging.INFO)
    else:
        handler.setFormatter(_ConsoleFormat())
        # Dagster turns its own loggers to DEBUG for a run: their chatter stays in the run's log.
        handler.setLevel(logging.WARNING)
