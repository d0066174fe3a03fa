"""Lung masks: a threshold-based segmentation and the official LUNA16 masks.

Arrays are in NumPy order (z, y, x) and the z axis is taken as the axial (slice) axis, as in every
LUNA16 scan. The image axis that points to the patient's head (superior, +z in LPS) is read from
the direction matrix, so flipped scans are handled without flipping any array.

`segment_lungs` builds the mask in these steps, each a function of its own:

1. `air_inside_body`: voxels below -320 HU, minus the components that touch the in-plane border
   of the volume (the air around the patient, the table's hollow parts, the padding outside the
   reconstruction circle).
2. `find_airways`: the lumen of the trachea and bronchi (below -950 HU), followed slice by slice
   from the most superior slice downwards while it forms small components. The seeds lie near
   the midline, and a rim of 2 voxels is added around the lumen found. When these airways would
   take more than `AIRWAY_MAX_FRACTION` of the air, the tracking has followed a lung instead, so
   nothing is removed. Bronchi followed into the lung are restored by the hole filling of step 4.
3. `keep_lung_components`: the largest remaining 3-D component, plus the second largest when it
   is large enough to be the other lung (gas in the stomach or bowel is dropped).
4. `fill_holes_per_slice`: vessels and nodules inside the lung, which are small holes in each
   axial slice.
5. Per lung, a closing by `closing_mm` (fills the dents that juxta-pleural nodules make in the
   lung surface) and a dilation by `margin_mm`, both Euclidean in millimetres.

The official masks (`seg-lungs-LUNA16/<seriesuid>.mhd`) label the left and right lung 3 and 4 and
the trachea and main bronchi 5.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from numpy.typing import ArrayLike, NDArray
from scipy import ndimage

from luna_utils import geometry
from luna_utils.errors import GeometryError, MhdError
from luna_utils.mhd import CtScan, read_scan
from luna_utils.resample import ImageGrid, resample_to_grid

logger = logging.getLogger(__name__)

# Lung parenchyma is about -900 to -500 HU and soft tissue above -100 HU. -320 HU separates air
# spaces from tissue and is the usual threshold for lung segmentation in CT.
LUNG_THRESHOLD_HU = -320.0

# Airway lumen is air, about -1000 HU, while normal lung parenchyma stays above -950 HU (the
# usual emphysema threshold). Tracking the lumen below this value separates the trachea from a
# lung it touches in a slice.
AIRWAY_LUMEN_HU = -950.0

# Voxels of the air mask added around the airway lumen (partial-volume rim), by geodesic dilation.
AIRWAY_RIM_VOXELS = 2

# Largest axial cross-section, in mm^2, of a component still tracked as trachea or bronchus. An
# adult trachea is at most about 25 mm wide (about 490 mm^2), so 800 mm^2 leaves room for an
# oval section. A bronchus that joins the lung in a slice becomes far larger and stops the tracking.
AIRWAY_MAX_AREA_MM2 = 800.0

# Largest left-right distance, in mm, between a seed component's centroid and the body's midline.
# The trachea lies on the midline, the lung apices lie 30 mm or more to each side of it.
AIRWAY_MAX_OFFSET_MM = 25.0

# Largest share of the air inside the body that the airways found may take. The trachea and main
# bronchi take a few percent of it (about 2 % in the synthetic sample) and a lung 40 % or more.
# When the tracking claims more than this share, it has followed a lung and nothing is removed.
AIRWAY_MAX_FRACTION = 0.25

# Largest hole of an axial slice that is filled, in mm^2. Vessels and nodules up to 30 mm across
# (707 mm^2) are filled, but the top of the liver or spleen surrounded by the lung base is larger.
MAX_HOLE_AREA_MM2 = 1000.0

# Radius, in mm, of the closing that fills dents in the lung surface. Juxta-pleural nodules up to
# twice this diameter stay inside the mask.
CLOSING_MM = 10.0

# Dilation, in mm, added after the closing. A ball of radius R still dips R - sqrt(R^2 - w^2) into
# a dent of half-width w: 1.0 mm for a 9 mm nodule and 2.0 mm for a 12 mm one at R = 10 mm.
# 1 mm covers nodules up to 9 mm and adds little volume. On the synthetic sample, Dice with the
# official masks is about 0.98 without the margin and 0.91-0.95 with it.
MARGIN_MM = 1.0

# A second 3-D component is kept as the other lung when it has at least this fraction of the
# largest component's volume. Each lung has 40 % or more of the total volume, gas in the stomach
# or bowel far less.
SECOND_LUNG_MIN_FRACTION = 0.25

# Labels of the official LUNA16 lung masks.
OFFICIAL_LUNG_LABELS = (3, 4)
OFFICIAL_AIRWAY_LABEL = 5


def superior_is_high_index(direction: ArrayLike | None) -> bool:
    """Return whether a higher z index is more superior (towards the head, +z in LPS).

    Args:
        direction: 3x3 direction matrix (columns are the image axes in world space), or None for
            the identity.
    """
    matrix = geometry.as_direction_matrix(direction)
    return bool(matrix[2, 2] >= 0)


def air_inside_body(array_zyx: NDArray, threshold_hu: float = LUNG_THRESHOLD_HU) -> NDArray[np.bool_]:
    """Return the voxels below the threshold that are not connected to the in-plane border.

    Components that touch the first or last slice only are kept, because the lungs often reach
    the top or bottom of the scan.

    Args:
        array_zyx: CT values in HU, (z, y, x).
        threshold_hu: Voxels below this value count as air.

    Returns:
        A bool mask (z, y, x): air in the lungs, airways, stomach and bowel.
    """
    air = array_zyx < threshold_hu
    labels, _ = ndimage.label(air)

    # Labels present on the four in-plane faces (y and x borders) of any slice.
    border_labels = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    border_labels = border_labels[border_labels > 0]
    return air & ~np.isin(labels, border_labels)


def _midline_x(body: NDArray[np.bool_]) -> float:
    """Return the x index of the body's left-right centre (the body mask's centroid)."""
    counts = body.sum(axis=(0, 1), dtype=np.int64)
    if counts.sum() == 0:
        return (body.shape[2] - 1) / 2.0
    return float(np.average(np.arange(body.shape[2]), weights=counts))


def find_airways(
    inside_air: NDArray[np.bool_],
    spacing_xyz_mm: ArrayLike,
    superior_is_high: bool = True,
    midline_x: float | None = None,
    max_area_mm2: float = AIRWAY_MAX_AREA_MM2,
    max_offset_mm: float = AIRWAY_MAX_OFFSET_MM,
) -> NDArray[np.bool_]:
    """Find the trachea and main bronchi in a mask of the air inside the body.

    Starting at the most superior slice that contains air, the seeds are the components smaller
    than `max_area_mm2` whose centroid lies within `max_offset_mm` of the midline. Going down
    slice by slice, a component is airway when it overlaps the airway of the slice above and is
    still smaller than `max_area_mm2`. A bronchus that merges with the lung in a slice becomes
    large and ends its branch there. Tracking stops when no airway is left in a slice.

    Args:
        inside_air: Air inside the body (z, y, x), from `air_inside_body`.
        spacing_xyz_mm: Voxel size (x, y, z) mm.
        superior_is_high: Whether a higher z index is more superior (`superior_is_high_index`).
        midline_x: x index of the body's left-right centre; None uses the centre of the volume.
        max_area_mm2: Largest cross-section of a tracked airway component.
        max_offset_mm: Largest distance of a seed's centroid from the midline.

    Returns:
        A bool mask (z, y, x) of the airways found; empty when no seed is found.
    """
    spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    voxel_area_mm2 = float(spacing[0] * spacing[1])
    if midline_x is None:
        midline_x = (inside_air.shape[2] - 1) / 2.0

    airways = np.zeros(inside_air.shape, dtype=bool)
    n_slices = inside_air.shape[0]
    order = range(n_slices - 1, -1, -1) if superior_is_high else range(n_slices)

    previous: NDArray[np.bool_] | None = None
    for k in order:
        labels, count = ndimage.label(inside_air[k])
        if count == 0:
            if previous is not None:
                break
            continue
        areas_mm2 = np.bincount(labels.ravel(), minlength=count + 1) * voxel_area_mm2

        if previous is None:
            # Seed slice: small components on the midline.
            centroids = ndimage.center_of_mass(inside_air[k], labels, range(1, count + 1))
            chosen = [
                label
                for label, (_, x) in zip(range(1, count + 1), centroids)
                if areas_mm2[label] <= max_area_mm2
                and abs(x - midline_x) * spacing[0] <= max_offset_mm
            ]
        else:
            # Components that continue the airway of the slice above and are still small.
            overlapping = np.unique(labels[previous])
            chosen = [
                int(label)
                for label in overlapping
                if label > 0 and areas_mm2[label] <= max_area_mm2
            ]

        if not chosen:
            break
        current = np.isin(labels, chosen)
        airways[k] = current
        previous = current

    return airways


def keep_lung_components(
    mask: NDArray[np.bool_], min_fraction: float = SECOND_LUNG_MIN_FRACTION
) -> NDArray[np.bool_]:
    """Keep the largest 3-D component and the second largest when it is large enough.

    Args:
        mask: Candidate lung voxels (z, y, x).
        min_fraction: The second component is kept when its volume is at least this fraction of
            the largest one's.

    Returns:
        A bool mask (z, y, x) with one or two components, or all False for an empty input.
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    ranked = np.argsort(sizes)[::-1]
    keep = [ranked[0]]
    if count > 1 and sizes[ranked[1]] >= min_fraction * sizes[ranked[0]]:
        keep.append(ranked[1])
    return np.isin(labels, keep)


