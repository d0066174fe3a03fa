"""Tests for luna_utils.lungs: the threshold segmentation, official masks and Dice."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from luna_utils import lungs
from luna_utils.dataset import default_sample_dir, is_sample, list_scans
from luna_utils.errors import GeometryError
from luna_utils.mhd import CtScan, read_scan
from luna_utils.resample import ImageGrid, resample_scan

SPACING_XYZ_MM = (1.5, 1.5, 2.0)
SHAPE_ZYX = (60, 96, 96)


def _ball(shape, center_zyx, radii_zyx):
    grid = np.ogrid[: shape[0], : shape[1], : shape[2]]
    total = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center_zyx, radii_zyx))
    return total <= 1.0


def _tube(shape, start_zyx, end_zyx, radius):
    """Voxels within `radius` voxels of the segment from start to end (z, y, x)."""
    grid = np.indices(shape).reshape(3, -1).T.astype(float)
    start = np.asarray(start_zyx, float)
    step = np.asarray(end_zyx, float) - start
    t = np.clip((grid - start) @ step / (step @ step), 0.0, 1.0)
    closest = start + t[:, None] * step
    return (np.linalg.norm(grid - closest, axis=1) <= radius).reshape(shape)


def make_chest_phantom():
    """Build a small chest: body, two lungs, trachea and bronchi, vessels, nodules, gas, table.

    Returns:
        (array int16 HU (z, y, x), truth dict of bool masks: lungs, trachea, gas,
        juxta_nodule_center_zyx, inner_nodule_center_zyx).
    """
    shape = SHAPE_ZYX
    array = np.full(shape, -1000, dtype=np.int16)

    # Table below the patient with a hollow core, and the body.
    array[:, 88:93, :] = 200
    array[:, 90, 5:90] = -1000
    body = _ball(shape, (30, 46, 48), (1000, 38, 44))
    array[body] = 40

    left = _ball(shape, (30, 48, 24), (26, 24, 14))
    right = _ball(shape, (30, 48, 72), (26, 24, 14))
    lung_truth = left | right
    array[lung_truth] = -850

    # Vessels and a nodule inside the left lung, a juxta-pleural nodule on its lateral surface.
    array[_tube(shape, (10, 48, 24), (50, 48, 24), 1.2) & left] = 40
    array[_tube(shape, (30, 30, 72), (30, 66, 72), 1.2) & right] = 40
    inner_center = (32, 40, 20)
    array[_ball(shape, inner_center, (3, 3, 3))] = 40
    juxta_center = (30, 48, 12)
    juxta_nodule = _ball(shape, juxta_center, (4, 4, 4))
    array[juxta_nodule & body] = 40

    # Trachea from the top slice to the carina, then one main bronchus into each lung.
    trachea = _tube(shape, (59, 40, 48), (46, 40, 48), 5)
    bronchi = _tube(shape, (46, 40, 48), (38, 44, 30), 3) | _tube(
        shape, (46, 40, 48), (38, 44, 66), 3
    )
    array[trachea | bronchi] = -1000

    # Gas in the stomach, below the left lung.
    gas = _ball(shape, (2, 60, 30), (2, 5, 6))
    array[gas] = -1000

    truth = {
        "lungs": lung_truth,
        "trachea": trachea,
        "gas": gas,
        "juxta_nodule": juxta_nodule,
        "juxta_nodule_center_zyx": juxta_center,
        "inner_nodule_center_zyx": inner_center,
    }
    return array, truth


@pytest.fixture(scope="module")
def phantom():
    return make_chest_phantom()


@pytest.fixture(scope="module")
def phantom_mask(phantom):
    array, _ = phantom
    return lungs.segment_lungs(array, SPACING_XYZ_MM)


def test_segment_lungs_dice_on_phantom(phantom, phantom_mask):
    _, truth = phantom
    assert phantom_mask.dtype == np.uint8
    assert set(np.unique(phantom_mask)) <= {0, 1}
    assert lungs.dice(phantom_mask, truth["lungs"]) >= 0.9


def test_segment_lungs_removes_trachea(phantom, phantom_mask):
    _, truth = phantom
    # The part of the trachea above the lungs must be out of the mask.
    upper_trachea = truth["trachea"].copy()
    upper_trachea[:57] = False
    assert upper_trachea.any()
    assert not phantom_mask[upper_trachea].any()


def test_segment_lungs_drops_gas_and_outside_air(phantom, phantom_mask):
    _, truth = phantom
    assert not phantom_mask[truth["gas"]].any()
    assert phantom_mask[:, 0, :].sum() == 0
    assert phantom_mask[:, 90, :].sum() == 0


def test_segment_lungs_keeps_nodules(phantom, phantom_mask):
    _, truth = phantom
    assert phantom_mask[truth["inner_nodule_center_zyx"]] == 1
    assert phantom_mask[truth["juxta_nodule_center_zyx"]] == 1
    nodule_in_lung = truth["juxta_nodule"] & truth["lungs"]
    assert phantom_mask[nodule_in_lung].mean() >= 0.75


def test_segment_lungs_margin_covers_juxta_nodule(phantom):
    array, truth = phantom
    # A 10 mm ball dips 2 mm into the 12 mm wide dent of the nodule, so a 2 mm margin restores
    # every voxel of the nodule inside the lung outline but the outline's outermost one.
    mask = lungs.segment_lungs(array, SPACING_XYZ_MM, margin_mm=2.0)
    nodule_in_lung = truth["juxta_nodule"] & truth["lungs"]
    assert (nodule_in_lung & (mask == 0)).sum() <= 1
    assert lungs.dice(mask, truth["lungs"]) >= 0.9


def test_segment_lungs_without_closing_loses_juxta_nodule(phantom):
    array, truth = phantom
    mask = lungs.segment_lungs(array, SPACING_XYZ_MM, closing_mm=0.0, margin_mm=0.0)
    assert mask[truth["juxta_nodule_center_zyx"]] == 0
    assert mask[truth["inner_nodule_center_zyx"]] == 1


def test_segment_lungs_ctscan_flipped_xy_matches(phantom, phantom_mask):
    array, _ = phantom
    scan = CtScan(array, SPACING_XYZ_MM, (10.0, 20.0, -300.0), np.diag([-1.0, -1.0, 1.0]), "flip")
    np.testing.assert_array_equal(lungs.segment_lungs(scan), phantom_mask)


def test_segment_lungs_reversed_z_uses_direction(phantom, phantom_mask):
    array, truth = phantom
    # Same anatomy stored bottom-up: index 0 is now the most superior slice.
    reversed_array = np.ascontiguousarray(array[::-1])
    scan = CtScan(reversed_array, SPACING_XYZ_MM, (0.0, 0.0, 0.0), np.diag([1.0, 1.0, -1.0]), "rev")
    mask = lungs.segment_lungs(scan)
    np.testing.assert_array_equal(mask[::-1], phantom_mask)


def test_trachea_touching_lung_is_removed():
    # The trachea runs along the medial face of the right lung with no wall between them. In those
    # slices lung and trachea form one air component, and only the lumen threshold separates them.
    array = np.full((40, 64, 64), 40, dtype=np.int16)
    array[:, :3, :] = -1000
    array[5:30, 16:48, 8:28] = -850
    array[5:30, 16:48, 38:58] = -850
    trachea = _tube((40, 64, 64), (39, 30, 31), (8, 30, 31), 3)
    array[trachea] = -1000
    lung_truth = array == -850

    with_airways = lungs.segment_lungs(array, (1.0, 1.0, 1.0), closing_mm=0.0, margin_mm=0.0)
    assert not with_airways[trachea].any()
    assert lungs.dice(with_airways, lung_truth) >= 0.97


def test_airway_guard_keeps_lungs_near_midline(caplog):
    # No trachea, and two small dark (emphysematous) lungs close to the midline: the seeds are
    # the lungs themselves.
    array = np.full((20, 48, 48), -1000, dtype=np.int16)
    array[:, 4:44, 3:45] = 40
    array[3:20, 10:30, 8:20] = -980
    array[3:20, 10:30, 28:40] = -980
    with caplog.at_level("WARNING", logger="luna_utils.lungs"):
        mask = lungs.segment_lungs(array, (0.8, 0.8, 2.0), closing_mm=0.0, margin_mm=0.0)
    assert "followed a lung" in caplog.text
    assert lungs.dice(mask, array == -980) == 1.0


def test_superior_is_high_index():
    assert lungs.superior_is_high_index(None)
    assert lungs.superior_is_high_index(np.diag([-1.0, -1.0, 1.0]))
    assert not lungs.superior_is_high_index(np.diag([1.0, 1.0, -1.0]))


def test_find_airways_stops_at_lung():
    # A 10x10 slab of lung with a 2x2 airway above it: tracking stops where they merge.
    inside = np.zeros((6, 12, 12), dtype=bool)
    inside[:3, 1:11, 1:11] = True
    inside[3:, 5:7, 5:7] = True
    airways = lungs.find_airways(inside, (1.0, 1.0, 1.0), superior_is_high=True, max_area_mm2=10)
    assert airways[3:].sum() == 3 * 4
    assert not airways[:3].any()


def test_find_airways_ignores_lateral_seed():
    inside = np.zeros((4, 40, 40), dtype=bool)
    inside[:, 10:13, 2:5] = True
    airways = lungs.find_airways(inside, (1.0, 1.0, 1.0), midline_x=20.0, max_offset_mm=10)
    assert not airways.any()


def test_keep_lung_components_second_threshold():
    mask = np.zeros((10, 10, 30), dtype=bool)
    mask[:, :, 0:10] = True  # 1000 voxels
    mask[:, :, 12:15] = True  # 300 voxels: kept at 0.25
    mask[0, 0, 20] = True  # 1 voxel: never kept
    kept = lungs.keep_lung_components(mask, min_fraction=0.25)
    assert kept.sum() == 1300
    kept_one = lungs.keep_lung_components(mask, min_fraction=0.5)
    assert kept_one.sum() == 1000


def test_keep_lung_components_empty():
    assert not lungs.keep_lung_components(np.zeros((3, 3, 3), dtype=bool)).any()


def test_dilate_mm_uses_spacing():
    mask = np.zeros((21, 21, 21), dtype=bool)
    mask[10, 10, 10] = True
    grown = lungs.dilate_mm(mask, (1.0, 2.0, 0.5), 4.0)
    # 4 mm reaches 4 voxels along x (1 mm), 2 along y (2 mm), 8 along z (0.5 mm).
    assert grown[10, 10, 14]
    assert not grown[10, 10, 15]
    assert grown[10, 12, 10]
    assert not grown[10, 13, 10]
    assert grown[18, 10, 10]
    assert not grown[19, 10, 10]


def test_erode_mm_keeps_faces():
    mask = np.zeros((10, 10, 10), dtype=bool)
    mask[:, 2:8, 2:8] = True
    eroded = lungs.erode_mm(mask, (1.0, 1.0, 1.0), 1.0)
    assert eroded[0, 3:7, 3:7].all()
    assert eroded[:, 3:7, 3:7].sum() == 10 * 16
    assert eroded.sum() == 10 * 16


def test_close_and_dilate_fills_dent():
    mask = np.zeros((30, 30, 30), dtype=bool)
    mask[5:25, 5:25, 5:25] = True
    mask[12:18, 12:18, 5:10] = False  # a dent 6 voxels wide, 5 deep
    closed = lungs.close_and_dilate_mm(mask, (1.0, 1.0, 1.0), closing_mm=5.0, margin_mm=0.0)
    # The dent fills up to its mouth, which lies exactly at the closing radius from free space.
    assert closed[12:18, 12:18, 6:10].all()
    assert closed[mask].all()
    assert not closed[2, 15, 15]
    assert not closed[15, 15, 3]


def test_segment_lungs_empty_volume_returns_zeros(caplog):
    soft_tissue = np.full((8, 16, 16), 40, dtype=np.int16)
    with caplog.at_level("WARNING", logger="luna_utils.lungs"):
        mask = lungs.segment_lungs(soft_tissue, (1.0, 1.0, 1.0))
    assert mask.shape == soft_tissue.shape
    assert not mask.any()
    assert "No lung found" in caplog.text


def test_segment_lungs_array_needs_spacing():
    with pytest.raises(GeometryError, match="spacing_xyz_mm"):
        lungs.segment_lungs(np.zeros((4, 4, 4), dtype=np.int16))


def test_segment_lungs_rejects_2d():
    with pytest.raises(GeometryError, match="3-D"):
        lungs.segment_lungs(np.zeros((4, 4), dtype=np.int16), (1.0, 1.0, 1.0))


def test_dice_values():
    a = np.zeros((4, 4, 4), dtype=np.uint8)
    b = np.zeros((4, 4, 4), dtype=bool)
    assert lungs.dice(a, b) == 1.0
    a[0, :2] = 1
    assert lungs.dice(a, b) == 0.0
    b[0, 0] = True
    assert lungs.dice(a, b) == pytest.approx(2 * 4 / (8 + 4))
    assert lungs.dice(a, a) == 1.0


def test_dice_shape_mismatch():
    with pytest.raises(GeometryError, match="same shape"):
        lungs.dice(np.zeros((2, 2, 2)), np.zeros((2, 2, 3)))


def _write_mask(path: Path, labels: np.ndarray) -> None:
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.7, 0.7, 2.5))
    image.SetOrigin((-100.0, -120.0, -300.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), useCompression=True)


def test_load_official_mask_reads_labels(tmp_path):
    labels = np.zeros((5, 6, 7), dtype=np.uint8)
    labels[1:3, 1:3, 1:3] = 3
    labels[1:3, 1:3, 4:6] = 4
    labels[4, 3, 3] = 5
    _write_mask(tmp_path / "seg-lungs-LUNA16" / "uid1.mhd", labels)

    mask = lungs.load_official_mask(tmp_path, "uid1")
    assert mask is not None
    np.testing.assert_array_equal(mask.array, labels)
    assert mask.spacing_xyz_mm == pytest.approx((0.7, 0.7, 2.5))
    lung_only = lungs.official_lung_mask(mask.array)
    assert lung_only.sum() == 16
    assert lung_only[4, 3, 3] == 0


def test_load_official_mask_missing_returns_none(tmp_path):
    assert lungs.load_official_mask(tmp_path, "no-such-uid") is None


SAMPLE_MISSING = not is_sample(default_sample_dir())


@pytest.mark.slow
@pytest.mark.skipif(SAMPLE_MISSING, reason="the synthetic sample in data/sample/ is not generated yet")
def test_segment_lungs_dice_on_sample():
    root = default_sample_dir()
    scans = list_scans(root)
    scores = []
    for row in scans.head(4).itertuples():
        official = lungs.load_official_mask(root, row.seriesuid)
        if official is None:
            continue
        scan = read_scan(row.mhd_path)
        ours = lungs.segment_lungs(scan)
        scores.append(lungs.dice(ours, lungs.official_lung_mask(official.array)))

        # On the 1 mm grid of the cache, against the official mask resampled onto it.
        resampled = resample_scan(scan, 1.0)
        on_grid = lungs.official_mask_on_grid(root, row.seriesuid, ImageGrid.of_scan(resampled))
        scores.append(lungs.dice(lungs.segment_lungs(resampled), on_grid))
    assert scores, "the sample has no seg-lungs-LUNA16 masks"
    assert min(scores) >= 0.9, pd.Series(scores).round(3).tolist()


def test_segmentation_steps_end_in_final_mask(phantom, phantom_mask):
    array, truth = phantom
    steps = lungs.segmentation_steps(array, SPACING_XYZ_MM)
    assert list(steps) == ["air_inside_body", "airways", "lung_components", "holes_filled", "final"]
    np.testing.assert_array_equal(steps["final"], phantom_mask.astype(bool))
    assert steps["airways"][truth["trachea"]].mean() > 0.9
    assert not steps["lung_components"][truth["trachea"]].any()


def test_official_mask_on_grid_flipped(tmp_path):
    labels = np.zeros((6, 8, 10), dtype=np.uint8)
    labels[2:4, 2:6, 1:4] = 3
    labels[2:4, 2:6, 6:9] = 4
    labels[5, 4, 5] = 5
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    path = tmp_path / "seg-lungs-LUNA16" / "u.mhd"
    path.parent.mkdir()
    sitk.WriteImage(image, str(path), useCompression=True)

    # The same grid: the lung labels come back as 1, the airway as 0.
    grid = ImageGrid((6, 8, 10), (0.0, 0.0, 0.0), (1.0, 1.0, 2.0), np.diag([-1.0, -1.0, 1.0]))
    on_grid = lungs.official_mask_on_grid(tmp_path, "u", grid)
    np.testing.assert_array_equal(on_grid, np.isin(labels, (3, 4)).astype(np.uint8))

    # A 1 mm grid: every voxel centre takes the label of the voxel it falls in.
    fine = ImageGrid((12, 8, 10), (0.0, 0.0, -0.5), (1.0, 1.0, 1.0), np.diag([-1.0, -1.0, 1.0]))
    on_fine = lungs.official_mask_on_grid(tmp_path, "u", fine)
    np.testing.assert_array_equal(on_fine, np.repeat(on_grid, 2, axis=0))
    assert lungs.official_mask_on_grid(tmp_path, "missing", grid) is None
