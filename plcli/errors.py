"""Error types that the CLI turns into one-line messages and exit codes.

``UserError`` (exit 2) is for anything the user can fix: bad input, bad options, unwritable
paths. Everything else is an internal error (exit 1).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input or environment; printed without a traceback, exit code 2."""

    exit_code = 2


class DataError(UserError):
    """Invalid data: a manifest row, an audio file, a chat export."""