def fill_holes_per_slice(
    mask: NDArray[np.bool_], spacing_xyz_mm: ArrayLike, max_area_mm2: float = MAX_HOLE_AREA_MM2
) -> NDArray[np.bool_]:
    """Fill the small holes of each axial slice (z index): vessels and nodules in the lung.

    Larger holes stay open: in slices through the diaphragm, the lung base can surround the top
    of the liver or spleen, which is not lung.

    Args:
        mask: Bool mask (z, y, x).
        spacing_xyz_mm: Voxel size (x, y, z) mm.
        max_area_mm2: Largest hole that is filled, in mm^2 of the slice.

    Returns:
        The filled mask, same shape.
    """
    spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
    max_voxels = max_area_mm2 / float(spacing[0] * spacing[1])
    filled = mask.copy()
    for k in range(mask.shape[0]):
        holes = ndimage.binary_fill_holes(mask[k]) & ~mask[k]
        labels, count = ndimage.label(holes)
        if count == 0:
            continue
        sizes = np.bincount(labels.ravel())
        small = np.flatnonzero(sizes <= max_voxels)
        filled[k] |= np.isin(labels, small[small > 0])
    return filled


def dilate_mm(mask: NDArray[np.bool_], spacing_xyz_mm: ArrayLike, radius_mm: float) -> NDArray[np.bool_]:
    """Dilate a mask by a Euclidean distance in millimetres.

    A voxel joins the mask when its centre lies within `radius_mm` of a mask voxel's centre.
    Distances come from SimpleITK's Maurer distance map (float32, exact Euclidean distances with
    the voxel spacing), which needs far less memory than scipy's `distance_transform_edt`.

    Args:
        mask: Bool mask (z, y, x).
        spacing_xyz_mm: Voxel size (x, y, z) mm.
        radius_mm: Dilation radius; 0 or less returns a copy.

    Returns:
        The dilated mask, same shape.
    """
    if radius_mm <= 0 or not mask.any():
        return mask.copy()
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing(tuple(float(v) for v in spacing_xyz_mm))
    distances = sitk.SignedMaurerDistanceMap(
        image, insideIsPositive=False, squaredDistance=False, useImageSpacing=True
    )
    return sitk.GetArrayViewFromImage(distances) <= radius_mm


