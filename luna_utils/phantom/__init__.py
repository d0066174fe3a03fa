"""Synthetic chest CT phantoms in Hounsfield units, for the LUNA16 sample.

A phantom is built in world space. Every structure (body wall, ribs, spine, heart, lungs, airways,
vessel trees, nodules) is defined in LPS millimetres relative to the centre of the scan, and each
voxel takes the value of the structure at its world position. A scan with direction diag(-1, -1, 1)
therefore stores the same patient mirrored in its array, as a real flipped scan does, and no array
is ever flipped.

NOTE: Only the anatomy drawn from shapes (body, bones, lungs, airways, vessel trees) is
independent of the array order. Random choices that start from voxel positions (scattered twigs,
nodule and finding positions) and the noise differ between two grids covering the same region.

Axes of the patient frame used below (offsets from the scan centre, millimetres):

* `u` along world x: toward the patient's left (the right lung lies at u < 0),
* `v` along world y: toward the patient's back (posterior),
* `w` along world z: toward the head (superior).

The chest is scaled to the field of view (`fov_mm`, the in-plane width of the scan) so that it fits
a small grid, while the fine structures keep their real size: vessels 1-6 mm across, nodules
3-30 mm, rib cortex about 1 mm. Arrays are in NumPy order (z, y, x).
"""

from luna_utils.phantom.builder import Phantom, make_phantom
from luna_utils.phantom.grid import ScanGeometry, _Grid
from luna_utils.phantom.nodules import (
    MAX_NODULE_DIAMETER_MM,
    MIN_NODULE_DIAMETER_MM,
    NODULE_DIAMETER_SIGMA,
    NODULE_LOCATION_WEIGHTS,
    NODULE_LOCATIONS,
    NODULE_MEDIAN_DIAMETER_MM,
    NODULE_TYPE_WEIGHTS,
    NODULE_TYPES,
    _draw_nodule_diameter_mm,
)
from luna_utils.phantom.rendering import EDGE_MM, render_blob, render_tube
from luna_utils.phantom.tissues import (
    AIRWAY_LABEL,
    HU_AIR,
    HU_BLOOD,
    HU_CORTEX,
    HU_DISC,
    HU_FAT,
    HU_LIVER,
    HU_LUNG,
    HU_MARROW,
    HU_MEDIASTINAL_FAT,
    HU_MUSCLE,
    HU_OUTSIDE_FOV,
    HU_TABLE,
    LEFT_LUNG_LABEL,
    RIGHT_LUNG_LABEL,
    TISSUE_CODES,
)
from luna_utils.phantom.vessels import grow_tree

# `_Grid` and `_draw_nodule_diameter_mm` are private, but tests/test_sample.py imports them from here.
__all__ = [
    "AIRWAY_LABEL",
    "EDGE_MM",
    "HU_AIR",
    "HU_BLOOD",
    "HU_CORTEX",
    "HU_DISC",
    "HU_FAT",
    "HU_LIVER",
    "HU_LUNG",
    "HU_MARROW",
    "HU_MEDIASTINAL_FAT",
    "HU_MUSCLE",
    "HU_OUTSIDE_FOV",
    "HU_TABLE",
    "LEFT_LUNG_LABEL",
    "MAX_NODULE_DIAMETER_MM",
    "MIN_NODULE_DIAMETER_MM",
    "NODULE_DIAMETER_SIGMA",
    "NODULE_LOCATIONS",
    "NODULE_LOCATION_WEIGHTS",
    "NODULE_MEDIAN_DIAMETER_MM",
    "NODULE_TYPES",
    "NODULE_TYPE_WEIGHTS",
    "Phantom",
    "RIGHT_LUNG_LABEL",
    "ScanGeometry",
    "TISSUE_CODES",
    "grow_tree",
    "make_phantom",
    "render_blob",
    "render_tube",
]
