"""Orchestration: what the ``bml`` commands do, below the CLI and above the Dagster layer.

- ``runner``: the one in-process run helper (a job of the real definitions per partition,
  the retry of a lost commit race, a failed run as one line);
- ``plan``: ranges, targets from scan reports, the backfill plan;
- ``estimate``: what a plan will cost (download, REST weight, time): the ``--dry-run`` summary;
- ``backfill``: executing a plan and the scan → plan → execute → rescan loop, as events;
- ``hot``: the hot pass (``run-once``);
- ``scans``: a range's scan, its problems on listed days, the sweep of stray files;
- ``state``: the lake root, the ledger, the symbols asked for, the watermark and coverage reports;
- ``symbols``: the symbol universe (``exchangeInfo``) and the listing rules;
- ``daemon``: ``dagster dev`` as a child process;
- ``orphans``: releasing runs left unfinished (cut off by PostgreSQL, or by a killed process);
- ``errors``: the problems a command reports to its user;
- ``console``: where a ``bml`` process's log lines go (stderr), set up first by the CLI and by
  the backfill's worker processes, which cannot import ``cli.py``.

Nothing here parses arguments or prints: that is ``cli.py``'s (log lines aside: the runner
warns through ``logging`` when it releases a run or runs a partition again).
"""
