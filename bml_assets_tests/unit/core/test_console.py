"""orchestration/console.py: a bml process's log lines on stderr, the orchestration's plain.

Each case runs in a fresh interpreter: the root logger's handlers are process-wide (pytest
keeps its own on it), and the bug was about which handler a process ends up with."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap


def _stderr(code: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, check=True
    )
    return done.stderr.splitlines()


def test_the_runners_lines_stay_plain_after_a_library_logs_through_the_root() -> None:
    # logging.warning() on an unconfigured root installs Python's default format: what gave
    # "WARNING:bml_assets.orchestration.runner:…" in the backfill's worker processes.
    assert _stderr(
        """
        import logging
        from bml_assets.orchestration.console import console_logging
        console_logging()
        logging.warning("a library's notice")
        logging.getLogger("some.library").error("it failed")
        logging.getLogger("bml_assets.orchestration.runner").warning("2024-05-01|BTCUSDT: PostgreSQL is back; running it again")
        logging.getLogger("bml_assets.orchestration.runner").info("not shown: below WARNING")
        """
    ) == [
        "WARNING:root: a library's notice",
        "ERROR:some.library: it failed",
        "2024-05-01|BTCUSDT: PostgreSQL is back; running it again",
    ]


def test_a_traceback_stays_and_lines_below_warning_stay_out() -> None:
    lines = _stderr(
        """
        import logging
        from bml_assets.orchestration.console import console_logging
        console_logging()
        logging.getLogger("dagster.builtin").setLevel(logging.DEBUG)  # as Dagster does for a run
        logging.getLogger("dagster.builtin").info("op chatter")
        try:
            1 / 0
        except ZeroDivisionError:
            logging.getLogger("bml_assets.replay.server").exception("the handler failed")
        """
    )
    assert lines[0] == "ERROR:bml_assets.replay.server: the handler failed"
    assert lines[1] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert not any("op chatter" in line for line in lines)


def test_the_live_collectors_log_is_timed_and_from_info() -> None:
    lines = _stderr(
        """
        import logging
        from bml_assets.orchestration.console import console_logging
        console_logging()
        console_logging(timed_info=True)  # live-collect, after the CLI's start
        logging.getLogger("bml.live").info("shard 0 connected")
        logging.getLogger("bml.live").debug("not shown")
        """
    )
    assert len(lines) == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bml.live: shard 0 connected", lines[0]), lines


def test_a_root_logger_with_handlers_is_left_alone() -> None:
    assert _stderr(
        """
        import logging, sys
        logging.basicConfig(stream=sys.stderr, format="mine %(name)s %(message)s")
        from bml_assets.orchestration.console import console_logging
        console_logging()
        logging.getLogger("bml_assets.orchestration.runner").warning("x")
        """
    ) == ["mine bml_assets.orchestration.runner x"]


def test_the_bml_command_installs_it() -> None:
    # `bml columns` runs main(): the console is in place before any command's code.
    assert _stderr(
        """
        import logging, sys
        from bml_assets.cli import main
        sys.argv = ["bml", "columns"]
        try:
            main()
        except SystemExit:
            pass
        logging.warning("after the command")
        logging.getLogger("bml_assets.orchestration.backfill").warning("2024-05-01|BTCUSDT: plain")
        """
    ) == ["WARNING:root: after the command", "2024-05-01|BTCUSDT: plain"]
