"""Points where a nodule detector fires falsely (false-positive sites), by kind."""

from __future__ import annotations

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from luna_utils.phantom.grid import _Grid, _random_perpendicular, _unit
from luna_utils.phantom.lung_map import _LungMap
from luna_utils.phantom.tissues import TISSUE_CODES


def _landmarks(
    grid: _Grid,
    lung_map: _LungMap,
    vessels: NDArray,
    branch_points: NDArray,
    airways: list[NDArray],
    bump_tips: list[NDArray],
    excluded: pd.DataFrame,
    rng: np.random.Generator,
    pool_size: int = 400,
) -> dict[str, NDArray[np.float64]]:
    """Collect points where a detector fires falsely, by kind, in world (x, y, z) mm."""
    pools: dict[str, NDArray] = {}

    # Vessel centre lines, and branchings, of vessels a detector can see (radius >= 0.5 mm).
    mean_radius = 0.5 * (vessels[:, 6] + vessels[:, 7])
    visible = vessels[mean_radius >= 0.5]
    lengths = np.linalg.norm(visible[:, 3:6] - visible[:, 0:3], axis=1)
    if visible.shape[0]:
        chosen = rng.choice(visible.shape[0], size=pool_size, p=lengths / lengths.sum())
        along = rng.uniform(0.0, 1.0, size=(pool_size, 1))
        pools["vessel"] = visible[chosen, 0:3] + along * (visible[chosen, 3:6] - visible[chosen, 0:3])
    branchings = branch_points[branch_points[:, 3] >= 0.5] if branch_points.size else np.zeros((0, 4))
    pools["bifurcation"] = branchings[:, 0:3]

    # Pleura: lung points next to the chest wall, and the tips of the pleural bumps.
    wall = lung_map.pick((lung_map.depth_mm > 0) & (lung_map.depth_mm <= max(lung_map.step_mm) + 0.1), pool_size, rng)
    pools["pleura"] = np.vstack([lung_map.coordinates(wall)] + [tip[np.newaxis] for tip in bump_tips])

    # Bone next to the lung: ribs, vertebrae and sternum within 4 mm of the pleura.
    bone = lung_map.pick((lung_map.tissue == TISSUE_CODES["bone"]) & (lung_map.outside_distance_mm <= 4.0), pool_size, rng)
    pools["bone"] = lung_map.coordinates(bone)

    # Airway walls inside the lungs.
    wall_points = []
    for segment in airways:
        axis = segment[3:6] - segment[0:3]
        for _ in range(3):
            side = _random_perpendicular(_unit(axis), rng)
            wall_points.append(segment[0:3] + rng.uniform(0, 1) * axis + side * segment[6])
    pools["airway"] = np.array(wall_points).reshape(-1, 3)

    # Anything else: parenchyma, and the excluded findings.
    anywhere = lung_map.pick(lung_map.depth_mm >= 3.0, pool_size // 2, rng)
    excluded_uvw = excluded[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64) - grid.center_xyz_mm
    pools["other"] = np.vstack([lung_map.coordinates(anywhere), excluded_uvw])

    return {kind: np.asarray(points, dtype=np.float64).reshape(-1, 3) + grid.center_xyz_mm
            for kind, points in pools.items()}
