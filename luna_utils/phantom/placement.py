"""Choice of non-overlapping positions for nodules and other findings in the lungs."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from luna_utils.phantom.chest import _LungShape
from luna_utils.phantom.grid import _random_perpendicular, _unit
from luna_utils.phantom.lung_map import _LungMap


def _find_pleura(lung: _LungShape, starts_uvw: NDArray, directions: NDArray, max_mm: float) -> NDArray:
    """March from lung points along directions to the last lung point before the pleura, (N, 3).

    Points whose ray stays in the lung for `max_mm` return their end point.
    """
    steps = np.arange(0.0, max_mm, 0.25)
    points = starts_uvw[:, np.newaxis, :] + steps[np.newaxis, :, np.newaxis] * directions[:, np.newaxis, :]
    labels = lung.label(points[..., 0], points[..., 1], points[..., 2])
    side = labels[:, :1]
    left = labels != side
    last_inside = np.where(left.any(axis=1), np.argmax(left, axis=1) - 1, len(steps) - 1)
    last_inside = np.maximum(last_inside, 0)
    return points[np.arange(points.shape[0]), last_inside]


def _vessel_clearance_mm(point_uvw: NDArray, vessels: NDArray) -> float:
    """Return the distance from a point to the nearest vessel surface, mm (negative inside a vessel)."""
    if vessels.shape[0] == 0:
        return np.inf
    start, end = vessels[:, 0:3], vessels[:, 3:6]
    axis = end - start
    along = np.clip(np.einsum("ij,ij->i", point_uvw - start, axis) / (np.einsum("ij,ij->i", axis, axis) + 1e-12), 0, 1)
    closest = start + along[:, np.newaxis] * axis
    radius = vessels[:, 6] + (vessels[:, 7] - vessels[:, 6]) * along
    return float(np.min(np.linalg.norm(point_uvw - closest, axis=1) - radius))


class _FindingPlacer:
    """Chooses positions for nodules, excluded findings and pleural bumps that do not overlap."""

    def __init__(self, lung: _LungShape, lung_map: _LungMap, vessels: NDArray, rng: np.random.Generator) -> None:
        self.lung = lung
        self.map = lung_map
        self.vessels = vessels
        self.rng = rng
        self.taken: list[tuple[NDArray, float]] = []

    def _is_free(self, center: NDArray, radius: float, gap_mm: float = 4.0) -> bool:
        return all(np.linalg.norm(center - other) > radius + other_radius + gap_mm for other, other_radius in self.taken)

    def _in_lung(self, center: NDArray) -> bool:
        return bool(self.lung.label(center[0], center[1], center[2]) > 0)

    def isolated(self, radius: float, clearance_mm: float = 1.0) -> NDArray | None:
        """Return a centre deep in the lung and away from vessels, or None."""
        for index in self.map.pick(self.map.depth_mm >= radius + 3.0, 30, self.rng):
            center = self.map.coordinates(index)[0] + self.rng.uniform(-0.5, 0.5, size=3) * self.map.step_mm[::-1]
            if (self._in_lung(center) and self._is_free(center, radius)
                    and _vessel_clearance_mm(center, self.vessels) > radius + clearance_mm):
                return center
        return None

    def pleural(self, radius: float, inset: float) -> tuple[NDArray, NDArray] | None:
        """Return (centre, outward unit vector) for an object `inset` radii inside the pleura, or None.

        A negative inset puts the centre outside the lung, in the chest wall.
        """
        near_wall = (self.map.depth_mm > 0) & (self.map.depth_mm <= radius + 4.0)
        indices = self.map.pick(near_wall, 30, self.rng)
        if indices.shape[0] == 0:
            return None
        starts = self.map.coordinates(indices)
        directions = self.map.outward(indices)
        surface = _find_pleura(self.lung, starts, directions, radius + 12.0)
        for point, direction in zip(surface, directions):
            center = point - direction * (inset * radius)
            if (inset <= 0 or self._in_lung(center)) and self._is_free(center, radius):
                return center, direction
        return None

    def by_vessel(self, radius: float) -> NDArray | None:
        """Return a centre touching a medium vessel (radius 0.7-2.5 mm) inside the lung, or None."""
        mean_radius = 0.5 * (self.vessels[:, 6] + self.vessels[:, 7])
        suitable = np.flatnonzero((mean_radius >= 0.7) & (mean_radius <= 2.5))
        if suitable.size == 0:
            return None
        for segment_index in self.rng.choice(suitable, size=min(30, suitable.size), replace=False):
            segment = self.vessels[segment_index]
            axis = segment[3:6] - segment[0:3]
            point = segment[0:3] + self.rng.uniform(0.2, 0.8) * axis
            side = _random_perpendicular(_unit(axis), self.rng)
            center = point + side * (radius + 0.3 * mean_radius[segment_index])
            if not (self._in_lung(center) and self._is_free(center, radius)):
                continue
            outside = [center + radius * direction for direction in np.vstack([np.eye(3), -np.eye(3)])]
            if all(self._in_lung(probe) for probe in outside):
                return center
        return None

    def claim(self, center: NDArray, radius: float) -> None:
        self.taken.append((np.asarray(center, dtype=np.float64), float(radius)))
