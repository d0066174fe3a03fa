"""Branching tube trees and the pulmonary vessels grown from them."""

from __future__ import annotations

from collections import deque

import numpy as np
from numpy.typing import NDArray

from luna_utils.phantom.chest import _Body, _LungShape
from luna_utils.phantom.grid import _random_perpendicular, _unit
from luna_utils.phantom.lung_map import _LungMap
from luna_utils.phantom.tissues import LEFT_LUNG_LABEL, RIGHT_LUNG_LABEL


def _stays_in_lung(lung: _LungShape, start: NDArray, end: NDArray, side: int) -> bool:
    """Return whether the middle and the end of a segment lie in the lung labelled `side`."""
    points = np.stack([0.5 * (start + end), end])
    labels = lung.label(points[:, 0], points[:, 1], points[:, 2])
    return bool(np.all(labels == side))


def grow_tree(
    lung: _LungShape,
    root_uvw: NDArray,
    direction: NDArray,
    radius_mm: float,
    min_radius_mm: float,
    rng: np.random.Generator,
    max_segments: int = 700,
) -> tuple[list[NDArray], list[NDArray]]:
    """Grow a branching tube tree inside the lungs, thinning at every branching.

    Branching is monopodial, as in the pulmonary vessels: at each split the main branch keeps
    most of the radius and bends a little, and a thinner side branch leaves at a wider angle.
    The two radii follow Murray's law (r^3 = r1^3 + r2^3). Segments are about 6 radii plus
    2.5 mm long and lean away from the root, so the tree fans out toward the pleura. A segment
    that would leave the lung on the root's side is retried in another direction, then dropped.

    Returns:
        (segments, branch_points). Segments are (u0, v0, w0, u1, v1, w1, r0, r1) arrays in the
        patient frame, mm. Branch points are (u, v, w, r) arrays where a segment of end radius r
        splits in two.
    """
    root = np.asarray(root_uvw, dtype=np.float64)
    side = RIGHT_LUNG_LABEL if root[0] < 0 else LEFT_LUNG_LABEL
    segments: list[NDArray] = []
    branch_points: list[NDArray] = []
    # Breadth first, so a tree cut at max_segments loses only its finest branches.
    queue = deque([(root, _unit(np.asarray(direction, float)), radius_mm, 0)])

    while queue and len(segments) < max_segments:
        start, heading, radius, depth = queue.popleft()
        length = float(np.clip(6.0 * radius + 2.5, 3.0, 16.0) * rng.uniform(0.8, 1.2))
        end_radius = radius * 0.95

        # The first two segments may cross the mediastinum, but later ones must stay in the lung.
        end = None
        for _attempt in range(3):
            trial_end = start + heading * length
            if depth < 2 or _stays_in_lung(lung, start, trial_end, side):
                end = trial_end
                break
            turn = np.deg2rad(rng.uniform(25, 60))
            heading = _unit(np.cos(turn) * heading + np.sin(turn) * _random_perpendicular(heading, rng))
        if end is None:
            continue
        segments.append(np.concatenate([start, end, [radius, end_radius]]))

        main_radius = end_radius * rng.uniform(0.82, 0.92)
        side_radius = end_radius * max(1.0 - (main_radius / end_radius) ** 3, 0.0) ** (1.0 / 3.0)
        outward = _unit(end - root)
        bend = _random_perpendicular(heading, rng)
        children = ((main_radius, rng.uniform(8, 22), 1.0), (side_radius, rng.uniform(35, 60), -1.0))
        if side_radius >= min_radius_mm:
            branch_points.append(np.concatenate([end, [end_radius]]))
        for child_radius, angle_degrees, sign in children:
            if child_radius < min_radius_mm:
                continue
            angle = np.deg2rad(angle_degrees)
            child_heading = np.cos(angle) * heading + sign * np.sin(angle) * bend
            if sign < 0:
                # The lungs are taller than wide, so flatter side branches fill them more evenly.
                child_heading = child_heading * np.array([1.0, 1.0, 0.5])
            queue.append((end, _unit(child_heading + 0.35 * outward), child_radius, depth + 1))

    return segments, branch_points


def _vessel_segments(body: _Body, lung: _LungShape, rng: np.random.Generator) -> tuple[list[NDArray], list[NDArray]]:
    """Grow the pulmonary vessel trees: arteries and veins from each hilum into its lung."""
    fov, height = body.fov_mm, body.height_mm
    segments: list[NDArray] = []
    branch_points: list[NDArray] = []
    for side in (-1.0, 1.0):
        for system_v, system_w in ((0.02, 0.0), (-0.04, -0.06)):
            hilum = np.array([side * 0.08 * fov, system_v * fov, body.z_carina + (system_w - 0.12) * height])
            headings = (
                (0.4 * side, 0.0, 1.0),
                (0.5 * side, 0.6, 0.6),
                (1.0 * side, -0.2, 0.2),
                (0.6 * side, 0.7, -1.0),
                (0.6 * side, -0.6, -1.0),
                (1.0 * side, 0.1, -0.6),
            )
            for heading in headings:
                jitter = rng.normal(0.0, 0.25, size=3)
                radius = rng.uniform(1.9, 2.7)
                tree, points = grow_tree(lung, hilum, np.array(heading) + jitter, radius, 0.25, rng, 500)
                segments.extend(tree)
                branch_points.extend(points)
    return segments, branch_points


def _twig_segments(body: _Body, lung_map: _LungMap, rng: np.random.Generator) -> list[NDArray]:
    """Return short thin vessels scattered through the lungs, about one per cubic centimetre.

    The trees grown from the hila thin out before they reach every corner of the small lungs.
    These twigs give the periphery the density of fine vessels seen on real CT. Each one points
    away from its hilum, as peripheral vessels do.
    """
    voxel_mm3 = float(np.prod(lung_map.step_mm))
    inside = lung_map.depth_mm >= 1.5
    count = int(np.count_nonzero(inside) * voxel_mm3 / 1000.0)
    indices = lung_map.pick(inside, count, rng)
    starts = lung_map.coordinates(indices)
    twigs = []
    for start in starts:
        hilum = np.array([np.sign(start[0]) * 0.08 * body.fov_mm, 0.0, body.z_carina - 0.12 * body.height_mm])
        heading = _unit(_unit(start - hilum) + rng.normal(0.0, 0.45, size=3))
        end = start + heading * rng.uniform(3.0, 8.0)
        radius = rng.uniform(0.3, 0.75)
        twigs.append(np.concatenate([start, end, [radius, 0.7 * radius]]))
    return twigs
