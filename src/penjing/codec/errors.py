"""The one error a damaged or hostile ``.pjz`` file raises."""

from __future__ import annotations


class CorruptFileError(ValueError):
    """The file is truncated, damaged, of an unknown version, or claims impossible sizes.

    ``offset`` is the byte of the file where the bad field starts (``None`` when the problem
    is not one field, e.g. a checksum over a whole section); the message names the field and
    what was wrong with it, and ends with ``(at byte N)`` when the offset is known.
    """

    def __init__(self, message: str, offset: int | None = None):
        self.offset = offset
        self.detail = message
        super().__init__(message if offset is None else f"{message} (at byte {offset})")
