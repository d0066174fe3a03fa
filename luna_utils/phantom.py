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

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from scipy import ndimage

from luna_utils import geometry
from luna_utils.errors import GeometryError

logger = logging.getLogger(__name__)

# Labels of the lung mask, as in LUNA16's seg-lungs-LUNA16 files.
RIGHT_LUNG_LABEL = 3
LEFT_LUNG_LABEL = 4
AIRWAY_LABEL = 5

# Codes of the tissue label map (`Phantom.tissue_zyx`).
TISSUE_CODES = {
    "air": 0,
    "fat": 1,
    "muscle": 2,
    "lung": 3,
    "vessel": 4,
    "airway_lumen": 5,
    "airway_wall": 6,
    "bone": 7,
    # The heart and the descending aorta.
    "heart": 8,
    "organ": 9,
    "nodule": 10,
    "excluded_finding": 11,
    "pleural_bump": 12,
    "table": 13,
    "outside_fov": 14,
}

# Mean Hounsfield units of the tissues, before texture and noise.
HU_AIR = -1000.0
HU_FAT = -100.0
HU_MEDIASTINAL_FAT = -85.0
HU_MUSCLE = 40.0
HU_BLOOD = 40.0
HU_LIVER = 55.0
HU_LUNG = -870.0
HU_MARROW = 250.0
HU_CORTEX = 800.0
HU_DISC = 80.0
HU_TABLE = 120.0
# Value that some scanners store outside the reconstructed circle (the field of view).
HU_OUTSIDE_FOV = -2000.0

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

# Width of the soft edge of rendered objects, millimetres.
EDGE_MM = 0.35


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


@dataclass(frozen=True)
class _Body:
    """Sizes of the scaled chest, millimetres, all relative to the scan centre (u, v, w)."""

    fov_mm: float
    height_mm: float

    # Outer body outline: an ellipse in the axial plane.
    @property
    def body_axes(self) -> tuple[float, float, float]:
        """Semi-axis along u, semi-axis along v, centre offset along v."""
        return 0.46 * self.fov_mm, 0.34 * self.fov_mm, 0.015 * self.fov_mm

    # Inner surface of the rib cage: the lungs fill this ellipse outside the mediastinum.
    @property
    def thorax_axes(self) -> tuple[float, float, float]:
        return 0.39 * self.fov_mm, 0.27 * self.fov_mm, 0.01 * self.fov_mm

    @property
    def fat_mm(self) -> float:
        return max(3.0, 0.035 * self.fov_mm)

    @property
    def spine(self) -> tuple[float, float]:
        """Centre of the vertebral bodies along v and their radius."""
        return 0.20 * self.fov_mm, max(6.0, 0.05 * self.fov_mm)

    @property
    def aorta(self) -> tuple[float, float, float]:
        """Centre of the descending aorta (u, v) and its radius."""
        return 0.065 * self.fov_mm, 0.13 * self.fov_mm, max(5.0, 0.035 * self.fov_mm)

    @property
    def mediastinum_half_width(self) -> float:
        """Narrowest half-width of the mediastinum. The lung ellipses widen it in front and behind."""
        return 0.03 * self.fov_mm

    @property
    def z_apex(self) -> float:
        return 0.47 * self.height_mm

    @property
    def z_taper(self) -> float:
        """Height above which the lungs narrow toward the apex."""
        return 0.05 * self.height_mm

    @property
    def z_carina(self) -> float:
        return 0.10 * self.height_mm

    @property
    def heart(self) -> tuple[float, float, float, float, float, float]:
        """Centre (u, v, w) and semi-axes (u, v, w) of the heart ellipsoid."""
        return (
            0.06 * self.fov_mm, -0.09 * self.fov_mm, -0.24 * self.height_mm,
            0.13 * self.fov_mm, 0.11 * self.fov_mm, 0.18 * self.height_mm,
        )

    def diaphragm_w(self, u: NDArray, v: NDArray) -> NDArray:
        """Height of the lung base (the diaphragm dome) above each (u, v), millimetres."""
        low = -0.46 * self.height_mm
        dome_u = np.where(u < 0, -0.19, 0.19) * self.fov_mm
        # The right dome sits higher, above the liver.
        top = np.where(u < 0, -0.26, -0.31) * self.height_mm
        bulge = 1.0 - ((u - dome_u) / (0.2 * self.fov_mm)) ** 2 - (v / (0.26 * self.fov_mm)) ** 2
        return low + (top - low) * np.clip(bulge, 0.0, 1.0)


