"""Tests for world <-> voxel conversion against SimpleITK, on identity, flipped and oblique scans."""

import numpy as np
import pytest
import SimpleITK as sitk

from luna_utils import geometry
from luna_utils.errors import GeometryError


def _oblique_direction() -> np.ndarray:
    """A rotation of 20 degrees about z followed by 10 degrees about x (orthonormal, det +1)."""
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    about_z = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    about_x = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return about_x @ about_z


DIRECTIONS = {
    "identity": np.eye(3),
    "flipped_xy": np.diag([-1.0, -1.0, 1.0]),
    "oblique": _oblique_direction(),
}
ORIGIN_XYZ_MM = np.array([-198.1, -195.0, -335.21])
SPACING_XYZ_MM = np.array([0.7617, 0.7617, 2.5])
SHAPE_ZYX = (121, 64, 80)


def _sitk_image(direction: np.ndarray) -> sitk.Image:
    image = sitk.Image(SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0], sitk.sitkInt16)
    image.SetOrigin(ORIGIN_XYZ_MM.tolist())
    image.SetSpacing(SPACING_XYZ_MM.tolist())
    image.SetDirection(direction.reshape(-1).tolist())
    return image


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_world_to_voxel_matches_simpleitk(name):
    direction = DIRECTIONS[name]
    image = _sitk_image(direction)
    rng = np.random.default_rng(1)
    indices_xyz = rng.uniform(-5, 70, size=(50, 3))
    points_xyz_mm = np.array([image.TransformContinuousIndexToPhysicalPoint(p.tolist()) for p in indices_xyz])

    ours_zyx = geometry.world_to_voxel(points_xyz_mm, ORIGIN_XYZ_MM, SPACING_XYZ_MM, direction)

    expected_zyx = np.array(
        [image.TransformPhysicalPointToContinuousIndex(p.tolist()) for p in points_xyz_mm]
    )[:, ::-1]
    np.testing.assert_allclose(ours_zyx, expected_zyx, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_voxel_to_world_matches_simpleitk(name):
    direction = DIRECTIONS[name]
    image = _sitk_image(direction)
    indices_zyx = np.array([[0, 0, 0], [120, 63, 79], [10.25, 3.5, -2.0]])

    ours_xyz = geometry.voxel_to_world(indices_zyx, ORIGIN_XYZ_MM, SPACING_XYZ_MM, direction)

    expected = np.array(
        [image.TransformContinuousIndexToPhysicalPoint(p[::-1].tolist()) for p in indices_zyx]
    )
    np.testing.assert_allclose(ours_xyz, expected, atol=1e-9)


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_round_trip_is_exact(name):
    direction = DIRECTIONS[name]
    rng = np.random.default_rng(2)
    points_xyz_mm = rng.uniform(-300, 300, size=(1000, 3))

    indices = geometry.world_to_voxel(points_xyz_mm, ORIGIN_XYZ_MM, SPACING_XYZ_MM, direction)
    back = geometry.voxel_to_world(indices, ORIGIN_XYZ_MM, SPACING_XYZ_MM, direction)

    np.testing.assert_allclose(back, points_xyz_mm, atol=1e-9, rtol=0)


def test_flipped_scan_gives_inside_indices_only_with_direction():
    # A real flipped LUNA16 scan stores x and y running toward -x and -y: the origin is the
    # largest x and y, so a point of the body has smaller coordinates than the origin.
    origin = np.array([170.0, 180.0, -300.0])
    spacing = np.array([0.7, 0.7, 2.5])
    direction = np.diag([-1.0, -1.0, 1.0])
    point = np.array([100.0, 50.0, -200.0])

    index = geometry.world_to_voxel(point, origin, spacing, direction)
    ignoring_direction = geometry.world_to_voxel(point, origin, spacing, None)

    np.testing.assert_allclose(index, [40.0, 130.0 / 0.7, 70.0 / 0.7])
    assert geometry.points_inside(index, (121, 512, 512))
    assert ignoring_direction[1] < 0
    assert not geometry.points_inside(ignoring_direction, (121, 512, 512))


def test_single_point_keeps_shape():
    index = geometry.world_to_voxel([1.0, 2.0, 3.0], [0, 0, 0], [1, 1, 1])
    assert index.shape == (3,)
    np.testing.assert_allclose(index, [3.0, 2.0, 1.0])


def test_empty_points_give_empty_result():
    result = geometry.world_to_voxel(np.zeros((0, 3)), [0, 0, 0], [1, 1, 1])
    assert result.shape == (0, 3)


@pytest.mark.parametrize(
    "points, origin, spacing, direction",
    [
        (np.zeros((4, 2)), [0, 0, 0], [1, 1, 1], None),
        (np.zeros(3), [0, 0], [1, 1, 1], None),
        (np.zeros(3), [0, 0, 0], [1, 0, 1], None),
        (np.zeros(3), [0, 0, 0], [1, 1, 1], np.zeros((3, 3))),
        (np.zeros(3), [0, 0, 0], [1, 1, 1], np.eye(2)),
        (np.zeros(3), [0, np.nan, 0], [1, 1, 1], None),
    ],
)
def test_invalid_inputs_raise(points, origin, spacing, direction):
    with pytest.raises(GeometryError):
        geometry.world_to_voxel(points, origin, spacing, direction)


def test_direction_accepts_row_major_tuple():
    direction = DIRECTIONS["oblique"]
    flat = tuple(direction.reshape(-1))
    point = np.array([10.0, -20.0, 30.0])
    np.testing.assert_allclose(
        geometry.world_to_voxel(point, ORIGIN_XYZ_MM, SPACING_XYZ_MM, flat),
        geometry.world_to_voxel(point, ORIGIN_XYZ_MM, SPACING_XYZ_MM, direction),
    )


def test_round_to_voxel_rounds_halves_away_from_zero():
    rounded = geometry.round_to_voxel([[0.5, 1.5, -0.5], [2.49, -1.51, 0.0]])
    np.testing.assert_array_equal(rounded, [[1, 2, -1], [2, -2, 0]])
    assert rounded.dtype == np.int64


def test_points_inside_edges():
    shape = (10, 20, 30)
    points = np.array(
        [
            [0, 0, 0],
            [-0.5, 0, 0],
            [-0.51, 0, 0],
            [9.49, 19.49, 29.49],
            [9.5, 0, 0],
            [5, 20, 5],
        ]
    )
    np.testing.assert_array_equal(
        geometry.points_inside(points, shape), [True, True, False, True, False, False]
    )


def test_points_inside_with_margin():
    inside = geometry.points_inside([[1.0, 5.0, 5.0], [3.0, 5.0, 5.0]], (10, 10, 10), margin_zyx=2)
    np.testing.assert_array_equal(inside, [False, True])
