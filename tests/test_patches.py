"""Tests for luna_utils.patches: centred and padded patches, views, candidates and the way back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils import cache
from luna_utils.errors import DatasetError, GeometryError, LunaError
from luna_utils.mhd import read_scan
from luna_utils.patches import (
    as_patch_size,
    extract_patch,
    extract_patches,
    normalize,
    patch_shape,
    patch_to_world,
    patches_for_candidates,
    window_hu,
)

FLIPPED = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _numbered_volume(shape=(20, 21, 22)) -> np.ndarray:
    """A volume in which every voxel has a distinct value (its flat index)."""
    return np.arange(np.prod(shape), dtype=np.int32).reshape(shape)


@pytest.mark.parametrize("size", [7, 8, (5, 6, 9)])
def test_patch_centre_holds_candidate_voxel(size):
    volume = np.zeros((20, 21, 22), dtype=np.int16)
    volume[9, 4, 17] = 1234
    patch = extract_patch(volume, (9, 4, 17), size, pad_value=-1000)
    half = np.asarray(as_patch_size(size)) // 2
    assert patch.shape == as_patch_size(size)
    assert patch[tuple(half)] == 1234
    assert (patch == 1234).sum() == 1


@pytest.mark.parametrize(
    "center", [(0, 0, 0), (19, 20, 21), (0, 10, 21), (2, 1, 20), (19, 0, 11)]
)
def test_border_patch_centred_with_padding(center):
    volume = _numbered_volume()
    patch = extract_patch(volume, center, 9, pad_value=-7)
    # The candidate's own value sits at the centre: the window is not shifted.
    assert patch[4, 4, 4] == volume[center]
    # Every voxel is either padding or the volume voxel at the same offset from the centre.
    offsets = np.indices((9, 9, 9)).reshape(3, -1).T - 4
    positions = offsets + np.asarray(center)
    inside = np.all((positions >= 0) & (positions < np.asarray(volume.shape)), axis=1)
    flat = patch.reshape(-1)
    np.testing.assert_array_equal(flat[inside], volume[tuple(positions[inside].T)])
    assert np.all(flat[~inside] == -7)
    assert (~inside).any()


def test_patch_wholly_outside_is_all_pad():
    patch = extract_patch(_numbered_volume(), (-50, 3, 3), 5, pad_value=-1000)
    assert np.all(patch == -1000)


def test_center_rounds_half_away_from_zero():
    volume = _numbered_volume()
    patch = extract_patch(volume, (4.5, 6.49, 7.51), 3)
    assert patch[1, 1, 1] == volume[5, 6, 8]


def test_extract_patches_keeps_order_and_dtype():
    volume = _numbered_volume()
    centers = np.array([[15, 2, 3], [1, 10, 10], [8, 20, 0]])
    patches = extract_patches(volume, centers, 5)
    assert patches.shape == (3, 5, 5, 5)
    assert patches.dtype == volume.dtype
    for i, center in enumerate(centers):
        assert patches[i, 2, 2, 2] == volume[tuple(center)]


def test_extract_patches_empty_input():
    patches = extract_patches(_numbered_volume(), np.zeros((0, 3)), 4, mode="2.5d")
    assert patches.shape == (0, 3, 4, 4)


@pytest.mark.parametrize("edge", [6, 7])
def test_2d_and_25d_views_match_cube(edge):
    volume = _numbered_volume()
    centers = np.array([[0, 0, 0], [10, 10, 10], [19, 20, 21], [3, 18, 1]])
    cube = extract_patches(volume, centers, edge, pad_value=-1, mode="3d")
    axial = extract_patches(volume, centers, edge, pad_value=-1, mode="2d")
    planes = extract_patches(volume, centers, edge, pad_value=-1, mode="2.5d")
    middle = edge // 2

    assert axial.shape == (4, edge, edge)
    assert planes.shape == (4, 3, edge, edge)
    np.testing.assert_array_equal(axial, cube[:, middle])
    np.testing.assert_array_equal(planes[:, 0], cube[:, middle, :, :])
    np.testing.assert_array_equal(planes[:, 1], cube[:, :, middle, :])
    np.testing.assert_array_equal(planes[:, 2], cube[:, :, :, middle])


def test_2d_uses_in_plane_size():
    patches = extract_patches(_numbered_volume(), [[5, 5, 5]], (1, 4, 6), mode="2d")
    assert patches.shape == (1, 4, 6)


def test_25d_needs_cube():
    with pytest.raises(GeometryError, match="cube"):
        extract_patches(_numbered_volume(), [[5, 5, 5]], (4, 4, 6), mode="2.5d")


def test_unknown_mode_raises():
    with pytest.raises(LunaError, match="mode"):
        extract_patches(_numbered_volume(), [[5, 5, 5]], 4, mode="4d")


@pytest.mark.parametrize("bad", [0, (4, 4), (4.5, 4, 4), -3])
def test_bad_size_raises(bad):
    with pytest.raises(GeometryError, match="size_zyx"):
        as_patch_size(bad)


def test_bad_centers_raise():
    with pytest.raises(GeometryError, match=r"\(N, 3\)"):
        extract_patches(_numbered_volume(), [5, 5, 5], 4)
    with pytest.raises(GeometryError, match="finite"):
        extract_patches(_numbered_volume(), [[5, np.nan, 5]], 4)


def test_patch_shape_per_mode():
    assert patch_shape(8) == (8, 8, 8)
    assert patch_shape((3, 8, 9), "2d") == (8, 9)
    assert patch_shape(8, "2.5d") == (3, 8, 8)


def test_window_hu_values():
    values = window_hu(np.array([-2000, -1000, -300, 400, 3000], dtype=np.int16))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, [0.0, 0.0, 0.5, 1.0, 1.0])
    np.testing.assert_allclose(window_hu([0.0], low=-100.0, high=100.0), [0.5])


def test_window_hu_rejects_empty_window():
    with pytest.raises(LunaError, match="high > low"):
        window_hu([0], low=10, high=10)


def test_normalize_values():
    values = normalize(np.array([1.0, 3.0]))
    np.testing.assert_allclose(values, [-1.0, 1.0])
    np.testing.assert_allclose(normalize([2.0, 4.0], mean=1.0, std=2.0), [0.5, 1.5])
    np.testing.assert_allclose(normalize([5.0, 5.0]), [0.0, 0.0])
    assert normalize([1, 2]).dtype == np.float32


# Patches from cache entries, and the way back to world coordinates.


def _write_scan(path: Path, array: np.ndarray, direction) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((0.8, 0.7, 2.5))
    image.SetOrigin((-25.0, 40.0, -120.0))
    image.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def _phantom_with_dot(dot_zyx) -> np.ndarray:
    array = np.full((20, 48, 48), -1000, dtype=np.int16)
    array[:, 4:44, 3:45] = 40
    array[3:15, 10:30, 8:20] = -850
    array[3:15, 10:30, 28:40] = -850
    array[dot_zyx] = 30000
    return array


# The dot's world position falls between voxel centres of the 1 mm grid, but never halfway, so
# the brightest resampled voxel is unique.
DOT_ZYX = (8, 20, 13)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """Two cached scans with a bright dot: one with identity direction, one flipped."""
    root = tmp_path_factory.mktemp("data")
    _write_scan(root / "subset0" / "3.1.mhd", _phantom_with_dot(DOT_ZYX), IDENTITY)
    _write_scan(root / "subset0" / "3.2.mhd", _phantom_with_dot(DOT_ZYX), FLIPPED)
    cache_dir = root / "cache"
    cache.build_cache(root, cache_dir, scheduler="sync", margin_mm=4.0)
    return root, cache_dir


@pytest.mark.parametrize("uid", ["3.1", "3.2"])
def test_patch_round_trip_to_world(cached, uid):
    root, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, uid)
    scan = read_scan(root / "subset0" / f"{uid}.mhd")
    dot_xyz_mm = scan.voxel_to_world(DOT_ZYX)
    assert any(offset > 0 for offset in entry.crop_offset_zyx)

    candidates = pd.DataFrame(
        {"seriesuid": [uid], "coordX": [dot_xyz_mm[0]], "coordY": [dot_xyz_mm[1]],
         "coordZ": [dot_xyz_mm[2]]}
    )
    result = patches_for_candidates(entry, candidates, size_zyx=16)
    patch = result.patches[0]

    # The brightest voxel of the patch maps back to the dot within half a voxel per axis.
    peak_zyx = np.unravel_index(patch.argmax(), patch.shape)
    peak_xyz_mm = patch_to_world(entry, result.centers_zyx[0], peak_zyx, 16)
    assert np.all(np.abs(peak_xyz_mm - dot_xyz_mm) <= 0.5 + 1e-9)

    # The patch centre is the candidate's voxel.
    centre_xyz_mm = patch_to_world(entry, result.centers_zyx[0], (8, 8, 8), 16)
    assert np.all(np.abs(centre_xyz_mm - dot_xyz_mm) <= 0.5 + 1e-9)
    assert tuple(peak_zyx) == (8, 8, 8)


def test_patch_to_world_many_offsets(cached):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.2")
    centers = np.array([[5, 6, 7], [10, 3, 2]])
    offsets = np.array([[0, 0, 0], [15, 15, 15]])
    world = patch_to_world(entry, centers, offsets, 16)
    expected = entry.voxel_to_world(centers + offsets - 8)
    np.testing.assert_allclose(world, expected)
    assert world.shape == (2, 3)


def test_candidates_outside_reported(cached, caplog):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.1")
    inside_xyz = entry.voxel_to_world([2.0, 3.0, 4.0])
    # Outside the crop but inside the scan: the first original slice lies far from the lungs.
    crop_only_zyx = np.array([-entry.crop_offset_zyx[0], 3.0, 4.0])
    crop_only_xyz = entry.voxel_to_world(crop_only_zyx)
    far_xyz = np.array([900.0, 900.0, 900.0])
    candidates = pd.DataFrame(
        np.vstack([inside_xyz, far_xyz, crop_only_xyz]), columns=["coordX", "coordY", "coordZ"]
    )
    with caplog.at_level("WARNING", logger="luna_utils.patches"):
        result = patches_for_candidates(entry, candidates, size_zyx=8)

    assert result.inside.tolist() == [True, False, False]
    assert np.all(result.patches[1] == -1000)
    assert np.all(result.patches[2] == -1000)
    assert result.patches[0, 4, 4, 4] == entry.volume[2, 3, 4]
    assert "2 of 3 candidate(s)" in caplog.text
    assert "1 outside the scan, 1 outside the lung crop" in caplog.text
    assert result.patches.dtype == np.int16
    assert len(result) == 3
    assert result.rows is candidates


def test_candidates_modes_consistent(cached):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.2")
    rng = np.random.default_rng(0)
    local = rng.uniform(0, np.asarray(entry.shape_zyx) - 1, size=(10, 3))
    candidates = pd.DataFrame(entry.voxel_to_world(local), columns=["coordX", "coordY", "coordZ"])
    cube = patches_for_candidates(entry, candidates, 10, mode="3d")
    planes = patches_for_candidates(entry, candidates, 10, mode="2.5d")
    axial = patches_for_candidates(entry, candidates, 10, mode="2d")
    np.testing.assert_array_equal(planes.patches[:, 0], cube.patches[:, 5])
    np.testing.assert_array_equal(planes.patches[:, 1], cube.patches[:, :, 5])
    np.testing.assert_array_equal(planes.patches[:, 2], cube.patches[:, :, :, 5])
    np.testing.assert_array_equal(axial.patches, cube.patches[:, 5])
    np.testing.assert_array_equal(cube.centers_zyx, np.sign(local) * np.floor(np.abs(local) + 0.5))


def test_candidates_empty_table(cached):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.1")
    empty = pd.DataFrame(columns=["seriesuid", "coordX", "coordY", "coordZ"])
    result = patches_for_candidates(entry, empty, 8, mode="2.5d")
    assert result.patches.shape == (0, 3, 8, 8)
    assert result.inside.shape == (0,)


def test_candidates_of_other_scan_rejected(cached):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.1")
    rows = pd.DataFrame({"seriesuid": ["3.1", "3.2"], "coordX": [0.0, 0.0],
                         "coordY": [0.0, 0.0], "coordZ": [0.0, 0.0]})
    with pytest.raises(DatasetError, match="3.2"):
        patches_for_candidates(entry, rows)


def test_candidates_missing_column_rejected(cached):
    _, cache_dir = cached
    entry = cache.open_cached_scan(cache_dir, "3.1")
    with pytest.raises(DatasetError, match="coordZ"):
        patches_for_candidates(entry, pd.DataFrame({"coordX": [0.0], "coordY": [0.0]}))