def _ellipse_level(u: NDArray, v: NDArray, axes: tuple[float, float, float]) -> NDArray:
    """Return (u/a)^2 + ((v-c)/b)^2 for an ellipse with semi-axes a, b centred at v = c."""
    semi_u, semi_v, offset_v = axes
    return (u / semi_u) ** 2 + ((v - offset_v) / semi_v) ** 2


def _ellipse_depth_mm(u: NDArray, v: NDArray, axes: tuple[float, float, float]) -> NDArray:
    """Return the approximate signed distance to an ellipse outline, millimetres, negative inside.

    Uses level / |gradient of level|, which is exact on the outline and close to it nearby.
    """
    semi_u, semi_v, offset_v = axes
    level = _ellipse_level(u, v, axes)
    gradient_u = 2.0 * u / semi_u**2
    gradient_v = 2.0 * (v - offset_v) / semi_v**2
    norm = np.sqrt(gradient_u**2 + gradient_v**2) + 1e-6
    return (level - 1.0) / norm


class _LungShape:
    """Implicit lung shape, evaluated on grids or on scattered points of the patient frame."""

    def __init__(self, body: _Body, rng: np.random.Generator) -> None:
        self.body = body

        # Gentle random waves of the lung outline make every scan's lungs a little different.
        self.wave_vectors = rng.normal(0.0, 1.0, size=(3, 3)) * (2 * np.pi / (0.6 * body.fov_mm))
        self.wave_phases = rng.uniform(0.0, 2 * np.pi, size=3)
        self.wave_amplitude = 0.025

    def label(self, u: NDArray, v: NDArray, w: NDArray) -> NDArray[np.uint8]:
        """Return 3 (right lung), 4 (left lung) or 0 at points (u, v, w), broadcasting the inputs."""
        body = self.body

        # Inside the rib cage, narrowing toward the apex.
        height = max(body.z_apex - body.z_taper, 1e-6)
        rise = np.clip((w - body.z_taper) / height, 0.0, 1.0)
        scale = np.sqrt(np.clip(1.0 - rise**2, 0.0, 1.0))
        level = _ellipse_level(u, v, body.thorax_axes)
        waves = sum(
            np.sin(vector[0] * u + vector[1] * v + vector[2] * w + phase)
            for vector, phase in zip(self.wave_vectors, self.wave_phases)
        )
        inside = level + self.wave_amplitude * waves < (0.985 * scale) ** 2

        # Each lung is also inside its own ellipse, whose curved medial side shapes the mediastinum.
        lung_u = np.where(u < 0, -1.0, 1.0) * 0.25 * body.fov_mm
        lung_level = ((u - lung_u) / (0.21 * body.fov_mm)) ** 2 + (v / (0.3 * body.fov_mm)) ** 2
        inside &= lung_level < scale**2

        # Between the diaphragm and the apex.
        inside &= (w > body.diaphragm_w(u, v)) & (w < body.z_apex)

        # Outside the mediastinum, the spine, the aorta and the heart.
        inside &= np.abs(u) > body.mediastinum_half_width
        spine_v, spine_radius = body.spine
        inside &= u**2 + (v - spine_v) ** 2 > (spine_radius + 4.0) ** 2
        aorta_u, aorta_v, aorta_radius = body.aorta
        inside &= (u - aorta_u) ** 2 + (v - aorta_v) ** 2 > (aorta_radius + 3.0) ** 2
        heart_u, heart_v, heart_w, semi_u, semi_v, semi_w = body.heart
        heart_level = (
            ((u - heart_u) / (semi_u + 3.0)) ** 2
            + ((v - heart_v) / (semi_v + 3.0)) ** 2
            + ((w - heart_w) / semi_w) ** 2
        )
        inside &= heart_level > 1.0

        return np.where(inside, np.where(u < 0, RIGHT_LUNG_LABEL, LEFT_LUNG_LABEL), 0).astype(np.uint8)


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


