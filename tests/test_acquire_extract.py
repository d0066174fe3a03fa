"""Tests of luna_utils.acquire.extract: unsafe names, damaged members, ZIP64, skipping and records."""

from __future__ import annotations

import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from luna_utils.acquire import extract
from luna_utils.acquire.errors import AcquireError, CancelledError, UnsafeArchiveError
from luna_utils.acquire.extract import (
    TEMP_SUFFIX,
    extract_archive,
    extraction_complete,
    member_target,
    record_extraction,
)


def scan_members(uid: str = "1.2.3", shape_zyx=(3, 8, 9)) -> dict[str, bytes]:
    """Return the .mhd and .raw bytes of a small int16 scan, as members of `subset0/`."""
    header = (
        "ObjectType = Image\nNDims = 3\nBinaryData = True\nBinaryDataByteOrderMSB = False\n"
        "CompressedData = False\nTransformMatrix = 1 0 0 0 1 0 0 0 1\nOffset = 0 0 0\n"
        "ElementSpacing = 1 1 2.5\n"
        f"DimSize = {shape_zyx[2]} {shape_zyx[1]} {shape_zyx[0]}\n"
        f"ElementType = MET_SHORT\nElementDataFile = {uid}.raw\n"
    )
    raw = np.arange(np.prod(shape_zyx), dtype="<i2").tobytes()
    return {f"subset0/{uid}.mhd": header.encode(), f"subset0/{uid}.raw": raw}


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED, force_zip64=False) -> Path:
    with zipfile.ZipFile(path, "w", compression=compression) as archive:
        for name, data in members.items():
            with archive.open(zipfile.ZipInfo(name), "w", force_zip64=force_zip64) as out:
                out.write(data)
    return path


@pytest.mark.parametrize(
    "name",
    ["../evil.raw", "subset0/../../evil.raw", "subset0/../subset1/inside.raw", "/etc/evil", "\\evil", "C:evil", "C:/evil", "a\\..\\..\\evil", "a/\x00b"],
)
def test_member_target_rejects_escaping_names(tmp_path, name):
    with pytest.raises(UnsafeArchiveError):
        member_target(tmp_path, name)


@pytest.mark.parametrize("name", ["subset0/a.raw", "a.csv", "x/./y.csv", "dir/..hidden"])
def test_member_target_accepts_inner_names(tmp_path, name):
    target = member_target(tmp_path, name)

    assert target.resolve().is_relative_to(tmp_path.resolve())


def test_member_target_rejects_symlink_escape(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "link").symlink_to(outside)

    with pytest.raises(UnsafeArchiveError, match="resolves outside"):
        member_target(dest, "link/evil.raw")


def test_extract_writes_scans_and_checks_them(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members)
    dest = tmp_path / "dest"

    result = extract_archive(archive, dest)

    assert result.ok
    assert (result.members, result.written, result.skipped) == (2, 2, 0)
    assert result.bytes_written == sum(len(data) for data in members.values())
    for name, data in members.items():
        assert (dest / name).read_bytes() == data


def test_extract_reads_zip64_archives(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members, force_zip64=True)
    data = archive.read_bytes()
    with zipfile.ZipFile(archive) as opened:
        for info in opened.infolist():
            name_length = int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little")
            extra_start = info.header_offset + 30 + name_length
            assert data[extra_start : extra_start + 2] == b"\x01\x00"  # the ZIP64 extra field id

    result = extract_archive(archive, tmp_path / "dest")

    assert result.ok
    assert result.written == 2


def test_unsafe_archive_writes_nothing(tmp_path):
    archive = make_zip(tmp_path / "evil.zip", {"subset0/fine.csv": b"a", "../outside.csv": b"b"})
    dest = tmp_path / "dest"
    dest.mkdir()

    with pytest.raises(UnsafeArchiveError, match="1 member"):
        extract_archive(archive, dest)

    assert list(dest.iterdir()) == []
    assert not (tmp_path / "outside.csv").exists()


