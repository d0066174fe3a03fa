"""Tests for luna_utils.models and luna_utils.training: the CNN, its training loop, submissions."""

import math

import keras
import numpy as np
import pandas as pd
import pytest

from luna_utils.errors import LunaError
from luna_utils.models import CnnConfig, build_cnn
from luna_utils.patch_cache import PatchCache
from luna_utils.pipeline import TEST_TIME_VIEWS, AugmentConfig, evaluation_dataset
from luna_utils.training import (
    CHECKPOINT_NAME,
    HISTORY_NAME,
    LOG_FOLDER,
    SUBMISSION_COLUMNS,
    TrainConfig,
    make_callbacks,
    make_submission,
    predict_patches,
    set_seeds,
    train_cnn,
    write_seriesuids,
    tensorboard_available,
    write_submission,
)

TINY = CnnConfig(input_size=16, width=4, depth=2, dense_units=8, dropout=0.0, learning_rate=1e-2)
STORED = 21
CENTRE = STORED // 2


def blob_or_vessel_cache(n, seed, name):
    """Positives: a ball at the centre. Negatives: a tube along z. Noise on both."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:STORED, :STORED, :STORED]
    ball = (z - CENTRE) ** 2 + (y - CENTRE) ** 2 + (x - CENTRE) ** 2 <= 9
    tube = np.broadcast_to((y - CENTRE) ** 2 + (x - CENTRE) ** 2 <= 2, (STORED,) * 3)
    labels = (np.arange(n) % 4 == 0).astype(int)
    patches = rng.normal(-850, 60, (n, STORED, STORED, STORED))
    for i, label in enumerate(labels):
        patches[i][ball if label else tube] = rng.normal(30, 60)
    table = pd.DataFrame({"seriesuid": [f"scan{i % 3}" for i in range(n)], "class": labels})
    return PatchCache(name=name, patches=patches.astype(np.int16), table=table)


# Model


def test_cnn_output_shape_and_range():
    set_seeds(0)
    model = build_cnn(TINY)
    inputs = np.random.default_rng(0).random((3, 16, 16, 16, 1)).astype(np.float32)

    outputs = model.predict(inputs, verbose=0)

    assert outputs.shape == (3, 1)
    assert np.all((outputs >= 0) & (outputs <= 1))
    assert model.input_shape == (None, 16, 16, 16, 1)


def test_cnn_output_bias_matches_positive_fraction():
    model = build_cnn(TINY, positive_fraction=0.2)

    bias = model.get_layer("probability").get_weights()[1]

    assert bias[0] == pytest.approx(math.log(0.2 / 0.8), rel=1e-6)


def test_cnn_weight_average_setting():
    assert build_cnn(TINY).optimizer.use_ema
    assert not build_cnn(CnnConfig(weight_average=None)).optimizer.use_ema
    with pytest.raises(LunaError, match="weight_average"):
        CnnConfig(weight_average=1.0)


def test_cnn_norm_momentum_matches_averaging():
    config = CnnConfig()
    norm_steps = 1.0 / (1.0 - config.norm_momentum)
    average_steps = 1.0 / (1.0 - config.weight_average)

    model = build_cnn(CnnConfig(input_size=16, width=2, depth=2, norm_momentum=0.95))

    assert norm_steps >= average_steps
    assert model.get_layer("norm1_1").momentum == pytest.approx(0.95)
    assert model.get_layer("norm2_1").momentum == pytest.approx(0.95)
    with pytest.raises(LunaError, match="norm_momentum"):
        CnnConfig(norm_momentum=1.0)


def test_callbacks_swap_averaged_weights_first(tmp_path):
    averaged = make_callbacks(tmp_path, TrainConfig(), averaged_weights=True)
    plain = make_callbacks(tmp_path, TrainConfig(), averaged_weights=False)

    assert isinstance(averaged[0], keras.callbacks.SwapEMAWeights)
    assert not any(isinstance(c, keras.callbacks.SwapEMAWeights) for c in plain)
    kinds = {type(c) for c in plain}
    assert {keras.callbacks.EarlyStopping, keras.callbacks.ModelCheckpoint, keras.callbacks.CSVLogger} <= kinds
    stopping = next(c for c in plain if isinstance(c, keras.callbacks.EarlyStopping))
    assert stopping.monitor == "val_auc"
    assert stopping.restore_best_weights


@pytest.mark.parametrize("input_size, centre_cells", [(24, 1), (32, 2), (16, 2)])
def test_cnn_centre_head_crops_central_cells(input_size, centre_cells):
    model = build_cnn(CnnConfig(input_size=input_size, width=4, depth=3 if input_size != 16 else 2))

    assert model.get_layer("centre_crop").output.shape[1:4] == (centre_cells,) * 3
    assert model.get_layer("centre_and_average").output.shape[-1] == 2 * model.get_layer("global_pool").output.shape[-1]


def test_cnn_heads_build():
    for head in ("global_average", "flatten"):
        model = build_cnn(CnnConfig(input_size=16, width=4, depth=2, head=head))
        assert model.output_shape == (None, 1)


def test_cnn_depth_and_width():
    model = build_cnn(CnnConfig(width=6, depth=2, convs_per_block=2))

    conv_filters = [layer.filters for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]

    assert conv_filters == [6, 6, 12, 12]
    assert model.get_layer("pool2").output.shape[1:4] == (8, 8, 8)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": 32, "depth": 6}, "halved 6 times"),
        ({"input_size": 20, "depth": 3}, "halved 3 times"),
        ({"width": 0}, "positive"),
        ({"dropout": 1.0}, "dropout"),
        ({"head": "max"}, "head must be one of"),
    ],
)
def test_cnn_config_rejects_bad_values(kwargs, message):
    with pytest.raises(LunaError, match=message):
        CnnConfig(**kwargs)


def test_train_config_rejects_bad_monitor():
    with pytest.raises(LunaError, match="val_accuracy"):
        TrainConfig(monitor="val_accuracy")
    assert TrainConfig(monitor="val_loss").monitor_mode == "min"
    assert TrainConfig().monitor_mode == "max"


# Training


def test_tiny_model_loss_falls(tmp_path):
    set_seeds(0)
    train = blob_or_vessel_cache(48, seed=1, name="train")
    validation = blob_or_vessel_cache(24, seed=2, name="validation")
    config = TrainConfig(epochs=4, steps_per_epoch=8, batch_size=8, positive_fraction=0.5, patience=4, seed=0)
    model = build_cnn(TINY, positive_fraction=config.positive_fraction)

    history = train_cnn(model, train, validation, tmp_path, config, verbose=0)

    assert list(history.columns) == ["epoch", "auc", "loss", "val_auc", "val_loss"]
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["loss"].iloc[-1] < 0.7 * history["loss"].iloc[0]
    assert history["val_auc"].max() > 0.9


def test_training_writes_checkpoint_history_and_logs(tmp_path):
    set_seeds(0)
    train = blob_or_vessel_cache(32, seed=3, name="train")
    validation = blob_or_vessel_cache(16, seed=4, name="validation")
    config = TrainConfig(epochs=3, steps_per_epoch=3, batch_size=8, positive_fraction=0.5, patience=1, monitor="val_loss")
    model = build_cnn(TINY, positive_fraction=config.positive_fraction)

    history = train_cnn(model, train, validation, tmp_path, config, verbose=0)

    assert (tmp_path / CHECKPOINT_NAME).is_file()
    assert any((tmp_path / LOG_FOLDER).rglob("*tfevents*")) == tensorboard_available()
    logged = pd.read_csv(tmp_path / HISTORY_NAME)
    np.testing.assert_allclose(logged["val_loss"], history["val_loss"], rtol=1e-5)

    # The model keeps the best epoch's weights, which are also the checkpoint's.
    restored = keras.models.load_model(tmp_path / CHECKPOINT_NAME)
    np.testing.assert_allclose(
        predict_patches(restored, validation.patches), predict_patches(model, validation.patches), atol=1e-6
    )


def test_training_repeats_with_seed(tmp_path):
    train = blob_or_vessel_cache(32, seed=5, name="train")
    validation = blob_or_vessel_cache(16, seed=6, name="validation")
    config = TrainConfig(epochs=2, steps_per_epoch=3, batch_size=8, positive_fraction=0.5, seed=3)

    losses = []
    for run in range(2):
        set_seeds(3)
        model = build_cnn(TINY, positive_fraction=0.5)
        losses.append(train_cnn(model, train, validation, tmp_path / str(run), config, verbose=0)["loss"].to_numpy())

    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def test_training_rejects_empty_validation(tmp_path):
    train = blob_or_vessel_cache(8, seed=0, name="train")
    empty = PatchCache(name="validation", patches=train.patches[:0], table=train.table.iloc[:0])

    with pytest.raises(LunaError, match="validation split has no patches"):
        train_cnn(build_cnn(TINY), train, empty, tmp_path, TrainConfig(augment=AugmentConfig.off()))


def test_predict_with_views_averages_eight_views():
    set_seeds(0)
    model = build_cnn(TINY)
    cache = blob_or_vessel_cache(6, seed=8, name="test")

    averaged = predict_patches(model, cache.patches, test_time_augmentation=True)

    per_view = [
        model.predict(evaluation_dataset(cache.patches, size=16, view=view), verbose=0).reshape(-1)
        for view in TEST_TIME_VIEWS
    ]
    np.testing.assert_allclose(averaged, np.mean(per_view, axis=0), atol=1e-6)


def test_predict_patches_order_and_empty():
    set_seeds(0)
    model = build_cnn(TINY)
    cache = blob_or_vessel_cache(10, seed=7, name="test")

    whole = predict_patches(model, cache.patches, batch_size=4)
    reversed_order = predict_patches(model, cache.patches[::-1], batch_size=3)

    assert whole.shape == (10,)
    np.testing.assert_allclose(whole, reversed_order[::-1], atol=1e-6)
    assert predict_patches(model, cache.patches[:0]).shape == (0,)


# Submission


def submission_candidates():
    return pd.DataFrame(
        {
            "seriesuid": ["1.2.3", "1.2.3", "1.2.4"],
            "coordX": [-56.08, 0.1 + 0.2, 1e-7],
            "coordY": [-67.85, 123.456789012345, -0.0],
            "coordZ": [-311.92, -1.5, 2.0 / 3.0],
            "class": [0, 1, 0],
            "split": ["test"] * 3,
        },
        index=[7, 3, 9],
    )


def test_submission_columns_and_coordinates(tmp_path):
    candidates = submission_candidates()
    path = tmp_path / "results" / "submission.csv"

    written = write_submission(candidates, [0.1, 0.9, 0.5], path)
    read_back = pd.read_csv(path, dtype={"seriesuid": str})

    assert list(read_back.columns) == SUBMISSION_COLUMNS
    assert len(read_back) == len(candidates)
    assert read_back["seriesuid"].tolist() == candidates["seriesuid"].tolist()
    for column in ("coordX", "coordY", "coordZ"):
        np.testing.assert_array_equal(read_back[column].to_numpy(), candidates[column].to_numpy())
    np.testing.assert_array_equal(read_back["probability"].to_numpy(), [0.1, 0.9, 0.5])
    pd.testing.assert_frame_equal(written, read_back)
    assert [p.name for p in path.parent.iterdir()] == ["submission.csv"]


@pytest.mark.parametrize(
    "probabilities, message",
    [
        ([0.1, 0.2], "2 probabilities for 3 candidates"),
        ([0.1, float("nan"), 0.3], "row 1"),
        ([0.1, 0.2, 1.5], "outside"),
        ([-0.1, 0.2, 0.3], "outside"),
    ],
)
def test_submission_rejects_bad_probabilities(probabilities, message):
    with pytest.raises(LunaError, match=message):
        make_submission(submission_candidates(), probabilities)


def test_submission_rejects_missing_column():
    with pytest.raises(LunaError, match="coordZ"):
        make_submission(submission_candidates().drop(columns="coordZ"), [0.1, 0.2, 0.3])


def test_submission_of_no_candidates(tmp_path):
    written = write_submission(submission_candidates().iloc[:0], [], tmp_path / "empty.csv")

    assert written.empty
    assert (tmp_path / "empty.csv").read_text().strip() == ",".join(SUBMISSION_COLUMNS)


def test_write_seriesuids(tmp_path):
    write_seriesuids(["1.2.4", "1.2.3", "1.2.4"], tmp_path / "test_seriesuids.csv")

    assert (tmp_path / "test_seriesuids.csv").read_text().splitlines() == ["seriesuid", "1.2.4", "1.2.3"]