def _blur_sigmas_mm(scan_geometry: ScanGeometry) -> NDArray[np.float64]:
    """Return the blur of the scanner, (x, y, z) mm: the in-plane point spread and the slice profile."""
    spacing = np.asarray(scan_geometry.spacing_xyz_mm, dtype=np.float64)
    return np.array([0.5 * spacing[0], 0.5 * spacing[1], 0.45 * spacing[2]])


def render_tube(
    grid: _Grid,
    start_uvw: NDArray,
    end_uvw: NDArray,
    radius_start_mm: float,
    radius_end_mm: float,
    blur_xyz_mm: NDArray,
) -> tuple[tuple[slice, slice, slice], NDArray[np.float32], NDArray[np.bool_]] | None:
    """Render a tapered tube as partial-volume fractions on the voxels around it.

    The tube's cross-section is widened by the scanner blur and its peak lowered so that its
    total density stays that of the sharp tube: thin vessels come out wider and fainter, as on CT.

    Args:
        grid: The scan's voxel coordinates.
        start_uvw, end_uvw: Centre-line end points in the patient frame, mm.
        radius_start_mm, radius_end_mm: Radius at each end, mm.
        blur_xyz_mm: Blur of the scanner along x, y and z, mm.

    Returns:
        (slices, fraction, inside): the (z, y, x) box, the fraction of each voxel it fills (0..1),
        and which voxel centres lie inside the sharp tube. None when the tube misses the grid.
    """
    start = np.asarray(start_uvw, dtype=np.float64)
    end = np.asarray(end_uvw, dtype=np.float64)
    reach = max(radius_start_mm, radius_end_mm) + 3.0 * float(np.max(blur_xyz_mm)) + EDGE_MM
    slices = grid.box_slices(np.minimum(start, end) - reach, np.maximum(start, end) + reach)
    if slices is None:
        return None
    u, v, w = grid.box_coordinates(slices)

    # Position along the centre line (0 at start, 1 at end) of the closest centre-line point.
    axis = end - start
    length_squared = float(axis @ axis) + 1e-12
    along = np.clip(((u - start[0]) * axis[0] + (v - start[1]) * axis[1] + (w - start[2]) * axis[2])
                    / length_squared, 0.0, 1.0)
    offset_u = u - (start[0] + along * axis[0])
    offset_v = v - (start[1] + along * axis[1])
    offset_w = w - (start[2] + along * axis[2])
    radius = radius_start_mm + (radius_end_mm - radius_start_mm) * along
    sharp_inside = offset_u**2 + offset_v**2 + offset_w**2 < radius**2

    # Widen each axis by the blur and lower the peak so the cross-section keeps its area.
    radius_squared = radius**2
    width_u = np.sqrt(radius_squared + blur_xyz_mm[0] ** 2)
    width_v = np.sqrt(radius_squared + blur_xyz_mm[1] ** 2)
    width_w = np.sqrt(radius_squared + blur_xyz_mm[2] ** 2)
    axis_w_share = (axis[2] ** 2) / length_squared
    across_w = np.sqrt(radius_squared + axis_w_share * blur_xyz_mm[0] ** 2
                       + (1.0 - axis_w_share) * blur_xyz_mm[2] ** 2)
    peak = np.minimum(1.0, radius_squared / (width_u * across_w))
    distance = np.sqrt((offset_u / width_u) ** 2 + (offset_v / width_v) ** 2 + (offset_w / width_w) ** 2)
    fraction = peak * 0.5 * (1.0 + np.tanh((1.0 - distance) * width_u / EDGE_MM))
    return slices, fraction.astype(np.float32), sharp_inside


