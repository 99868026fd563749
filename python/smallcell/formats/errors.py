"""The one error type of the format layer."""

from __future__ import annotations


class FormatError(ValueError):
    """A file does not follow its format; the message names the file and the line."""

    def __init__(self, path: object, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")
