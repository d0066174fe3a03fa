"""Figures of CT scans: Hounsfield windows, slices in millimetres, MIPs, montages, nodule circles.

Every view is drawn with its extent in world millimetres, so pixels keep the scan's spacing and
nothing is stretched. In a coronal view of 2.5 mm slices with 0.7 mm columns, each row is drawn
2.5 / 0.7 times taller than each column is wide. Placement, orientation and nodule circles come from `luna_utils.overlays`; read its
module docstring for the conventions. Each function returns the figure and axes together with the
circles it drew, so the positions can be checked by coordinates.

Grey levels are Hounsfield units (HU) mapped through a window: a level (centre) and a width. Values
below level - width / 2 are black, values above level + width / 2 are white, and a colour bar
labels the scale in HU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray

from luna_utils import overlays
from luna_utils.errors import GeometryError, LunaError
from luna_utils.mhd import CtScan
from luna_utils.overlays import OverlayCircle

logger = logging.getLogger(__name__)

class Window(NamedTuple):
    """A HU display window: the level (centre) and the width, both in HU."""

    level: float
    width: float

    @property
    def low(self) -> float:
        """HU shown as black."""
        return self.level - self.width / 2

    @property
    def high(self) -> float:
        """HU shown as white."""
        return self.level + self.width / 2


# Common radiology presets; hospitals vary them by a few tens of HU.
WINDOWS = {
    # -1350 to +150 HU: lung tissue, airways, vessels and nodules against air.
    "lung": Window(level=-600, width=1500),
    # -160 to +240 HU: fat, muscle, blood and soft-tissue nodules; lung is plain black.
    "mediastinum": Window(level=40, width=400),
    # -500 to +1300 HU: cortical and trabecular bone.
    "bone": Window(level=400, width=1800),
}

NODULE_COLOR = "#ff7f0e"


def window_limits(window: str | Window | tuple[float, float] | None) -> tuple[float, float] | None:
    """Return the (low, high) HU of a window.

    Args:
        window: A name from `WINDOWS`, a `Window`, a (level, width) pair, or None for no window
            (the image's own minimum and maximum).

    Raises:
        LunaError: On an unknown name or a width that is not positive.
    """
    if window is None:
        return None
    if isinstance(window, str):
        if window not in WINDOWS:
            raise LunaError(f"Unknown HU window {window!r}; use one of {', '.join(WINDOWS)} or a (level, width) pair.")
        window = WINDOWS[window]
    level, width = (float(value) for value in window)
    if not np.isfinite(level) or not np.isfinite(width) or width <= 0:
        raise LunaError(f"A HU window needs a finite level and a positive width; got level {level}, width {width}.")
    return Window(level, width).low, Window(level, width).high


def describe_window(window: str | Window | tuple[float, float] | None) -> str:
    """Return a short text such as "lung window -1350 to 150 HU" for titles."""
    limits = window_limits(window)
    if limits is None:
        return "no window (full range)"
    name = f"{window} window" if isinstance(window, str) else "window"
    return f"{name} {limits[0]:g} to {limits[1]:g} HU"


@dataclass
class SliceView:
    """A drawn view and what it shows.

    Attributes:
        figure, ax: The matplotlib figure and axes.
        image: The `AxesImage`.
        view: "axial", "coronal" or "sagittal".
        first_slice, last_slice: Slice indices shown (equal for one slice, a range for a MIP).
        circles: The nodule circles drawn, with their world and pixel positions.
    """

    figure: Any
    ax: Any
    image: Any
    view: str
    first_slice: int
    last_slice: int
    circles: list[OverlayCircle] = field(default_factory=list)


def nodule_arrays(nodules: pd.DataFrame | None, seriesuid: str | None = None) -> tuple[NDArray, NDArray]:
    """Return the centres (N, 3) world (x, y, z) mm and diameters (N,) mm of a nodule table.

    Args:
        nodules: A table with columns coordX, coordY, coordZ and diameter_mm, or None. When it
            has a seriesuid column and `seriesuid` is given, only that scan's rows are kept.
        seriesuid: The scan to keep rows of.
    """
    if nodules is None:
        return np.zeros((0, 3)), np.zeros(0)
    missing = [name for name in ("coordX", "coordY", "coordZ", "diameter_mm") if name not in nodules.columns]
    if missing:
        raise LunaError(
            f"The nodule table lacks the column(s) {missing}; pass rows of annotations.csv "
            "(coordX, coordY, coordZ, diameter_mm)."
        )
    if seriesuid is not None and "seriesuid" in nodules.columns:
        nodules = nodules[nodules["seriesuid"] == seriesuid]
    centers = nodules[["coordX", "coordY", "coordZ"]].to_numpy(dtype=np.float64)
    return centers, nodules["diameter_mm"].to_numpy(dtype=np.float64)


def _new_axes(ax, figsize=(5, 5)):
    import matplotlib.pyplot as plt

    if ax is None:
        figure, ax = plt.subplots(figsize=figsize)
        return figure, ax
    return ax.figure, ax


def _draw_plane(
    scan: CtScan,
    view: str,
    image_2d: NDArray,
    first: int,
    last: int,
    *,
    window,
    ax,
    nodules: pd.DataFrame | None,
    center_xyz_mm: ArrayLike | None,
    zoom_mm: float | None,
    colorbar: bool,
    title: str | None,
) -> SliceView:
    """Draw a 2-D image of a view in world mm, with its colour bar and nodule circles."""
    from matplotlib.patches import Circle

    plane = overlays.plane_geometry(scan, view)
    limits = window_limits(window)
    figure, ax = _new_axes(ax)

    # The extent places the stored array in world mm; the limits then orient the axes.
    vmin, vmax = limits if limits is not None else (None, None)
    image = ax.imshow(
        image_2d, cmap="gray", vmin=vmin, vmax=vmax, extent=plane.extent, origin="upper",
        interpolation="nearest",
    )
    ax.set_xlim(*plane.xlim)
    ax.set_ylim(*plane.ylim)
    ax.set_aspect("equal")
    ax.set_xlabel(plane.xlabel)
    ax.set_ylabel(plane.ylabel)

    centers, diameters = nodule_arrays(nodules, scan.seriesuid)
    circles = overlays.overlay_circles(scan, view, first, centers, diameters, last_index=last)
    for circle in circles:
        ax.add_patch(
            Circle(
                (circle.center_h_mm, circle.center_v_mm), circle.radius_mm,
                fill=False, edgecolor=NODULE_COLOR, linewidth=1.5,
            )
        )

    if zoom_mm is not None:
        _zoom(ax, plane, center_xyz_mm, zoom_mm)
    if colorbar:
        figure.colorbar(image, ax=ax, label="HU", fraction=0.046, pad=0.04)
    if title is None:
        position = overlays.slice_position_mm(scan, view, first)
        axis_name = "xyz"[plane.view.normal_world]
        slices = f"slice {first}" if first == last else f"MIP of slices {first}-{last}"
        title = f"{view}, {slices} ({axis_name} = {position:.1f} mm)"
    ax.set_title(title, fontsize=10)
    return SliceView(figure, ax, image, view, first, last, circles)


def _zoom(ax, plane: overlays.Plane, center_xyz_mm: ArrayLike | None, zoom_mm: float) -> None:
    if center_xyz_mm is None:
        raise LunaError("zoom_mm needs center_xyz_mm: the world point to centre the zoomed view on.")
    center = np.asarray(center_xyz_mm, dtype=np.float64).reshape(3)
    h = center[plane.view.horizontal_world]
    v = center[plane.view.vertical_world]
    half = zoom_mm / 2
    ax.set_xlim(h - half, h + half)
    ax.set_ylim((v - half, v + half) if plane.view.vertical_up else (v + half, v - half))


def _resolve_index(scan: CtScan, view: str, index: int | None, center_xyz_mm: ArrayLike | None) -> int:
    if index is None:
        if center_xyz_mm is not None:
            index = overlays.slice_index_of(scan, view, center_xyz_mm)
        else:
            index = scan.shape_zyx[overlays.get_view(view).slice_axis] // 2
    return overlays.check_slice_index(scan, view, index)


def show_slice(
    scan: CtScan,
    view: str = "axial",
    index: int | None = None,
    *,
    window: str | Window | tuple[float, float] | None = "lung",
    ax=None,
    nodules: pd.DataFrame | None = None,
    center_xyz_mm: ArrayLike | None = None,
    zoom_mm: float | None = None,
    colorbar: bool = True,
    title: str | None = None,
) -> SliceView:
    """Show one slice of a scan in world millimetres, with nodule circles.

    Args:
        scan: An axis-aligned scan (all LUNA16 scans are).
        view: "axial", "coronal" or "sagittal".
        index: Slice index along the view's normal. None picks the slice through
            `center_xyz_mm`, or the middle slice.
        window: HU window name, `Window`, (level, width), or None for the image's own range.
        ax: Axes to draw on; None creates a figure.
        nodules: Table with coordX, coordY, coordZ (world mm) and diameter_mm; rows of other
            scans are ignored when it has a seriesuid column. Each nodule that cuts the slice
            gets a circle of its cross-section radius.
        center_xyz_mm: World point (x, y, z) mm that selects the slice and centres a zoom.
        zoom_mm: Width and height of the shown square around `center_xyz_mm`, mm.
        colorbar: Add a colour bar labelled in HU.
        title: Axes title; None describes the view, slice index and its world position.

    Returns:
        The `SliceView`, with the circles drawn.
    """
    index = _resolve_index(scan, view, index, center_xyz_mm)
    image_2d = overlays.take_slice(scan.array, view, index)
    return _draw_plane(
        scan, view, image_2d, index, index, window=window, ax=ax, nodules=nodules,
        center_xyz_mm=center_xyz_mm, zoom_mm=zoom_mm, colorbar=colorbar, title=title,
    )


def show_mip(
    scan: CtScan,
    view: str = "axial",
    index: int | None = None,
    thickness_mm: float = 10.0,
    *,
    window: str | Window | tuple[float, float] | None = "lung",
    ax=None,
    nodules: pd.DataFrame | None = None,
    center_xyz_mm: ArrayLike | None = None,
    zoom_mm: float | None = None,
    colorbar: bool = True,
    title: str | None = None,
) -> SliceView:
    """Show a maximum intensity projection (MIP) over a slab centred on a slice.

    In a MIP a vessel stays a continuous branching line across the slab while a nodule stays a
    compact blob, which is how radiologists tell the two apart. The slab is the set of slices
    whose centres lie within thickness_mm / 2 of the centre slice (`overlays.slab_indices`).
    Arguments are those of `show_slice`, plus the slab thickness in mm.
    """
    index = _resolve_index(scan, view, index, center_xyz_mm)
    image_2d, (first, last) = overlays.max_intensity_projection(scan, view, index, thickness_mm)
    return _draw_plane(
        scan, view, image_2d, first, last, window=window, ax=ax, nodules=nodules,
        center_xyz_mm=center_xyz_mm, zoom_mm=zoom_mm, colorbar=colorbar, title=title,
    )


def show_views(
    scan: CtScan,
    center_xyz_mm: ArrayLike | None = None,
    *,
    window: str | Window | tuple[float, float] | None = "lung",
    nodules: pd.DataFrame | None = None,
    zoom_mm: float | None = None,
    thickness_mm: float | None = None,
    figsize: tuple[float, float] = (13, 4.6),
) -> tuple[Any, dict[str, SliceView]]:
    """Show the axial, coronal and sagittal views through one world point, side by side.

    Args:
        scan: An axis-aligned scan.
        center_xyz_mm: World point (x, y, z) mm the three planes pass through; None uses the
            middle slice of each view.
        window: HU window for all three views.
        nodules: Nodule table, as for `show_slice`.
        zoom_mm: Square field of view around `center_xyz_mm`, mm; None shows the whole plane.
        thickness_mm: Draw MIPs over slabs of this thickness instead of single slices.
        figsize: Figure size in inches.

    Returns:
        (figure, views): `views` maps each view name to its `SliceView`.
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=figsize)
    views = {}
    for ax, view in zip(axes, overlays.VIEWS):
        arguments = dict(
            window=window, ax=ax, nodules=nodules, center_xyz_mm=center_xyz_mm,
            zoom_mm=zoom_mm, colorbar=view == "sagittal",
        )
        if thickness_mm is None:
            views[view] = show_slice(scan, view, **arguments)
        else:
            views[view] = show_mip(scan, view, thickness_mm=thickness_mm, **arguments)
    figure.suptitle(f"{scan.seriesuid[-12:]}: {describe_window(window)}", fontsize=11)
    figure.tight_layout()
    return figure, views


