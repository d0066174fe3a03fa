"""Drawing of the body wall, organs, bones, lung parenchyma and airways."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from luna_utils.phantom.chest import _Body, _ellipse_depth_mm, _LungShape
from luna_utils.phantom.grid import _Grid
from luna_utils.phantom.tissues import (
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
    HU_TABLE,
    TISSUE_CODES,
)
from luna_utils.phantom.vessels import grow_tree


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


def _lung_hu(grid: _Grid, body: _Body) -> NDArray[np.float32]:
    """Return the mean parenchyma value per (y, x): denser toward the back, as in a supine patient."""
    semi_v, offset_v = body.thorax_axes[1], body.thorax_axes[2]
    depth = np.clip((grid.v[0] - offset_v + semi_v) / (2.0 * semi_v), 0.0, 1.0)
    values = (HU_LUNG + 45.0 * depth**2).astype(np.float32)
    return np.broadcast_to(values, (grid.shape_zyx[1], grid.shape_zyx[2]))
