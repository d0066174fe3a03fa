"""Partial-volume drawing of tubes and blobs, and the scanner's blur, texture and noise."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy import ndimage

from luna_utils.phantom.grid import ScanGeometry, _Grid


# Width of the soft edge of rendered objects, millimetres.
EDGE_MM = 0.35


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


def _blend_up(hu: NDArray, slices: tuple[slice, slice, slice], fraction: NDArray, target_hu: float) -> None:
    """Mix `target_hu` into hu by the fraction, where that raises the value (in place)."""
    current = hu[slices]
    np.maximum(current, current + fraction * (np.float32(target_hu) - current), out=current)


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
