"""Conversion between world coordinates and voxel indices.

Conventions used by every function in this module and across luna_utils:

* World coordinates are LPS millimetres in (x, y, z) order, the order of the LUNA16 CSV columns
  `coordX, coordY, coordZ` and of SimpleITK's physical points. Names end in `_xyz_mm`.
* Voxel indices are in NumPy order (z, y, x), the order of `SimpleITK.GetArrayFromImage`.
  Names end in `_zyx`. They are zero-based and may be fractional ("continuous indices"); index
  (0, 0, 0) is the centre of the first stored voxel.
* `origin_xyz_mm` is the world position of voxel (0, 0, 0), `spacing_xyz_mm` the voxel size along
  the image's own x, y and z axes, and `direction` the 3x3 matrix whose columns are those axes in
  world space, exactly as SimpleITK and the MetaImage `TransformMatrix` define them.

The mapping is

    p = origin + D @ (spacing * index_xyz)        index_xyz = D^-1 (p - origin) / spacing

with the full direction matrix, so scans whose x and y axes are flipped (direction
diag(-1, -1, 1), 14 LUNA16 scans) and oblique scans convert correctly without flipping any array.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from luna_utils.errors import GeometryError


def _as_points(points: ArrayLike, name: str) -> tuple[NDArray[np.float64], bool]:
    """Return points as an (N, 3) float64 array and whether the input was a single (3,) point."""
    array = np.asarray(points, dtype=np.float64)
    if array.ndim == 1 and array.shape[0] == 3:
        return array[np.newaxis, :], True
    if array.ndim == 2 and array.shape[1] == 3:
        return array, False
    raise GeometryError(f"{name} must have shape (3,) or (N, 3); got shape {array.shape}.")


def _as_vector(values: ArrayLike, name: str) -> NDArray[np.float64]:
    vector = np.asarray(values, dtype=np.float64).reshape(-1)
    if vector.shape != (3,):
        raise GeometryError(f"{name} must hold 3 values in (x, y, z) order; got {values!r}.")
    if not np.all(np.isfinite(vector)):
        raise GeometryError(f"{name} must be finite; got {values!r}.")
    return vector


def _as_spacing(spacing_xyz_mm: ArrayLike) -> NDArray[np.float64]:
    spacing = _as_vector(spacing_xyz_mm, "spacing_xyz_mm")
    if np.any(spacing <= 0):
        raise GeometryError(f"spacing_xyz_mm must be positive; got {spacing_xyz_mm!r}.")
    return spacing


def as_direction_matrix(direction: ArrayLike | None) -> NDArray[np.float64]:
    """Return a direction as a 3x3 float64 matrix whose columns are the image axes in world space.

    Args:
        direction: A 3x3 matrix, 9 values in SimpleITK's row-major order (`image.GetDirection()`),
            or None for the identity.

    Raises:
        GeometryError: If the matrix is not 3x3, not finite, or singular.
    """
    if direction is None:
        return np.eye(3)
    matrix = np.asarray(direction, dtype=np.float64)
    if matrix.shape == (9,):
        matrix = matrix.reshape(3, 3)
    if matrix.shape != (3, 3):
        raise GeometryError(f"direction must be 3x3 or 9 values; got shape {matrix.shape}.")
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise GeometryError(f"direction must be an invertible 3x3 matrix; got {matrix.tolist()}.")
    return matrix


def world_to_voxel(
    points_xyz_mm: ArrayLike,
    origin_xyz_mm: ArrayLike,
    spacing_xyz_mm: ArrayLike,
    direction: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Convert world points to continuous voxel indices.

    Args:
        points_xyz_mm: World points, shape (3,) or (N, 3), LPS millimetres in (x, y, z) order.
        origin_xyz_mm: World position of voxel (0, 0, 0), shape (3,), (x, y, z) mm.
        spacing_xyz_mm: Voxel size, shape (3,), (x, y, z) mm.
        direction: 3x3 direction matrix (columns are image axes), 9 row-major values, or None
            for the identity.

    Returns:
        Continuous indices in NumPy order (z, y, x), float64, with the input's shape.
        Round with `round_to_voxel` before indexing an array.
    """
    points, single = _as_points(points_xyz_mm, "points_xyz_mm")
    origin = _as_vector(origin_xyz_mm, "origin_xyz_mm")
    spacing = _as_spacing(spacing_xyz_mm)
    matrix = as_direction_matrix(direction)

    # Solve D @ (spacing * index_xyz) = p - origin for every point at once.
    index_xyz = np.linalg.solve(matrix, (points - origin).T).T / spacing

    index_zyx = index_xyz[:, ::-1]
    return index_zyx[0] if single else index_zyx


