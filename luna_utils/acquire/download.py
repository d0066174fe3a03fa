"""Streamed, resumable transfers into `<name>.part`, with retries and an MD5 computed on the way.

A transfer appends to `<dest>/<name>.part`. When the part file exists, the transfer requests the
rest from its size on (HTTP `Range: bytes=N-`) and hashes the existing bytes first, so the
MD5 covers the whole file without a second read. A source that ignores the offset (HTTP 200 instead
of 206) makes the transfer truncate the part file and start again from byte 0.

Transient failures (dropped connections, timeouts, HTTP 408, 429 and 5xx, a body shorter than its
Content-Length) are retried with exponential backoff, resuming from the bytes already written.
Permanent ones (HTTP 404) are raised at once. The count of failures in a row resets whenever an
attempt writes bytes, so a long download over a flaky link keeps making progress.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from luna_utils.acquire.catalog import CatalogEntry
from luna_utils.acquire.errors import AcquireError, CancelledError, RangeNotSatisfiableError, TransientError
from luna_utils.acquire.sources import OpenedFile, Source
from luna_utils.acquire.verify import CHUNK_BYTES
from luna_utils.acquire.bars import file_progress

logger = logging.getLogger(__name__)

PART_SUFFIX = ".part"


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry transient failures.

    Attributes:
        retries: Failed attempts in a row tolerated before giving up (attempts = retries + 1).
        backoff_s: Wait before the first retry, in seconds; it doubles with each failure in a row.
        max_backoff_s: Maximum wait between attempts, in seconds, also for a server's Retry-After.
    """

    retries: int = 5
    backoff_s: float = 2.0
    max_backoff_s: float = 60.0

    def delay_s(self, failures: int, retry_after_s: float | None = None) -> float:
        """Return the wait before the next attempt after `failures` failures in a row."""
        delay = self.backoff_s * 2 ** (failures - 1)
        if retry_after_s is not None:
            delay = max(delay, retry_after_s)
        return min(delay, self.max_backoff_s)


class SharedBar:
    """A progress bar that several worker threads update; None disables it."""

    def __init__(self, bar=None) -> None:
        self._bar = bar
        self._lock = threading.Lock()

    def update(self, n: int) -> None:
        """Advance the bar by n bytes."""
        if self._bar is not None:
            with self._lock:
                self._bar.update(n)

    def grow(self, n: int) -> None:
        """Raise the bar's total by n bytes, when a transfer has to start again."""
        if self._bar is not None and self._bar.total is not None:
            with self._lock:
                self._bar.total += n
                self._bar.refresh()


@dataclass
class Transfer:
    """A completed transfer into a part file.

    Attributes:
        part: The `<name>.part` file holding the whole file.
        size: Size of the part file in bytes.
        md5: MD5 of the whole part file, lower-case hex.
        resumed_from: Byte offset the transfer continued from (0 for a fresh start).
        bytes_transferred: Bytes received in this call, over all attempts.
        notes: Events worth reporting, such as a source that ignored the offset.
    """

    part: Path
    size: int
    md5: str
    resumed_from: int
    bytes_transferred: int
    notes: list[str] = field(default_factory=list)

    @property
    def how(self) -> str:
        """"resumed" or "downloaded"."""
        return "resumed" if self.resumed_from > 0 else "downloaded"


def part_path(dest: Path, name: str) -> Path:
    """Return the part file of a transfer in progress."""
    return Path(dest) / f"{name}{PART_SUFFIX}"


def _hash_existing(path: Path, hasher) -> None:
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            hasher.update(chunk)


class _PartWriter:
    """The part file, its running MD5 and its progress bars, kept consistent with each other."""

    def __init__(self, entry: CatalogEntry, part: Path, overall: SharedBar, cancel: threading.Event | None) -> None:
        self.part = part
        self.overall = overall
        self.cancel = cancel
        self.hasher = hashlib.md5()
        self.offset = part.stat().st_size if part.exists() else 0
        if entry.size is not None and self.offset > entry.size:
            logger.warning(
                "%s has %d bytes, more than the expected %d; starting again from byte 0.",
                part.name, self.offset, entry.size,
            )
            part.unlink()
            self.offset = 0
        if self.offset:
            _hash_existing(part, self.hasher)
        self.bar = file_progress(total=entry.size, initial=self.offset, desc=entry.name, unit="B", unit_scale=True)

    def restart(self) -> None:
        """Discard the bytes written so far."""
        discarded = self.offset
        self.part.write_bytes(b"")
        self.hasher = hashlib.md5()
        self.offset = 0
        self.bar.reset(total=self.bar.total)
        self.overall.grow(discarded)

    def append(self, opened: OpenedFile, location: str) -> int:
        """Copy the stream to the end of the part file; return the bytes received.

        Raises:
            TransientError: If reading fails or the stream ends before its announced length.
        """
        received = 0
        with open(self.part, "ab") as out:
            while True:
                if self.cancel is not None and self.cancel.is_set():
                    raise CancelledError(f"{self.part.name}: stopped at byte {self.offset}; the next run resumes there.")
                try:
                    chunk = opened.stream.read(CHUNK_BYTES)
                except (OSError, http.client.HTTPException) as error:
                    raise _Interrupted(f"{location}: connection lost at byte {self.offset}: {error!r}", received) from error
                if not chunk:
                    break
                out.write(chunk)
                self.hasher.update(chunk)
                self.offset += len(chunk)
                received += len(chunk)
                self.bar.update(len(chunk))
                self.overall.update(len(chunk))

        if opened.length is not None and received < opened.length:
            raise _Interrupted(
                f"{location}: connection closed after {received} of {opened.length} bytes "
                f"(file offset {self.offset})",
                received,
            )
        return received


