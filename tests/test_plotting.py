"""Tests for the view geometry, HU windows and figures, checked by coordinates on rendered pixels."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from luna_utils import overlays, plotting
from luna_utils.errors import GeometryError, LunaError
from luna_utils.mhd import CtScan

SPACING_XYZ_MM = (0.7, 0.8, 2.5)
ORIGIN_XYZ_MM = (10.0, 20.0, -300.0)
FLIPPED = np.diag([-1.0, -1.0, 1.0])

# A bright voxel away from the centre, so a mirrored placement lands far from the right one.
BRIGHT_ZYX = (4, 5, 3)


def _scan(direction=np.eye(3), shape_zyx=(8, 20, 30)) -> CtScan:
    array = np.full(shape_zyx, -1000, dtype=np.int16)
    array[BRIGHT_ZYX] = 1000
    return CtScan(array, SPACING_XYZ_MM, ORIGIN_XYZ_MM, np.asarray(direction, dtype=float), "1.2.3")


def _nodule_table(center_xyz_mm, diameter_mm, seriesuid="1.2.3"):
    return pd.DataFrame(
        {
            "seriesuid": [seriesuid],
            "coordX": [center_xyz_mm[0]],
            "coordY": [center_xyz_mm[1]],
            "coordZ": [center_xyz_mm[2]],
            "diameter_mm": [diameter_mm],
        }
    )


def _bright_pixel_centre(ax) -> tuple[float, float]:
    """Draw the figure and return the display position (pixels from the bottom left) of the white
    pixels inside an axes. Transform data coordinates only after this, once the aspect is applied."""
    figure = ax.figure
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[:, :, :3]
    height = pixels.shape[0]

    # Stay a few pixels inside the axes frame, away from the white figure background.
    box = ax.bbox
    left, right = int(box.x0) + 3, int(box.x1) - 3
    top, bottom = height - int(box.y1) + 3, height - int(box.y0) - 3
    rows, columns = np.nonzero(np.all(pixels[top:bottom, left:right] > 240, axis=2))
    assert rows.size > 0, "no white pixel found inside the axes"
    return columns.mean() + left + 0.5, height - (rows.mean() + top + 0.5)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_window_limits_of_presets():
    assert plotting.window_limits("lung") == (-1350, 150)
    assert plotting.window_limits("mediastinum") == (-160, 240)
    assert plotting.window_limits("bone") == (-500, 1300)
    assert plotting.window_limits((50, 350)) == (-125, 225)
    assert plotting.window_limits(None) is None


def test_window_limits_reject_bad_input():
    with pytest.raises(LunaError, match="Unknown HU window 'soft'"):
        plotting.window_limits("soft")
    with pytest.raises(LunaError, match="positive width"):
        plotting.window_limits((40, 0))


def test_plane_geometry_normal_scan():
    plane = overlays.plane_geometry(_scan(), "axial")

    # Columns run along x from 10 - 0.35 to 10 + 29.5 * 0.7; rows along y from 20 - 0.4.
    assert plane.extent == pytest.approx((9.65, 30.65, 35.6, 19.6))
    assert plane.xlim == pytest.approx((9.65, 30.65))
    assert plane.ylim == pytest.approx((35.6, 19.6))
    assert plane.n_slices == 8


def test_plane_geometry_flipped_scan_swaps_extent_not_limits():
    plane = overlays.plane_geometry(_scan(FLIPPED), "axial")

    assert plane.extent == pytest.approx((10.35, -10.65, 4.4, 20.4))
    assert plane.xlim == pytest.approx((-10.65, 10.35))
    assert plane.ylim == pytest.approx((20.4, 4.4))


def test_plane_geometry_coronal_and_sagittal_point_up():
    coronal = overlays.plane_geometry(_scan(), "coronal")
    sagittal = overlays.plane_geometry(_scan(FLIPPED), "sagittal")

    # z from -300 - 1.25 to -300 + 7.5 * 2.5, drawn increasing upwards.
    assert coronal.ylim == pytest.approx((-301.25, -281.25))
    assert coronal.xlabel.startswith("x (mm)")
    assert sagittal.ylim == pytest.approx((-301.25, -281.25))
    assert sagittal.xlim == pytest.approx((4.4, 20.4))
    assert sagittal.xlabel.startswith("y (mm)")


def test_plane_geometry_rejects_oblique_scan():
    angle = np.deg2rad(10)
    oblique = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    with pytest.raises(GeometryError, match="axis-aligned"):
        overlays.plane_geometry(_scan(oblique), "axial")
    with pytest.raises(GeometryError, match="axis-aligned"):
        overlays.overlay_circles(_scan(oblique), "axial", 0, [[0, 0, 0]], [5])


def test_unknown_view_is_rejected():
    with pytest.raises(GeometryError, match="Unknown view 'transverse'"):
        overlays.get_view("transverse")


@pytest.mark.parametrize("direction", [np.eye(3), FLIPPED], ids=["normal", "flipped"])
def test_overlay_circle_on_nodule_slice(direction):
    scan = _scan(direction)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    circles = overlays.overlay_circles(scan, "axial", 4, [center_xyz_mm], [6.0])

    assert len(circles) == 1
    circle = circles[0]
    assert circle.center_h_mm == pytest.approx(center_xyz_mm[0])
    assert circle.center_v_mm == pytest.approx(center_xyz_mm[1])
    assert circle.radius_mm == pytest.approx(3.0)
    assert circle.distance_mm == 0.0
    assert circle.center_row == pytest.approx(5.0)
    assert circle.center_column == pytest.approx(3.0)
    assert circle.nodule_slice == 4


def test_overlay_circle_shrinks_off_centre():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    # Slices 2.5 mm apart cut a 4 mm radius at d = 2.5 mm; slice 6 (d = 5 mm) misses it.
    one_off = overlays.overlay_circles(scan, "axial", 5, [center_xyz_mm], [8.0])
    two_off = overlays.overlay_circles(scan, "axial", 6, [center_xyz_mm], [8.0])

    assert one_off[0].radius_mm == pytest.approx(np.sqrt(16 - 2.5**2))
    assert one_off[0].distance_mm == pytest.approx(2.5)
    assert two_off == []


def test_overlay_circle_at_exact_radius_is_not_drawn():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    assert overlays.overlay_circles(scan, "axial", 5, [center_xyz_mm], [5.0]) == []


def test_overlay_circles_on_other_views():
    scan = _scan(FLIPPED)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    coronal = overlays.overlay_circles(scan, "coronal", 5, [center_xyz_mm], [4.0])
    sagittal = overlays.overlay_circles(scan, "sagittal", 3, [center_xyz_mm], [4.0])

    assert (coronal[0].center_h_mm, coronal[0].center_v_mm) == pytest.approx((center_xyz_mm[0], center_xyz_mm[2]))
    assert (coronal[0].center_row, coronal[0].center_column) == pytest.approx((4.0, 3.0))
    assert (sagittal[0].center_h_mm, sagittal[0].center_v_mm) == pytest.approx((center_xyz_mm[1], center_xyz_mm[2]))
    assert (sagittal[0].center_row, sagittal[0].center_column) == pytest.approx((4.0, 5.0))
    # One coronal row is 0.8 mm: the neighbouring row cuts the 2 mm radius at sqrt(4 - 0.64).
    assert overlays.overlay_circles(scan, "coronal", 6, [center_xyz_mm], [4.0])[0].radius_mm == pytest.approx(
        np.sqrt(4 - 0.64)
    )


def test_overlay_circles_edge_cases():
    scan = _scan()
    outside_xyz_mm = scan.voxel_to_world([4, 5, 100])

    assert overlays.overlay_circles(scan, "axial", 4, np.zeros((0, 3)), []) == []
    # A nodule outside the volume in-plane still cuts the plane; its pixel position is outside.
    circle = overlays.overlay_circles(scan, "axial", 4, [outside_xyz_mm], [3.0])[0]
    assert circle.center_column == pytest.approx(100.0)
    # LUNA16's "unknown" diameter -1 counts as 10 mm.
    assert overlays.overlay_circles(scan, "axial", 4, [scan.voxel_to_world(BRIGHT_ZYX)], [-1])[0].radius_mm == 5.0
    with pytest.raises(GeometryError, match="3 nodule centres but 1 diameters"):
        overlays.overlay_circles(scan, "axial", 4, np.zeros((3, 3)), [1.0])
    with pytest.raises(GeometryError, match="Slice index 8 is outside"):
        overlays.overlay_circles(scan, "axial", 8, [outside_xyz_mm], [3.0])
    with pytest.raises(GeometryError, match="finite"):
        overlays.overlay_circles(scan, "axial", 4, [[np.nan, 0, 0]], [3.0])


def test_slab_indices_centre_and_borders():
    scan = _scan()

    assert overlays.slab_indices(scan, "axial", 4, 10.0) == (2, 6)
    assert overlays.slab_indices(scan, "axial", 4, 0.0) == (4, 4)
    assert overlays.slab_indices(scan, "axial", 0, 10.0) == (0, 2)
    assert overlays.slab_indices(scan, "axial", 7, 10.0) == (5, 7)
    # Along x (0.7 mm), a 2.8 mm slab contains the slices within 1.4 mm: 2 on each side.
    assert overlays.slab_indices(scan, "sagittal", 10, 2.8) == (8, 12)
    with pytest.raises(GeometryError, match="thickness"):
        overlays.slab_indices(scan, "axial", 4, -1.0)


def test_max_intensity_projection_values():
    array = np.zeros((6, 3, 4), dtype=np.int16)
    array[1, 0, 0] = 50
    array[4, 0, 0] = 70
    array[5, 2, 3] = 90
    scan = CtScan(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), "1.2.3")

    image, (first, last) = overlays.max_intensity_projection(scan, "axial", 3, 2.0)

    assert (first, last) == (2, 4)
    assert image.shape == (3, 4)
    assert image[0, 0] == 70
    assert image[2, 3] == 0
    coronal, _ = overlays.max_intensity_projection(scan, "coronal", 1, 10.0)
    assert coronal.shape == (6, 4)
    assert coronal[5, 3] == 90


def test_overlay_on_slab_uses_full_radius_inside():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world([4.4, 5, 3])

    circles = overlays.overlay_circles(scan, "axial", 3, [center_xyz_mm], [4.0], last_index=5)
    beside = overlays.overlay_circles(scan, "axial", 6, [center_xyz_mm], [10.0], last_index=7)

    assert circles[0].radius_mm == pytest.approx(2.0)
    assert circles[0].distance_mm == 0.0
    # The centre lies 1.6 slices (4 mm) before the slab: a 5 mm radius leaves a 3 mm circle.
    assert beside[0].distance_mm == pytest.approx(1.6 * 2.5)
    assert beside[0].radius_mm == pytest.approx(3.0)


@pytest.mark.parametrize("direction", [np.eye(3), FLIPPED], ids=["normal", "flipped"])
def test_show_slice_places_voxel_and_circle_together(direction):
    scan = _scan(direction)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    view = plotting.show_slice(scan, "axial", nodules=_nodule_table(center_xyz_mm, 3.0), center_xyz_mm=center_xyz_mm, colorbar=False)

    assert view.first_slice == view.last_slice == 4
    found = _bright_pixel_centre(view.ax)
    expected = view.ax.transData.transform((center_xyz_mm[0], center_xyz_mm[1]))
    assert found[0] == pytest.approx(expected[0], abs=1.0)
    assert found[1] == pytest.approx(expected[1], abs=1.0)
    patch = view.ax.patches[0]
    assert patch.center == pytest.approx((center_xyz_mm[0], center_xyz_mm[1]))
    assert patch.radius == pytest.approx(1.5)
    # Every scan reads the same way: x increases to the right, y downwards.
    assert view.ax.get_xlim()[0] < view.ax.get_xlim()[1]
    assert view.ax.get_ylim()[0] > view.ax.get_ylim()[1]


@pytest.mark.parametrize("direction", [np.eye(3), FLIPPED], ids=["normal", "flipped"])
def test_show_slice_coronal_voxel_position(direction):
    scan = _scan(direction)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    view = plotting.show_slice(scan, "coronal", center_xyz_mm=center_xyz_mm, colorbar=False)

    assert view.first_slice == 5
    found = _bright_pixel_centre(view.ax)
    expected = view.ax.transData.transform((center_xyz_mm[0], center_xyz_mm[2]))
    assert found == pytest.approx(tuple(expected), abs=1.0)


def test_show_slice_keeps_mm_aspect():
    view = plotting.show_slice(_scan(), "coronal", 5, colorbar=False)
    view.figure.canvas.draw()

    # 8 slices of 2.5 mm (20 mm) against 30 columns of 0.7 mm (21 mm): nearly square on screen.
    box = view.ax.get_window_extent()
    assert box.height / box.width == pytest.approx(20.0 / 21.0, rel=0.02)


def test_show_slice_other_scan_rows():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    view = plotting.show_slice(scan, "axial", 4, nodules=_nodule_table(center_xyz_mm, 3.0, seriesuid="9.9"))

    assert view.circles == []
    assert view.ax.get_title() == "axial, slice 4 (z = -290.0 mm)"
    assert len(view.figure.axes) == 2
    assert view.figure.axes[1].get_ylabel() == "HU"


def test_show_slice_zoom_centres_on_point():
    scan = _scan(FLIPPED)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    view = plotting.show_slice(scan, "axial", center_xyz_mm=center_xyz_mm, zoom_mm=6.0)

    assert view.ax.get_xlim() == pytest.approx((center_xyz_mm[0] - 3, center_xyz_mm[0] + 3))
    assert view.ax.get_ylim() == pytest.approx((center_xyz_mm[1] + 3, center_xyz_mm[1] - 3))
    with pytest.raises(LunaError, match="zoom_mm needs center_xyz_mm"):
        plotting.show_slice(scan, "axial", 4, zoom_mm=6.0)


def test_show_slice_window_sets_grey_scale():
    view = plotting.show_slice(_scan(), "axial", 4, window="mediastinum")

    assert view.image.get_clim() == (-160, 240)


def test_show_views_draws_nodule_in_all_three():
    scan = _scan(FLIPPED)
    center_xyz_mm = scan.voxel_to_world(BRIGHT_ZYX)

    figure, views = plotting.show_views(scan, center_xyz_mm, nodules=_nodule_table(center_xyz_mm, 3.0))

    assert list(views) == ["axial", "coronal", "sagittal"]
    assert [views[name].first_slice for name in views] == [4, 5, 3]
    assert all(len(views[name].circles) == 1 for name in views)
    assert views["sagittal"].circles[0].center_h_mm == pytest.approx(center_xyz_mm[1])


def test_show_mip_covers_slab():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world([5, 5, 3])

    view = plotting.show_mip(scan, "axial", thickness_mm=5.0, center_xyz_mm=center_xyz_mm, colorbar=False)

    assert (view.first_slice, view.last_slice) == (4, 6)
    assert view.image.get_array().max() == 1000
    assert "MIP of slices 4-6" in view.ax.get_title()


def test_show_montage_spreads_slices():
    figure, views = plotting.show_montage(_scan(), n_slices=3, n_columns=2)

    assert [view.first_slice for view in views] == [0, 4, 7]
    assert len(figure.axes) == 5  # 4 panels, one unused, plus the colour bar


def test_browse_slices_starts_on_nodule():
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world([6, 5, 3])

    browser = plotting.browse_slices(scan, nodules=_nodule_table(center_xyz_mm, 3.0))

    slider, menu = browser.children[:2]
    assert slider.value == 6
    assert slider.max == 7
    assert menu.value == "lung"


def test_browse_slices_static_in_batch_run(monkeypatch):
    import matplotlib.pyplot as plt

    from luna_utils.notebook import ENV_BATCH_RUN

    monkeypatch.setenv(ENV_BATCH_RUN, "1")
    scan = _scan()
    center_xyz_mm = scan.voxel_to_world([6, 5, 3])
    plt.close("all")

    browser = plotting.browse_slices(scan, nodules=_nodule_table(center_xyz_mm, 3.0))

    assert browser is None
    assert len(plt.get_fignums()) == 1
    plt.close("all")


@pytest.mark.parametrize("direction", [np.eye(3), FLIPPED], ids=["normal", "flipped"])
def test_surface_mesh_sphere_in_world_mm(direction):
    shape_zyx = (20, 40, 40)
    array = np.zeros(shape_zyx, dtype=np.int16)
    scan = CtScan(array, (1.0, 1.0, 2.0), (50.0, -30.0, 100.0), np.asarray(direction, dtype=float), "1.2.3")
    center_xyz_mm = scan.voxel_to_world([10, 18, 22])
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij"), axis=-1).reshape(-1, 3)
    distances = np.linalg.norm(scan.voxel_to_world(grid) - center_xyz_mm, axis=1).reshape(shape_zyx)
    scan.array[distances <= 8.0] = 1000

    vertices_xyz_mm, faces = plotting.surface_mesh(scan, level=500.0, resolution_mm=1.0)

    radii = np.linalg.norm(vertices_xyz_mm - center_xyz_mm, axis=1)
    assert faces.shape[1] == 3
    assert radii.min() > 6.5
    assert radii.max() < 9.5
    assert vertices_xyz_mm.mean(axis=0) == pytest.approx(center_xyz_mm, abs=0.5)


def test_surface_mesh_rejects_level_outside_values():
    with pytest.raises(LunaError, match="outside the volume's values"):
        plotting.surface_mesh(_scan(), level=5000.0)
    with pytest.raises(LunaError, match="shape"):
        plotting.surface_mesh(_scan(), volume=np.zeros((2, 2, 2)), level=0.5)
    with pytest.raises(LunaError, match="resolution_mm"):
        plotting.surface_mesh(_scan(), level=0.0, resolution_mm=0.0)


def test_surface_mesh_subsamples_to_resolution():
    scan = CtScan(np.zeros((10, 40, 40), dtype=np.int16), (0.5, 0.5, 2.0), (0.0, 0.0, 0.0), np.eye(3), "1.2.3")
    scan.array[2:8, 8:32, 8:32] = 1000

    vertices_xyz_mm, _ = plotting.surface_mesh(scan, level=500.0, resolution_mm=2.0)

    # In-plane every 4th voxel is kept (x = 0, 2, 4, ... mm): the block edge falls halfway between
    # the kept voxels at x = 2 mm (outside) and 4 mm (inside), at 3 mm instead of the full-grid 3.75 mm.
    assert vertices_xyz_mm[:, 0].min() == pytest.approx(3.0)
    assert vertices_xyz_mm[:, 0].max() == pytest.approx(15.0)
    # Along z (2 mm slices) every slice is kept: edges halfway between slices 1|2 and 7|8.
    assert vertices_xyz_mm[:, 2].min() == pytest.approx(3.0)
    assert vertices_xyz_mm[:, 2].max() == pytest.approx(15.0)


def test_plot_surface_uses_mm_box():
    vertices_xyz_mm = np.array([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 20.0, 0.0], [0.0, 0.0, 40.0]])
    faces = np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]])

    figure, ax = plotting.plot_surface(vertices_xyz_mm, faces)

    assert ax.get_xlim() == pytest.approx((0, 10))
    assert ax.get_zlim() == pytest.approx((0, 40))
    assert ax.get_box_aspect() == pytest.approx(np.array([10, 20, 40]) / np.linalg.norm([10, 20, 40]) * np.linalg.norm(ax.get_box_aspect()))
    assert ax.get_zlabel() == "z (mm)"
    with pytest.raises(GeometryError, match="no faces"):
        plotting.plot_surface(vertices_xyz_mm, np.zeros((0, 3), dtype=int))


def test_browse_slices_start_index():
    browser = plotting.browse_slices(_scan(), view="coronal", window="bone", start_index=3)

    slider, menu = browser.children[:2]
    assert (slider.value, slider.max, menu.value) == (3, 19, "bone")
    with pytest.raises(GeometryError, match="outside"):
        plotting.browse_slices(_scan(), start_index=8)


def test_show_gallery_zooms_each_panel():
    normal, flipped = _scan(), _scan(FLIPPED)
    panels = [
        plotting.GalleryPanel(scan, scan.voxel_to_world(BRIGHT_ZYX), _nodule_table(scan.voxel_to_world(BRIGHT_ZYX), 2.0), name)
        for scan, name in ((normal, "normal"), (flipped, "flipped"))
    ]

    figure, views = plotting.show_gallery(panels, zoom_mm=8.0)

    for panel, view in zip(panels, views):
        assert view.first_slice == 4
        assert len(view.circles) == 1
        assert view.ax.get_xlim() == pytest.approx((panel.center_xyz_mm[0] - 4, panel.center_xyz_mm[0] + 4))
        assert view.ax.get_title() == panel.title
    with pytest.raises(LunaError, match="at least one panel"):
        plotting.show_gallery([])


def test_describe_window_names_limits():
    assert plotting.describe_window("lung") == "lung window -1350 to 150 HU"
    assert plotting.describe_window((40, 400)) == "window -160 to 240 HU"
    assert plotting.describe_window(None) == "no window (full range)"


@pytest.mark.parametrize("direction", [np.eye(3), FLIPPED], ids=["normal", "flipped"])
def test_surrounding_air_fraction_isolated_and_attached(direction):
    array = np.full((20, 40, 40), -900, dtype=np.int16)
    scan = CtScan(array, (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), np.asarray(direction, dtype=float), "1.2.3")
    center_xyz_mm = scan.voxel_to_world([10, 20, 20])

    isolated = overlays.surrounding_air_fraction(scan, center_xyz_mm, 6.0)
    # A wall of soft tissue filling every column from x index 20 on covers half of the shell.
    scan.array[:, :, 20:] = 40
    attached = overlays.surrounding_air_fraction(scan, center_xyz_mm, 6.0)

    assert isolated == 1.0
    assert attached == pytest.approx(0.5, abs=0.08)


def test_surrounding_air_fraction_outside_scan_is_nan():
    scan = _scan()

    assert np.isnan(overlays.surrounding_air_fraction(scan, scan.voxel_to_world([4, 5, 300]), 4.0))
