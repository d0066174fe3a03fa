"""Tests for reading MetaImage headers and scans, including every error case."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from luna_utils import mhd
from luna_utils.dataset import real_reference_dir
from luna_utils.errors import MhdError

REAL_HEADERS = sorted((real_reference_dir() / "mhd_headers").glob("*.mhd"))


def _write_scan(folder: Path, name: str, array_zyx: np.ndarray, direction=np.eye(3)) -> Path:
    image = sitk.GetImageFromArray(array_zyx)
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((170.0, 180.0, -300.0))
    image.SetDirection(tuple(np.asarray(direction, dtype=float).reshape(-1)))
    path = folder / name
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def flipped_scan(tmp_path):
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6) - 1000
    return _write_scan(tmp_path, "1.2.3.mhd", array, np.diag([-1.0, -1.0, 1.0])), array


def test_real_header_reads_without_raw():
    assert REAL_HEADERS, "data/real/mhd_headers/ should hold a real LUNA16 header"
    header = mhd.read_header(REAL_HEADERS[0])

    assert header.size_xyz == (512, 512, 121)
    assert header.shape_zyx == (121, 512, 512)
    assert header.spacing_xyz_mm == pytest.approx((0.7617189884185791, 0.7617189884185791, 2.5))
    assert header.origin_xyz_mm == pytest.approx((-198.100006, -195.0, -335.209991))
    np.testing.assert_array_equal(header.direction, np.eye(3))
    assert header.element_type == "MET_SHORT"
    assert header.expected_data_bytes == 512 * 512 * 121 * 2
    assert header.data_file.name == header.seriesuid + ".raw"
    assert not header.data_file.exists()
    assert list(header.keys)[0] == "ObjectType"
    assert header.keys["AnatomicalOrientation"] == "RAI"
    assert len(header.keys) == 13


def test_read_scan_keeps_array_and_geometry(flipped_scan):
    path, array = flipped_scan
    scan = mhd.read_scan(path)

    np.testing.assert_array_equal(scan.array, array)
    assert scan.array.dtype == np.int16
    assert scan.seriesuid == "1.2.3"
    assert scan.spacing_xyz_mm == pytest.approx((0.7, 0.8, 2.5))
    assert scan.is_flipped
    # Voxel (z=1, y=2, x=3) lies at origin + D @ (spacing * (3, 2, 1)).
    np.testing.assert_allclose(scan.voxel_to_world([1, 2, 3]), [170 - 2.1, 180 - 1.6, -297.5])
    np.testing.assert_allclose(scan.world_to_voxel([170 - 2.1, 180 - 1.6, -297.5]), [1, 2, 3])
    assert scan.contains([169.0, 179.0, -300.0])
    assert not scan.contains([171.0, 179.0, -300.0])


def test_read_scan_from_mha(tmp_path):
    array = np.full((3, 4, 5), 42, dtype=np.int16)
    path = _write_scan(tmp_path, "single.mha", array)
    header = mhd.read_header(path)
    assert header.data_file == path
    np.testing.assert_array_equal(mhd.read_scan(path).array, array)


def test_to_sitk_round_trip(flipped_scan):
    path, _ = flipped_scan
    scan = mhd.read_scan(path)
    image = scan.to_sitk()
    assert image.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), scan.array)


def test_wrong_suffix_raises(flipped_scan):
    path, _ = flipped_scan
    raw = path.with_suffix(".raw")
    with pytest.raises(MhdError, match=r"expected a \.mhd or \.mha file"):
        mhd.read_scan(raw)


def test_missing_header_raises(tmp_path):
    with pytest.raises(MhdError, match="does not exist"):
        mhd.read_header(tmp_path / "absent.mhd")


def test_missing_data_file_names_both_files(flipped_scan):
    path, _ = flipped_scan
    path.with_suffix(".raw").unlink()
    with pytest.raises(MhdError) as raised:
        mhd.read_scan(path)
    message = str(raised.value)
    assert path.name in message
    assert "1.2.3.raw" in message


def test_truncated_data_file_reports_sizes(flipped_scan):
    path, _ = flipped_scan
    raw = path.with_suffix(".raw")
    raw.write_bytes(raw.read_bytes()[:100])
    with pytest.raises(MhdError) as raised:
        mhd.read_scan(path)
    message = str(raised.value)
    assert "240 bytes" in message
    assert "100 bytes" in message


def test_truncated_mha_raises(tmp_path):
    path = _write_scan(tmp_path, "cut.mha", np.zeros((3, 4, 5), dtype=np.int16))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(MhdError, match="truncated"):
        mhd.read_scan(path)


def test_two_dimensional_image_raises(tmp_path):
    image = sitk.GetImageFromArray(np.zeros((4, 5), dtype=np.int16))
    path = tmp_path / "slice.mhd"
    sitk.WriteImage(image, str(path))
    with pytest.raises(MhdError, match="3-D"):
        mhd.read_header(path)


def test_header_without_data_file_key_raises(tmp_path):
    path = tmp_path / "broken.mhd"
    path.write_text("ObjectType = Image\nNDims = 3\nDimSize = 2 2 2\nElementType = MET_SHORT\n")
    with pytest.raises(MhdError, match="ElementDataFile"):
        mhd.read_header(path)


def test_binary_file_named_mhd_raises(tmp_path):
    path = tmp_path / "garbage.mhd"
    path.write_bytes(bytes(range(200, 256)) * 4)
    with pytest.raises(MhdError):
        mhd.read_header(path)