def voxel_to_world(
    points_zyx: ArrayLike,
    origin_xyz_mm: ArrayLike,
    spacing_xyz_mm: ArrayLike,
    direction: ArrayLike | None = None,
) -> NDArray[np.float64]:
    """Convert voxel indices (integer or continuous) to world points.

    Args:
        points_zyx: Voxel indices, shape (3,) or (N, 3), in NumPy order (z, y, x).
        origin_xyz_mm: World position of voxel (0, 0, 0), shape (3,), (x, y, z) mm.
        spacing_xyz_mm: Voxel size, shape (3,), (x, y, z) mm.
        direction: 3x3 direction matrix (columns are image axes), 9 row-major values, or None
            for the identity.

    Returns:
        World points, LPS millimetres in (x, y, z) order, float64, with the input's shape.
    """
    points, single = _as_points(points_zyx, "points_zyx")
    origin = _as_vector(origin_xyz_mm, "origin_xyz_mm")
    spacing = _as_spacing(spacing_xyz_mm)
    matrix = as_direction_matrix(direction)

    index_xyz = points[:, ::-1]
    world = origin + (matrix @ (index_xyz * spacing).T).T
    return world[0] if single else world


def round_to_voxel(points_zyx: ArrayLike) -> NDArray[np.int64]:
    """Round continuous indices to the nearest voxel, halves away from zero.

    Halves round away from zero (0.5 -> 1, -0.5 -> -1) instead of NumPy's round-half-to-even,
    so a point on a voxel boundary always goes to the same side along an axis.

    Args:
        points_zyx: Continuous indices, shape (3,) or (N, 3), (z, y, x) order.

    Returns:
        Integer indices of the same shape, int64.
    """
    array = np.asarray(points_zyx, dtype=np.float64)
    return (np.sign(array) * np.floor(np.abs(array) + 0.5)).astype(np.int64)


def points_inside(
    points_zyx: ArrayLike,
    shape_zyx: tuple[int, int, int],
    margin_zyx: ArrayLike = 0.0,
) -> NDArray[np.bool_] | bool:
    """Test whether voxel indices lie inside a volume.

    A continuous index is inside when it rounds to a stored voxel, that is when
    `-0.5 <= index < size - 0.5` on every axis (the volume's extent from the outer edge of the
    first voxel to the outer edge of the last). A positive margin shrinks that box on both sides.

    Args:
        points_zyx: Continuous or integer indices, shape (3,) or (N, 3), (z, y, x) order.
        shape_zyx: Volume shape in NumPy order, `array.shape`.
        margin_zyx: Distance in voxels to keep from each face, scalar or (z, y, x).

    Returns:
        A bool array of shape (N,), or a single bool for a (3,) input.
    """
    points, single = _as_points(points_zyx, "points_zyx")
    shape = np.asarray(shape_zyx, dtype=np.float64)
    if shape.shape != (3,):
        raise GeometryError(f"shape_zyx must hold 3 sizes in (z, y, x) order; got {shape_zyx!r}.")
    margin = np.broadcast_to(np.asarray(margin_zyx, dtype=np.float64), (3,))

    low_ok = points >= -0.5 + margin
    high_ok = points < shape - 0.5 - margin
    inside = np.all(low_ok & high_ok, axis=1)
    return bool(inside[0]) if single else inside