def erode_mm(mask: NDArray[np.bool_], spacing_xyz_mm: ArrayLike, radius_mm: float) -> NDArray[np.bool_]:
    """Erode a mask by a Euclidean distance in millimetres.

    A voxel stays when no background voxel of the volume lies within `radius_mm` of it. Space
    beyond the volume's faces does not count as background, so a mask touching a face keeps it.
    """
    if radius_mm <= 0 or mask.all():
        return mask.copy()
    return ~dilate_mm(~mask, spacing_xyz_mm, radius_mm)


def _padded_box(mask: NDArray[np.bool_], pad_zyx: NDArray[np.int64]) -> tuple[NDArray, list[slice], list[slice]]:
    """Copy the mask's bounding box widened by `pad_zyx` voxels, with background beyond the faces.

    Returns:
        (the padded copy, slices of the volume that it covers, the same region's slices in the
        copy).
    """
    volume_slices = []
    part_slices = []
    part_shape = []
    for axis in range(3):
        other_axes = tuple(a for a in range(3) if a != axis)
        present = np.flatnonzero(mask.any(axis=other_axes))
        low = int(present[0]) - int(pad_zyx[axis])
        high = int(present[-1]) + int(pad_zyx[axis]) + 1
        clipped_low = max(low, 0)
        clipped_high = min(high, mask.shape[axis])
        volume_slices.append(slice(clipped_low, clipped_high))
        part_slices.append(slice(clipped_low - low, clipped_high - low))
        part_shape.append(high - low)

    part = np.zeros(part_shape, dtype=bool)
    part[tuple(part_slices)] = mask[tuple(volume_slices)]
    return part, volume_slices, part_slices


