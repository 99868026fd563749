"""The error type the command line turns into one clear message (no traceback)."""

from __future__ import annotations


class SmallcellError(Exception):
    """A user-facing error: the message names the file, key or task and what was expected."""