def render_blob(
    grid: _Grid,
    center_uvw: NDArray,
    radius_mm: float,
    blur_xyz_mm: NDArray,
    lobes: list[tuple[NDArray, int, float]] | None = None,
) -> tuple[tuple[slice, slice, slice], NDArray[np.float32], NDArray[np.bool_]] | None:
    """Render a (lobulated) sphere as partial-volume fractions on the voxels around it.

    Args:
        grid: The scan's voxel coordinates.
        center_uvw: Centre in the patient frame, mm.
        radius_mm: Mean radius, mm.
        blur_xyz_mm: Blur of the scanner along x, y and z, mm.
        lobes: (unit axis, Legendre order, amplitude) terms that modulate the radius with
            direction. The radius stays within (1 +/- sum of amplitudes) * radius_mm.

    Returns:
        (slices, fraction, inside) as for `render_tube`, or None when the blob misses the grid.
    """
    center = np.asarray(center_uvw, dtype=np.float64)
    lobes = lobes or []
    largest = radius_mm * (1.0 + sum(abs(term[2]) for term in lobes))
    reach = largest + 3.0 * float(np.max(blur_xyz_mm)) + EDGE_MM
    slices = grid.box_slices(center - reach, center + reach)
    if slices is None:
        return None
    u, v, w = grid.box_coordinates(slices)
    offset_u, offset_v, offset_w = u - center[0], v - center[1], w - center[2]
    distance = np.sqrt(offset_u**2 + offset_v**2 + offset_w**2) + 1e-9

    # Radius in each voxel's direction from the centre.
    radius = np.full(distance.shape, radius_mm)
    for lobe_axis, order, amplitude in lobes:
        cosine = (offset_u * lobe_axis[0] + offset_v * lobe_axis[1] + offset_w * lobe_axis[2]) / distance
        legendre = np.polynomial.legendre.Legendre.basis(order)(cosine)
        radius = radius + radius_mm * amplitude * legendre
    sharp_inside = distance < radius

    # Same widening as render_tube, keeping the volume instead of the cross-section.
    radius_squared = radius**2
    width_u = np.sqrt(radius_squared + blur_xyz_mm[0] ** 2)
    width_v = np.sqrt(radius_squared + blur_xyz_mm[1] ** 2)
    width_w = np.sqrt(radius_squared + blur_xyz_mm[2] ** 2)
    peak = np.minimum(1.0, radius**3 / (width_u * width_v * width_w))
    scaled = np.sqrt((offset_u / width_u) ** 2 + (offset_v / width_v) ** 2 + (offset_w / width_w) ** 2)
    fraction = peak * 0.5 * (1.0 + np.tanh((1.0 - scaled) * width_u / EDGE_MM))
    return slices, fraction.astype(np.float32), sharp_inside


def _unit(vector: NDArray) -> NDArray:
    return vector / (np.linalg.norm(vector) + 1e-12)


def _random_perpendicular(direction: NDArray, rng: np.random.Generator) -> NDArray:
    """Return a random unit vector perpendicular to `direction`."""
    trial = rng.normal(size=3)
    trial -= (trial @ direction) * direction
    return _unit(trial)


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


