"""The problems a ``bml`` command reports to its user, raised by the orchestration.

What belongs here: the exception types a caller maps to a message and an exit code
(the CLI: ``BadRequest`` is a usage error, any other ``CommandError`` a failure).
What stays out: the errors of the layers below (the ledger's version, the exchange,
the settings), which keep their own types.
"""

from __future__ import annotations


class CommandError(Exception):
    """A problem the user can fix (unknown symbol, a lake root that cannot be written…)."""


class BadRequest(CommandError):
    """What was asked for cannot be: a reversed range, a range ending after today, an unknown symbol."""


class UnknownSymbol(BadRequest):
    pass


class LakeRootNotWritable(CommandError):
    pass
