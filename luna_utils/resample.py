"""Resampling CT scans and masks to a new voxel spacing.

Output grid convention, used by every function in this module:

* Spacing: exactly the requested `spacing_xyz_mm`, so the spacing reported is the spacing of the
  array returned.
* Size along each axis: the number of new voxels whose centre lies inside the original field of
  view, `ceil(extent / new_spacing - 0.5)`, that is `extent / new_spacing` rounded to the nearest
  integer with halves rounded down (at least 1). `extent = size * old_spacing` runs from the outer
  edge of the first voxel to the outer edge of the last. A tolerance of 1e-3 voxel keeps float
  noise from adding a voxel. The new grid ends within half a new voxel of the original far edge,
  and no output voxel of `resample_scan` lies outside the original field of view, so none is
  filled with `default_value`. (Rounding up instead would add, for example, a whole slice of
  default values to a 121-slice scan at 2.5 mm: its 303rd centre would fall on the far edge.)
* Origin: the outer edge of the first voxel stays where it was ("corner aligned"), so
  `new_origin = origin + D @ ((new_spacing - old_spacing) / 2)` in (x, y, z) with the direction
  matrix D.
* Direction: unchanged. Nothing is flipped or reoriented.

The resampled image covers the same physical space: a world point keeps its world position, and
`luna_utils.geometry` converts it to indices on either grid. Output voxels whose centre lies
outside the original field of view get `default_value`. Interpolated CT values are rounded to the
nearest integer and clipped to the range of the array's dtype.

Two implementations share this convention:

* Linear and nearest-neighbour interpolation between grids with the same direction are
  separable. (`resample_scan` and `resample_image` keep the direction, so they always qualify.)
  Each output index along an axis then maps to a fixed continuous input index along the same axis,
  whatever the direction matrix. They run as three 1-D passes in NumPy, which gives exactly the
  trilinear (or nearest) values. On a 512 x 512 x 121 scan and 2 shared cores this took 0.2 s
  against 2 s for `SimpleITK.Resample` (one measurement, not a benchmark).
  Edges follow SimpleITK: a point between the outermost voxel centre and the outer edge of that
  voxel takes the edge voxel's value, and halves round up in nearest-neighbour lookup.
* Cubic B-spline interpolation, and grids with another direction, use SimpleITK's
  `ResampleImageFilter`.

Both work slice by slice or in slabs of output slices and read only the input voxels each slab
needs, so the memory used beyond the input and output arrays stays small.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray

from luna_utils import geometry
from luna_utils.errors import GeometryError, LunaError
from luna_utils.mhd import CtScan

logger = logging.getLogger(__name__)

Interpolation = Literal["linear", "bspline", "nearest"]

INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline3,
    "nearest": sitk.sitkNearestNeighbor,
}

# Input voxels read beyond each slab's footprint. Linear and nearest-neighbour interpolation look
# one voxel away. The cubic B-spline prefilter is a recursive filter whose pole is
# -0.268 (2 - sqrt(3)), so its influence falls below 0.268**12 = 1.4e-7 after 12 voxels and the
# slabs match a whole-image B-spline to well under 1 HU.
SLAB_MARGIN_VOXELS = {"linear": 2, "nearest": 2, "bspline": 12}

# Output voxels per slab of the SimpleITK path and of nearest-neighbour lookup: 2 million values
# keep each slab's temporary arrays to a few tens of MB.
DEFAULT_CHUNK_VOXELS = 2_000_000

# Fraction of a voxel by which a centre must lie inside the field of view to be counted.
SIZE_TOLERANCE_VOXELS = 1e-3


@dataclass(frozen=True)
class ImageGrid:
    """The voxel grid of an image: shape and world geometry.

    Attributes:
        shape_zyx: Number of voxels in NumPy order (z, y, x).
        origin_xyz_mm: World position of voxel (0, 0, 0), LPS millimetres (x, y, z).
        spacing_xyz_mm: Voxel size along the image's x, y and z axes in millimetres.
        direction: 3x3 direction matrix whose columns are the image axes in world space.
    """

    shape_zyx: tuple[int, int, int]
    origin_xyz_mm: tuple[float, float, float]
    spacing_xyz_mm: tuple[float, float, float]
    direction: NDArray[np.float64]

    @classmethod
    def of_scan(cls, scan: CtScan) -> ImageGrid:
        """Return the grid of a `CtScan`."""
        return cls(
            shape_zyx=tuple(int(n) for n in scan.array.shape),  # type: ignore[arg-type]
            origin_xyz_mm=tuple(float(v) for v in scan.origin_xyz_mm),  # type: ignore[arg-type]
            spacing_xyz_mm=tuple(float(v) for v in scan.spacing_xyz_mm),  # type: ignore[arg-type]
            direction=geometry.as_direction_matrix(scan.direction),
        )

    @classmethod
    def of_image(cls, image: sitk.Image) -> ImageGrid:
        """Return the grid of a 3-D SimpleITK image."""
        size_xyz = image.GetSize()
        return cls(
            shape_zyx=(int(size_xyz[2]), int(size_xyz[1]), int(size_xyz[0])),
            origin_xyz_mm=tuple(float(v) for v in image.GetOrigin()),  # type: ignore[arg-type]
            spacing_xyz_mm=tuple(float(v) for v in image.GetSpacing()),  # type: ignore[arg-type]
            direction=geometry.as_direction_matrix(image.GetDirection()),
        )

    def voxel_to_world(self, points_zyx: ArrayLike) -> NDArray[np.float64]:
        """Convert (z, y, x) indices of this grid to world points (x, y, z) mm."""
        return geometry.voxel_to_world(
            points_zyx, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )

    def world_to_voxel(self, points_xyz_mm: ArrayLike) -> NDArray[np.float64]:
        """Convert world points (x, y, z) mm to continuous (z, y, x) indices of this grid."""
        return geometry.world_to_voxel(
            points_xyz_mm, self.origin_xyz_mm, self.spacing_xyz_mm, self.direction
        )


def as_spacing(spacing_xyz_mm: float | ArrayLike) -> tuple[float, float, float]:
    """Return a spacing as three positive floats (x, y, z) mm; a single number means isotropic.

    Raises:
        GeometryError: If the spacing does not have 1 or 3 values, or a value is not positive.
    """
    values = np.asarray(spacing_xyz_mm, dtype=np.float64).reshape(-1)
    if values.shape == (1,):
        values = np.repeat(values, 3)
    if values.shape != (3,) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise GeometryError(
            f"spacing_xyz_mm must be one positive number or three in (x, y, z) order; got "
            f"{spacing_xyz_mm!r}. Pass for example (1.0, 1.0, 1.0)."
        )
    return (float(values[0]), float(values[1]), float(values[2]))


def output_grid(source: ImageGrid, spacing_xyz_mm: float | ArrayLike) -> ImageGrid:
    """Compute the grid that resampling `source` to a new spacing produces.

    See the module docstring for the convention: as many voxels as have their centre inside the
    field of view, corner-aligned origin, unchanged direction.

    Args:
        source: The grid of the input image.
        spacing_xyz_mm: New voxel size (x, y, z) mm, or one number for isotropic voxels.

    Returns:
        The output grid.
    """
    new_spacing = np.asarray(as_spacing(spacing_xyz_mm))
    old_spacing = np.asarray(source.spacing_xyz_mm, dtype=np.float64)
    size_xyz = np.asarray(source.shape_zyx[::-1], dtype=np.float64)

    # Count the new voxel centres inside the field of view: (i + 0.5) * spacing < extent.
    extent_xyz_mm = size_xyz * old_spacing
    new_size_xyz = [
        max(1, math.ceil(extent / spacing - 0.5 - SIZE_TOLERANCE_VOXELS))
        for extent, spacing in zip(extent_xyz_mm, new_spacing)
    ]

    # Keep the outer edge of the first voxel in place: move the first centre by half the change.
    shift_xyz_mm = source.direction @ ((new_spacing - old_spacing) / 2.0)
    new_origin = np.asarray(source.origin_xyz_mm, dtype=np.float64) + shift_xyz_mm

    return ImageGrid(
        shape_zyx=(new_size_xyz[2], new_size_xyz[1], new_size_xyz[0]),
        origin_xyz_mm=tuple(float(v) for v in new_origin),  # type: ignore[arg-type]
        spacing_xyz_mm=tuple(float(v) for v in new_spacing),  # type: ignore[arg-type]
        direction=source.direction.copy(),
    )


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in INTERPOLATORS:
        raise LunaError(
            f"interpolation must be one of {sorted(INTERPOLATORS)}; got {interpolation!r}. Use "
            "'linear' or 'bspline' for CT values and 'nearest' for label masks."
        )


def _input_box(
    source: ImageGrid, target: ImageGrid, first: int, stop: int, margin: int
) -> tuple[NDArray[np.int64], NDArray[np.int64]] | None:
    """Return the input index box [low, high) that output slices [first, stop) read, or None.

    The mapping between the grids is affine, so the input footprint of a box of output voxels is
    the bounding box of its 8 mapped corners, widened by `margin` voxels for the interpolator.
    None means that the slab lies wholly outside the input.
    """
    corners_zyx = np.array(
        [
            [z, y, x]
            for z in (first, stop - 1)
            for y in (0, target.shape_zyx[1] - 1)
            for x in (0, target.shape_zyx[2] - 1)
        ],
        dtype=np.float64,
    )
    mapped_zyx = source.world_to_voxel(target.voxel_to_world(corners_zyx))

    low = np.floor(mapped_zyx.min(axis=0)).astype(np.int64) - margin
    high = np.ceil(mapped_zyx.max(axis=0)).astype(np.int64) + margin + 1
    low = np.maximum(low, 0)
    high = np.minimum(high, np.asarray(source.shape_zyx, dtype=np.int64))
    if np.any(high <= low):
        return None
    return low, high


def _resample_slab(
    array: NDArray,
    source: ImageGrid,
    target: ImageGrid,
    first: int,
    stop: int,
    interpolation: str,
    default_value: float,
) -> NDArray:
    """Resample output slices [first, stop) of `target` from `array`; float32 unless nearest."""
    slab_shape_zyx = (stop - first, target.shape_zyx[1], target.shape_zyx[2])
    box = _input_box(source, target, first, stop, SLAB_MARGIN_VOXELS[interpolation])
    if box is None:
        dtype = array.dtype if interpolation == "nearest" else np.float32
        return np.full(slab_shape_zyx, default_value, dtype=dtype)
    low, high = box

    # Wrap only the input voxels the slab reads, placed at their true world position.
    piece = np.ascontiguousarray(array[low[0] : high[0], low[1] : high[1], low[2] : high[2]])
    image = sitk.GetImageFromArray(piece)
    image.SetOrigin(tuple(float(v) for v in source.voxel_to_world(low.astype(np.float64))))
    image.SetSpacing(source.spacing_xyz_mm)
    image.SetDirection(tuple(float(v) for v in source.direction.reshape(-1)))

    output_type = image.GetPixelID() if interpolation == "nearest" else sitk.sitkFloat32
    slab_origin = target.voxel_to_world(np.array([first, 0, 0], dtype=np.float64))
    resampled = sitk.Resample(
        image,
        (slab_shape_zyx[2], slab_shape_zyx[1], slab_shape_zyx[0]),
        sitk.Transform(),
        INTERPOLATORS[interpolation],
        tuple(float(v) for v in slab_origin),
        target.spacing_xyz_mm,
        tuple(float(v) for v in target.direction.reshape(-1)),
        float(default_value),
        output_type,
    )
    return sitk.GetArrayFromImage(resampled)


def _store(values: NDArray, out: NDArray) -> None:
    """Round float values to the nearest integer and clip them to `out`'s dtype, in place."""
    if np.issubdtype(out.dtype, np.integer) and values.dtype != out.dtype:
        limits = np.iinfo(out.dtype)
        np.rint(values, out=values)
        np.clip(values, limits.min, limits.max, out=values)
    out[...] = values


