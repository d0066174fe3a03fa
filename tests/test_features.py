"""Tests for luna_utils.features: patch features on known shapes and the baseline pipeline."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from luna_utils.errors import LunaError
from luna_utils.features import (
    FEATURE_NAMES,
    central_crop,
    feature_table,
    make_baseline,
    patch_features,
)

SIZE = 37
CENTRE = SIZE // 2
LUNG_HU = -850
TISSUE_HU = 40


def grid():
    return np.ogrid[:SIZE, :SIZE, :SIZE]


def lung_patch():
    return np.full((SIZE, SIZE, SIZE), LUNG_HU, dtype=np.int16)


def sphere_patch(radius=4.0, centre=(CENTRE, CENTRE, CENTRE)):
    z, y, x = grid()
    patch = lung_patch()
    inside = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= radius**2
    patch[inside] = TISSUE_HU
    return patch


def tube_patch(radius=2.0):
    """A vessel along z through the centre."""
    z, y, x = grid()
    patch = lung_patch()
    inside = np.broadcast_to((y - CENTRE) ** 2 + (x - CENTRE) ** 2 <= radius**2, patch.shape)
    patch[inside] = TISSUE_HU
    return patch


def wall_patch():
    """Chest wall filling the half-space x >= centre."""
    patch = lung_patch()
    patch[:, :, CENTRE:] = TISSUE_HU
    return patch


def test_central_crop_keeps_centre_voxel():
    patch = lung_patch()
    patch[CENTRE, CENTRE, CENTRE] = 500

    crop = central_crop(patch, 32)

    assert crop.shape == (32, 32, 32)
    assert np.unravel_index(np.argmax(crop), crop.shape) == (16, 16, 16)


def test_central_crop_odd_size():
    patch = lung_patch()
    patch[CENTRE, CENTRE, CENTRE] = 500

    crop = central_crop(patch, 5)

    assert np.unravel_index(np.argmax(crop), crop.shape) == (2, 2, 2)


@pytest.mark.parametrize("shape", [(37, 37), (37, 37, 30), (20, 20, 20)])
def test_central_crop_rejects_bad_shapes(shape):
    with pytest.raises(LunaError, match="cubic patch"):
        central_crop(np.zeros(shape), 32)


def test_features_of_sphere():
    features = patch_features(sphere_patch(radius=4.0))

    assert list(features) == list(FEATURE_NAMES)
    assert features["component_found"] == 1.0
    # A voxelised ball of radius 4 has 257 voxels (4/3 pi 4^3 = 268 for the continuous ball).
    assert features["component_volume_mm3"] == 257.0
    assert features["component_diameter_mm"] == pytest.approx(7.9, abs=0.1)
    assert features["component_elongation"] == pytest.approx(1.0, abs=0.01)
    assert features["component_touches_border"] == 0.0
    assert features["component_centre_offset_mm"] == pytest.approx(0.0, abs=1e-9)
    assert features["core_mean_hu"] == TISSUE_HU
    assert features["core_max_hu"] == TISSUE_HU
    assert features["opened_volume_mm3"] > 100


def test_features_of_vessel_and_wall():
    vessel = patch_features(tube_patch())
    wall = patch_features(wall_patch())

    assert vessel["component_elongation"] > 5
    assert vessel["component_touches_border"] == 1.0
    assert wall["component_touches_border"] == 1.0
    assert wall["component_volume_mm3"] == 32 * 32 * 16
    assert wall["component_extent"] == 1.0


def test_features_of_empty_lung():
    features = patch_features(lung_patch())

    assert features["component_found"] == 0.0
    assert features["component_volume_mm3"] == 0.0
    assert features["inner_tissue_fraction"] == 0.0
    assert features["inner_std_hu"] == 0.0
    assert features["gradient_inner_mean"] == pytest.approx(0.0, abs=1e-9)
    assert features["glcm_contrast"] == 0.0
    assert features["glcm_energy"] == pytest.approx(1.0)


def test_component_found_near_centre():
    # The centre voxel is air; a small blob 2.5 mm away along x still counts as the central one.
    z, y, x = grid()
    patch = lung_patch()
    blob = (z - CENTRE) ** 2 + (y - CENTRE) ** 2 + (x - CENTRE - 3) ** 2 <= 1
    patch[blob] = TISSUE_HU

    features = patch_features(patch)

    assert features["component_found"] == 1.0
    assert features["component_volume_mm3"] == 7.0
    assert features["component_centre_offset_mm"] == pytest.approx(3.0)


def test_component_beyond_search_radius_is_ignored():
    patch = sphere_patch(radius=1.0, centre=(CENTRE, CENTRE, CENTRE + 6))

    features = patch_features(patch)

    assert features["component_found"] == 0.0


def test_single_voxel_component():
    patch = lung_patch()
    patch[CENTRE, CENTRE, CENTRE] = TISSUE_HU

    features = patch_features(patch)

    assert features["component_volume_mm3"] == 1.0
    assert features["component_elongation"] == 1.0
    assert features["opened_volume_mm3"] == 0.0
    assert all(np.isfinite(list(features.values())))


def test_feature_table_rows_and_columns():
    patches = np.stack([sphere_patch(), tube_patch(), lung_patch()])

    table = feature_table(patches)

    assert table.shape == (3, len(FEATURE_NAMES))
    assert list(table.columns) == list(FEATURE_NAMES)
    assert table["component_found"].tolist() == [1.0, 1.0, 0.0]


def test_feature_table_empty():
    table = feature_table(np.zeros((0, SIZE, SIZE, SIZE), dtype=np.int16))

    assert table.shape == (0, len(FEATURE_NAMES))


def make_blob_or_vessel_set(n, seed):
    """Nodules (spheres) against vessels (tubes) with noise, 1 nodule per 5 patches."""
    rng = np.random.default_rng(seed)
    patches, labels = [], []
    for i in range(n):
        is_nodule = i % 5 == 0
        patch = sphere_patch(rng.uniform(2.5, 5)) if is_nodule else tube_patch(rng.uniform(1, 2.5))
        noise = rng.normal(0, 40, patch.shape)
        patches.append((patch + noise).astype(np.int16))
        labels.append(int(is_nodule))
    return feature_table(np.stack(patches)), np.array(labels)


@pytest.mark.parametrize("kind", ["gradient_boosting", "random_forest", "logistic"])
def test_baseline_separates_blobs_from_vessels(kind):
    train_x, train_y = make_blob_or_vessel_set(40, seed=1)
    test_x, test_y = make_blob_or_vessel_set(20, seed=2)

    model = make_baseline(kind, seed=0).fit(train_x, train_y)
    scores = model.predict_proba(test_x)[:, 1]

    assert roc_auc_score(test_y, scores) > 0.95
    assert list(model.named_steps) == ["scale", "classify"]


def test_baseline_is_deterministic():
    train_x, train_y = make_blob_or_vessel_set(30, seed=3)

    first = make_baseline("random_forest", seed=7).fit(train_x, train_y).predict_proba(train_x)
    second = make_baseline("random_forest", seed=7).fit(train_x, train_y).predict_proba(train_x)

    np.testing.assert_array_equal(first, second)


def test_baseline_weights_classes():
    assert make_baseline("gradient_boosting").named_steps["classify"].class_weight == "balanced"
    assert make_baseline("logistic").named_steps["classify"].class_weight == "balanced"


def test_baseline_rejects_unknown_kind():
    with pytest.raises(LunaError, match="svm"):
        make_baseline("svm")