def test_damaged_member_is_reported_and_not_left(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members, compression=zipfile.ZIP_STORED)
    data = bytearray(archive.read_bytes())
    raw = members["subset0/1.2.3.raw"]
    position = data.find(raw[100:140])
    data[position] ^= 0xFF  # one flipped byte inside the stored .raw: its CRC-32 no longer matches
    archive.write_bytes(bytes(data))
    dest = tmp_path / "dest"

    result = extract_archive(archive, dest)

    assert not result.ok
    assert any("1.2.3.raw is damaged" in problem for problem in result.problems)
    assert any("does not exist" in problem for problem in result.problems)  # header without data
    assert not (dest / "subset0" / "1.2.3.raw").exists()
    assert not (dest / "subset0" / ("1.2.3.raw" + TEMP_SUFFIX)).exists()


def test_complete_members_are_skipped(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members)
    dest = tmp_path / "dest"
    extract_archive(archive, dest)

    again = extract_archive(archive, dest)

    assert (again.written, again.skipped) == (0, 2)


def test_same_size_wrong_bytes_is_rewritten(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members)
    dest = tmp_path / "dest"
    extract_archive(archive, dest)
    raw_path = dest / "subset0" / "1.2.3.raw"
    raw_path.write_bytes(b"\x00" * raw_path.stat().st_size)

    again = extract_archive(archive, dest)

    assert (again.written, again.skipped) == (1, 1)
    assert raw_path.read_bytes() == members["subset0/1.2.3.raw"]


def test_large_members_are_skipped_on_size(tmp_path, monkeypatch):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members)
    dest = tmp_path / "dest"
    extract_archive(archive, dest)
    raw_path = dest / "subset0" / "1.2.3.raw"
    raw_path.write_bytes(b"\x00" * raw_path.stat().st_size)
    monkeypatch.setattr(extract, "CRC_CHECK_MAX_BYTES", 10)

    again = extract_archive(archive, dest)

    assert again.skipped == 2  # above the CRC limit only the size is compared


def test_stale_temporary_file_is_removed(tmp_path):
    members = scan_members()
    archive = make_zip(tmp_path / "subset0.zip", members)
    dest = tmp_path / "dest"
    extract_archive(archive, dest)
    stale = dest / "subset0" / ("1.2.3.raw" + TEMP_SUFFIX)
    stale.write_bytes(b"half")

    extract_archive(archive, dest)

    assert not stale.exists()


def test_not_a_zip_raises(tmp_path):
    archive = tmp_path / "subset0.zip"
    archive.write_bytes(b"PK\x03\x04 not really")

    with pytest.raises(AcquireError, match="not a readable ZIP archive"):
        extract_archive(archive, tmp_path / "dest")


def test_too_little_space_raises_before_writing(tmp_path, monkeypatch):
    archive = make_zip(tmp_path / "subset0.zip", scan_members())
    dest = tmp_path / "dest"
    dest.mkdir()
    usage = extract.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(extract.shutil, "disk_usage", lambda path: usage._replace(free=10))

    with pytest.raises(AcquireError, match="needs"):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []


def test_extraction_record_tracks_files(tmp_path):
    archive = make_zip(tmp_path / "subset0.zip", scan_members())
    dest = tmp_path / "dest"
    extract_archive(archive, dest)

    assert not extraction_complete(dest, "subset0.zip", None)
    record_extraction(dest, archive, "c" * 32)
    assert extraction_complete(dest, "subset0.zip", None)
    assert extraction_complete(dest, "subset0.zip", "c" * 32)
    assert not extraction_complete(dest, "subset0.zip", "d" * 32)

    (dest / "subset0" / "1.2.3.raw").write_bytes(b"short")
    assert not extraction_complete(dest, "subset0.zip", None)


def test_cancel_stops_between_members(tmp_path):
    archive = make_zip(tmp_path / "subset0.zip", scan_members())
    cancel = threading.Event()
    cancel.set()

    with pytest.raises(CancelledError, match="stopped"):
        extract_archive(archive, tmp_path / "dest", cancel=cancel)
    assert not list((tmp_path / "dest").rglob("*.raw"))