def close_and_dilate_mm(
    mask: NDArray[np.bool_], spacing_xyz_mm: ArrayLike, closing_mm: float, margin_mm: float
) -> NDArray[np.bool_]:
    """Close a mask by `closing_mm`, then dilate it by `margin_mm`, working in its bounding box.

    Space beyond the volume's faces counts as background, so the closing does not grow the mask
    towards a face. The closing never removes a voxel of the input mask, so lungs cut by the
    first or last slice keep their extent.

    Args:
        mask: Bool mask (z, y, x).
        spacing_xyz_mm: Voxel size (x, y, z) mm.
        closing_mm: Radius of the closing (dilation then erosion).
        margin_mm: Radius of the final dilation.

    Returns:
        The new mask, same shape.
    """
    if not mask.any():
        return mask.copy()
    spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)

    # Work in the bounding box plus the reach of the dilations, plus one voxel of background.
    reach_mm = max(closing_mm, 0.0) + max(margin_mm, 0.0)
    pad_zyx = np.ceil(reach_mm / spacing[::-1]).astype(np.int64) + 1
    part, volume_slices, part_slices = _padded_box(mask, pad_zyx)

    closed = erode_mm(dilate_mm(part, spacing, closing_mm), spacing, closing_mm)
    closed |= part
    grown = dilate_mm(closed, spacing, margin_mm)

    result = np.zeros(mask.shape, dtype=bool)
    result[tuple(volume_slices)] = grown[tuple(part_slices)]
    return result


def _as_volume(
    scan: CtScan | NDArray, spacing_xyz_mm: ArrayLike | None, direction: ArrayLike | None
) -> tuple[NDArray, NDArray[np.float64], ArrayLike | None, str]:
    """Return (array, spacing, direction, name) of a `CtScan` or of an array with its spacing."""
    if isinstance(scan, CtScan):
        array = scan.array
        spacing = np.asarray(scan.spacing_xyz_mm, dtype=np.float64)
        direction = scan.direction
        name = scan.seriesuid
    else:
        array = np.asarray(scan)
        if spacing_xyz_mm is None:
            raise GeometryError(
                "segment_lungs needs spacing_xyz_mm when given an array; pass the scan's voxel "
                "size in (x, y, z) mm, or pass the CtScan itself."
            )
        spacing = np.asarray(spacing_xyz_mm, dtype=np.float64)
        name = "array"
    if array.ndim != 3:
        raise GeometryError(f"segment_lungs needs a 3-D (z, y, x) volume; got shape {array.shape}.")
    if spacing.shape != (3,) or np.any(spacing <= 0):
        raise GeometryError(f"spacing_xyz_mm must hold 3 positive values; got {spacing.tolist()}.")
    return array, spacing, direction, name


