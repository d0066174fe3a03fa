"""Tests for the real LUNA16 crops shipped in data/real/ct_crops/."""

import numpy as np
import pytest

from luna_utils import real_crops


def test_real_crops_load_with_world_geometry():
    crops = real_crops.load_real_crops()

    assert len(crops) == 6
    assert sum(bool(crop.info["is_nodule"]) for crop in crops) == 4
    for crop in crops:
        center_xyz_mm = crop.info[["coordX", "coordY", "coordZ"]].to_numpy(dtype=float)
        assert crop.scan.array.shape == (32, 48, 48)
        assert crop.scan.array.dtype == np.float32
        assert crop.scan.array.min() >= -1000
        assert crop.scan.array.max() <= 1000
        # The annotated centre lands within one voxel of the crop's centre voxel (16, 24, 24).
        np.testing.assert_allclose(crop.scan.world_to_voxel(center_xyz_mm), [16, 24, 24], atol=1.0)


def test_real_crop_nodule_tables():
    crops = real_crops.load_real_crops()
    nodule = next(crop for crop in crops if crop.info["is_nodule"])
    other = next(crop for crop in crops if not crop.info["is_nodule"])

    assert len(nodule.nodules) == 1
    assert nodule.nodules["diameter_mm"].iloc[0] == pytest.approx(nodule.info["diameter_mm"])
    assert len(other.nodules) == 0
    assert list(other.nodules.columns) == ["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"]
