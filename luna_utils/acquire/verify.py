"""Size and MD5 checks of downloaded files, and setting aside the files that fail them."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from luna_utils.acquire.catalog import CatalogEntry
from luna_utils.acquire.bars import file_progress

logger = logging.getLogger(__name__)

# Bytes read per call when hashing or copying.
CHUNK_BYTES = 1 << 20

# Files smaller than this are hashed without a progress bar.
HASH_BAR_MIN_BYTES = 64 << 20


@dataclass(frozen=True)
class Verification:
    """The outcome of checking one file against its catalog entry.

    Attributes:
        name: File name.
        size: Actual size in bytes.
        md5: Actual MD5, lower-case hex.
        expected_size: Size from the catalog or manifest, or None when unknown.
        expected_md5: MD5 from the catalog or manifest, or None when unknown.
    """

    name: str
    size: int
    md5: str
    expected_size: int | None
    expected_md5: str | None

    @property
    def size_ok(self) -> bool:
        """Whether the size matches, or no size is known."""
        return self.expected_size is None or self.size == self.expected_size

    @property
    def md5_state(self) -> str:
        """"match", "mismatch", or "unavailable" when no MD5 is known."""
        if self.expected_md5 is None:
            return "unavailable"
        return "match" if self.md5 == self.expected_md5 else "mismatch"

    @property
    def ok(self) -> bool:
        """Whether nothing known contradicts the file."""
        return self.size_ok and self.md5_state != "mismatch"

    def summary(self) -> str:
        """Return the outcome in a few words, for the final table."""
        if not self.size_ok:
            return "size mismatch"
        if self.md5_state == "match":
            return "md5 ok"
        if self.md5_state == "mismatch":
            return "md5 mismatch"
        return "md5 unavailable" if self.expected_size is None else "size ok, md5 unavailable"

    @property
    def aside_suffix(self) -> str:
        """Suffix given to a file that failed: `.size-mismatch` or `.md5-mismatch`."""
        return ".size-mismatch" if not self.size_ok else ".md5-mismatch"


def verify_file(entry: CatalogEntry, size: int, md5: str) -> Verification:
    """Compare a file's size and MD5 with what the entry expects."""
    return Verification(entry.name, size, md5, entry.size, entry.md5)


def md5_of_file(path: Path, desc: str | None = None) -> str:
    """Return the MD5 of a file as lower-case hex, with a progress bar for large files."""
    size = path.stat().st_size
    hasher = hashlib.md5()
    bar = file_progress(total=size, desc=desc or f"md5 {path.name}", unit="B", unit_scale=True, disable=size < HASH_BAR_MIN_BYTES)
    with bar, open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            hasher.update(chunk)
            bar.update(len(chunk))
    return hasher.hexdigest()


def set_aside(path: Path, verification: Verification) -> Path:
    """Rename a file that failed its checks to `<name>.md5-mismatch` (or `.size-mismatch`).

    An older file set aside under the same name is replaced.

    Returns:
        The new path, in the same folder.
    """
    aside = path.with_name(verification.name + verification.aside_suffix)
    os.replace(path, aside)
    return aside


def mismatch_message(verification: Verification, aside: Path) -> str:
    """Return the error text for a file that failed its checks: both values and what to do next."""
    if not verification.size_ok:
        found = f"has {verification.size} bytes, but {verification.expected_size} are expected"
    else:
        found = f"has MD5 {verification.md5}, but {verification.expected_md5} is expected"
    return (
        f"{verification.name} {found}. It was kept as {aside.name} and not extracted. Run the "
        "command again to download it afresh; if the mismatch repeats, the source copy or the "
        "expected checksum is wrong: compare with the file list on the Zenodo record page."
    )