def show_montage(
    scan: CtScan,
    n_slices: int = 12,
    n_columns: int = 6,
    *,
    view: str = "axial",
    window: str | Window | tuple[float, float] | None = "lung",
    nodules: pd.DataFrame | None = None,
    panel_inches: float = 2.0,
) -> tuple[Any, list[SliceView]]:
    """Show evenly spaced slices of a scan in a grid, first slice top left.

    Args:
        scan: An axis-aligned scan.
        n_slices: Number of panels; fewer when the view has fewer slices.
        n_columns: Panels per row.
        view: "axial", "coronal" or "sagittal".
        window: HU window for every panel.
        nodules: Nodule table, as for `show_slice`.
        panel_inches: Width of one panel in inches.

    Returns:
        (figure, views): one `SliceView` per panel, in slice order.
    """
    import matplotlib.pyplot as plt

    if n_slices < 1 or n_columns < 1:
        raise LunaError(f"A montage needs at least one slice and one column; got {n_slices} and {n_columns}.")
    total = scan.shape_zyx[overlays.get_view(view).slice_axis]
    indices = np.unique(np.round(np.linspace(0, total - 1, min(n_slices, total))).astype(int))
    n_rows = int(np.ceil(len(indices) / n_columns))
    n_columns = min(n_columns, len(indices))

    figure, axes = plt.subplots(
        n_rows, n_columns, figsize=(panel_inches * n_columns + 1, panel_inches * n_rows + 0.5),
        squeeze=False, layout="constrained",
    )
    views = []
    axis_name = "xyz"[overlays.get_view(view).normal_world]
    for ax, index in zip(axes.flat, indices):
        position = overlays.slice_position_mm(scan, view, index)
        panel = show_slice(scan, view, int(index), window=window, ax=ax, nodules=nodules, colorbar=False)
        ax.set_title(f"{index}: {axis_name} {position:.0f} mm", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlabel("")
        ax.set_ylabel("")
        views.append(panel)
    for ax in list(axes.flat)[len(indices):]:
        ax.axis("off")
    figure.colorbar(views[0].image, ax=axes, label="HU", shrink=0.8)
    figure.suptitle(f"{view} montage, {describe_window(window)}", fontsize=11)
    return figure, views


class GalleryPanel(NamedTuple):
    """One panel of `show_gallery`: a scan, the world point (x, y, z) mm to centre on, its nodule
    table (or None) and a title."""

    scan: CtScan
    center_xyz_mm: ArrayLike
    nodules: pd.DataFrame | None
    title: str


def show_gallery(
    panels: list[GalleryPanel],
    *,
    zoom_mm: float = 30.0,
    view: str = "axial",
    window: str | Window | tuple[float, float] | None = "lung",
    n_columns: int = 6,
    panel_inches: float = 2.2,
) -> tuple[Any, list[SliceView]]:
    """Show zoomed views centred on world points, one panel each, with nodule circles.

    All panels share the zoom in millimetres, so sizes compare directly across scans of
    different spacing.

    Returns:
        (figure, views): one `SliceView` per panel, in input order.
    """
    import matplotlib.pyplot as plt

    if not panels:
        raise LunaError("show_gallery needs at least one panel.")
    n_columns = min(n_columns, len(panels))
    n_rows = int(np.ceil(len(panels) / n_columns))
    figure, axes = plt.subplots(
        n_rows, n_columns, figsize=(panel_inches * n_columns + 1, panel_inches * n_rows + 0.4),
        squeeze=False, layout="constrained",
    )
    views = []
    for ax, panel in zip(axes.flat, panels):
        result = show_slice(
            panel.scan, view, window=window, ax=ax, nodules=panel.nodules,
            center_xyz_mm=panel.center_xyz_mm, zoom_mm=zoom_mm, colorbar=False,
        )
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel(ax.get_xlabel().split(",")[0], fontsize=7)
        ax.set_ylabel(ax.get_ylabel().split(",")[0], fontsize=7)
        views.append(result)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    figure.colorbar(views[0].image, ax=axes, label="HU", shrink=0.8)
    return figure, views


def browse_slices(
    scan: CtScan,
    view: str = "axial",
    *,
    window: str = "lung",
    nodules: pd.DataFrame | None = None,
    start_index: int | None = None,
):
    """Build an interactive slice browser: a slider for the slice and a menu for the HU window.

    Display the returned widget in a notebook (it is the last value of the cell, or pass it to
    `IPython.display.display`). A saved notebook shows only the last drawn slice, and only where
    widget state is rendered, so pair it with static figures.

    Args:
        scan: An axis-aligned scan.
        view: "axial", "coronal" or "sagittal".
        window: HU window selected first, a name from `WINDOWS`.
        nodules: Nodule table, as for `show_slice`.
        start_index: Slice shown first; None picks the slice of the scan's first nodule, or the
            middle slice.

    Returns:
        An `ipywidgets.interactive` widget. In a run by the tutorial runner (`is_batch_run()`),
        the first slice is drawn as a static figure instead and None is returned, because nbclient
        can wait forever on a cell that displays an interactive widget.
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from luna_utils.notebook import is_batch_run

    n_slices = scan.shape_zyx[overlays.get_view(view).slice_axis]
    centers, _ = nodule_arrays(nodules, scan.seriesuid)
    if start_index is not None:
        start = overlays.check_slice_index(scan, view, start_index)
    elif len(centers):
        start = int(np.clip(overlays.slice_index_of(scan, view, centers[0]), 0, n_slices - 1))
    else:
        start = n_slices // 2

    def draw(index: int, hu_window: str) -> None:
        show_slice(scan, view, index, window=hu_window, nodules=nodules)
        plt.show()

    if is_batch_run():
        logger.info("Batch run: showing slice %d as a static figure instead of the slice browser.", start)
        show_slice(scan, view, start, window=window, nodules=nodules)
        return None

    return widgets.interactive(
        draw,
        index=widgets.IntSlider(value=start, min=0, max=n_slices - 1, description="slice", continuous_update=False),
        hu_window=widgets.Dropdown(options=list(WINDOWS), value=window, description="window"),
    )


def surface_mesh(
    scan: CtScan, volume: NDArray | None = None, level: float = 300.0, resolution_mm: float = 3.0
) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """Extract an iso-surface with marching cubes, with vertices in world millimetres.

    The volume is first subsampled to about `resolution_mm` per voxel along each axis (every
    step-th voxel, step = round(resolution_mm / spacing), at least 1), which keeps the mesh small
    enough to draw.

    Args:
        scan: The scan whose geometry places the surface.
        volume: A (z, y, x) array of the scan's shape, such as a lung mask; None uses the HU array.
        level: Iso-value: 300 HU gives bone on the HU array, 0.5 the border of a 0/1 mask.
        resolution_mm: Approximate voxel size after subsampling, mm.

    Returns:
        (vertices_xyz_mm, faces): vertices (V, 3) in world LPS (x, y, z) mm, faces (F, 3) as
        vertex indices.

    Raises:
        LunaError: If the volume's shape differs from the scan's, or the level is outside its range.
    """
    from skimage.measure import marching_cubes

    volume = scan.array if volume is None else np.asarray(volume)
    if volume.shape != scan.shape_zyx:
        raise LunaError(f"The volume has shape {volume.shape}, but the scan has {scan.shape_zyx}; pass a volume on the scan's grid.")
    if not resolution_mm > 0:
        raise LunaError(f"resolution_mm must be a positive number of mm; got {resolution_mm}.")
    spacing_zyx = np.asarray(scan.spacing_xyz_mm, dtype=np.float64)[::-1]
    steps_zyx = np.maximum(1, np.round(resolution_mm / spacing_zyx)).astype(int)
    reduced = volume[:: steps_zyx[0], :: steps_zyx[1], :: steps_zyx[2]].astype(np.float32)
    if not reduced.min() < level < reduced.max():
        raise LunaError(
            f"Level {level} lies outside the volume's values {reduced.min():g} to {reduced.max():g}; "
            "no surface crosses it. Pick a level between them."
        )

    vertices_reduced, faces, _, _ = marching_cubes(reduced, level=level)
    # Vertices come back as continuous (z, y, x) indices of the subsampled grid.
    vertices_xyz_mm = scan.voxel_to_world(vertices_reduced * steps_zyx)
    return vertices_xyz_mm, faces


def plot_surface(
    vertices_xyz_mm: NDArray, faces: NDArray, ax=None, *, color: str = "#d9c7a7", elevation: float = 10,
    azimuth: float = -80,
):
    """Draw a triangle mesh in 3-D with equal scale on all three world axes (mm).

    Returns:
        (figure, ax): the figure and its `Axes3D`.
    """
    import matplotlib.pyplot as plt
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    if len(faces) == 0:
        raise GeometryError("The mesh has no faces to draw.")
    if ax is None:
        figure = plt.figure(figsize=(6, 6))
        ax = figure.add_subplot(projection="3d")
    else:
        figure = ax.figure

    mesh = Poly3DCollection(vertices_xyz_mm[faces], facecolors=color, linewidths=0, shade=True)
    ax.add_collection3d(mesh)
    low, high = vertices_xyz_mm.min(axis=0), vertices_xyz_mm.max(axis=0)
    for setter, a, b in zip((ax.set_xlim, ax.set_ylim, ax.set_zlim), low, high):
        setter(a, b)
    ax.set_box_aspect(high - low)
    ax.set_xlabel("x (mm)")
    ax.set_ylabel("y (mm)")
    ax.set_zlabel("z (mm)")
    ax.view_init(elev=elevation, azim=azimuth)
    return figure, ax
