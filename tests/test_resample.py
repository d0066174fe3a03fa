"""Tests for luna_utils.resample: the output grid convention and world positions after resampling."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from luna_utils.errors import GeometryError, LunaError
from luna_utils.mhd import CtScan
from luna_utils.resample import (
    ImageGrid,
    as_spacing,
    output_grid,
    resample_image,
    resample_scan,
    resample_to_grid,
)


def _rotation(z_deg: float, x_deg: float) -> np.ndarray:
    a, b = np.radians(z_deg), np.radians(x_deg)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_z @ about_x


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_xy": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _rotation(30.0, 10.0),
}


def _blob_scan(direction: np.ndarray, center_zyx=(11.3, 20.6, 17.2)) -> CtScan:
    """A Gaussian blob (peak 1000 HU above -1000 HU air) in a 24x40x36 anisotropic scan."""
    spacing_xyz_mm = (0.7, 0.8, 2.5)
    grid = np.indices((24, 40, 36)).astype(float)
    sigma_mm = 3.0
    squared_mm = sum(
        ((g - c) * s) ** 2 for g, c, s in zip(grid, center_zyx, spacing_xyz_mm[::-1])
    )
    array = (-1000 + 1000 * np.exp(-squared_mm / (2 * sigma_mm**2))).round().astype(np.int16)
    return CtScan(array, spacing_xyz_mm, (-40.0, 25.0, -310.0), direction, "blob")


def _centroid_zyx(array: np.ndarray, background: float = -1000.0) -> np.ndarray:
    weights = array.astype(np.float64) - background
    indices = np.indices(array.shape).reshape(3, -1)
    return (indices * weights.reshape(-1)).sum(axis=1) / weights.sum()


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_blob_keeps_world_position(name):
    scan = _blob_scan(DIRECTIONS[name])
    before_xyz_mm = scan.voxel_to_world(_centroid_zyx(scan.array))

    resampled = resample_scan(scan, (1.0, 1.0, 1.0))
    after_xyz_mm = resampled.voxel_to_world(_centroid_zyx(resampled.array))

    # Within half an output voxel; the smooth blob in fact lands within 0.1 mm.
    assert np.linalg.norm(after_xyz_mm - before_xyz_mm) < 0.5
    assert np.linalg.norm(after_xyz_mm - before_xyz_mm) < 0.1


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_brightest_voxel_keeps_world_position(name):
    scan = _blob_scan(DIRECTIONS[name], center_zyx=(12.0, 20.0, 17.0))
    before_xyz_mm = scan.voxel_to_world(np.unravel_index(scan.array.argmax(), scan.array.shape))

    resampled = resample_scan(scan, 1.0)
    peak_zyx = np.unravel_index(resampled.array.argmax(), resampled.array.shape)
    after_xyz_mm = resampled.voxel_to_world(peak_zyx)

    # The peak voxel of the new grid is the one nearest the peak: within half its diagonal.
    assert np.linalg.norm(after_xyz_mm - before_xyz_mm) <= 0.5 * np.sqrt(3) + 1e-9


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_linear_ramp_matches_world_function(name):
    # Linear interpolation reproduces a function linear in world coordinates exactly, so every
    # output voxel well inside the field of view must hold f(its world position).
    direction = DIRECTIONS[name]
    source = ImageGrid((20, 30, 26), (12.0, -7.0, 40.0), (0.75, 0.9, 2.0), direction)
    slope = np.array([0.8, -1.3, 2.1])

    def ramp(points_xyz_mm):
        return points_xyz_mm @ slope + 5.0

    indices = np.indices(source.shape_zyx).reshape(3, -1).T
    array = ramp(source.voxel_to_world(indices)).reshape(source.shape_zyx).astype(np.float32)

    target = output_grid(source, (1.1, 1.0, 1.3))
    result = resample_to_grid(array, source, target, "linear", default_value=np.nan)

    out_indices = np.indices(target.shape_zyx).reshape(3, -1).T
    world = target.voxel_to_world(out_indices)
    back = source.world_to_voxel(world)
    interior = np.all((back >= 0) & (back <= np.asarray(source.shape_zyx) - 1), axis=1)
    assert interior.sum() > 0.5 * len(interior)
    np.testing.assert_allclose(result.reshape(-1)[interior], ramp(world[interior]), atol=1e-3)


def test_output_grid_counts_centres_inside():
    source = ImageGrid((121, 512, 512), (0.0, 0.0, 0.0), (0.7, 0.7, 2.5), np.eye(3))
    target = output_grid(source, 1.0)
    # 121 x 2.5 = 302.5 mm: centres at 0.5 ... 301.5 mm lie inside, 302.5 mm is the far edge.
    # 512 x 0.7 = 358.4 mm: centres at 0.5 ... 357.5 mm lie inside.
    assert target.shape_zyx == (302, 358, 358)
    assert target.spacing_xyz_mm == (1.0, 1.0, 1.0)


@pytest.mark.parametrize(
    "extent_voxels, expected", [(10.0, 10), (10.4, 10), (10.5, 10), (10.6, 11), (0.3, 1)]
)
def test_output_grid_rounds_halves_down(extent_voxels, expected):
    source = ImageGrid((1, 1, 1), (0.0, 0.0, 0.0), (1.0, 1.0, extent_voxels), np.eye(3))
    assert output_grid(source, 1.0).shape_zyx[0] == expected


def test_output_grid_ignores_float_noise():
    source = ImageGrid((300, 10, 10), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0 + 1e-12), np.eye(3))
    assert output_grid(source, (1.0, 1.0, 0.5)).shape_zyx == (600, 10, 10)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_output_grid_first_corner_aligned(name):
    direction = DIRECTIONS[name]
    source = ImageGrid((121, 40, 50), (-100.0, 20.0, -300.0), (0.7, 0.6, 2.5), direction)
    target = output_grid(source, (1.0, 1.0, 1.0))

    # The outer corner of the first voxel sits at index (-0.5, -0.5, -0.5) on both grids.
    corner = np.array([-0.5, -0.5, -0.5])
    np.testing.assert_allclose(
        target.voxel_to_world(corner), source.voxel_to_world(corner), atol=1e-9
    )
    np.testing.assert_array_equal(target.direction, direction)


def test_output_grid_ends_within_half_voxel():
    source = ImageGrid((121, 40, 50), (0.0, 0.0, 0.0), (0.7, 0.6, 2.5), np.eye(3))
    target = output_grid(source, (1.0, 1.0, 1.0))
    source_far = source.voxel_to_world(np.asarray(source.shape_zyx) - 0.5)
    target_far = target.voxel_to_world(np.asarray(target.shape_zyx) - 0.5)
    last_centre = target.voxel_to_world(np.asarray(target.shape_zyx) - 1.0)
    # The last centre lies inside the old field of view, its outer edge within half a voxel.
    assert np.all(last_centre < source_far)
    assert np.all(np.abs(target_far - source_far) <= 0.5 + 1e-9)


def test_resample_scan_fills_no_default_voxel():
    array = np.full((121, 9, 10), 100, dtype=np.int16)
    scan = CtScan(array, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]), "f")
    resampled = resample_scan(scan, 1.0, default_value=-1000)
    assert resampled.array.shape == (302, 6, 7)
    assert np.all(resampled.array == 100)


def test_resample_scan_reports_real_spacing_and_origin():
    array = np.zeros((121, 8, 8), dtype=np.int16)
    scan = CtScan(array, (0.7, 0.7, 2.5), (10.0, 20.0, -300.0), np.eye(3), "s")
    resampled = resample_scan(scan, (1.0, 1.0, 1.0))
    assert resampled.array.shape == (302, 6, 6)
    assert resampled.spacing_xyz_mm == (1.0, 1.0, 1.0)
    # Corner aligned: the first centre moves by (new - old) / 2 along each axis.
    assert resampled.origin_xyz_mm == pytest.approx((10.15, 20.15, -300.75))
    assert resampled.seriesuid == "s"


def test_resample_flipped_origin_moves_against_axis():
    scan = CtScan(np.zeros((10, 8, 8), np.int16), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0),
                  np.diag([-1.0, -1.0, 1.0]), "f")
    resampled = resample_scan(scan, 1.0)
    # The x and y axes point to -x and -y, so the first centre moves by -0.25 mm there.
    assert resampled.origin_xyz_mm == pytest.approx((-0.25, -0.25, -0.5))
    np.testing.assert_array_equal(resampled.direction, scan.direction)


def test_voxels_past_field_of_view_get_default():
    array = np.full((4, 3, 3), 100, dtype=np.int16)
    source = ImageGrid(array.shape, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    # Slice centres at old indices 1.0 and 4.0; the second lies past the far edge at 3.5.
    target = ImageGrid((2, 3, 3), (0.0, 0.0, 1.0), (1.0, 1.0, 3.0), np.eye(3))
    for backend in ("auto", "simpleitk"):
        result = resample_to_grid(array, source, target, default_value=-1000, backend=backend)
        assert np.all(result[0] == 100)
        assert np.all(result[1] == -1000)


def test_linear_output_is_rounded_not_truncated():
    array = np.zeros((1, 1, 4), dtype=np.int16)
    array[0, 0, :] = [0, 1, 0, 1]
    scan = CtScan(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "r")
    target = ImageGrid((1, 1, 1), (0.7, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    value = resample_to_grid(scan.array, ImageGrid.of_scan(scan), target)
    # 0.7 between 0 and 1 is 0.7: rounds to 1 (truncation would give 0).
    assert value.dtype == np.int16
    assert value[0, 0, 0] == 1


def test_nearest_keeps_labels_and_dtype():
    rng = np.random.default_rng(0)
    labels = rng.choice(np.array([0, 3, 4, 5], dtype=np.uint8), size=(12, 14, 16))
    scan = CtScan(labels, (0.7, 0.7, 2.5), (0.0, 0.0, 0.0), np.diag([-1.0, -1.0, 1.0]), "m")
    resampled = resample_scan(scan, 1.0, interpolation="nearest", default_value=0)
    assert resampled.array.dtype == np.uint8
    assert set(np.unique(resampled.array)) <= {0, 3, 4, 5}


def test_nearest_matches_world_lookup():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 200, size=(9, 11, 13)).astype(np.int16)
    scan = CtScan(labels, (0.7, 0.9, 2.5), (3.0, -4.0, 10.0), DIRECTIONS["oblique"], "n")
    resampled = resample_scan(scan, 1.0, interpolation="nearest", default_value=-1)
    indices = np.indices(resampled.array.shape).reshape(3, -1).T
    back = scan.world_to_voxel(resampled.voxel_to_world(indices))
    nearest = np.rint(back).astype(int)
    # Skip points close to a voxel boundary, where rounding may go either way.
    inside = np.all((nearest >= 0) & (nearest < np.asarray(labels.shape)), axis=1)
    clear = np.all(np.abs(back - np.rint(back)) < 0.45, axis=1) & inside
    expected = labels[tuple(nearest[clear].T)]
    np.testing.assert_array_equal(resampled.array.reshape(-1)[clear], expected)


def test_slabs_match_single_pass_linear():
    scan = _blob_scan(DIRECTIONS["oblique"])
    whole = resample_scan(scan, 1.0, chunk_voxels=10**9)
    slabs = resample_scan(scan, 1.0, chunk_voxels=500)
    np.testing.assert_array_equal(whole.array, slabs.array)


def test_slabs_match_single_pass_bspline():
    scan = _blob_scan(DIRECTIONS["flipped_xy"])
    whole = resample_scan(scan, 1.0, interpolation="bspline", chunk_voxels=10**9)
    slabs = resample_scan(scan, 1.0, interpolation="bspline", chunk_voxels=500)
    assert np.abs(whole.array.astype(int) - slabs.array).max() <= 1


def test_bspline_clips_to_dtype_range():
    array = np.full((6, 6, 6), -32768, dtype=np.int16)
    array[3, 3, 3] = 32767
    scan = CtScan(array, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), np.eye(3), "c")
    resampled = resample_scan(scan, 0.7, interpolation="bspline", default_value=-32768)
    assert resampled.array.dtype == np.int16
    assert resampled.array.max() <= 32767


def test_resample_image_matches_resample_scan():
    scan = _blob_scan(DIRECTIONS["flipped_xy"])
    image = scan.to_sitk()
    result = resample_image(image, (1.0, 1.2, 1.5))
    expected = resample_scan(scan, (1.0, 1.2, 1.5))

    assert result.GetPixelID() == sitk.sitkInt16
    np.testing.assert_array_equal(sitk.GetArrayFromImage(result), expected.array)
    assert result.GetSpacing() == pytest.approx((1.0, 1.2, 1.5))
    assert result.GetOrigin() == pytest.approx(expected.origin_xyz_mm)
    assert result.GetDirection() == pytest.approx(tuple(scan.direction.reshape(-1)))


def test_resample_image_rejects_2d():
    with pytest.raises(GeometryError, match="3-D scalar"):
        resample_image(sitk.Image(4, 4, sitk.sitkInt16))


def test_unknown_interpolation_raises():
    scan = CtScan(np.zeros((2, 2, 2), np.int16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "u")
    with pytest.raises(LunaError, match="'cubic'"):
        resample_scan(scan, 1.0, interpolation="cubic")


@pytest.mark.parametrize("bad", [0.0, -1.0, (1.0, 1.0), (1.0, np.nan, 1.0)])
def test_invalid_spacing_raises(bad):
    with pytest.raises(GeometryError, match="spacing_xyz_mm"):
        as_spacing(bad)


def test_shape_mismatch_raises():
    source = ImageGrid((2, 2, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    with pytest.raises(GeometryError, match="shape"):
        resample_to_grid(np.zeros((3, 2, 2), np.int16), source, source)


def test_grid_wholly_outside_gets_default():
    source = ImageGrid((3, 3, 3), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    far = ImageGrid((2, 2, 2), (500.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    result = resample_to_grid(np.ones((3, 3, 3), np.int16), source, far, default_value=-7)
    assert np.all(result == -7)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_separable_matches_simpleitk(name, interpolation):
    rng = np.random.default_rng(3)
    array = rng.integers(-1000, 1000, size=(13, 17, 19)).astype(np.int16)
    source = ImageGrid(array.shape, (5.0, -3.0, 20.0), (0.73, 0.8, 2.5), DIRECTIONS[name])
    fitted = output_grid(source, (1.0, 0.6, 1.1))
    # Two more voxels per axis reach past the far edge, where both must use the default value.
    target = ImageGrid(
        tuple(n + 2 for n in fitted.shape_zyx), fitted.origin_xyz_mm, fitted.spacing_xyz_mm,
        fitted.direction,
    )
    # No output voxel lies halfway between two input voxels, where nearest-neighbour lookup
    # would depend on float rounding.
    indices = np.indices(target.shape_zyx).reshape(3, -1).T
    positions = source.world_to_voxel(target.voxel_to_world(indices))
    assert np.abs(np.abs(positions - np.floor(positions)) - 0.5).min() > 1e-3
    ours = resample_to_grid(array, source, target, interpolation, default_value=-1000)
    reference = resample_to_grid(
        array, source, target, interpolation, default_value=-1000, backend="simpleitk"
    )
    difference = np.abs(ours.astype(int) - reference)
    # Float32 against double arithmetic may round a value that lies on a half to the other side.
    assert difference.max() <= 1
    assert (difference == 0).mean() > 0.99
    # Both put the default value on the same voxels, past the far edge of the field of view.
    np.testing.assert_array_equal(ours == -1000, reference == -1000)
    assert (ours == -1000).any()


def test_simpleitk_slabs_match_single_pass():
    scan = _blob_scan(DIRECTIONS["oblique"])
    source = ImageGrid.of_scan(scan)
    target = output_grid(source, 1.0)
    whole = resample_to_grid(scan.array, source, target, chunk_voxels=10**9, backend="simpleitk")
    slabs = resample_to_grid(scan.array, source, target, chunk_voxels=500, backend="simpleitk")
    np.testing.assert_array_equal(whole, slabs)


def test_default_value_must_fit_dtype():
    mask = np.zeros((3, 3, 3), dtype=np.uint8)
    scan = CtScan(mask, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "m")
    with pytest.raises(LunaError, match="default_value=0"):
        resample_scan(scan, 0.5, interpolation="nearest")


def test_unknown_backend_raises():
    source = ImageGrid((2, 2, 2), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    with pytest.raises(LunaError, match="backend"):
        resample_to_grid(np.zeros((2, 2, 2), np.int16), source, source, backend="numpy")
