"""Findings that LUNA16 excludes from evaluation, and pleural bumps that mimic nodules."""

from __future__ import annotations

import pandas as pd
from numpy.typing import NDArray

from luna_utils.phantom.grid import _Grid, _random_perpendicular
from luna_utils.phantom.placement import _FindingPlacer
from luna_utils.phantom.rendering import _blend_up, render_blob, render_tube
from luna_utils.phantom.tissues import HU_MUSCLE, TISSUE_CODES


def _add_excluded(
    grid: _Grid, placer: _FindingPlacer, hu: NDArray, tissue: NDArray, blur: NDArray
) -> pd.DataFrame:
    """Place and draw findings that LUNA16 leaves out: nodules under 3 mm, granulomas and scars.

    Scars and half of the granulomas get diameter -1 ("unknown"), as in LUNA16's
    annotations_excluded.csv.
    """
    rng = placer.rng
    rows = []
    for _ in range(int(rng.integers(0, 4))):
        finding = str(rng.choice(["small-nodule", "granuloma", "scar"], p=[0.45, 0.3, 0.25]))
        if finding == "scar":
            length = float(rng.uniform(6.0, 14.0))
            found = placer.pleural(length / 2.0, inset=1.4)
            if found is None:
                continue
            center, outward = found
            along = _random_perpendicular(outward, rng)
            start, end = center - along * length / 2, center + along * length / 2
            radius = float(rng.uniform(0.5, 0.8))
            rendered = render_tube(grid, start, end, radius, 0.6 * radius, blur)
            target_hu, diameter, claim_radius = float(rng.uniform(-60, 20)), -1.0, length / 2
        else:
            diameter = float(rng.uniform(1.5, 2.9)) if finding == "small-nodule" else float(rng.uniform(2.0, 5.0))
            center = placer.isolated(diameter / 2.0, clearance_mm=0.5)
            if center is None:
                continue
            rendered = render_blob(grid, center, diameter / 2.0, blur)
            target_hu = float(rng.uniform(20, 50)) if finding == "small-nodule" else float(rng.uniform(400, 900))
            claim_radius = diameter / 2.0
            if finding == "granuloma" and rng.random() < 0.5:
                diameter = -1.0
        placer.claim(center, claim_radius)
        if rendered is not None:
            slices, fraction, inside = rendered
            _blend_up(hu, slices, fraction, target_hu)
            tissue[slices][inside] = TISSUE_CODES["excluded_finding"]
        world = center + grid.center_xyz_mm
        rows.append({"coordX": world[0], "coordY": world[1], "coordZ": world[2],
                     "diameter_mm": diameter, "finding": finding})
    return pd.DataFrame(rows, columns=["coordX", "coordY", "coordZ", "diameter_mm", "finding"])


def _add_pleural_bumps(
    grid: _Grid, placer: _FindingPlacer, hu: NDArray, tissue: NDArray, blur: NDArray
) -> list[NDArray]:
    """Draw flat soft-tissue bumps on the pleura, which look like small nodules on a single slice.

    Returns:
        The tip of each bump inside the lung, patient frame (u, v, w) mm.
    """
    rng = placer.rng
    tips = []
    for _ in range(int(rng.integers(2, 7))):
        radius = float(rng.uniform(1.2, 2.6))
        found = placer.pleural(radius, inset=-0.3)
        if found is None:
            continue
        center, outward = found
        placer.claim(center, radius)
        rendered = render_blob(grid, center, radius, blur, [(outward, 2, -0.3)])
        if rendered is None:
            continue
        slices, fraction, inside = rendered
        _blend_up(hu, slices, fraction, HU_MUSCLE)
        tissue[slices][inside & (tissue[slices] == TISSUE_CODES["lung"])] = TISSUE_CODES["pleural_bump"]
        tips.append(center - outward * 0.4 * radius)
    return tips
