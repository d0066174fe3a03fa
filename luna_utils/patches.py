"""Patches around candidates: fixed-size windows centred on a voxel and padded at the borders.

Convention: in a patch of size S along an axis, the centre voxel sits at index `S // 2` (for an
even S, the voxel just past the middle). The window is never shifted to stay inside the volume:
voxels beyond the volume's faces get `pad_value` (-1000 HU, air, by default), so the candidate is
always at the same place in its patch. Centres are rounded to voxels with
`luna_utils.geometry.round_to_voxel`. Arrays and indices are in NumPy order (z, y, x).

Three views of a candidate:

* "3d": the cube, shape (N, Sz, Sy, Sx);
* "2d": the axial slice through the centre, shape (N, Sy, Sx);
* "2.5d": the axial, coronal and sagittal planes through the centre of a cube of edge S, stacked
  as (N, 3, S, S): `[:, 0]` is cube[S // 2, :, :] (y, x), `[:, 1]` is cube[:, S // 2, :] (z, x)
  and `[:, 2]` is cube[:, :, S // 2] (z, y).

The training input is prepared in two named steps after extraction: `window_hu` clips to an HU
window and scales to [0, 1], and `normalize` subtracts a mean and divides by a standard deviation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from luna_utils import geometry
from luna_utils.cache import CachedScan
from luna_utils.errors import DatasetError, GeometryError, LunaError

logger = logging.getLogger(__name__)

PatchMode = Literal["3d", "2d", "2.5d"]
MODES = ("3d", "2d", "2.5d")

# Value of voxels beyond the volume's faces: air, in HU.
PAD_VALUE_HU = -1000

# Default HU window: from air (-1000) to just above soft tissue, which shows lung, vessels and
# nodules; bone above 400 HU saturates.
WINDOW_LOW_HU = -1000.0
WINDOW_HIGH_HU = 400.0

COORD_COLUMNS = ["coordX", "coordY", "coordZ"]


def as_patch_size(size_zyx: int | ArrayLike) -> tuple[int, int, int]:
    """Return a patch size as three positive ints (z, y, x); a single int means a cube.

    Raises:
        GeometryError: If the size does not have 1 or 3 positive integer values.
    """
    values = np.asarray(size_zyx).reshape(-1)
    if values.shape == (1,):
        values = np.repeat(values, 3)
    if (
        values.shape != (3,)
        or not np.all(np.equal(np.mod(values, 1), 0))
        or np.any(values < 1)
    ):
        raise GeometryError(
            f"size_zyx must be one positive integer or three in (z, y, x) order; got {size_zyx!r}."
        )
    return (int(values[0]), int(values[1]), int(values[2]))


def patch_shape(size_zyx: int | ArrayLike, mode: PatchMode = "3d") -> tuple[int, ...]:
    """Return the shape of one patch of the given size and mode, without the leading N.

    Raises:
        GeometryError: On a bad size, or a non-cube size in "2.5d" mode.
        LunaError: On an unknown mode.
    """
    size = as_patch_size(size_zyx)
    if mode == "3d":
        return size
    if mode == "2d":
        return (size[1], size[2])
    if mode == "2.5d":
        if len(set(size)) != 1:
            raise GeometryError(f"2.5d patches need a cube size; got size_zyx {size}.")
        return (3, size[0], size[0])
    raise LunaError(f"mode must be one of {MODES}; got {mode!r}.")


def _as_centers(centers_zyx: ArrayLike) -> NDArray[np.int64]:
    centers = np.asarray(centers_zyx, dtype=np.float64)
    if centers.ndim != 2 or centers.shape[1] != 3:
        raise GeometryError(f"centers_zyx must have shape (N, 3); got shape {centers.shape}.")
    if not np.all(np.isfinite(centers)):
        raise GeometryError("centers_zyx must be finite; remove or fix the rows holding NaN or inf.")
    return geometry.round_to_voxel(centers)


def _fill_windows(
    volume: NDArray,
    starts_zyx: NDArray[np.int64],
    window_zyx: tuple[int, int, int],
    out: NDArray,
) -> None:
    """Copy the part of each window that lies inside the volume into `out[i]`, already padded.

    Args:
        volume: The volume (z, y, x); a memory map is read only where windows fall.
        starts_zyx: (N, 3) index of each window's first voxel; may be negative or past the end.
        window_zyx: Window size (z, y, x).
        out: (N, *window_zyx) array filled with the pad value.
    """
    shape = np.asarray(volume.shape, dtype=np.int64)
    size = np.asarray(window_zyx, dtype=np.int64)

    # Clip every window to the volume at once, then copy with plain slices.
    low = np.clip(starts_zyx, 0, shape)
    high = np.clip(starts_zyx + size, 0, shape)
    target_low = low - starts_zyx
    target_high = high - starts_zyx
    has_overlap = np.all(high > low, axis=1)

    # Reading in slice order keeps the reads of a memory-mapped volume close together.
    order = np.argsort(starts_zyx[:, 0], kind="stable")
    bounds = np.concatenate([low, high, target_low, target_high], axis=1).tolist()
    overlap = has_overlap.tolist()
    for i in order.tolist():
        if not overlap[i]:
            continue
        z0, y0, x0, z1, y1, x1, tz0, ty0, tx0, tz1, ty1, tx1 = bounds[i]
        out[i, tz0:tz1, ty0:ty1, tx0:tx1] = volume[z0:z1, y0:y1, x0:x1]


def extract_patch(
    volume_zyx: NDArray,
    center_zyx: ArrayLike,
    size_zyx: int | ArrayLike,
    pad_value: float = PAD_VALUE_HU,
) -> NDArray:
    """Cut one patch centred on a voxel, padding where it passes the volume's faces.

    Args:
        volume_zyx: The volume (z, y, x).
        center_zyx: Centre index (z, y, x), rounded to the nearest voxel.
        size_zyx: Patch size (z, y, x), or one int for a cube.
        pad_value: Value of voxels outside the volume.

    Returns:
        An array of shape `size_zyx` and the volume's dtype; the centre voxel is at
        `size // 2` on each axis.
    """
    center = _as_centers(np.asarray(center_zyx, dtype=np.float64).reshape(1, 3))
    return extract_patches(volume_zyx, center, size_zyx, pad_value, mode="3d")[0]


def extract_patches(
    volume_zyx: NDArray,
    centers_zyx: ArrayLike,
    size_zyx: int | ArrayLike,
    pad_value: float = PAD_VALUE_HU,
    mode: PatchMode = "3d",
) -> NDArray:
    """Cut patches centred on many voxels of one volume.

    Args:
        volume_zyx: The volume (z, y, x); may be a memory map.
        centers_zyx: (N, 3) centre indices (z, y, x), rounded to the nearest voxel.
        size_zyx: Patch size (z, y, x), or one int for a cube. "2d" uses its y and x sizes;
            "2.5d" needs a cube.
        pad_value: Value of voxels outside the volume.
        mode: "3d", "2d" or "2.5d" (see the module docstring).

    Returns:
        (N, Sz, Sy, Sx) for "3d", (N, Sy, Sx) for "2d", (N, 3, S, S) for "2.5d", with the
        volume's dtype.

    Raises:
        GeometryError: On a bad centre array or size, or a non-cube size in "2.5d" mode.
        LunaError: On an unknown mode.
    """
    if volume_zyx.ndim != 3:
        raise GeometryError(f"volume_zyx must be 3-D (z, y, x); got shape {volume_zyx.shape}.")
    centers = _as_centers(centers_zyx)
    size = as_patch_size(size_zyx)
    half = np.asarray(size, dtype=np.int64) // 2
    n = centers.shape[0]
    dtype = volume_zyx.dtype

    if mode == "3d":
        out = np.full((n, *size), pad_value, dtype=dtype)
        _fill_windows(volume_zyx, centers - half, size, out)
        return out

    if mode == "2d":
        out = np.full((n, 1, size[1], size[2]), pad_value, dtype=dtype)
        starts = centers - np.array([0, half[1], half[2]])
        _fill_windows(volume_zyx, starts, (1, size[1], size[2]), out)
        return out[:, 0]

    if mode == "2.5d":
        if len(set(size)) != 1:
            raise GeometryError(f"2.5d patches need a cube size; got size_zyx {size}.")
        edge = size[0]
        out = np.full((n, 3, edge, edge), pad_value, dtype=dtype)
        # Plane k is a window one voxel thick along axis k, through the centre.
        for axis in range(3):
            window = [edge, edge, edge]
            window[axis] = 1
            starts = centers - half
            starts[:, axis] = centers[:, axis]
            plane_view = np.expand_dims(out[:, axis], axis=axis + 1)
            _fill_windows(volume_zyx, starts, tuple(window), plane_view)  # type: ignore[arg-type]
        return out

    raise LunaError(f"mode must be one of {MODES}; got {mode!r}.")


@dataclass
class PatchSet:
    """Patches of one scan's candidates, in the order of the candidate rows.

    Attributes:
        patches: int16 HU, (N, ...) as `extract_patches` returns for the mode.
        centers_zyx: (N, 3) int64 centre voxel of each patch in the cached array.
        inside: (N,) bool; False where the candidate lies outside the cached array, whose patch
            is all `pad_value`.
        rows: The candidate rows, as given.
        size_zyx: Patch size (z, y, x).
        mode: "3d", "2d" or "2.5d".
    """

    patches: NDArray[np.int16]
    centers_zyx: NDArray[np.int64]
    inside: NDArray[np.bool_]
    rows: pd.DataFrame
    size_zyx: tuple[int, int, int]
    mode: str

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def _check_candidates(cached_scan: CachedScan, candidates: pd.DataFrame) -> None:
    missing = [c for c in COORD_COLUMNS if c not in candidates.columns]
    if missing:
        raise DatasetError(
            f"The candidate table lacks the column(s) {missing}; it needs world coordinates in "
            f"{COORD_COLUMNS} (LPS mm)."
        )
    if "seriesuid" in candidates.columns:
        others = sorted(set(candidates["seriesuid"]) - {cached_scan.seriesuid})
        if others:
            raise DatasetError(
                f"The candidate table for scan {cached_scan.seriesuid} contains rows of "
                f"{len(others)} other scan(s), for example {others[0]}. Select one scan's rows, "
                "for example candidates[candidates.seriesuid == uid]."
            )


def _report_outside(
    cached_scan: CachedScan, centers_cached_zyx: NDArray[np.float64], inside: NDArray[np.bool_]
) -> None:
    """Log how many candidates fall outside the cached array, and how many outside the scan."""
    n_outside = int((~inside).sum())
    if n_outside == 0:
        return
    full_zyx = centers_cached_zyx[~inside] + np.asarray(cached_scan.crop_offset_zyx, dtype=np.float64)
    in_scan = geometry.points_inside(full_zyx, cached_scan.full_shape_zyx)
    logger.warning(
        "%d of %d candidate(s) of %s lie outside the cached volume (%d outside the scan, %d "
        "outside the lung crop); their patches hold only the pad value.",
        n_outside,
        len(inside),
        cached_scan.seriesuid,
        int((~in_scan).sum()),
        int(in_scan.sum()),
    )


def patches_for_candidates(
    cached_scan: CachedScan,
    candidates: pd.DataFrame,
    size_zyx: int | ArrayLike = (32, 32, 32),
    mode: PatchMode = "3d",
    pad_value: float = PAD_VALUE_HU,
) -> PatchSet:
    """Cut the patches of one scan's candidates from its cache entry.

    World coordinates are converted to cached-array indices once for all rows. Candidates outside
    the cached array (outside the scan, or outside the lung crop) are logged and get a patch that
    is all `pad_value`.

    Args:
        cached_scan: The scan from `luna_utils.cache.open_cached_scan`.
        candidates: Rows with world coordinates `coordX, coordY, coordZ` (LPS mm); a `seriesuid`
            column, when present, must name only this scan.
        size_zyx: Patch size in voxels of the cached grid (z, y, x), or one int for a cube.
        mode: "3d", "2d" or "2.5d".
        pad_value: Value of voxels outside the cached array, in HU.

    Returns:
        The patches, their centres and inside flags, and the rows.

    Raises:
        DatasetError: If a coordinate column is missing or rows belong to other scans.
    """
    _check_candidates(cached_scan, candidates)
    size = as_patch_size(size_zyx)
    points_xyz_mm = candidates[COORD_COLUMNS].to_numpy(dtype=np.float64).reshape(-1, 3)

    centers_cached_zyx = cached_scan.world_to_voxel(points_xyz_mm)
    centers = geometry.round_to_voxel(centers_cached_zyx)
    inside = np.asarray(
        geometry.points_inside(centers_cached_zyx, cached_scan.shape_zyx), dtype=bool
    )
    _report_outside(cached_scan, centers_cached_zyx, inside)

    patches = np.full((len(candidates), *patch_shape(size, mode)), pad_value, dtype=np.int16)
    if inside.any():
        patches[inside] = extract_patches(
            cached_scan.volume, centers[inside], size, pad_value, mode
        )

    return PatchSet(
        patches=patches,
        centers_zyx=centers,
        inside=inside,
        rows=candidates,
        size_zyx=size,
        mode=mode,
    )


def patch_to_world(
    cached_scan: CachedScan,
    center_zyx: ArrayLike,
    offset_in_patch_zyx: ArrayLike,
    size_zyx: int | ArrayLike,
) -> NDArray[np.float64]:
    """Map a voxel of a patch back to world coordinates.

    Args:
        cached_scan: The cache entry the patch was cut from.
        center_zyx: The patch's centre voxel in the cached array (`PatchSet.centers_zyx`),
            shape (3,) or (N, 3).
        offset_in_patch_zyx: Index of the voxel inside the patch (z, y, x), integer or
            continuous, shape (3,) or (N, 3).
        size_zyx: The patch size (z, y, x), or one int for a cube.

    Returns:
        World points (x, y, z) LPS mm, shape (3,) or (N, 3).
    """
    half = np.asarray(as_patch_size(size_zyx), dtype=np.float64) // 2
    cached_zyx = (
        np.asarray(center_zyx, dtype=np.float64)
        + np.asarray(offset_in_patch_zyx, dtype=np.float64)
        - half
    )
    return cached_scan.voxel_to_world(cached_zyx)


def window_hu(
    array: ArrayLike, low: float = WINDOW_LOW_HU, high: float = WINDOW_HIGH_HU
) -> NDArray[np.float32]:
    """Clip HU values to [low, high] and scale them linearly to [0, 1], as float32.

    Raises:
        LunaError: If `high` is not above `low`.
    """
    if not high > low:
        raise LunaError(f"The HU window needs high > low; got low={low}, high={high}.")
    values = np.asarray(array, dtype=np.float32)
    scaled = (np.clip(values, low, high) - np.float32(low)) / np.float32(high - low)
    return scaled.astype(np.float32, copy=False)


def normalize(
    array: ArrayLike, mean: float | None = None, std: float | None = None
) -> NDArray[np.float32]:
    """Subtract a mean and divide by a standard deviation, as float32.

    Pass the training set's mean and standard deviation so every patch is scaled alike. With
    None, the array's own statistics are used. A standard deviation of 0 (a constant array)
    leaves the values centred but unscaled.

    Args:
        array: Values to normalise, for example the output of `window_hu`.
        mean: Value to subtract; None uses the array's mean.
        std: Value to divide by; None uses the array's standard deviation.

    Returns:
        A float32 array of the input's shape.
    """
    values = np.asarray(array, dtype=np.float32)
    center = float(values.mean()) if mean is None else float(mean)
    scale = float(values.std()) if std is None else float(std)
    if scale <= 0:
        scale = 1.0
    return ((values - np.float32(center)) / np.float32(scale)).astype(np.float32, copy=False)
