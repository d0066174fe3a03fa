"""Tests for dataset resolution and table validation."""

from pathlib import Path

import pandas as pd
import pytest

from luna_utils import dataset
from luna_utils.errors import DatasetError

UIDS = ["2.999.16.1.1", "2.999.16.1.2"]


@pytest.fixture
def tiny_root(tmp_path) -> Path:
    root = tmp_path / "luna"
    for subset, uid in enumerate(UIDS):
        folder = root / f"subset{subset}"
        folder.mkdir(parents=True)
        (folder / f"{uid}.mhd").write_text("ObjectType = Image\n")
    annotations_dir = root / "evaluationScript" / "annotations"
    annotations_dir.mkdir(parents=True)
    (annotations_dir / "seriesuids.csv").write_text("\n".join(UIDS) + "\n")
    (root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{UIDS[0]},1.5,-2.0,3.0,6.0\n"
        f"{UIDS[1]},10,20,30,4.5\n"
    )
    (annotations_dir / "annotations_excluded.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n" f"{UIDS[0]},0,0,0,-1\n"
    )
    (root / "candidates.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n" f"{UIDS[0]},1,2,3,0\n" f"{UIDS[1]},10,20,30,1\n"
    )
    return root


def test_list_scans_orders_by_subset(tiny_root):
    scans = dataset.list_scans(tiny_root)
    assert scans["seriesuid"].tolist() == UIDS
    assert scans["subset"].tolist() == [0, 1]
    assert scans["mhd_path"].iloc[1] == tiny_root / "subset1" / f"{UIDS[1]}.mhd"


def test_list_scans_of_empty_folder(tmp_path):
    scans = dataset.list_scans(tmp_path)
    assert scans.empty
    assert list(scans.columns) == ["seriesuid", "subset", "mhd_path"]


def test_scan_path_missing_raises(tiny_root):
    assert dataset.scan_path(tiny_root, UIDS[1]).parent.name == "subset1"
    with pytest.raises(DatasetError, match="2.999.16.1.9"):
        dataset.scan_path(tiny_root, "2.999.16.1.9")


def test_load_tables(tiny_root):
    annotations = dataset.load_annotations(tiny_root)
    assert annotations.shape == (2, 5)
    assert annotations["coordX"].tolist() == [1.5, 10.0]
    assert dataset.load_excluded(tiny_root)["diameter_mm"].tolist() == [-1]
    candidates = dataset.load_candidates(tiny_root, version=1)
    assert candidates["class"].tolist() == [0, 1]
    with pytest.raises(DatasetError, match="candidate list V2"):
        dataset.load_candidates(tiny_root, version=2)
    with pytest.raises(DatasetError, match="must be 1 or 2"):
        dataset.load_candidates(tiny_root, version=3)


def test_missing_column_names_file(tiny_root):
    (tiny_root / "annotations.csv").write_text("seriesuid,coordX,coordY,diameter_mm\n")
    with pytest.raises(DatasetError) as raised:
        dataset.load_annotations(tiny_root)
    assert "annotations.csv" in str(raised.value)
    assert "coordZ" in str(raised.value)


def test_nan_coordinate_names_row(tiny_root):
    (tiny_root / "annotations.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
        f"{UIDS[0]},1,2,3,6\n"
        f"{UIDS[1]},1,,3,6\n"
    )
    with pytest.raises(DatasetError, match="row 3"):
        dataset.load_annotations(tiny_root)


def test_unknown_seriesuid_names_row(tiny_root):
    (tiny_root / "candidates.csv").write_text(
        "seriesuid,coordX,coordY,coordZ,class\n" "2.999.16.1.77,1,2,3,0\n"
    )
    with pytest.raises(DatasetError) as raised:
        dataset.load_candidates(tiny_root, version=1)
    assert "row 2" in str(raised.value)
    assert "2.999.16.1.77" in str(raised.value)
    assert len(dataset.load_candidates(tiny_root, version=1, validate=False)) == 1


def test_resolve_prefers_explicit_then_environment(tiny_root, tmp_path, monkeypatch):
    other = tmp_path / "other"
    other.mkdir()
    monkeypatch.setenv(dataset.ENV_DATA_DIR, str(tiny_root))
    assert dataset.resolve_data_dir() == tiny_root.resolve()
    assert dataset.resolve_data_dir(other) == other.resolve()


def test_resolve_missing_folder_raises(tmp_path, monkeypatch):
    monkeypatch.setenv(dataset.ENV_DATA_DIR, str(tmp_path / "absent"))
    with pytest.raises(DatasetError, match="LUNA16_DIR"):
        dataset.resolve_data_dir()


def test_describe_data_note(tiny_root):
    info = dataset.describe_data(tiny_root)
    assert not info.synthetic
    assert info.n_scans == 2
    assert info.subsets == (0, 1)
    assert "real LUNA16" in info.note()
    (tiny_root / dataset.SAMPLE_MARKER).write_text("synthetic")
    assert "synthetic sample" in dataset.describe_data(tiny_root).note()


def test_display_path_hides_absolute_paths(tmp_path):
    inside = dataset.repo_root() / "data" / "sample"
    assert dataset.display_path(inside) == "data/sample"
    shown = dataset.display_path(tmp_path / "a" / "b")
    assert not shown.startswith("/")


def test_work_dir_uses_environment(tmp_path, monkeypatch, tiny_root):
    monkeypatch.setenv(dataset.ENV_WORK_DIR, str(tmp_path / "work"))
    assert dataset.work_dir(tiny_root) == tmp_path / "work"
    assert (tmp_path / "work").is_dir()


def test_real_tables_load():
    seriesuids = dataset.load_real_table("seriesuids")
    assert len(seriesuids) == 888
    metadata = dataset.load_real_table("luna16_scans_metadata")
    assert len(metadata) == 888
    assert int((metadata["flip_x"] < 0).sum()) == 14
    with pytest.raises(DatasetError):
        dataset.load_real_table("absent_table")


def test_real_annotations_are_byte_identical():
    import hashlib

    digest = hashlib.md5((dataset.real_reference_dir() / "annotations.csv").read_bytes()).hexdigest()
    assert digest == "f4404df491aee6445a4485061bfdffdd"
    table = pd.read_csv(dataset.real_reference_dir() / "annotations.csv")
    assert len(table) == 1186
