"""Tests of luna_utils.inventory on a tiny dataset made in the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils.dataset import load_real_table
from luna_utils.inventory import (
    GEOMETRY_COLUMNS,
    check_pairs,
    compare_geometry,
    compare_trees,
    file_inventory,
    flipped_scans,
    geometry_summary,
    header_geometry_table,
    inventory_summary,
    tree_checksums,
)


def write_scan(folder: Path, uid: str, shape_zyx, spacing_xyz_mm, direction=None, compressed=False, dtype=np.int16):
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, dtype=dtype))
    image.SetSpacing(spacing_xyz_mm)
    image.SetOrigin((-100.0, -120.0, -300.0))
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(folder / f"{uid}.mhd"), useCompression=compressed)


@pytest.fixture
def dataset(tmp_path):
    root = tmp_path / "dataset"
    write_scan(root / "subset0", "1.1", (5, 8, 10), (0.7, 0.7, 2.5))
    write_scan(root / "subset0", "1.2", (3, 8, 10), (0.6, 0.6, 1.25), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    write_scan(root / "subset1", "2.1", (4, 6, 6), (0.8, 0.8, 2.0), direction=(0, 1, 0, 1, 0, 0, 0, 0, 1))
    write_scan(root / "subset1", "2.2", (4, 6, 6), (0.8, 0.8, 2.0))
    write_scan(root / "subset1", "2.3", (4, 6, 6), (0.8, 0.8, 2.0))
    write_scan(root / "seg-lungs-LUNA16", "1.1", (5, 8, 10), (0.7, 0.7, 2.5), compressed=True, dtype=np.uint8)

    raw = root / "subset1" / "2.2.raw"
    raw.write_bytes(raw.read_bytes()[:100])  # truncated
    (root / "subset1" / "2.3.raw").unlink()  # missing
    (root / "subset1" / "9.9.raw").write_bytes(b"\x00" * 16)  # no header
    (root / "subset1" / "bad.mhd").write_text("this is not a header\n")
    (root / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    (root / ".luna_acquire").mkdir()
    (root / ".luna_acquire" / "subset0.zip.verified.json").write_text("{}")
    return root


def test_file_inventory(dataset):
    inventory = file_inventory(dataset)

    assert "annotations.csv" in set(inventory["path"])
    assert not inventory["path"].str.contains("luna_acquire").any()
    row = inventory.set_index("path").loc["subset0/1.1.raw"]
    assert (row["folder"], row["extension"], row["size_bytes"]) == ("subset0", ".raw", 5 * 8 * 10 * 2)
    assert inventory.set_index("path").loc["annotations.csv", "folder"] == "."


def test_inventory_summary_counts(dataset):
    summary = inventory_summary(file_inventory(dataset)).set_index(["folder", "extension"])

    assert summary.loc[("subset0", ".mhd"), "files"] == 2
    assert summary.loc[("subset0", ".raw"), "size_bytes"] == (5 + 3) * 8 * 10 * 2
    assert summary.loc[("subset1", ".mhd"), "files"] == 4
    assert summary.loc[("seg-lungs-LUNA16", ".zraw"), "files"] == 1


def test_check_pairs_statuses(dataset):
    pairs = check_pairs(dataset)
    status = dict(zip(pairs["folder"] + "/" + pairs["seriesuid"], pairs["status"]))

    assert status == {
        "seg-lungs-LUNA16/1.1": "ok",
        "subset0/1.1": "ok",
        "subset0/1.2": "ok",
        "subset1/2.1": "ok",
        "subset1/2.2": "truncated",
        "subset1/2.3": "data file missing",
        "subset1/bad": "unreadable header",
        "subset1/9.9": "data file without header",
    }
    truncated = pairs.set_index("seriesuid").loc["2.2"]
    assert (truncated["expected_bytes"], truncated["actual_bytes"]) == (4 * 6 * 6 * 2, 100)
    mask = pairs.set_index("folder").loc["seg-lungs-LUNA16"]
    assert bool(mask["compressed"]) is True
    assert pd.isna(mask["expected_bytes"])


def test_check_pairs_flags_oversized_data(dataset):
    raw = dataset / "subset0" / "1.1.raw"
    raw.write_bytes(raw.read_bytes() + b"\x00\x00")

    pairs = check_pairs(dataset).set_index(["folder", "seriesuid"])

    assert pairs.loc[("subset0", "1.1"), "status"] == "larger than expected"


def test_header_geometry_table(dataset):
    geometry = header_geometry_table(dataset)

    assert list(geometry.columns) == GEOMETRY_COLUMNS
    assert list(geometry["seriesuid"]) == ["1.1", "1.2", "2.1", "2.2", "2.3"]
    first = geometry.iloc[0]
    assert (first["dim_x"], first["dim_y"], first["n_slices"]) == (10, 8, 5)
    assert first[["sp_x", "sp_y", "sp_z"]].tolist() == pytest.approx([0.7, 0.7, 2.5])
    assert first[["origin_x", "origin_y", "origin_z"]].tolist() == pytest.approx([-100.0, -120.0, -300.0])
    flipped = geometry.set_index("seriesuid").loc["1.2"]
    assert flipped[["flip_x", "flip_y", "flip_z"]].tolist() == [-1.0, -1.0, 1.0]
    assert bool(flipped["axis_aligned"]) is True
    assert bool(geometry.set_index("seriesuid").loc["2.1", "axis_aligned"]) is False
    assert geometry.set_index("seriesuid").loc["2.2", "raw_bytes"] == 100
    assert pd.isna(geometry.set_index("seriesuid").loc["2.3", "raw_bytes"])
    assert geometry.set_index("seriesuid").loc["2.3", "expected_raw_bytes"] == 4 * 6 * 6 * 2


def test_empty_dataset(tmp_path):
    assert file_inventory(tmp_path).empty
    assert check_pairs(tmp_path).empty
    geometry = header_geometry_table(tmp_path)
    assert geometry.empty
    assert list(geometry.columns) == GEOMETRY_COLUMNS


def test_geometry_summary_and_flips(dataset):
    geometry = header_geometry_table(dataset)

    summary = geometry_summary(geometry)

    assert summary["scans"] == 5
    assert summary["flipped scans"] == 1
    assert summary["oblique scans (not axis-aligned)"] == 1
    assert summary["slices (min / median / max)"] == "3 / 4 / 5"
    assert list(flipped_scans(geometry)["seriesuid"]) == ["1.2"]


def test_real_table_has_fourteen_flipped_scans():
    real = load_real_table("luna16_scans_metadata")

    flipped = flipped_scans(real)

    assert len(flipped) == 14
    assert set(flipped["flip_z"]) == {1.0}
    assert geometry_summary(real)["scans"] == 888


def test_compare_geometry_columns(dataset):
    real = load_real_table("luna16_scans_metadata")

    table = compare_geometry(header_geometry_table(dataset), real)

    assert list(table.columns) == ["real LUNA16", "local dataset"]
    assert table.loc["scans", "real LUNA16"] == 888
    assert table.loc["scans", "local dataset"] == 5


def test_compare_trees_statuses(tmp_path):
    reference = tmp_path / "reference"
    other = tmp_path / "other"
    for folder in (reference, other):
        (folder / "subset0").mkdir(parents=True)
        (folder / "subset0" / "same.raw").write_bytes(b"abc")
    (reference / "subset0" / "changed.raw").write_bytes(b"abc")
    (other / "subset0" / "changed.raw").write_bytes(b"abd")
    (reference / "only_reference.csv").write_text("x")
    (other / "only_other.zip").write_text("y")
    (other / ".luna_acquire").mkdir()
    (other / ".luna_acquire" / "state.json").write_text("{}")

    table = compare_trees(reference, other)

    assert dict(zip(table["path"], table["status"])) == {
        "only_other.zip": "extra",
        "only_reference.csv": "missing",
        "subset0/changed.raw": "different",
        "subset0/same.raw": "same",
    }


def test_tree_checksums_values(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"hello")

    table = tree_checksums(tmp_path)

    assert table.to_dict("records") == [{"path": "a.txt", "size_bytes": 5, "md5": "5d41402abc4b2a76b9719d911017c592"}]
