"""Exceptions raised while fetching, verifying and extracting LUNA16 files."""

from __future__ import annotations

from luna_utils.errors import DatasetError


class AcquireError(DatasetError):
    """A LUNA16 file could not be selected, downloaded, verified or extracted."""


class TransientError(AcquireError):
    """A failure that may pass on retry: a dropped connection, a timeout, HTTP 408, 429 or 5xx.

    Attributes:
        retry_after_s: Seconds the server asked the client to wait (HTTP Retry-After), or None.
    """

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RangeNotSatisfiableError(AcquireError):
    """The server returned HTTP 416 for a Range request: the offset is at or past the file's end.

    Attributes:
        total_bytes: The file size the server reported in Content-Range (`bytes */N`), or None.
    """

    def __init__(self, message: str, total_bytes: int | None) -> None:
        super().__init__(message)
        self.total_bytes = total_bytes


class UnsafeArchiveError(AcquireError):
    """A ZIP archive has a member whose path would land outside the destination folder."""


class CancelledError(AcquireError):
    """The run was interrupted (for example with Ctrl-C); finished work and part files are kept."""