def _remove_airways(
    array: NDArray,
    inside_air: NDArray[np.bool_],
    spacing: NDArray[np.float64],
    direction: ArrayLike | None,
    threshold_hu: float,
    name: str,
) -> NDArray[np.bool_]:
    """Return the airways to remove from `inside_air`; empty when the tracking followed a lung."""
    body = ~(array < threshold_hu) | inside_air
    lumen = find_airways(
        inside_air & (array < AIRWAY_LUMEN_HU),
        spacing,
        superior_is_high=superior_is_high_index(direction),
        midline_x=_midline_x(body),
    )
    del body
    airways = ndimage.binary_dilation(lumen, iterations=AIRWAY_RIM_VOXELS, mask=inside_air)

    airway_fraction = airways.sum() / max(int(inside_air.sum()), 1)
    if airway_fraction > AIRWAY_MAX_FRACTION:
        logger.warning(
            "%s: the airway tracking claimed %.0f%% of the air inside the body, so it likely "
            "followed a lung; no airway was removed.",
            name,
            100 * airway_fraction,
        )
        airways[...] = False
    return airways


def _segment(
    array: NDArray,
    spacing: NDArray[np.float64],
    direction: ArrayLike | None,
    name: str,
    margin_mm: float,
    closing_mm: float,
    threshold_hu: float,
    remove_airways: bool,
    steps: dict[str, NDArray[np.bool_]] | None,
) -> NDArray[np.bool_]:
    """Run the segmentation steps; store each step's mask in `steps` when it is a dict."""
    inside_air = air_inside_body(array, threshold_hu)
    if steps is not None:
        steps["air_inside_body"] = inside_air.copy()

    if remove_airways:
        airways = _remove_airways(array, inside_air, spacing, direction, threshold_hu, name)
        inside_air &= ~airways
        if steps is not None:
            steps["airways"] = airways
        del airways

    lungs = keep_lung_components(inside_air)
    del inside_air
    if steps is not None:
        steps["lung_components"] = lungs
    if not lungs.any():
        logger.warning("No lung found in %s: no air inside the body below %s HU.", name, threshold_hu)
        return lungs

    lungs = fill_holes_per_slice(lungs, spacing)
    if steps is not None:
        steps["holes_filled"] = lungs

    # Close each lung on its own, so the closing never bridges the mediastinum between them.
    labels, count = ndimage.label(lungs)
    result = np.zeros(array.shape, dtype=bool)
    for label in range(1, count + 1):
        result |= close_and_dilate_mm(labels == label, spacing, closing_mm, margin_mm)
    return result


def segment_lungs(
    scan: CtScan | NDArray,
    spacing_xyz_mm: ArrayLike | None = None,
    direction: ArrayLike | None = None,
    margin_mm: float = MARGIN_MM,
    closing_mm: float = CLOSING_MM,
    threshold_hu: float = LUNG_THRESHOLD_HU,
    remove_airways: bool = True,
) -> NDArray[np.uint8]:
    """Segment both lungs in a CT volume.

    See the module docstring for the steps. The result includes vessels and nodules inside the
    lungs and, through the closing and margin, nodules attached to the pleura.

    Args:
        scan: A `CtScan`, or an array of HU values (z, y, x) with `spacing_xyz_mm` given.
        spacing_xyz_mm: Voxel size (x, y, z) mm; required for an array, ignored for a `CtScan`.
        direction: Direction matrix for an array (None: identity); ignored for a `CtScan`. Only
            its z column is used, to find which end of the z axis is superior.
        margin_mm: Dilation added at the end, in mm.
        closing_mm: Radius of the closing, in mm.
        threshold_hu: Voxels below this value count as air.
        remove_airways: Remove the trachea and main bronchi.

    Returns:
        A uint8 mask (z, y, x), 1 in the lungs and 0 elsewhere. All zeros when no lung is found
        (a warning is logged).

    Raises:
        GeometryError: If an array is passed without a valid spacing, or is not 3-D.
    """
    array, spacing, direction, name = _as_volume(scan, spacing_xyz_mm, direction)
    mask = _segment(
        array, spacing, direction, name, margin_mm, closing_mm, threshold_hu, remove_airways, None
    )
    return mask.astype(np.uint8)


