"""Safe, restartable extraction of the LUNA16 ZIP archives into the dataset folder.

Each archive contains its own top folder (`subset0.zip` contains `subset0/<seriesuid>.mhd` and
`.raw`), so each is extracted into the dataset root. Extraction:

* rejects the whole archive before writing anything if a member name is absolute or contains `..`;
* skips members already on disk with the right size (and CRC-32, for members small enough that
  reading them again is cheap);
* writes each member to `<name>.extracting` and renames it once complete, so an interrupted run
  never leaves a truncated `.raw` under its final name. Data files come before `.mhd` headers, so
  a header never appears before its data;
* checks every `.mhd` afterwards: its data file exists with the size DimSize requires.

`zipfile` reads ZIP64 archives and checks each member's CRC-32 as it reads it, so a damaged
member raises instead of being written.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from luna_utils.acquire import state
from luna_utils.acquire.errors import AcquireError, CancelledError, UnsafeArchiveError
from luna_utils.acquire.verify import CHUNK_BYTES
from luna_utils.errors import MhdError
from luna_utils.mhd import check_data_file, read_header
from luna_utils.acquire.bars import file_progress

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".extracting"

# Members up to this size are compared by CRC-32 as well as size before being skipped.
CRC_CHECK_MAX_BYTES = 8 << 20


@dataclass
class ExtractResult:
    """Counts and problems of one extraction.

    Attributes:
        archive: Archive file name.
        members: Number of file members in the archive.
        written: Members written in this run.
        skipped: Members already complete on disk.
        bytes_written: Uncompressed bytes written.
        problems: Damaged members and incomplete scans; empty when extraction is verified.
    """

    archive: str
    members: int = 0
    written: int = 0
    skipped: int = 0
    bytes_written: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every member is on disk and every scan has its complete data file."""
        return not self.problems


def member_target(dest: Path, member_name: str) -> Path:
    """Return where a member lands under dest, rejecting names that would escape it.

    Raises:
        UnsafeArchiveError: If the name is absolute (`/x`, `\\x`, `C:x`), contains a `..`
            component or a NUL byte, or resolves outside dest through a symbolic link.
    """
    normalized = member_name.replace("\\", "/")
    parts = PurePosixPath(normalized).parts
    if (
        normalized.startswith("/")
        or re.match(r"^[A-Za-z]:", normalized)
        or ".." in parts
        or "\x00" in normalized
        or not parts
    ):
        raise UnsafeArchiveError(f"member {member_name!r} has an absolute path or a '..' component")

    target = Path(dest, *parts)
    root = Path(dest).resolve()
    if not target.resolve().is_relative_to(root):
        raise UnsafeArchiveError(f"member {member_name!r} resolves outside {root}")
    return target


def plan_members(archive: zipfile.ZipFile, archive_path: Path, dest: Path) -> list[tuple[zipfile.ZipInfo, Path]]:
    """Map every file member to its target, in extraction order: headers (`.mhd`) last.

    Raises:
        UnsafeArchiveError: If any member would escape dest; nothing has been written then.
    """
    planned = []
    unsafe = []
    for info in archive.infolist():
        try:
            target = member_target(dest, info.filename)
        except UnsafeArchiveError as error:
            unsafe.append(str(error))
            continue
        if not info.is_dir():
            planned.append((info, target))

    if unsafe:
        shown = "; ".join(unsafe[:3]) + (f"; and {len(unsafe) - 3} more" if len(unsafe) > 3 else "")
        raise UnsafeArchiveError(
            f"{archive_path} was not extracted because {len(unsafe)} member(s) would be written "
            f"outside {dest}: {shown}. Nothing was written. Do not use this archive; download it "
            "from the official source."
        )
    planned.sort(key=lambda item: (item[1].suffix.lower() == ".mhd", item[0].filename))
    return planned


def crc32_of_file(path: Path) -> int:
    """Return the CRC-32 of a file, as ZIP stores it."""
    crc = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return crc


def is_member_complete(info: zipfile.ZipInfo, target: Path) -> bool:
    """Return whether target already contains the member: same size, and same CRC-32 if small.

    NOTE: a member above `CRC_CHECK_MAX_BYTES` with the right size but other bytes counts as
    complete. Members are only ever renamed into place after a full, CRC-checked write, so this
    needs a file changed by something else.
    """
    if not target.is_file() or target.stat().st_size != info.file_size:
        return False
    if info.file_size <= CRC_CHECK_MAX_BYTES:
        return crc32_of_file(target) == info.CRC
    return True


def copy_stream(source: BinaryIO, target: BinaryIO, bar) -> int:
    """Copy a member's bytes to its temporary file, advancing bar; return the bytes copied."""
    copied = 0
    while chunk := source.read(CHUNK_BYTES):
        target.write(chunk)
        copied += len(chunk)
        bar.update(len(chunk))
    return copied