def _draw_body(grid: _Grid, body: _Body, rng: np.random.Generator) -> tuple[NDArray, NDArray]:
    """Draw everything but the lungs' contents: body wall, mediastinum, heart, organs, bones, table.

    Returns:
        (hu, tissue): float32 Hounsfield units and uint8 tissue codes, both (z, y, x).
    """
    u2, v2, w = grid.u[0], grid.v[0], grid.w
    nz, ny, nx = grid.shape_zyx
    codes = TISSUE_CODES

    # In-plane layers, the same on every slice: air, subcutaneous fat, muscle, mediastinal fat.
    skin_depth = -_ellipse_depth_mm(u2, v2, body.body_axes)
    thorax_depth = _ellipse_depth_mm(u2, v2, body.thorax_axes)
    angle = np.arctan2(u2, v2 - body.thorax_axes[2])
    fat_mm = body.fat_mm * (1.0 + 0.35 * np.cos(angle) + 0.15 * np.sin(3 * angle + rng.uniform(0, 6.3)))
    in_body = skin_depth > 0
    in_fat = in_body & (skin_depth < fat_mm)
    in_thorax = thorax_depth < 0
    base_hu = np.full((ny, nx), HU_AIR, dtype=np.float32)
    base_tissue = np.zeros((ny, nx), dtype=np.uint8)
    base_hu[in_body] = HU_MUSCLE
    base_tissue[in_body] = codes["muscle"]
    base_hu[in_fat] = HU_FAT
    base_tissue[in_fat] = codes["fat"]
    base_hu[in_thorax] = HU_MEDIASTINAL_FAT
    base_tissue[in_thorax] = codes["fat"]

    # Pleura and intercostal muscle line the inside of the rib cage.
    lining = in_thorax & (thorax_depth > -2.5)
    base_hu[lining] = HU_MUSCLE
    base_tissue[lining] = codes["muscle"]

    # A thin fat plane between the chest-wall muscles.
    plane = in_body & ~in_fat & ~in_thorax & (np.abs(skin_depth - fat_mm - 0.45 * (thorax_depth + skin_depth - fat_mm)) < 0.6)
    base_hu[plane] = HU_FAT
    base_tissue[plane] = codes["fat"]

    # The patient table: a thin curved shell below the back.
    table_v = body.body_axes[1] + body.body_axes[2] + 4.0 + u2**2 / (2.5 * body.fov_mm)
    on_table = (np.abs(v2 - table_v) < 1.5) & (np.abs(u2) < 0.47 * body.fov_mm) & ~in_body
    base_hu[on_table] = HU_TABLE
    base_tissue[on_table] = codes["table"]

    # The descending aorta and the spinal canal run through every slice.
    aorta_u, aorta_v, aorta_radius = body.aorta
    in_aorta = (u2 - aorta_u) ** 2 + (v2 - aorta_v) ** 2 < aorta_radius**2
    base_hu[in_aorta] = HU_BLOOD
    base_tissue[in_aorta] = codes["heart"]
    spine_v, spine_radius = body.spine
    canal_radius = 0.55 * spine_radius
    canal_v = spine_v + spine_radius + canal_radius + 1.0
    canal_distance = np.sqrt(u2**2 + (v2 - canal_v) ** 2)
    in_canal = canal_distance < canal_radius
    in_arch = (canal_distance >= canal_radius) & (canal_distance < canal_radius + 2.5) & (v2 > canal_v - 0.3 * canal_radius)
    in_process = (np.abs(u2) < 2.0) & (v2 > canal_v) & (v2 < canal_v + canal_radius + 12.0)
    base_hu[in_canal] = 30.0
    base_tissue[in_canal] = codes["organ"]
    base_hu[in_arch | in_process] = HU_CORTEX
    base_tissue[in_arch | in_process] = codes["bone"]

    hu = np.broadcast_to(base_hu, (nz, ny, nx)).copy()
    tissue = np.broadcast_to(base_tissue, (nz, ny, nx)).copy()

    # Liver under the right dome of the diaphragm, spleen and stomach under the left.
    diaphragm = body.diaphragm_w(u2, v2)
    below = in_thorax[np.newaxis] & (w < diaphragm[np.newaxis] - 1.0)
    organ_hu = np.where(u2 < 0, HU_LIVER, 45.0).astype(np.float32)
    hu = np.where(below, organ_hu[np.newaxis], hu)
    tissue[below] = codes["organ"]

    _draw_heart(grid, body, hu, tissue)
    _draw_vertebrae(grid, body, hu, tissue, u2, v2)
    _draw_ribs(grid, body, hu, tissue, thorax_depth, angle, rng)
    return hu, tissue


def _draw_heart(grid: _Grid, body: _Body, hu: NDArray, tissue: NDArray) -> None:
    """Draw the heart, an ellipsoid of blood and muscle, into hu and tissue in place."""
    heart_u, heart_v, heart_w, semi_u, semi_v, semi_w = body.heart
    center = np.array([heart_u, heart_v, heart_w])
    semi = np.array([semi_u, semi_v, semi_w])
    slices = grid.box_slices(center - semi, center + semi)
    if slices is None:
        return
    u, v, w = grid.box_coordinates(slices)
    inside = ((u - heart_u) / semi_u) ** 2 + ((v - heart_v) / semi_v) ** 2 + ((w - heart_w) / semi_w) ** 2 < 1.0
    hu[slices][inside] = HU_BLOOD
    tissue[slices][inside] = TISSUE_CODES["heart"]


