"""Reading a ``.pjz`` file for a command: a damaged or missing file is one line and exit 2."""

from __future__ import annotations

import sys
from typing import Any


class FileProblem(Exception):
    """A file the command was given cannot be used; ``str`` is the one line to print."""


def read(command: str, path: str, *, info: bool = False) -> Any:
    """``penjing.load(path)`` (or ``inspect`` when ``info``), turning every reason the file
    cannot be read into :class:`FileProblem` with a one-line message."""
    from penjing.codec import CorruptFileError, inspect, load

    try:
        return inspect(path) if info else load(path)
    except CorruptFileError as exc:
        raise FileProblem(f"penjing {command}: error: {path} is damaged or not a .pjz file: {exc}") from None
    except (OSError, MemoryError) as exc:
        raise FileProblem(f"penjing {command}: error: cannot read {path}: {exc}") from None


def report(problem: FileProblem) -> int:
    print(problem, file=sys.stderr)
    return 2
