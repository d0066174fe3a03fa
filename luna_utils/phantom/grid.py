"""Scan geometry, the patient frame (u, v, w) of a scan's voxels, and vector helpers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from luna_utils import geometry
from luna_utils.errors import GeometryError


@dataclass(frozen=True)
class ScanGeometry:
    """Grid and world placement of one scan.

    Attributes:
        shape_zyx: Array shape in NumPy order (slices, rows, columns).
        spacing_xyz_mm: Voxel size along x, y and z, millimetres.
        origin_xyz_mm: World position of voxel (0, 0, 0), LPS millimetres (x, y, z).
        direction: 3x3 direction matrix, diagonal with entries +1 or -1.
    """

    shape_zyx: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    @property
    def direction_matrix(self) -> NDArray[np.float64]:
        """The direction as a 3x3 matrix whose columns are the image axes in world space."""
        return geometry.as_direction_matrix(self.direction)

    @property
    def center_xyz_mm(self) -> NDArray[np.float64]:
        """World position of the centre of the grid, (x, y, z) mm."""
        middle_zyx = (np.asarray(self.shape_zyx, dtype=np.float64) - 1.0) / 2.0
        return geometry.voxel_to_world(
            middle_zyx, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction_matrix
        )

    def world_axes_mm(self) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
        """Return the world coordinate of every column, row and slice: arrays x (nx,), y (ny,), z (nz,).

        Raises:
            GeometryError: If the direction is not diagonal with entries +1 or -1.
        """
        matrix = self.direction_matrix
        signs = np.diag(matrix)
        if not np.allclose(matrix, np.diag(signs)) or not np.allclose(np.abs(signs), 1.0):
            raise GeometryError(
                f"The phantom needs an axis-aligned direction (diagonal, entries +1 or -1); got "
                f"{matrix.tolist()}. Every LUNA16 scan is axis-aligned, so pick such a geometry."
            )
        nz, ny, nx = self.shape_zyx
        axes = []
        for axis, count in enumerate((nx, ny, nz)):
            step = signs[axis] * self.spacing_xyz_mm[axis]
            axes.append(self.origin_xyz_mm[axis] + step * np.arange(count, dtype=np.float64))
        return axes[0], axes[1], axes[2]


class _Grid:
    """World coordinates of a scan's voxels, as broadcastable offsets from the scan centre."""

    def __init__(self, scan_geometry: ScanGeometry) -> None:
        self.geometry = scan_geometry
        x, y, z = scan_geometry.world_axes_mm()
        self.center_xyz_mm = scan_geometry.center_xyz_mm
        self.u = (x - self.center_xyz_mm[0])[np.newaxis, np.newaxis, :]
        self.v = (y - self.center_xyz_mm[1])[np.newaxis, :, np.newaxis]
        self.w = (z - self.center_xyz_mm[2])[:, np.newaxis, np.newaxis]
        self.shape_zyx = scan_geometry.shape_zyx
        self.spacing_zyx_mm = np.asarray(scan_geometry.spacing_xyz_mm[::-1], dtype=np.float64)

    def box_slices(self, low_uvw: NDArray, high_uvw: NDArray) -> tuple[slice, slice, slice] | None:
        """Return the (z, y, x) slices of the voxels inside a box of the patient frame, or None."""
        low_xyz = np.asarray(low_uvw) + self.center_xyz_mm
        high_xyz = np.asarray(high_uvw) + self.center_xyz_mm
        corners = np.stack([low_xyz, high_xyz])
        index_zyx = geometry.world_to_voxel(
            corners,
            self.geometry.origin_xyz_mm,
            self.geometry.spacing_xyz_mm,
            self.geometry.direction_matrix,
        )
        first = np.maximum(np.floor(index_zyx.min(axis=0)).astype(int), 0)
        last = np.minimum(np.ceil(index_zyx.max(axis=0)).astype(int) + 1, self.shape_zyx)
        if np.any(last <= first):
            return None
        return tuple(slice(int(a), int(b)) for a, b in zip(first, last))  # type: ignore[return-value]

    def box_coordinates(self, slices: tuple[slice, slice, slice]) -> tuple[NDArray, NDArray, NDArray]:
        """Return the (u, v, w) offsets of the voxels selected by `slices`, broadcastable."""
        return self.u[:, :, slices[2]], self.v[:, slices[1], :], self.w[slices[0], :, :]


def _unit(vector: NDArray) -> NDArray:
    return vector / (np.linalg.norm(vector) + 1e-12)


def _random_perpendicular(direction: NDArray, rng: np.random.Generator) -> NDArray:
    """Return a random unit vector perpendicular to `direction`."""
    trial = rng.normal(size=3)
    trial -= (trial @ direction) * direction
    return _unit(trial)
