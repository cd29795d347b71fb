"""The one error of FLAME file reading: `FlameFileError`, a one-line message naming the file."""
from __future__ import annotations

import os


class FlameFileError(ValueError):
    """A FLAME file that is missing, unreadable or not what FLAME ships.

    The message is one line: the file's path, a colon, then what is wrong (and what was expected).

    Attributes:
      path: the offending file or folder.
      problem: what is wrong with it.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        # One line always: the message goes to logs and CLI output as a single record.
        self.problem = " ".join(str(problem).split())
        shown = str(self.path).replace("\n", "\\n").replace("\r", "\\r")
        super().__init__(f"{shown}: {self.problem}")

    def __reduce__(self):  # keeps the two-argument constructor picklable (multiprocessing)
        return (type(self), (self.path, self.problem))


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
