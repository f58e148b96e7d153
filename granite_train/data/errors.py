"""Errors that stop a run because of its data, each worded so that the user can fix the data.

They are plain ``ValueError`` s with a single message argument, so that a DataLoader worker can
re-raise them in the main process and the command line can print the message alone (exit 2).
"""

from __future__ import annotations


class DataError(ValueError):
    """The data cannot produce what the run needs: a source with no usable example, a manifest
    that cannot be read, a path that does not exist, a held-out split that is empty or takes all."""

    def __init__(self, message: str):
        super().__init__(message)


def data_error_message(err: BaseException) -> str | None:
    """The user-facing message of a :class:`DataError`, also when a DataLoader worker re-raised it
    (the worker's traceback is wrapped around the message then); ``None`` for any other error."""
    text = str(err)
    if isinstance(err, DataError) and "Original Traceback" not in text:
        return text
    marker = "DataError: "
    if "Original Traceback" in text and marker in text:
        return text.rsplit(marker, 1)[1].strip()
    return None


__all__ = ["DataError", "data_error_message"]