def _draw_vertebrae(grid: _Grid, body: _Body, hu: NDArray, tissue: NDArray, u2: NDArray, v2: NDArray) -> None:
    """Draw the vertebral bodies (cortex, marrow) and the discs between them, in place."""
    spine_v, spine_radius = body.spine
    distance = np.sqrt(u2**2 + (v2 - spine_v) ** 2)
    rows, columns = np.nonzero(distance < spine_radius)
    if rows.size == 0:
        return
    pitch = max(18.0, 0.14 * body.fov_mm)
    phase = np.mod(grid.w[:, 0, 0], pitch)
    in_disc = phase < 0.2 * pitch
    cortex = distance[rows, columns] > spine_radius - 1.2
    values = np.where(cortex, HU_CORTEX, HU_MARROW).astype(np.float32)
    block = np.where(in_disc[:, np.newaxis], np.float32(HU_DISC), values[np.newaxis, :])
    hu[:, rows, columns] = block
    tissue[:, rows, columns] = np.where(in_disc[:, np.newaxis], TISSUE_CODES["organ"], TISSUE_CODES["bone"])


def _draw_ribs(
    grid: _Grid,
    body: _Body,
    hu: NDArray,
    tissue: NDArray,
    thorax_depth: NDArray,
    angle: NDArray,
    rng: np.random.Generator,
) -> None:
    """Draw ribs around the rib cage and the sternum in front, in place.

    Each rib is an elliptical bar just outside the lung, sloping down toward the front. Ribs
    are missing near the spine (angle 0, pointing back) and in front, where cartilage joins them
    to the sternum.
    """
    half_thickness = float(np.clip(0.012 * body.fov_mm, 1.6, 3.5))
    half_height = float(np.clip(0.025 * body.fov_mm, 2.5, 6.0))
    pitch = float(np.clip(0.13 * body.fov_mm, 14.0, 30.0))
    drop = 2.2 * pitch
    phase = rng.uniform(0.0, pitch)
    center_depth = 1.0 + half_thickness
    reach = np.abs(angle)

    ring = (np.abs(thorax_depth - center_depth) < half_thickness) & (reach > 0.2) & (reach < 2.85)
    rows, columns = np.nonzero(ring)
    if rows.size > 0:
        radial = ((thorax_depth[rows, columns] - center_depth) / half_thickness) ** 2
        slope = drop * 0.5 * (1.0 - np.cos(angle[rows, columns]))
        turns = (grid.w[:, 0, 0][:, np.newaxis] + slope[np.newaxis, :] - phase) / pitch
        along = (turns - np.round(turns)) * pitch
        level = radial[np.newaxis, :] + (along / half_height) ** 2
        is_rib = level < 1.0
        cartilage = (reach[rows, columns] > 2.45)[np.newaxis, :]
        values = np.where(cartilage, 110.0, np.where(level > 0.65, HU_CORTEX, HU_MARROW))
        current = hu[:, rows, columns]
        hu[:, rows, columns] = np.where(is_rib, values, current)
        current_tissue = tissue[:, rows, columns]
        tissue[:, rows, columns] = np.where(is_rib, TISSUE_CODES["bone"], current_tissue)

    # The sternum: a flat bar in front, on every slice.
    u2, v2 = grid.u[0], grid.v[0]
    front_v = -body.thorax_axes[1] + body.thorax_axes[2] - center_depth
    sternum_level = (u2 / max(0.05 * body.fov_mm, 6.0)) ** 2 + ((v2 - front_v) / half_thickness) ** 2
    rows, columns = np.nonzero(sternum_level < 1.0)
    if rows.size > 0:
        values = np.where(sternum_level[rows, columns] > 0.45, HU_CORTEX, HU_MARROW)
        hu[:, rows, columns] = values[np.newaxis, :]
        tissue[:, rows, columns] = TISSUE_CODES["bone"]


