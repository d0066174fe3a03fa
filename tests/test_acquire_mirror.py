"""Tests of write_mirror: layout, manifest, determinism and incremental rebuilds."""

from __future__ import annotations

import hashlib
import os
import zipfile
from pathlib import Path

import pandas as pd

from luna_utils.acquire.mirror import write_mirror
from luna_utils.dataset import SAMPLE_MARKER


def make_dataset(root: Path) -> Path:
    """Create a dataset folder with placeholder files in the extracted LUNA16 layout."""
    files = {
        "subset0/1.1.mhd": "header 1.1",
        "subset0/1.1.raw": "voxels 1.1",
        "subset0/1.2.mhd": "header 1.2",
        "subset0/1.2.raw": "voxels 1.2",
        "subset3/3.1.mhd": "header 3.1",
        "subset3/3.1.raw": "voxels 3.1",
        "candidates_V2/candidates_V2.csv": "seriesuid,coordX,coordY,coordZ,class\n",
        "evaluationScript/annotations/annotations.csv": "a\n",
        "evaluationScript/annotations/seriesuids.csv": "1.1\n1.2\n3.1\n",
        "seg-lungs-LUNA16/1.1.mhd": "mask header",
        "seg-lungs-LUNA16/1.1.zraw": "mask voxels",
        "synthetic/nodules.csv": "truth\n",
        "annotations.csv": "seriesuid,coordX,coordY,coordZ,diameter_mm\n",
        "candidates.csv": "seriesuid,coordX,coordY,coordZ,class\n",
        "sampleSubmission.csv": "seriesuid,coordX,coordY,coordZ,probability\n",
        SAMPLE_MARKER: "synthetic\n",
        "subset0/.hidden": "not packed",
        "subset0/1.3.raw.extracting": "not packed",
        "notes.txt": "not packed",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def members(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as archive:
        return archive.namelist()


def test_mirror_layout_and_manifest(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")

    manifest_path = write_mirror(dataset, tmp_path / "mirror")

    manifest = pd.read_csv(manifest_path)
    assert list(manifest.columns) == ["name", "size", "md5"]
    assert list(manifest["name"]) == [
        SAMPLE_MARKER, "annotations.csv", "candidates.csv", "candidates_V2.zip", "evaluationScript.zip",
        "sampleSubmission.csv", "seg-lungs-LUNA16.zip", "subset0.zip", "subset3.zip", "synthetic.zip",
    ]
    mirror = manifest_path.parent
    for row in manifest.itertuples():
        data = (mirror / row.name).read_bytes()
        assert len(data) == row.size
        assert hashlib.md5(data).hexdigest() == row.md5
    assert members(mirror / "subset0.zip") == ["subset0/1.1.mhd", "subset0/1.1.raw", "subset0/1.2.mhd", "subset0/1.2.raw"]
    assert members(mirror / "candidates_V2.zip") == ["candidates_V2/candidates_V2.csv"]
    assert members(mirror / "evaluationScript.zip") == [
        "evaluationScript/annotations/annotations.csv", "evaluationScript/annotations/seriesuids.csv",
    ]
    assert members(mirror / "seg-lungs-LUNA16.zip") == ["seg-lungs-LUNA16/1.1.mhd", "seg-lungs-LUNA16/1.1.zraw"]
    assert (mirror / "annotations.csv").read_bytes() == (dataset / "annotations.csv").read_bytes()
    assert not (mirror / "notes.txt").exists()


def test_mirror_bytes_are_deterministic(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    first = write_mirror(dataset, tmp_path / "first")
    for path in dataset.rglob("*"):
        os.utime(path, (1_000_000_000, 1_000_000_000))  # other file times must not matter

    second = write_mirror(dataset, tmp_path / "second")

    assert first.read_bytes() == second.read_bytes()
    for name in pd.read_csv(first)["name"]:
        assert (first.parent / name).read_bytes() == (second.parent / name).read_bytes(), name


def test_rerun_rebuilds_only_what_changed(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    manifest = write_mirror(dataset, tmp_path / "mirror")
    mirror = manifest.parent
    times = {path.name: path.stat().st_mtime_ns for path in mirror.iterdir()}

    write_mirror(dataset, mirror)
    assert {path.name: path.stat().st_mtime_ns for path in mirror.iterdir()} == times

    (dataset / "subset3" / "3.1.raw").write_text("new voxels 3.1")
    write_mirror(dataset, mirror)
    changed = sorted(path.name for path in mirror.iterdir() if path.stat().st_mtime_ns != times.get(path.name))
    assert changed == [".mirror_state.json", "manifest.csv", "subset3.zip"]
    with zipfile.ZipFile(mirror / "subset3.zip") as archive:
        assert archive.read("subset3/3.1.raw") == b"new voxels 3.1"


def test_removed_source_leaves_the_mirror(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    mirror = write_mirror(dataset, tmp_path / "mirror").parent
    for path in (dataset / "subset3").iterdir():
        path.unlink()

    manifest = pd.read_csv(write_mirror(dataset, mirror))

    assert "subset3.zip" not in set(manifest["name"])
    assert not (mirror / "subset3.zip").exists()


def test_deleted_output_is_rebuilt(tmp_path):
    dataset = make_dataset(tmp_path / "dataset")
    mirror = write_mirror(dataset, tmp_path / "mirror").parent
    expected = (mirror / "subset0.zip").read_bytes()
    (mirror / "subset0.zip").unlink()

    write_mirror(dataset, mirror)

    assert (mirror / "subset0.zip").read_bytes() == expected
    assert not list(mirror.glob("*.tmp"))
