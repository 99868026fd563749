"""The error types the command line turns into one clear message (no traceback)."""

from __future__ import annotations

import errno
import re

# Write errors that mean "no room", not "this task is broken": the run stops and resumes
# once space is freed. Quotas (EDQUOT) are what clusters' home and project folders hit.
_NO_ROOM = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}


class SmallcellError(Exception):
    """A user-facing error: the message names the file, key or task and what was expected."""


class DiskFull(SmallcellError):
    """No space or quota left while writing. Never a task's failure: handlers that turn
    crashes into failed tasks re-raise it (`reraise_disk_full`), so nothing is marked
    failed and the same command resumes once space is freed."""

    @classmethod
    def of(cls, path: object, exc: OSError) -> DiskFull:
        where = re.sub(r"/\.([^/]+)\.tmp\.\d+$", r"/\1", str(path))  # not the temporary
        return cls(f"{where}: {_NO_ROOM[exc.errno]} while writing; free some space and run "
                   "the same command again (finished work is kept)")


def disk_full(exc: BaseException, path: object = None) -> DiskFull | None:
    """The DiskFull that `exc` is or hides in its chain (a full disk or quota), or None. It
    names the file the error names, else `path` (the file or folder being written)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, DiskFull):
            return seen
        if isinstance(seen, OSError) and seen.errno in _NO_ROOM:
            full = DiskFull.of(seen.filename or path or "a file", seen)
            full.__cause__ = exc
            return full
        seen = seen.__cause__ or seen.__context__
    return None


def reraise_disk_full(exc: BaseException, path: object = None) -> None:
    """Raise `disk_full(exc, path)` when there is one: for handlers that would otherwise
    record the error as a failure of the task or run."""
    full = disk_full(exc, path)
    if full is not None:
        raise full
