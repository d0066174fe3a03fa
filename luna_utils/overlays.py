"""Placement of CT views in world millimetres and of nodule cross-sections on them, without drawing.

`luna_utils.plotting` draws with these helpers; tests call them directly to check positions by
coordinates.

Conventions:

* A view is a plane of the stored array: `axial` fixes the z index (rows y, columns x),
  `coronal` fixes y (rows z, columns x) and `sagittal` fixes x (rows z, columns y).
* Plot axes are world LPS millimetres. Horizontal: x for axial and coronal (+x towards the
  patient's left), y for sagittal (+y towards the back). Vertical: y for axial, drawn downwards
  so that the front of the patient is at the top. Vertical for coronal and sagittal: z, drawn
  upwards (+z towards the head). Every scan therefore reads the same way, in the radiological convention
  (patient's right on the viewer's left in axial and coronal views).
* The array is never flipped. A scan stored with flipped axes (direction diag(-1, -1, 1)) gets
  an image extent whose ends are swapped, and matplotlib mirrors the picture on screen.
* Only axis-aligned scans are supported: a direction matrix that is diagonal with entries +1 or
  -1, as in all 888 LUNA16 scans. Other directions raise `GeometryError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from luna_utils import geometry
from luna_utils.errors import GeometryError
from luna_utils.matching import effective_diameters
from luna_utils.mhd import CtScan

# World axis names by index in (x, y, z) order, with the LPS direction each one increases in.
WORLD_AXIS_LABELS = (
    "x (mm), right to left",
    "y (mm), front to back",
    "z (mm), feet to head",
)


@dataclass(frozen=True)
class ViewSpec:
    """Mapping of one view's array axes to plot axes.

    Attributes:
        name: "axial", "coronal" or "sagittal".
        slice_axis: Array axis (0 = z, 1 = y, 2 = x) held fixed by the view.
        row_axis: Array axis shown along the image rows (vertical).
        column_axis: Array axis shown along the image columns (horizontal).
        vertical_up: Whether the vertical world coordinate increases upwards on screen.
    """

    name: str
    slice_axis: int
    row_axis: int
    column_axis: int
    vertical_up: bool

    @property
    def horizontal_world(self) -> int:
        """World axis (0 = x, 1 = y, 2 = z) along the plot's horizontal axis."""
        return 2 - self.column_axis

    @property
    def vertical_world(self) -> int:
        """World axis (0 = x, 1 = y, 2 = z) along the plot's vertical axis."""
        return 2 - self.row_axis

    @property
    def normal_world(self) -> int:
        """World axis (0 = x, 1 = y, 2 = z) perpendicular to the view."""
        return 2 - self.slice_axis


VIEWS = {
    "axial": ViewSpec("axial", slice_axis=0, row_axis=1, column_axis=2, vertical_up=False),
    "coronal": ViewSpec("coronal", slice_axis=1, row_axis=0, column_axis=2, vertical_up=True),
    "sagittal": ViewSpec("sagittal", slice_axis=2, row_axis=0, column_axis=1, vertical_up=True),
}


def get_view(view: str | ViewSpec) -> ViewSpec:
    """Return the `ViewSpec` of a view name.

    Raises:
        GeometryError: If the name is not axial, coronal or sagittal.
    """
    if isinstance(view, ViewSpec):
        return view
    if view not in VIEWS:
        raise GeometryError(f"Unknown view {view!r}; use one of {', '.join(VIEWS)}.")
    return VIEWS[view]


def check_axis_aligned(direction: ArrayLike, tolerance: float = 1e-6) -> NDArray[np.float64]:
    """Check that a direction matrix is diagonal with entries +1 or -1, and return it as 3x3.

    Raises:
        GeometryError: If the matrix is oblique, permutes axes, or scales them.
    """
    matrix = geometry.as_direction_matrix(direction)
    off_diagonal = matrix - np.diag(np.diag(matrix))
    if np.any(np.abs(off_diagonal) > tolerance) or np.any(np.abs(np.abs(np.diag(matrix)) - 1) > tolerance):
        raise GeometryError(
            f"Views in world millimetres need an axis-aligned scan, with a direction matrix that is "
            f"diagonal with entries +1 or -1; got {np.round(matrix, 6).tolist()}. Resample the scan "
            "onto an identity direction first (SimpleITK.Resample)."
        )
    return matrix


