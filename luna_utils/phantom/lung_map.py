"""Coarse voxel view of the lungs with distances to the pleura, for placing findings."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from luna_utils.phantom.grid import _Grid


class _LungMap:
    """Coarse (about 2 mm) view of the lungs: distances to the pleura, for placing findings."""

    def __init__(self, grid: _Grid, lung_labels: NDArray[np.uint8], tissue: NDArray[np.uint8]) -> None:
        self.strides = tuple(int(max(1, round(2.0 / step))) for step in grid.spacing_zyx_mm)
        sz, sy, sx = self.strides
        self.step_mm = tuple(float(s * step) for s, step in zip(self.strides, grid.spacing_zyx_mm))
        self.labels = lung_labels[::sz, ::sy, ::sx]
        self.tissue = tissue[::sz, ::sy, ::sx]
        self.u = grid.u[0, 0, ::sx]
        self.v = grid.v[0, ::sy, 0]
        self.w = grid.w[::sz, 0, 0]
        inside = self.labels > 0
        self.depth_mm, self.nearest_outside = ndimage.distance_transform_edt(
            inside, sampling=self.step_mm, return_indices=True
        )
        self.outside_distance_mm = ndimage.distance_transform_edt(~inside, sampling=self.step_mm)

    def coordinates(self, index_zyx: NDArray) -> NDArray[np.float64]:
        """Return the patient-frame (u, v, w) of coarse indices, shape (N, 3)."""
        index_zyx = np.asarray(index_zyx).reshape(-1, 3)
        return np.stack(
            [self.u[index_zyx[:, 2]], self.v[index_zyx[:, 1]], self.w[index_zyx[:, 0]]], axis=1
        )

    def pick(self, mask: NDArray[np.bool_], count: int, rng: np.random.Generator) -> NDArray[np.int64]:
        """Return up to `count` random coarse indices (N, 3) where mask is true."""
        candidates = np.argwhere(mask)
        if candidates.shape[0] == 0:
            return np.zeros((0, 3), dtype=np.int64)
        chosen = rng.choice(candidates.shape[0], size=min(count, candidates.shape[0]), replace=False)
        return candidates[np.sort(chosen)]

    def outward(self, index_zyx: NDArray) -> NDArray[np.float64]:
        """Return unit vectors (N, 3) in (u, v, w) from coarse lung points toward the nearest non-lung point."""
        index_zyx = np.asarray(index_zyx).reshape(-1, 3)
        nearest = self.nearest_outside[:, index_zyx[:, 0], index_zyx[:, 1], index_zyx[:, 2]].T
        vectors = self.coordinates(nearest) - self.coordinates(index_zyx)
        return vectors / (np.linalg.norm(vectors, axis=1, keepdims=True) + 1e-9)
