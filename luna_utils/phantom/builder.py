"""The generated phantom with its ground truth, and `make_phantom`, which assembles it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from luna_utils.phantom.anatomy import _airway_segments, _draw_body, _lung_hu
from luna_utils.phantom.chest import _Body, _LungShape
from luna_utils.phantom.findings import _add_excluded, _add_pleural_bumps
from luna_utils.phantom.grid import ScanGeometry, _Grid
from luna_utils.phantom.landmarks import _landmarks
from luna_utils.phantom.lung_map import _LungMap
from luna_utils.phantom.nodules import _add_nodules, _nodule_count
from luna_utils.phantom.placement import _FindingPlacer
from luna_utils.phantom.rendering import _accumulate_tubes, _add_texture_and_noise, _blur_sigmas_mm
from luna_utils.phantom.tissues import AIRWAY_LABEL, HU_AIR, HU_BLOOD, HU_MUSCLE, HU_OUTSIDE_FOV, TISSUE_CODES
from luna_utils.phantom.vessels import _twig_segments, _vessel_segments


@dataclass
class Phantom:
    """A generated scan with its ground truth.

    Attributes:
        geometry: Grid and world placement.
        hu_zyx: CT values, int16 Hounsfield units, (z, y, x).
        lung_labels_zyx: uint8 lung mask as in seg-lungs-LUNA16: 3 right lung, 4 left lung,
            5 trachea and main bronchi, 0 elsewhere.
        tissue_zyx: uint8 tissue label map, codes in `TISSUE_CODES`.
        nodule_labels_zyx: uint8 map of nodule voxels: row index in `nodules` plus 1, 0 elsewhere.
        nodules: One row per nodule: coordX, coordY, coordZ (world mm), diameter_mm, nodule_type,
            location.
        excluded: Findings to leave out of the evaluation: coordX, coordY, coordZ, diameter_mm
            (-1 when unknown), finding (small-nodule, granuloma, scar).
        landmarks_xyz_mm: Points where a nodule detector fires falsely, by kind (vessel,
            bifurcation, pleura, bone, airway, other): arrays of shape (N, 3), world (x, y, z) mm.
        vessel_segments: Vessel centre lines, shape (S, 8): start (x, y, z), end (x, y, z), start
            radius and end radius, millimetres.
    """

    geometry: ScanGeometry
    hu_zyx: NDArray[np.int16]
    lung_labels_zyx: NDArray[np.uint8]
    tissue_zyx: NDArray[np.uint8]
    nodule_labels_zyx: NDArray[np.uint8]
    nodules: pd.DataFrame
    excluded: pd.DataFrame
    landmarks_xyz_mm: dict[str, NDArray[np.float64]] = field(default_factory=dict)
    vessel_segments: NDArray[np.float64] = field(default_factory=lambda: np.zeros((0, 8)))


def make_phantom(
    scan_geometry: ScanGeometry,
    rng: np.random.Generator,
    n_nodules: int | None = None,
    fov_circle: bool | None = None,
) -> Phantom:
    """Generate a chest CT phantom with nodules, findings to exclude and detector landmarks.

    Args:
        scan_geometry: Grid and world placement. The direction must be diagonal with +1/-1.
        rng: The random generator. The same generator state gives the same phantom.
        n_nodules: Number of nodules to place (some may not fit), or None to draw 0-4.
        fov_circle: Whether voxels outside the inscribed circle get -2000 HU, as some scanners
            store, or None to draw it (40 % of scans).

    Returns:
        The phantom with its label maps and tables.
    """
    grid = _Grid(scan_geometry)
    nz, ny, nx = grid.shape_zyx
    spacing = scan_geometry.spacing_xyz_mm
    body = _Body(fov_mm=min(nx * spacing[0], ny * spacing[1]), height_mm=nz * spacing[2])
    blur = _blur_sigmas_mm(scan_geometry)
    lung = _LungShape(body, rng)
    if n_nodules is None:
        n_nodules = _nodule_count(rng)
    if fov_circle is None:
        fov_circle = bool(rng.random() < 0.4)

    # Anatomy: body and bones, then the lungs, their airways and vessels.
    hu, tissue = _draw_body(grid, body, rng)
    lung_labels = lung.label(grid.u, grid.v, grid.w)
    lung_region = lung_labels > 0
    hu = np.where(lung_region, _lung_hu(grid, body)[np.newaxis], hu)
    tissue[lung_region] = TISSUE_CODES["lung"]

    # Airways: a wall of soft tissue around an air lumen of 0.8 times the outer radius.
    airways, n_central = _airway_segments(body, lung, rng)
    lumens = [np.concatenate([segment[0:6], 0.8 * segment[6:8]]) for segment in airways]
    wall = _accumulate_tubes(grid, airways, blur)
    lumen = _accumulate_tubes(grid, lumens, blur)
    hu += wall * (np.float32(HU_MUSCLE) - hu)
    hu += lumen * (np.float32(HU_AIR) - hu)
    tissue[(wall > 0.5) & (lumen <= 0.5)] = TISSUE_CODES["airway_wall"]
    tissue[lumen > 0.5] = TISSUE_CODES["airway_lumen"]
    central = _accumulate_tubes(grid, lumens[:n_central], blur)
    lung_labels[central > 0.5] = AIRWAY_LABEL
    del wall, lumen, central

    lung_map = _LungMap(grid, lung_labels * (lung_labels != AIRWAY_LABEL), tissue)
    vessel_list, branch_list = _vessel_segments(body, lung, rng)
    vessel_list += _twig_segments(body, lung_map, rng)
    vessels = np.array(vessel_list).reshape(-1, 8)
    branch_points = np.array(branch_list).reshape(-1, 4)
    vessel_fraction = _accumulate_tubes(grid, vessel_list, blur)
    soft = (tissue == TISSUE_CODES["lung"]) | (tissue == TISSUE_CODES["fat"])
    hu += np.where(soft, vessel_fraction * (np.float32(HU_BLOOD) - hu), np.float32(0.0))
    tissue[(vessel_fraction > 0.5) & (tissue == TISSUE_CODES["lung"])] = TISSUE_CODES["vessel"]
    del vessel_fraction, soft

    # Findings: nodules first so they get the most room, then excluded findings and bumps.
    placer = _FindingPlacer(lung, lung_map, vessels, rng)
    nodules, nodule_labels = _add_nodules(grid, placer, n_nodules, hu, tissue, blur)
    excluded = _add_excluded(grid, placer, hu, tissue, blur)
    bump_tips = _add_pleural_bumps(grid, placer, hu, tissue, blur)

    # The scanner's blur softens every edge drawn sharp above, before noise is added.
    ndimage.gaussian_filter(hu, sigma=(0.35, 0.5, 0.5), output=hu, truncate=2.5)
    _add_texture_and_noise(hu, lung_region, scan_geometry, rng)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    if fov_circle:
        radius = 0.5 * body.fov_mm
        outside = (grid.u[0] ** 2 + grid.v[0] ** 2) > radius**2
        hu[:, outside] = HU_OUTSIDE_FOV
        tissue[:, outside] = TISSUE_CODES["outside_fov"]

    landmarks = _landmarks(grid, lung_map, vessels, branch_points, airways[n_central:], bump_tips, excluded, rng)
    return Phantom(
        geometry=scan_geometry,
        hu_zyx=np.rint(hu).astype(np.int16),
        lung_labels_zyx=lung_labels,
        tissue_zyx=tissue,
        nodule_labels_zyx=nodule_labels,
        nodules=nodules,
        excluded=excluded,
        landmarks_xyz_mm=landmarks,
        vessel_segments=vessels + np.concatenate([grid.center_xyz_mm, grid.center_xyz_mm, [0.0, 0.0]]),
    )