def _same_direction(source: ImageGrid, target: ImageGrid) -> bool:
    return bool(np.allclose(source.direction, target.direction, rtol=0.0, atol=1e-9))


def _axis_positions(source: ImageGrid, target: ImageGrid) -> list[NDArray[np.float64]]:
    """Return, per axis (z, y, x), the continuous source index of every target index.

    With one direction matrix D for both grids, index i of the target maps to source index
    `D^-1 (target_origin - source_origin) / source_spacing + i * target_spacing / source_spacing`,
    axis by axis.
    """
    origin_shift = np.asarray(target.origin_xyz_mm) - np.asarray(source.origin_xyz_mm)
    offset_xyz = np.linalg.solve(source.direction, origin_shift) / np.asarray(source.spacing_xyz_mm)
    scale_xyz = np.asarray(target.spacing_xyz_mm) / np.asarray(source.spacing_xyz_mm)
    return [
        offset_xyz[axis] + scale_xyz[axis] * np.arange(target.shape_zyx[2 - axis], dtype=np.float64)
        for axis in (2, 1, 0)
    ]


@dataclass(frozen=True)
class _AxisTable:
    """Lookup table of one axis: input neighbours, weight and validity of each output index."""

    low: NDArray[np.intp]
    high: NDArray[np.intp]
    weight: NDArray[np.float32]
    nearest: NDArray[np.intp]
    outside: NDArray[np.bool_]


