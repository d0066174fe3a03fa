"""The LUNA16 rule for whether a point hits a finding.

A point (a candidate or a detection) hits a finding when its Euclidean distance to the finding's
centre is strictly less than the finding's radius, diameter / 2. Excluded findings whose diameter
is unknown are stored with diameter -1; the official evaluation gives them a 10 mm diameter.
All coordinates are world LPS millimetres in (x, y, z) order.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from luna_utils.errors import GeometryError

# Diameter the official LUNA16 evaluation gives to findings stored with a negative diameter.
UNKNOWN_DIAMETER_MM = 10.0


def effective_diameters(diameters_mm: ArrayLike, unknown_diameter_mm: float = UNKNOWN_DIAMETER_MM) -> NDArray[np.float64]:
    """Return diameters with every negative value (LUNA16's -1, "unknown") replaced by the default."""
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    return np.where(diameters < 0, unknown_diameter_mm, diameters)


def squared_distances(points_xyz_mm: ArrayLike, centers_xyz_mm: ArrayLike) -> NDArray[np.float64]:
    """Return squared Euclidean distances between every point and every centre.

    Args:
        points_xyz_mm: Shape (N, 3), world (x, y, z) mm.
        centers_xyz_mm: Shape (M, 3), world (x, y, z) mm.

    Returns:
        Shape (N, M), mm squared. Empty inputs give an empty matrix of the right shape.
    """
    points = np.asarray(points_xyz_mm, dtype=np.float64).reshape(-1, 3)
    centers = np.asarray(centers_xyz_mm, dtype=np.float64).reshape(-1, 3)
    difference = points[:, np.newaxis, :] - centers[np.newaxis, :, :]
    return np.einsum("nmk,nmk->nm", difference, difference)


def hit_matrix(
    points_xyz_mm: ArrayLike,
    centers_xyz_mm: ArrayLike,
    diameters_mm: ArrayLike,
    unknown_diameter_mm: float = UNKNOWN_DIAMETER_MM,
) -> NDArray[np.bool_]:
    """Return which points hit which findings under the LUNA16 rule.

    Point n hits finding m when squared_distance(n, m) < (diameter_m / 2) ** 2, strictly: a point
    exactly on the sphere is a miss. Negative diameters use `unknown_diameter_mm`.

    Args:
        points_xyz_mm: Shape (N, 3), world (x, y, z) mm.
        centers_xyz_mm: Shape (M, 3), world (x, y, z) mm.
        diameters_mm: Shape (M,), mm.

    Returns:
        Bool matrix of shape (N, M).
    """
    diameters = effective_diameters(diameters_mm, unknown_diameter_mm)
    centers = np.asarray(centers_xyz_mm, dtype=np.float64).reshape(-1, 3)
    if diameters.shape[0] != centers.shape[0]:
        raise GeometryError(
            f"Got {centers.shape[0]} finding centres but {diameters.shape[0]} diameters; "
            "pass one diameter per centre."
        )
    radius_squared = (diameters / 2.0) ** 2
    return squared_distances(points_xyz_mm, centers) < radius_squared[np.newaxis, :]