def segmentation_steps(
    scan: CtScan | NDArray,
    spacing_xyz_mm: ArrayLike | None = None,
    direction: ArrayLike | None = None,
    margin_mm: float = MARGIN_MM,
    closing_mm: float = CLOSING_MM,
    threshold_hu: float = LUNG_THRESHOLD_HU,
) -> dict[str, NDArray[np.bool_]]:
    """Run `segment_lungs` and return the mask after each step, for display.

    Returns:
        Bool masks (z, y, x) under the keys "air_inside_body", "airways" (the voxels removed),
        "lung_components", "holes_filled" and "final", in that order. A step that was not reached
        (no lung found) is missing.
    """
    array, spacing, direction, name = _as_volume(scan, spacing_xyz_mm, direction)
    steps: dict[str, NDArray[np.bool_]] = {}
    steps["final"] = _segment(
        array, spacing, direction, name, margin_mm, closing_mm, threshold_hu, True, steps
    )
    return steps


def official_mask_path(root: str | Path, seriesuid: str) -> Path:
    """Return where the official lung mask of a scan lives: `seg-lungs-LUNA16/<seriesuid>.mhd`."""
    return Path(root) / "seg-lungs-LUNA16" / f"{seriesuid}.mhd"


def load_official_mask(root: str | Path, seriesuid: str) -> CtScan | None:
    """Load the official LUNA16 lung mask of a scan, when the dataset has it.

    Args:
        root: The dataset folder.
        seriesuid: The scan id.

    Returns:
        A `CtScan` whose array contains the labels (z, y, x): 3 and 4 for the lungs, 5 for the
        trachea and main bronchi, 0 elsewhere; None when `seg-lungs-LUNA16/<seriesuid>.mhd`
        does not exist.

    Raises:
        MhdError: If the mask file exists but cannot be read.
    """
    path = official_mask_path(root, seriesuid)
    if not path.is_file():
        logger.debug("No official lung mask at %s", path)
        return None
    mask = read_scan(path)
    if not np.issubdtype(mask.array.dtype, np.integer):
        raise MhdError(
            f"{path}: a lung mask must hold integer labels, got {mask.array.dtype}. Check that "
            "the file is a seg-lungs-LUNA16 mask."
        )
    return mask


def official_mask_on_grid(root: str | Path, seriesuid: str, grid: ImageGrid) -> NDArray[np.uint8] | None:
    """Return the official lung mask (labels 3 and 4 as 1) resampled onto another grid.

    Nearest-neighbour lookup, 0 outside the mask's field of view.

    Args:
        root: The dataset folder.
        seriesuid: The scan id.
        grid: The grid to sample on, for example `CachedScan.grid`.

    Returns:
        A uint8 0/1 array of shape `grid.shape_zyx`, or None when the dataset has no mask for
        the scan.
    """
    mask = load_official_mask(root, seriesuid)
    if mask is None:
        return None
    lungs_only = official_lung_mask(mask.array)
    return resample_to_grid(lungs_only, ImageGrid.of_scan(mask), grid, "nearest", default_value=0)


def official_lung_mask(labels: NDArray) -> NDArray[np.uint8]:
    """Return a 0/1 uint8 mask of the lungs (labels 3 and 4) from an official label array."""
    return np.isin(labels, OFFICIAL_LUNG_LABELS).astype(np.uint8)


def dice(a: ArrayLike, b: ArrayLike) -> float:
    """Compute the Dice coefficient 2|A & B| / (|A| + |B|) of two masks (nonzero = inside).

    Returns:
        A value in [0, 1]; 1.0 when both masks are empty.

    Raises:
        GeometryError: If the shapes differ.
    """
    first = np.asarray(a) != 0
    second = np.asarray(b) != 0
    if first.shape != second.shape:
        raise GeometryError(
            f"dice needs masks of the same shape; got {first.shape} and {second.shape}. Resample "
            "one mask onto the other's grid first."
        )
    total = int(first.sum()) + int(second.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(first, second).sum()) / total