def _axis_table(positions: NDArray[np.float64], n_input: int) -> _AxisTable:
    # Inside means -0.5 <= position < n - 0.5, as in SimpleITK; the neighbours are clamped to the
    # array, so a point within half a voxel of the edge takes the edge voxel's value.
    outside = (positions < -0.5) | (positions >= n_input - 0.5)
    floor = np.floor(positions)
    low = np.clip(floor, 0, n_input - 1).astype(np.intp)
    high = np.clip(floor + 1, 0, n_input - 1).astype(np.intp)
    nearest = np.clip(np.floor(positions + 0.5), 0, n_input - 1).astype(np.intp)
    weight = (positions - floor).astype(np.float32)
    return _AxisTable(low, high, weight, nearest, outside)


def _interpolate_axis(values: NDArray, axis: int, table: _AxisTable) -> NDArray[np.float32]:
    """Linearly interpolate along one axis: v[low] + w * (v[high] - v[low]), in float32."""
    weight_shape = [1, 1, 1]
    weight_shape[axis] = -1
    below = np.take(values, table.low, axis=axis).astype(np.float32, copy=False)
    above = np.take(values, table.high, axis=axis).astype(np.float32, copy=False)
    above -= below
    above *= table.weight.reshape(weight_shape)
    below += above
    return below


