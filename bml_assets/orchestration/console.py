"""How a ``bml`` process's log lines reach the terminal.

What belongs here: the one handler on stderr that the CLI and the backfill's worker
processes install first, and its format: the orchestration's own lines (a run released,
a partition run again) as they are, since each names its partition; a library's with its
level and logger. What stays out: the commands' progress and summaries (the CLI echoes
them), the live collector's log format (``bml live-collect`` sets its own), and the runs'
own logs (Dagster keeps them with the run).
"""

from __future__ import annotations

import logging
import sys

OWN = "bml_assets.orchestration."


class _ConsoleFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        if record.name.startswith(OWN):
            return record.getMessage()
        return f"{record.levelname}:{record.name}: {record.getMessage()}"


def console_logging() -> None:
    """Send this process's log lines to stderr, the orchestration's plain. Without it the first
    library to call ``logging.warning`` gave the root logger Python's default format, and a
    release read ``WARNING:bml_assets.orchestration.runner:2024-05-01|BTCUSDT: …``. A root
    logger that already has handlers (a caller's own, pytest's) is left as it is."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_ConsoleFormat())
        root.addHandler(handler)
