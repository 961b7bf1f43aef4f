"""The one error a damaged or hostile ``.pjz`` file raises."""


class CorruptFileError(ValueError):
    """The file is truncated, damaged, of an unknown version, or claims impossible sizes."""