def _resample_separable(
    array: NDArray,
    source: ImageGrid,
    target: ImageGrid,
    interpolation: str,
    default_value: float,
    slices_per_slab: int,
) -> NDArray:
    """Resample between grids of the same direction with 1-D passes along x, y, then z.

    Linear interpolation resamples each input slice in-plane once, keeps the two slices the
    current output slice lies between, and blends them, so the working memory is a few slices.
    """
    positions = _axis_positions(source, target)
    table_z, table_y, table_x = [_axis_table(p, n) for p, n in zip(positions, source.shape_zyx)]
    out = np.empty(target.shape_zyx, dtype=array.dtype)

    if interpolation == "nearest":
        for first in range(0, target.shape_zyx[0], slices_per_slab):
            stop = min(first + slices_per_slab, target.shape_zyx[0])
            rows = table_z.nearest[first:stop]
            out[first:stop] = array[np.ix_(rows, table_y.nearest, table_x.nearest)]
    else:
        in_plane: dict[int, NDArray[np.float32]] = {}
        blended = np.empty(target.shape_zyx[1:], dtype=np.float32)
        for k in range(target.shape_zyx[0]):
            low, high = int(table_z.low[k]), int(table_z.high[k])

            # Output slices move monotonically through the input, so older slices are done.
            for index in [i for i in in_plane if i < low]:
                del in_plane[index]
            for index in (low, high):
                if index not in in_plane:
                    values = _interpolate_axis(array[index : index + 1], 2, table_x)
                    in_plane[index] = _interpolate_axis(values, 1, table_y)[0]

            np.subtract(in_plane[high], in_plane[low], out=blended)
            blended *= table_z.weight[k]
            blended += in_plane[low]
            _store(blended, out[k])

    # Voxels whose centre lies outside the source along any axis get the default value.
    out[table_z.outside] = default_value
    out[:, table_y.outside] = default_value
    out[:, :, table_x.outside] = default_value
    return out


