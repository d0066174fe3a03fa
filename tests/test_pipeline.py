"""Tests for luna_utils.patch_cache and luna_utils.pipeline: stored patches, balancing, augmentation."""

import json

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from luna_utils.errors import DatasetError, LunaError
from luna_utils.patch_cache import (
    cache_paths,
    open_patch_cache,
    subsample_negatives,
    write_patch_cache,
)
from luna_utils.pipeline import (
    TEST_TIME_VIEWS,
    AugmentConfig,
    augment_patch,
    evaluation_dataset,
    max_allowed_shift,
    prepare_patches,
    training_dataset,
)

STORED = 37
CENTRE = STORED // 2
INPUT = 32
INPUT_CENTRE = INPUT // 2
AIR_HU = -1000
BRIGHT_HU = 1000

TURNS_AND_FLIPS = AugmentConfig(max_shift=0, intensity_scale=0.0, intensity_offset=0.0)


def marker_patch(position=(CENTRE, CENTRE, CENTRE), value=BRIGHT_HU):
    patch = np.full((STORED, STORED, STORED), AIR_HU, dtype=np.int16)
    patch[position] = value
    return patch


def argmax_zyx(array):
    array = np.asarray(array)[..., 0]
    return tuple(int(i) for i in np.unravel_index(np.argmax(array), array.shape))


def augmented_positions(patch, config, seeds=range(40)):
    tensor = tf.constant(patch)
    return [argmax_zyx(augment_patch(tensor, tf.constant([0, s], tf.int64), config)) for s in seeds]


# Augmentation


def test_flips_and_rotations_keep_centre_voxel():
    positions = augmented_positions(marker_patch(), TURNS_AND_FLIPS)

    assert set(positions) == {(INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE)}


def test_centre_value_survives_augmentation():
    output = augment_patch(tf.constant(marker_patch()), tf.constant([1, 2], tf.int64), TURNS_AND_FLIPS)

    assert output.shape == (INPUT, INPUT, INPUT, 1)
    assert float(output[INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE, 0]) == 1.0
    assert float(tf.reduce_sum(output)) == 1.0


def test_in_plane_marker_visits_four_places():
    # 7 voxels from the centre along x: flips and turns move it around the axial plane only.
    positions = augmented_positions(marker_patch((CENTRE, CENTRE, CENTRE + 7)), TURNS_AND_FLIPS)

    expected = {
        (INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE + 7),
        (INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE - 7),
        (INPUT_CENTRE, INPUT_CENTRE + 7, INPUT_CENTRE),
        (INPUT_CENTRE, INPUT_CENTRE - 7, INPUT_CENTRE),
    }
    assert set(positions) == expected


def test_z_marker_only_flips():
    positions = augmented_positions(marker_patch((CENTRE + 5, CENTRE, CENTRE)), TURNS_AND_FLIPS)

    assert set(positions) == {
        (INPUT_CENTRE + 5, INPUT_CENTRE, INPUT_CENTRE),
        (INPUT_CENTRE - 5, INPUT_CENTRE, INPUT_CENTRE),
    }


def test_rotation_turns_by_quarter():
    config = AugmentConfig(flips=False, max_shift=0, intensity_scale=0.0, intensity_offset=0.0)
    # A marker at (y, x) offset (0, +7) and one at (+3, 0), with distinct values to tell them apart.
    patch = marker_patch((CENTRE, CENTRE, CENTRE + 7))
    patch[CENTRE, CENTRE + 3, CENTRE] = 0

    for seed in range(12):
        output = augment_patch(tf.constant(patch), tf.constant([0, seed], tf.int64), config).numpy()[..., 0]
        bright = np.argwhere(output == 1.0)[0] - INPUT_CENTRE
        middle = np.argwhere(np.isclose(output, 1000 / 1400))[0] - INPUT_CENTRE
        # A rotation keeps both markers in the axial plane, at right angles and at their distances.
        assert bright[0] == 0
        assert middle[0] == 0
        assert abs(bright[1]) + abs(bright[2]) == 7
        assert abs(middle[1]) + abs(middle[2]) == 3
        assert np.dot(bright[1:], middle[1:]) == 0
        # Counter-clockwise order is kept: no rotation can mirror.
        turn = bright[1] * middle[2] - bright[2] * middle[1]
        assert turn == 0 * 0 - 7 * 3