@dataclass(frozen=True)
class Plane:
    """Placement of one view of a scan in world millimetres.

    Attributes:
        view: The view.
        extent: (left, right, bottom, top) for `imshow(..., origin="upper")`: the world
            coordinates of the outer edges of the first and last columns, then of the last and
            first rows. The ends are swapped for flipped axes.
        xlim: Horizontal plot limits in mm, increasing to the right.
        ylim: Vertical plot limits in mm, in the order that puts the view's orientation on screen.
        xlabel, ylabel: Axis labels naming the world axis, unit and direction.
        n_slices: Number of slices along the view's normal.
    """

    view: ViewSpec
    extent: tuple[float, float, float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    xlabel: str
    ylabel: str
    n_slices: int


def plane_geometry(scan: CtScan, view: str | ViewSpec) -> Plane:
    """Compute where a view of a scan lies in world millimetres.

    Raises:
        GeometryError: If the scan is not axis-aligned or the view is unknown.
    """
    spec = get_view(view)
    check_axis_aligned(scan.direction)
    shape = np.asarray(scan.shape_zyx, dtype=np.float64)

    # Outer edges of the first and of the last voxel; on an axis-aligned scan each world
    # coordinate depends on one array axis only.
    first_edge = scan.voxel_to_world(np.full(3, -0.5))
    last_edge = scan.voxel_to_world(shape - 0.5)

    horizontal, vertical = spec.horizontal_world, spec.vertical_world
    extent = (
        float(first_edge[horizontal]),
        float(last_edge[horizontal]),
        float(last_edge[vertical]),
        float(first_edge[vertical]),
    )
    low_v, high_v = sorted((extent[2], extent[3]))
    return Plane(
        view=spec,
        extent=extent,
        xlim=tuple(sorted((extent[0], extent[1]))),  # type: ignore[arg-type]
        ylim=(low_v, high_v) if spec.vertical_up else (high_v, low_v),
        xlabel=WORLD_AXIS_LABELS[horizontal],
        ylabel=WORLD_AXIS_LABELS[vertical],
        n_slices=int(scan.shape_zyx[spec.slice_axis]),
    )


def check_slice_index(scan: CtScan, view: str | ViewSpec, index: int) -> int:
    """Return the index as int after checking that it names a slice of the view.

    Raises:
        GeometryError: If the index lies outside 0 ... n_slices - 1.
    """
    spec = get_view(view)
    n_slices = scan.shape_zyx[spec.slice_axis]
    if not 0 <= int(index) < n_slices:
        raise GeometryError(
            f"Slice index {index} is outside the {spec.name} view of scan {scan.seriesuid}, "
            f"which has slices 0 to {n_slices - 1}."
        )
    return int(index)


def slice_position_mm(scan: CtScan, view: str | ViewSpec, index: float) -> float:
    """Return the world coordinate (mm) of a slice along the view's normal axis."""
    spec = get_view(view)
    check_axis_aligned(scan.direction)
    point_zyx = np.zeros(3)
    point_zyx[spec.slice_axis] = index
    return float(scan.voxel_to_world(point_zyx)[spec.normal_world])


def slice_index_of(scan: CtScan, view: str | ViewSpec, point_xyz_mm: ArrayLike) -> int:
    """Return the index of the slice of a view that contains a world point (nearest voxel)."""
    spec = get_view(view)
    index_zyx = geometry.round_to_voxel(scan.world_to_voxel(point_xyz_mm))
    return int(index_zyx[spec.slice_axis])


def take_slice(array_zyx: NDArray, view: str | ViewSpec, index: int) -> NDArray:
    """Return one slice of a (z, y, x) array as a 2-D (rows, columns) view of the array."""
    spec = get_view(view)
    return np.take(array_zyx, index, axis=spec.slice_axis)


def slab_indices(scan: CtScan, view: str | ViewSpec, index: int, thickness_mm: float) -> tuple[int, int]:
    """Return the first and last slice (inclusive) of a slab centred on a slice.

    The slab contains the slices whose centres lie within thickness_mm / 2 of the centre slice's
    centre, clipped to the volume. Away from the borders it therefore has an odd number of
    slices: a 10 mm slab is 5 slices at 2.5 mm spacing and 11 slices at 1 mm.

    Raises:
        GeometryError: If the thickness is negative or not finite, or the index is outside the scan.
    """
    spec = get_view(view)
    index = check_slice_index(scan, spec, index)
    if not np.isfinite(thickness_mm) or thickness_mm < 0:
        raise GeometryError(f"Slab thickness must be a finite number of mm >= 0; got {thickness_mm!r}.")
    spacing_mm = scan.spacing_xyz_mm[spec.normal_world]

    # The small tolerance keeps slices exactly at +-thickness/2 inside despite rounding.
    half = int(np.floor(thickness_mm / 2 / spacing_mm + 1e-9))
    last = scan.shape_zyx[spec.slice_axis] - 1
    return max(0, index - half), min(last, index + half)


def max_intensity_projection(
    scan: CtScan, view: str | ViewSpec, index: int, thickness_mm: float
) -> tuple[NDArray, tuple[int, int]]:
    """Compute the maximum intensity projection of a slab centred on a slice.

    Returns:
        (image, (first, last)): the 2-D maximum over the slab, (rows, columns) as `take_slice`
        returns them, and the slab's first and last slice.
    """
    spec = get_view(view)
    first, last = slab_indices(scan, spec, index, thickness_mm)
    slab = np.take(scan.array, np.arange(first, last + 1), axis=spec.slice_axis)
    return slab.max(axis=spec.slice_axis), (first, last)


@dataclass(frozen=True)
class OverlayCircle:
    """Cross-section of one nodule with a view, in world millimetres and in slice pixels.

    Attributes:
        nodule: Position (0-based) of the nodule in the table or arrays passed in.
        center_h_mm, center_v_mm: Circle centre on the plot's horizontal and vertical axes, mm.
        radius_mm: Radius of the nodule's cross-section with the shown plane or slab, mm.
        distance_mm: Distance from the nodule centre to the plane (0 inside a slab), mm.
        center_row, center_column: Circle centre as continuous (row, column) indices of the
            2-D slice returned by `take_slice`.
        nodule_slice: Index of the slice nearest to the nodule centre.
    """

    nodule: int
    center_h_mm: float
    center_v_mm: float
    radius_mm: float
    distance_mm: float
    center_row: float
    center_column: float
    nodule_slice: int


def overlay_circles(
    scan: CtScan,
    view: str | ViewSpec,
    index: int,
    centers_xyz_mm: ArrayLike,
    diameters_mm: ArrayLike,
    last_index: int | None = None,
) -> list[OverlayCircle]:
    """Compute the circle each nodule draws on one slice, or on a slab of slices.

    A nodule is a sphere. On a plane at distance d from its centre, it shows as a circle of
    radius sqrt(r^2 - d^2); planes at d >= r miss it, so it gets no circle. For a slab
    (`last_index` given) d is the distance to the nearest slice of the slab, 0 when the centre
    lies inside it.

    Args:
        scan: The scan; its geometry places the nodules (flipped axes included).
        view: "axial", "coronal" or "sagittal".
        index: Slice index along the view's normal axis (first slice of a slab).
        centers_xyz_mm: Nodule centres, shape (N, 3) or (3,), world LPS (x, y, z) mm.
        diameters_mm: Nodule diameters, shape (N,), mm. Negative values (LUNA16's -1, "unknown
            size") count as 10 mm, as in the official evaluation.
        last_index: Last slice (inclusive) of a slab; None for a single slice.

    Returns:
        One circle per nodule that cuts the plane or slab, in input order.

    Raises:
        GeometryError: On an oblique scan, an index outside the scan, shapes that do not match,
            or non-finite values.
    """
    spec = get_view(view)
    check_axis_aligned(scan.direction)
    first = check_slice_index(scan, spec, index)
    last = first if last_index is None else check_slice_index(scan, spec, last_index)
    if last < first:
        raise GeometryError(f"Slab last index {last} is before its first index {first}.")

    centers = np.asarray(centers_xyz_mm, dtype=np.float64).reshape(-1, 3)
    diameters = np.asarray(diameters_mm, dtype=np.float64).reshape(-1)
    if centers.shape[0] != diameters.shape[0]:
        raise GeometryError(
            f"Got {centers.shape[0]} nodule centres but {diameters.shape[0]} diameters; pass one "
            "diameter per centre."
        )
    if not (np.all(np.isfinite(centers)) and np.all(np.isfinite(diameters))):
        raise GeometryError("Nodule centres and diameters must be finite numbers (no NaN).")
    if centers.shape[0] == 0:
        return []
    radii = effective_diameters(diameters) / 2

    # The slab's extent along the normal, between the centres of its first and last slice.
    low, high = sorted((slice_position_mm(scan, spec, first), slice_position_mm(scan, spec, last)))
    along = centers[:, spec.normal_world]
    distances = np.where(along < low, low - along, np.where(along > high, along - high, 0.0))

    centers_zyx = scan.world_to_voxel(centers)
    nearest_zyx = geometry.round_to_voxel(centers_zyx)

    circles = []
    for position in np.flatnonzero(distances < radii):
        circles.append(
            OverlayCircle(
                nodule=int(position),
                center_h_mm=float(centers[position, spec.horizontal_world]),
                center_v_mm=float(centers[position, spec.vertical_world]),
                radius_mm=float(np.sqrt(radii[position] ** 2 - distances[position] ** 2)),
                distance_mm=float(distances[position]),
                center_row=float(centers_zyx[position, spec.row_axis]),
                center_column=float(centers_zyx[position, spec.column_axis]),
                nodule_slice=int(nearest_zyx[position, spec.slice_axis]),
            )
        )
    return circles


def surrounding_air_fraction(
    scan: CtScan,
    center_xyz_mm: ArrayLike,
    diameter_mm: float,
    shell_mm: tuple[float, float] = (2.0, 6.0),
    air_below_hu: float = -400.0,
) -> float:
    """Measure how much of a nodule's surroundings is aerated lung.

    Looks at the voxels whose centres lie between radius + shell_mm[0] and radius + shell_mm[1]
    from the nodule centre (world mm, so anisotropic spacing counts correctly) and returns the
    fraction below `air_below_hu`. An isolated nodule in the lung scores near 1, one attached to
    the chest wall or the heart about 0.5 or less. A high score picks a nodule that is easy to
    see in a figure.

    Args:
        scan: The scan.
        center_xyz_mm: Nodule centre, world (x, y, z) mm.
        diameter_mm: Nodule diameter, mm.
        shell_mm: Inner and outer distance of the shell beyond the nodule's radius, mm.
        air_below_hu: HU below which a voxel counts as aerated.

    Returns:
        The fraction in [0, 1], or NaN when no voxel of the shell lies inside the scan.
    """
    radius = float(diameter_mm) / 2
    inner, outer = radius + shell_mm[0], radius + shell_mm[1]
    center_zyx = scan.world_to_voxel(center_xyz_mm)
    spacing_zyx = np.asarray(scan.spacing_xyz_mm, dtype=np.float64)[::-1]

    # A box of voxels around the centre that contains the whole shell, clipped to the scan.
    half_zyx = np.ceil(outer / spacing_zyx).astype(int)
    nearest_zyx = geometry.round_to_voxel(center_zyx)
    low = np.maximum(nearest_zyx - half_zyx, 0)
    high = np.minimum(nearest_zyx + half_zyx + 1, scan.shape_zyx)
    if np.any(high <= low):
        return float("nan")
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(low, high)], indexing="ij"), axis=-1)

    distances_mm = np.linalg.norm(scan.voxel_to_world(grid.reshape(-1, 3)) - np.asarray(center_xyz_mm, dtype=np.float64), axis=1)
    values = scan.array[low[0] : high[0], low[1] : high[1], low[2] : high[2]].reshape(-1)
    in_shell = (distances_mm >= inner) & (distances_mm <= outer)
    if not in_shell.any():
        return float("nan")
    return float(np.mean(values[in_shell] < air_below_hu))