def _write_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, bar) -> int:
    """Extract one member through `<target>.extracting`, renamed into place once complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + TEMP_SUFFIX)
    try:
        with archive.open(info) as source, open(temp, "wb") as out:
            copied = copy_stream(source, out, bar)
        os.replace(temp, target)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return copied


def _check_free_space(planned: list[tuple[zipfile.ZipInfo, Path]], dest: Path, archive_path: Path) -> None:
    """Raise if the members that still need writing do not fit on the disk."""
    needed = sum(
        info.file_size
        for info, target in planned
        if not (target.is_file() and target.stat().st_size == info.file_size)
    )
    free = shutil.disk_usage(dest).free
    if needed > free:
        raise AcquireError(
            f"Extracting {archive_path.name} needs {needed / 1e9:.2f} GB, but {dest} has only "
            f"{free / 1e9:.2f} GB free. Free some space and run the command again; members already "
            "extracted are kept."
        )


def extract_archive(
    archive_path: Path, dest: Path, check_disk: bool = True, cancel: threading.Event | None = None
) -> ExtractResult:
    """Extract a ZIP archive into dest, skipping members already complete, then check its scans.

    Args:
        archive_path: The archive.
        dest: Dataset root; member paths are relative to it.
        check_disk: Check that the members still to write fit on the disk first.
        cancel: Event that stops the extraction between two members.

    Returns:
        What was written and skipped, and any problems (damaged members, scans whose data file is
        missing or truncated). The archive is left untouched.

    Raises:
        UnsafeArchiveError: If a member would land outside dest (nothing is written).
        AcquireError: If the file is not a ZIP archive or the disk is too small.
        CancelledError: When cancel is set; members already written are complete.
    """
    archive_path = Path(archive_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    result = ExtractResult(archive=archive_path.name)

    try:
        archive = zipfile.ZipFile(archive_path)
    except (zipfile.BadZipFile, OSError) as error:
        raise AcquireError(
            f"{archive_path} is not a readable ZIP archive ({error}). Delete it and download it again."
        ) from error

    with archive:
        planned = plan_members(archive, archive_path, dest)
        result.members = len(planned)
        if check_disk:
            _check_free_space(planned, dest, archive_path)

        # A temporary file left by a killed run is never complete: remove it.
        for _, target in planned:
            target.with_name(target.name + TEMP_SUFFIX).unlink(missing_ok=True)

        total = sum(info.file_size for info, _ in planned)
        bar = file_progress(total=total, desc=f"extract {archive_path.name}", unit="B", unit_scale=True)
        with bar:
            for info, target in planned:
                if cancel is not None and cancel.is_set():
                    raise CancelledError(f"Extraction of {archive_path.name} stopped; the next run continues it.")
                if is_member_complete(info, target):
                    result.skipped += 1
                    bar.update(info.file_size)
                    continue
                try:
                    result.bytes_written += _write_member(archive, info, target, bar)
                    result.written += 1
                except (zipfile.BadZipFile, zlib.error, EOFError) as error:
                    result.problems.append(f"member {info.filename} is damaged ({error})")
                    logger.error("%s: member %s is damaged: %s", archive_path.name, info.filename, error)

    headers = [target for _, target in planned if target.suffix.lower() == ".mhd"]
    result.problems.extend(check_scan_files(headers))
    return result


def check_scan_files(headers: list[Path]) -> list[str]:
    """Check that each `.mhd` header can be read and has a complete data file.

    Returns:
        One message per problem; empty when every scan is complete.
    """
    problems = []
    for header_path in headers:
        try:
            check_data_file(read_header(header_path))
        except MhdError as error:
            problems.append(str(error))
    return problems


def record_extraction(dest: Path, archive_path: Path, md5: str | None) -> None:
    """Store that an archive was fully extracted: its MD5 and each member's name and size."""
    with zipfile.ZipFile(archive_path) as archive:
        members = [[info.filename, info.file_size] for info in archive.infolist() if not info.is_dir()]
    state.write_record(dest, archive_path.name, "extracted", {"archive_md5": md5, "members": members})


def extraction_complete(dest: Path, name: str, md5: str | None) -> bool:
    """Return whether a stored extraction of `name` is still complete on disk.

    The record must exist, match the archive's expected MD5 when one is known, and every member
    must still be on disk with its size.
    """
    record = state.read_record(dest, name, "extracted")
    if record is None:
        return False
    if md5 is not None and record.get("archive_md5") not in (None, md5):
        return False
    for member_name, size in record.get("members", []):
        try:
            target = member_target(dest, member_name)
        except UnsafeArchiveError:
            return False
        if not target.is_file() or target.stat().st_size != size:
            return False
    return True