def _accumulate_tubes(grid: _Grid, segments: list[NDArray], blur: NDArray) -> NDArray[np.float32]:
    """Render tubes into one partial-volume field (z, y, x), taking the maximum where they overlap."""
    fraction = np.zeros(grid.shape_zyx, dtype=np.float32)
    for segment in segments:
        rendered = render_tube(grid, segment[0:3], segment[3:6], segment[6], segment[7], blur)
        if rendered is None:
            continue
        slices, part, _inside = rendered
        np.maximum(fraction[slices], part, out=fraction[slices])
    return fraction


def _airway_segments(body: _Body, lung: _LungShape, rng: np.random.Generator) -> tuple[list[NDArray], int]:
    """Return airway centre lines (trachea, main bronchi, then branches into each lung).

    Returns:
        (segments, n_central). Segments are as for `grow_tree`. The first n_central are the
        trachea and the main bronchi, the airways that LUNA16's lung masks label 5.
    """
    fov, height = body.fov_mm, body.height_mm
    trachea_radius = float(np.clip(0.045 * fov, 4.0, 9.0))
    trachea_v = 0.03 * fov
    carina = np.array([0.0, trachea_v, body.z_carina])
    top = np.array([0.0, trachea_v, 0.55 * height])
    segments = [np.concatenate([top, carina, [trachea_radius, trachea_radius]])]
    ends = []
    for side, drop in ((-1.0, 0.06), (1.0, 0.09)):
        end = np.array([side * 0.11 * fov, trachea_v + 0.01 * fov, body.z_carina - drop * height])
        radius = 0.62 * trachea_radius
        segments.append(np.concatenate([carina, end, [radius, 0.9 * radius]]))
        ends.append((end, side, 0.9 * radius))
    n_central = len(segments)

    for end, side, radius in ends:
        for heading in ((0.3 * side, -0.1, 1.0), (0.4 * side, 0.4, -1.0), (0.5 * side, -0.5, -0.8)):
            branch, _points = grow_tree(lung, end, np.array(heading), 0.6 * radius, 1.4, rng, max_segments=12)
            segments.extend(branch)
    return segments, n_central


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


def _blend_up(hu: NDArray, slices: tuple[slice, slice, slice], fraction: NDArray, target_hu: float) -> None:
    """Mix `target_hu` into hu by the fraction, where that raises the value (in place)."""
    current = hu[slices]
    np.maximum(current, current + fraction * (np.float32(target_hu) - current), out=current)


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


def _add_texture_and_noise(
    hu: NDArray, lung_region: NDArray, scan_geometry: ScanGeometry, rng: np.random.Generator
) -> None:
    """Add parenchymal texture inside the lungs and correlated image noise everywhere, in place."""
    spacing_zyx = np.asarray(scan_geometry.spacing_xyz_mm[::-1], dtype=np.float64)

    # Texture: smooth blobs about 3 mm across, a few tens of HU.
    texture = rng.standard_normal(hu.shape, dtype=np.float32)
    ndimage.gaussian_filter(texture, sigma=1.2 / spacing_zyx, output=texture, truncate=3.0)
    texture *= np.float32(20.0 / (texture.std() + 1e-6))
    hu += np.where(lung_region, texture, np.float32(0.0))

    # Noise: fine grain whose correlation follows the in-plane reconstruction kernel.
    noise = rng.standard_normal(hu.shape, dtype=np.float32)
    ndimage.gaussian_filter(noise, sigma=(0.3, 0.6, 0.6), output=noise, truncate=3.0)
    noise *= np.float32(rng.uniform(25.0, 45.0) / (noise.std() + 1e-6))
    hu += noise


def _lung_hu(grid: _Grid, body: _Body) -> NDArray[np.float32]:
    """Return the mean parenchyma value per (y, x): denser toward the back, as in a supine patient."""
    semi_v, offset_v = body.thorax_axes[1], body.thorax_axes[2]
    depth = np.clip((grid.v[0] - offset_v + semi_v) / (2.0 * semi_v), 0.0, 1.0)
    values = (HU_LUNG + 45.0 * depth**2).astype(np.float32)
    return np.broadcast_to(values, (grid.shape_zyx[1], grid.shape_zyx[2]))


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