def test_shifts_move_centre_by_at_most_max_shift():
    config = AugmentConfig(max_shift=2, intensity_scale=0.0, intensity_offset=0.0)

    positions = np.array(augmented_positions(marker_patch(), config, seeds=range(80)))

    assert positions.min() == INPUT_CENTRE - 2
    assert positions.max() == INPUT_CENTRE + 2
    for axis in range(3):
        assert set(positions[:, axis]) == set(range(INPUT_CENTRE - 2, INPUT_CENTRE + 3))


def test_intensity_jitter_bounds():
    config = AugmentConfig(flips=False, rotations=False, max_shift=0, intensity_scale=0.1, intensity_offset=0.05)
    patch = np.full((STORED, STORED, STORED), -300, dtype=np.int16)

    values = []
    for seed in range(30):
        output = augment_patch(tf.constant(patch), tf.constant([0, seed], tf.int64), config).numpy()
        assert np.ptp(output) == 0.0
        values.append(float(output.flat[0]))

    assert min(values) >= 0.5 * 0.9 - 0.05 - 1e-6
    assert max(values) <= 0.5 * 1.1 + 0.05 + 1e-6
    assert np.std(values) > 0.01


def test_augmentation_repeats_with_same_seed():
    rng = np.random.default_rng(0)
    patch = tf.constant(rng.integers(-1000, 400, (STORED, STORED, STORED)).astype(np.int16))
    seed = tf.constant([3, 9], tf.int64)

    first = augment_patch(patch, seed, AugmentConfig()).numpy()
    second = augment_patch(patch, seed, AugmentConfig()).numpy()
    other = augment_patch(patch, tf.constant([3, 10], tf.int64), AugmentConfig()).numpy()

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_augmentation_off_is_centre_crop():
    rng = np.random.default_rng(1)
    patch = rng.integers(-1200, 600, (STORED, STORED, STORED)).astype(np.int16)

    output = augment_patch(tf.constant(patch), tf.constant([0, 0], tf.int64), AugmentConfig.off()).numpy()

    np.testing.assert_allclose(output, prepare_patches(patch), atol=1e-6)


def test_shift_limits():
    assert max_allowed_shift(37, 32) == 2
    assert max_allowed_shift(39, 32) == 3
    assert max_allowed_shift(33, 32) == 0
    with pytest.raises(LunaError, match="at most 2"):
        augment_patch(tf.constant(marker_patch()), tf.constant([0, 0], tf.int64), AugmentConfig(max_shift=3))


def test_even_stored_size_rejected():
    patch = tf.zeros((36, 36, 36), tf.int16)

    with pytest.raises(LunaError, match="odd edge"):
        augment_patch(patch, tf.constant([0, 0], tf.int64), AugmentConfig())


# Training stream


def labelled_patches(n, positive_every, seed=0):
    """Positives carry a bright centre voxel, negatives a dark one, so content reveals the label."""
    labels = np.array([int(i % positive_every == 0) for i in range(n)])
    patches = np.full((n, STORED, STORED, STORED), AIR_HU, dtype=np.int16)
    patches[:, CENTRE, CENTRE, CENTRE] = np.where(labels == 1, BRIGHT_HU, -500)
    return patches, labels


def positive_share(dataset, batches):
    labels = np.concatenate([y.numpy() for _, y in dataset.take(batches)])
    return labels.mean(), len(labels)


@pytest.mark.parametrize("fraction", [0.25, 0.5])
def test_balancing_ratio_over_stream(fraction):
    patches, labels = labelled_patches(400, positive_every=20)

    dataset = training_dataset(patches, labels, batch_size=32, positive_fraction=fraction, seed=0)
    share, count = positive_share(dataset, 100)

    assert count == 3200
    # The binomial standard error for 3,200 draws is below 0.009.
    assert share == pytest.approx(fraction, abs=0.03)


def test_natural_sampling_keeps_imbalance():
    patches, labels = labelled_patches(400, positive_every=20)

    dataset = training_dataset(patches, labels, batch_size=32, positive_fraction=None, seed=0)
    share, _ = positive_share(dataset, 50)

    assert share == pytest.approx(0.05, abs=0.02)


def test_stream_keeps_labels_with_patches():
    patches, labels = labelled_patches(60, positive_every=4)

    dataset = training_dataset(patches, labels, batch_size=16, positive_fraction=0.5, augment=TURNS_AND_FLIPS)
    for inputs, targets in dataset.take(10):
        centre = inputs.numpy()[:, INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE, 0]
        np.testing.assert_array_equal(centre == 1.0, targets.numpy() == 1.0)