class _Interrupted(TransientError):
    """A stream that broke after delivering `received` bytes."""

    def __init__(self, message: str, received: int) -> None:
        super().__init__(message)
        self.received = received


def download_to_part(
    entry: CatalogEntry,
    source: Source,
    dest: Path,
    policy: RetryPolicy = RetryPolicy(),
    overall: SharedBar | None = None,
    sleep: Callable[[float], None] = time.sleep,
    cancel: threading.Event | None = None,
) -> Transfer:
    """Fetch one file into `<dest>/<name>.part`, resuming a part file left by an earlier run.

    Args:
        entry: The file to fetch. Its size, when known, marks the part file as complete.
        source: Where to read it from.
        dest: Destination folder (it must exist).
        policy: Retry settings for transient failures.
        overall: Bar counting the bytes of every file, shared between threads.
        sleep: Function that waits between attempts, replaceable in tests.
        cancel: Event that stops the transfer between two chunks; the part file is kept.

    Returns:
        The completed transfer. Sizes and MD5 are not checked here; see `verify.verify_file`.

    Raises:
        AcquireError: On a permanent failure, or when the retries are used up.
        CancelledError: When cancel is set.
    """
    overall = overall or SharedBar()
    writer = _PartWriter(entry, part_path(dest, entry.name), overall, cancel)
    resumed_from = writer.offset
    transferred = 0
    failures = 0
    notes: list[str] = []

    with writer.bar:
        while entry.size is None or writer.offset < entry.size:
            try:
                opened = source.open(entry, writer.offset)
            except RangeNotSatisfiableError as error:
                if error.total_bytes is not None and error.total_bytes == writer.offset:
                    break  # the part file already contains the whole file
                notes.append(f"source rejected offset {writer.offset}; restarted from byte 0")
                writer.restart()
                resumed_from = 0
                failures = _count_failure(entry, error, failures, policy, sleep)
                continue
            except TransientError as error:
                failures = _count_failure(entry, error, failures, policy, sleep)
                continue

            try:
                if opened.start != writer.offset:
                    if opened.start != 0:
                        raise AcquireError(
                            f"{source.location(entry)} returned data from byte {opened.start} for a request "
                            f"starting at byte {writer.offset}. The server's Range support is broken; "
                            "delete the .part file and try another source."
                        )
                    notes.append(f"source ignored the request to resume at byte {writer.offset}; restarted from byte 0")
                    writer.restart()
                    resumed_from = 0
                transferred += writer.append(opened, source.location(entry))
                break
            except _Interrupted as error:
                transferred += error.received
                if error.received:
                    notes.append(f"connection broke at byte {writer.offset}; continued from there")
                    failures = 0
                failures = _count_failure(entry, error, failures, policy, sleep)
            finally:
                opened.close()

    return Transfer(
        part=writer.part,
        size=writer.offset,
        md5=writer.hasher.hexdigest(),
        resumed_from=resumed_from,
        bytes_transferred=transferred,
        notes=notes,
    )


def _count_failure(
    entry: CatalogEntry,
    error: AcquireError,
    failures: int,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> int:
    """Wait before the next attempt and return the new failure count, or raise when out of retries."""
    failures += 1
    if failures > policy.retries:
        raise AcquireError(
            f"{entry.name}: giving up after {failures} failed attempts in a row; last error: {error}. "
            "Run the command again later: it resumes from the bytes already downloaded."
        ) from error
    retry_after = error.retry_after_s if isinstance(error, TransientError) else None
    delay = policy.delay_s(failures, retry_after)
    logger.warning("%s: %s; retry %d of %d in %.1f s.", entry.name, error, failures, policy.retries, delay)
    sleep(delay)
    return failures