def resample_to_grid(
    array_zyx: NDArray,
    source: ImageGrid,
    target: ImageGrid,
    interpolation: Interpolation = "linear",
    default_value: float = -1000,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
    backend: Literal["auto", "simpleitk"] = "auto",
) -> NDArray:
    """Resample an array from its grid onto any other grid that shares the world frame.

    Args:
        array_zyx: Voxels in NumPy order (z, y, x), shape `source.shape_zyx`. A bool mask is
            treated as uint8.
        source: The grid of `array_zyx`.
        target: The grid to sample on; its direction may differ from the source's.
        interpolation: "linear" or "bspline" (cubic) for CT values, "nearest" for label masks.
        default_value: Value of output voxels whose centre lies outside the source's field of view.
        chunk_voxels: Approximate number of output voxels resampled per slab.
        backend: "auto" uses the separable NumPy passes where they apply (linear or nearest,
            same direction) and SimpleITK otherwise; "simpleitk" always uses SimpleITK.

    Returns:
        An array of shape `target.shape_zyx` with the input's dtype (uint8 for a bool input).

    Raises:
        GeometryError: If the array's shape does not match the source grid.
        LunaError: If the interpolation or backend name is unknown, or `default_value` does not
            fit the array's dtype.
    """
    _check_interpolation(interpolation)
    if backend not in ("auto", "simpleitk"):
        raise LunaError(f"backend must be 'auto' or 'simpleitk'; got {backend!r}.")
    if array_zyx.dtype == np.bool_:
        array_zyx = array_zyx.view(np.uint8)
    if tuple(array_zyx.shape) != tuple(source.shape_zyx):
        raise GeometryError(
            f"The array has shape {array_zyx.shape} but its grid has shape {source.shape_zyx}; "
            "pass the grid the array was read with."
        )
    if np.issubdtype(array_zyx.dtype, np.integer):
        limits = np.iinfo(array_zyx.dtype)
        if not limits.min <= default_value <= limits.max:
            raise LunaError(
                f"default_value {default_value} does not fit the array's dtype {array_zyx.dtype}; "
                "pass default_value=0 for masks and -1000 (air) for CT."
            )

    slice_voxels = target.shape_zyx[1] * target.shape_zyx[2]
    slices_per_slab = max(1, chunk_voxels // max(1, slice_voxels))
    separable = interpolation != "bspline" and _same_direction(source, target)
    if backend == "auto" and separable:
        return _resample_separable(
            array_zyx, source, target, interpolation, default_value, slices_per_slab
        )

    out = np.empty(target.shape_zyx, dtype=array_zyx.dtype)
    for first in range(0, target.shape_zyx[0], slices_per_slab):
        stop = min(first + slices_per_slab, target.shape_zyx[0])
        values = _resample_slab(
            array_zyx, source, target, first, stop, interpolation, default_value
        )
        _store(values, out[first:stop])
    return out


def resample_scan(
    scan: CtScan,
    spacing_xyz_mm: float | ArrayLike = (1.0, 1.0, 1.0),
    interpolation: Interpolation = "linear",
    default_value: float = -1000,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
) -> CtScan:
    """Resample a scan to a new voxel spacing, keeping its field of view and direction.

    The output grid follows the module's convention: per axis as many voxels as have their centre
    inside the field of view (`ceil(extent / spacing - 0.5)`), the outer edge of the first voxel
    kept in place, the direction unchanged.

    Args:
        scan: The scan; its array is (z, y, x), for LUNA16 int16 HU.
        spacing_xyz_mm: New voxel size (x, y, z) mm, or one number for isotropic voxels.
        interpolation: "linear" or "bspline" (cubic) for CT, "nearest" for label masks.
        default_value: Value of voxels whose centre lies outside the original field of view,
            which happens only when the new spacing exceeds an axis's extent: -1000 HU (air) for
            CT, 0 for masks.
        chunk_voxels: Approximate number of output voxels resampled per slab.

    Returns:
        A new `CtScan` with the resampled array (z, y, x) of the input's dtype, the exact output
        spacing, the moved origin and the same direction, seriesuid and path.
    """
    source = ImageGrid.of_scan(scan)
    target = output_grid(source, spacing_xyz_mm)
    array = resample_to_grid(
        scan.array, source, target, interpolation, default_value, chunk_voxels
    )
    logger.debug(
        "Resampled %s from %s at %s mm to %s at %s mm",
        scan.seriesuid,
        source.shape_zyx,
        source.spacing_xyz_mm,
        target.shape_zyx,
        target.spacing_xyz_mm,
    )
    return CtScan(
        array=array,
        spacing_xyz_mm=target.spacing_xyz_mm,
        origin_xyz_mm=target.origin_xyz_mm,
        direction=target.direction,
        seriesuid=scan.seriesuid,
        path=scan.path,
    )


def resample_image(
    image: sitk.Image,
    spacing_xyz_mm: float | ArrayLike = (1.0, 1.0, 1.0),
    interpolation: Interpolation = "linear",
    default_value: float = -1000,
    chunk_voxels: int = DEFAULT_CHUNK_VOXELS,
) -> sitk.Image:
    """Resample a 3-D SimpleITK image to a new voxel spacing; same convention as `resample_scan`.

    Args:
        image: A 3-D scalar image.
        spacing_xyz_mm: New voxel size (x, y, z) mm, or one number for isotropic voxels.
        interpolation: "linear" or "bspline" (cubic) for CT, "nearest" for label masks.
        default_value: Value of voxels whose centre lies outside the original field of view
            (only when the new spacing exceeds an axis's extent).
        chunk_voxels: Approximate number of output voxels resampled per slab.

    Returns:
        A new image with the input's pixel type, the exact output spacing, the moved origin and
        the same direction.

    Raises:
        GeometryError: If the image is not 3-D or has more than one component per voxel.
    """
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise GeometryError(
            f"resample_image needs a 3-D scalar image; got {image.GetDimension()} dimensions with "
            f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel."
        )
    source = ImageGrid.of_image(image)
    target = output_grid(source, spacing_xyz_mm)

    # The view shares the image's memory, so the input is not copied.
    array = resample_to_grid(
        sitk.GetArrayViewFromImage(image),
        source,
        target,
        interpolation,
        default_value,
        chunk_voxels,
    )

    output = sitk.GetImageFromArray(array)
    output.SetOrigin(target.origin_xyz_mm)
    output.SetSpacing(target.spacing_xyz_mm)
    output.SetDirection(tuple(float(v) for v in target.direction.reshape(-1)))
    return output