def test_stream_repeats_with_seed():
    patches, labels = labelled_patches(60, positive_every=4)

    def first_batches(seed):
        dataset = training_dataset(patches, labels, batch_size=8, positive_fraction=0.3, seed=seed)
        return [(x.numpy(), y.numpy()) for x, y in dataset.take(3)]

    first, second, other = first_batches(5), first_batches(5), first_batches(6)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other))


def test_stream_rejects_single_class():
    patches, _ = labelled_patches(10, positive_every=2)

    with pytest.raises(LunaError, match="0 positive"):
        training_dataset(patches, np.zeros(10), batch_size=4, positive_fraction=0.25)


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5])
def test_stream_rejects_bad_fraction(fraction):
    patches, labels = labelled_patches(10, positive_every=2)

    with pytest.raises(LunaError, match="positive_fraction"):
        training_dataset(patches, labels, batch_size=4, positive_fraction=fraction)


def test_stream_rejects_label_mismatch():
    patches, labels = labelled_patches(10, positive_every=2)

    with pytest.raises(LunaError, match="10 patches but 9 labels"):
        training_dataset(patches, labels[:9], batch_size=4)


# Evaluation stream


def test_evaluation_keeps_order_and_partial_batch():
    n = 11
    patches = np.full((n, STORED, STORED, STORED), AIR_HU, dtype=np.int16)
    patches[:, CENTRE, CENTRE, CENTRE] = np.arange(n) * 100 - 1000
    labels = np.arange(n) % 2

    batches = list(evaluation_dataset(patches, labels, batch_size=4))

    assert [len(y) for _, y in batches] == [4, 4, 3]
    inputs = np.concatenate([x.numpy() for x, _ in batches])
    np.testing.assert_allclose(inputs[:, INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE, 0], np.minimum(np.arange(n) * 100 / 1400, 1.0), atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]), labels)
    np.testing.assert_allclose(inputs, prepare_patches(patches), atol=1e-6)


def test_evaluation_views_turn_about_centre():
    patches = np.stack([marker_patch(), marker_patch((CENTRE, CENTRE, CENTRE + 7))])

    positions = set()
    for view in TEST_TIME_VIEWS:
        inputs = next(iter(evaluation_dataset(patches, batch_size=2, view=view))).numpy()
        assert argmax_zyx(inputs[0]) == (INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE)
        positions.add(argmax_zyx(inputs[1]))

    assert len(TEST_TIME_VIEWS) == 8
    assert positions == {
        (INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE + 7),
        (INPUT_CENTRE, INPUT_CENTRE, INPUT_CENTRE - 7),
        (INPUT_CENTRE, INPUT_CENTRE + 7, INPUT_CENTRE),
        (INPUT_CENTRE, INPUT_CENTRE - 7, INPUT_CENTRE),
    }


def test_evaluation_view_flips_z():
    patches = marker_patch((CENTRE + 5, CENTRE, CENTRE))[np.newaxis]

    flipped = next(iter(evaluation_dataset(patches, view=(True, 1)))).numpy()

    assert argmax_zyx(flipped[0]) == (INPUT_CENTRE - 5, INPUT_CENTRE, INPUT_CENTRE)


def test_evaluation_of_no_patches():
    patches = np.zeros((0, STORED, STORED, STORED), dtype=np.int16)

    assert list(evaluation_dataset(patches, batch_size=4)) == []


# Patch cache


def make_volume_extractor(volume, calls):
    """Cut patches from one in-memory volume; candidate coordX, coordY, coordZ are voxel x, y, z."""
    padded = np.pad(volume, STORED, constant_values=AIR_HU)

    def extract(seriesuid, rows, size):
        calls.append(seriesuid)
        centres = rows[["coordZ", "coordY", "coordX"]].to_numpy(dtype=int)
        inside = np.all((centres >= 0) & (centres < np.array(volume.shape)), axis=1)
        half = size // 2
        patches = np.stack([padded[tuple(slice(c + STORED - half, c + STORED - half + size) for c in centre)] for centre in centres])
        return patches.astype(np.int16), inside

    return extract


def candidate_rows():
    return pd.DataFrame(
        {
            "seriesuid": ["scan.a", "scan.b", "scan.a", "scan.b"],
            "coordX": [10, 20, 45, 0],
            "coordY": [12, 8, 30, 0],
            "coordZ": [5, 30, 20, 0],
            "class": [1, 0, 0, 0],
        }
    )


