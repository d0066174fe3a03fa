"""Nodule kinds, sizes and shapes, and their drawing into the phantom."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from luna_utils.phantom.grid import _Grid, _unit
from luna_utils.phantom.placement import _FindingPlacer
from luna_utils.phantom.rendering import _blend_up, render_blob, render_tube
from luna_utils.phantom.tissues import TISSUE_CODES

logger = logging.getLogger(__name__)


# Nodule kinds and their share of the drawn nodules. LUNA16's nodules are mostly solid.
NODULE_TYPES = ("solid", "part-solid", "ground-glass")
NODULE_TYPE_WEIGHTS = (0.6, 0.15, 0.25)
NODULE_LOCATIONS = ("isolated", "juxta-pleural", "juxta-vascular")
NODULE_LOCATION_WEIGHTS = (0.5, 0.3, 0.2)

# Nodule diameters: log-normal with this median, clipped to LUNA16's range of annotated sizes.
NODULE_MEDIAN_DIAMETER_MM = 6.5
NODULE_DIAMETER_SIGMA = 0.5
MIN_NODULE_DIAMETER_MM = 3.25
MAX_NODULE_DIAMETER_MM = 30.0


def _draw_nodule_diameter_mm(rng: np.random.Generator) -> float:
    diameter = NODULE_MEDIAN_DIAMETER_MM * np.exp(rng.normal(0.0, NODULE_DIAMETER_SIGMA))
    return float(np.clip(diameter, MIN_NODULE_DIAMETER_MM, MAX_NODULE_DIAMETER_MM))


def _random_lobes(radius_mm: float, rng: np.random.Generator) -> list[tuple[NDArray, int, float]]:
    """Return Legendre lobes for a nodule surface. Nodules under 6 mm stay almost round."""
    total = 0.08 if radius_mm < 3.0 else 0.18
    count = int(rng.integers(2, 5))
    amplitudes = rng.dirichlet(np.ones(count)) * total * rng.uniform(0.5, 1.0)
    return [
        (_unit(rng.normal(size=3)), int(rng.integers(2, 5)), float(amplitude * rng.choice([-1.0, 1.0])))
        for amplitude in amplitudes
    ]


def _nodule_count(rng: np.random.Generator) -> int:
    return int(rng.choice(5, p=[0.2, 0.35, 0.22, 0.13, 0.1]))


def _mottle(shape: tuple[int, ...], strength: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """Return a smooth random factor around 1 (about 1 voxel grain) that makes a nodule uneven."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma=1.0)
    field /= field.std() + 1e-6
    return np.clip(1.0 + strength * field, 0.3, 1.3).astype(np.float32)


def _add_spicules(
    grid: _Grid, center: NDArray, radius: float, target_hu: float, hu: NDArray, blur: NDArray,
    rng: np.random.Generator,
) -> None:
    """Draw thin strands radiating from a solid nodule's surface (spiculation), in place."""
    for _ in range(int(rng.integers(3, 7))):
        direction = _unit(rng.normal(size=3))
        start = center + direction * 0.8 * radius
        end = center + direction * radius * rng.uniform(1.5, 2.2)
        rendered = render_tube(grid, start, end, rng.uniform(0.35, 0.6), 0.2, blur)
        if rendered is not None:
            slices, fraction, _inside = rendered
            _blend_up(hu, slices, fraction, target_hu)


def _add_nodules(
    grid: _Grid, placer: _FindingPlacer, count: int, hu: NDArray, tissue: NDArray, blur: NDArray
) -> tuple[pd.DataFrame, NDArray[np.uint8]]:
    """Place and draw nodules, and return their table and the nodule label map (row index + 1)."""
    rng = placer.rng
    labels = np.zeros(grid.shape_zyx, dtype=np.uint8)
    rows = []
    for _ in range(count):
        nodule_type = str(rng.choice(NODULE_TYPES, p=NODULE_TYPE_WEIGHTS))
        location = str(rng.choice(NODULE_LOCATIONS, p=NODULE_LOCATION_WEIGHTS))
        diameter = _draw_nodule_diameter_mm(rng)

        # Shrink a nodule that finds no room, and give up after four sizes.
        center = None
        for _attempt in range(4):
            radius = diameter / 2.0
            if location == "isolated":
                center = placer.isolated(radius)
            elif location == "juxta-pleural":
                found = placer.pleural(radius, inset=0.6)
                center = None if found is None else found[0]
            else:
                center = placer.by_vessel(radius)
            if center is not None:
                break
            diameter = max(MIN_NODULE_DIAMETER_MM, 0.75 * diameter)
        if center is None:
            logger.debug("Skipped a %.1f mm %s nodule: no room found in the lungs", diameter, location)
            continue
        placer.claim(center, radius)

        lobes = _random_lobes(radius, rng)
        if nodule_type == "solid":
            layers = [(radius, float(rng.uniform(20, 60)))]
        elif nodule_type == "ground-glass":
            layers = [(radius, float(rng.uniform(-620, -480)))]
        else:
            layers = [(radius, float(rng.uniform(-600, -450))),
                      (radius * float(rng.uniform(0.35, 0.6)), float(rng.uniform(15, 50)))]
        label = len(rows) + 1
        mottling = 0.35 if nodule_type == "ground-glass" else 0.12
        for layer_index, (layer_radius, target_hu) in enumerate(layers):
            rendered = render_blob(grid, center, layer_radius, blur, lobes)
            if rendered is None:
                continue
            slices, fraction, inside = rendered
            _blend_up(hu, slices, fraction * _mottle(fraction.shape, mottling, rng), target_hu)
            if layer_index == 0:
                labels[slices][inside] = label
                tissue[slices][inside] = TISSUE_CODES["nodule"]

        if nodule_type == "solid" and radius >= 4.0 and rng.random() < 0.5:
            _add_spicules(grid, center, radius, layers[0][1], hu, blur, rng)

        world = center + grid.center_xyz_mm
        rows.append({
            "coordX": world[0], "coordY": world[1], "coordZ": world[2],
            "diameter_mm": 2.0 * radius, "nodule_type": nodule_type, "location": location,
        })
    columns = ["coordX", "coordY", "coordZ", "diameter_mm", "nodule_type", "location"]
    return pd.DataFrame(rows, columns=columns), labels