def test_patch_cache_stores_centred_patches(tmp_path):
    volume = np.random.default_rng(0).integers(-1000, 400, (40, 50, 50)).astype(np.int16)
    calls = []

    cache = write_patch_cache(tmp_path, "train", candidate_rows(), make_volume_extractor(volume, calls))

    assert len(cache) == 4
    assert cache.size == STORED
    assert cache.patches.dtype == np.int16
    assert sorted(calls) == ["scan.a", "scan.b"]
    for row in cache.table.itertuples():
        assert cache.patches[row.patch_index][CENTRE, CENTRE, CENTRE] == volume[row.coordZ, row.coordY, row.coordX]
    assert cache.table["inside"].tolist() == [True, True, True, True]
    assert cache.table["patch_index"].tolist() == [0, 1, 2, 3]
    assert cache.labels.tolist() == [1, 0, 0, 0]
    pd.testing.assert_frame_equal(cache.table[candidate_rows().columns], candidate_rows())


def test_patch_cache_pads_at_border(tmp_path):
    volume = np.zeros((40, 50, 50), dtype=np.int16)
    rows = candidate_rows().iloc[[3]].reset_index(drop=True)

    cache = write_patch_cache(tmp_path, "test", rows, make_volume_extractor(volume, []))

    patch = np.asarray(cache.patches[0])
    assert patch[CENTRE, CENTRE, CENTRE] == 0
    assert patch[CENTRE - 1, CENTRE, CENTRE] == AIR_HU
    assert patch[CENTRE:, CENTRE:, CENTRE:].max() == 0


def test_patch_cache_is_reused(tmp_path):
    volume = np.zeros((40, 50, 50), dtype=np.int16)
    calls = []
    write_patch_cache(tmp_path, "train", candidate_rows(), make_volume_extractor(volume, calls))

    write_patch_cache(tmp_path, "train", candidate_rows(), make_volume_extractor(volume, calls))
    assert len(calls) == 2

    changed = candidate_rows().assign(coordX=[11, 20, 45, 0])
    write_patch_cache(tmp_path, "train", changed, make_volume_extractor(volume, calls))
    assert len(calls) == 4

    write_patch_cache(tmp_path, "train", changed, make_volume_extractor(volume, calls), overwrite=True)
    assert len(calls) == 6


def test_patch_cache_manifest(tmp_path):
    volume = np.zeros((40, 50, 50), dtype=np.int16)
    write_patch_cache(tmp_path, "validation", candidate_rows(), make_volume_extractor(volume, []))

    manifest = json.loads(cache_paths(tmp_path, "validation")["manifest"].read_text())

    assert manifest["size"] == STORED
    assert manifest["rows"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "validation_candidates.csv", "validation_manifest.json", "validation_patches.npy",
    ]


def test_patch_cache_failed_build_leaves_no_cache(tmp_path):
    def broken(seriesuid, rows, size):
        return np.zeros((len(rows), size, size, size - 1), dtype=np.int16), np.ones(len(rows), bool)

    with pytest.raises(DatasetError, match="expected"):
        write_patch_cache(tmp_path, "train", candidate_rows(), broken)

    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DatasetError, match="missing"):
        open_patch_cache(tmp_path, "train")


def test_patch_cache_rejects_even_size(tmp_path):
    with pytest.raises(DatasetError, match="odd"):
        write_patch_cache(tmp_path, "train", candidate_rows(), make_volume_extractor(np.zeros((4, 4, 4)), []), size=36)


def test_patch_cache_detects_truncated_table(tmp_path):
    volume = np.zeros((40, 50, 50), dtype=np.int16)
    write_patch_cache(tmp_path, "train", candidate_rows(), make_volume_extractor(volume, []))
    table_path = cache_paths(tmp_path, "train")["table"]
    table_path.write_text("\n".join(table_path.read_text().splitlines()[:3]) + "\n")

    with pytest.raises(DatasetError, match="contains 4 patches but train_candidates.csv has 2 rows"):
        open_patch_cache(tmp_path, "train")


def test_subsample_negatives_keeps_positives():
    rows = pd.DataFrame({"seriesuid": ["s"] * 1000, "class": [1 if i % 100 == 0 else 0 for i in range(1000)]})

    kept = subsample_negatives(rows, 0.1, seed=0)
    again = subsample_negatives(rows, 0.1, seed=0)

    assert int(kept["class"].sum()) == 10
    assert 60 < int((kept["class"] == 0).sum()) < 140
    pd.testing.assert_frame_equal(kept, again)
    assert len(subsample_negatives(rows, 1.0)) == 1000
    with pytest.raises(DatasetError, match=r"\(0, 1\]"):
        subsample_negatives(rows, 0.0)
