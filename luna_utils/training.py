"""Training the 3-D CNN, predicting, and writing LUNA16 submissions.

Model selection uses the validation split only: early stopping watches a validation metric and
the weights of the best validation epoch are restored. The test split is predicted once, after
training, and written as a LUNA16 submission (`seriesuid,coordX,coordY,coordZ,probability`) whose
coordinates are copied from the candidate table, never recomputed from voxel indices.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from numpy.typing import ArrayLike, NDArray

from luna_utils.errors import LunaError
from luna_utils.patch_cache import PatchCache
from luna_utils.pipeline import TEST_TIME_VIEWS, AugmentConfig, evaluation_dataset, training_dataset

logger = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ["seriesuid", "coordX", "coordY", "coordZ", "probability"]

# File names inside a model folder.
CHECKPOINT_NAME = "best.keras"
HISTORY_NAME = "history.csv"
LOG_FOLDER = "logs"


@dataclass(frozen=True)
class TrainConfig:
    """How long and on what stream the CNN trains.

    Attributes:
        epochs: Maximum number of epochs; early stopping may end training sooner.
        steps_per_epoch: Batches per epoch (the balanced stream is endless, so an epoch is a
            fixed number of batches rather than one pass over the data).
        batch_size: Patches per batch.
        positive_fraction: Share of positives in the training stream.
        patience: Epochs without improvement of `monitor` before training stops.
        monitor: Validation metric for early stopping and checkpoints: "val_auc" or "val_loss".
        seed: Seed of weights, shuffling, sampling and augmentation.
        augment: Random changes applied to training patches.
    """

    epochs: int = 15
    steps_per_epoch: int = 30
    batch_size: int = 32
    positive_fraction: float = 0.25
    patience: int = 5
    monitor: str = "val_auc"
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.monitor not in ("val_auc", "val_loss"):
            raise LunaError(f"monitor must be 'val_auc' or 'val_loss'; got {self.monitor!r}.")
        if min(self.epochs, self.steps_per_epoch, self.batch_size) < 1 or self.patience < 0:
            raise LunaError(
                "epochs, steps_per_epoch and batch_size must be at least 1 and patience at least 0; "
                f"got {self.epochs}, {self.steps_per_epoch}, {self.batch_size}, {self.patience}."
            )

    @property
    def monitor_mode(self) -> str:
        """'max' for AUC, 'min' for loss."""
        return "min" if self.monitor.endswith("loss") else "max"


def set_seeds(seed: int, deterministic_ops: bool = True) -> None:
    """Seed Python, NumPy, TensorFlow and Keras, and ask TensorFlow for deterministic kernels.

    Op determinism makes a rerun on the same machine give the same weights. It stays on for the
    rest of the process, and TensorFlow raises at run time for the few ops that have no
    deterministic kernel.
    """
    keras.utils.set_random_seed(seed)
    if deterministic_ops:
        tf.config.experimental.enable_op_determinism()


def make_callbacks(
    model_dir: str | Path, config: TrainConfig, averaged_weights: bool = False
) -> list[keras.callbacks.Callback]:
    """Return early stopping, best-model checkpoint (`.keras`), CSV history and TensorBoard logs.

    With `averaged_weights` (an optimizer built with `use_ema=True`), a `SwapEMAWeights` callback
    comes first, so validation, early stopping and the checkpoint all see the averaged weights.

    Writing TensorBoard logs needs the `tensorboard` package, which the `tensorflow` 2.21 package
    does not depend on. Without it the TensorBoard callback is left out and a warning is logged.

    Args:
        model_dir: Folder for `best.keras`, `history.csv` and `logs/`; created if missing.
        config: Supplies the monitored metric and the patience.
        averaged_weights: Whether the optimizer keeps a moving average of the weights.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    callbacks = [keras.callbacks.SwapEMAWeights(swap_on_epoch=True)] if averaged_weights else []
    callbacks += [
        keras.callbacks.EarlyStopping(
            monitor=config.monitor,
            mode=config.monitor_mode,
            patience=config.patience,
            restore_best_weights=True,
            verbose=0,
        ),
        keras.callbacks.ModelCheckpoint(
            model_dir / CHECKPOINT_NAME,
            monitor=config.monitor,
            mode=config.monitor_mode,
            save_best_only=True,
            verbose=0,
        ),
        keras.callbacks.CSVLogger(str(model_dir / HISTORY_NAME)),
    ]
    if tensorboard_available():
        callbacks.append(
            keras.callbacks.TensorBoard(log_dir=str(model_dir / LOG_FOLDER), histogram_freq=0, write_graph=False)
        )
    else:
        logger.warning("The tensorboard package is not installed; training runs without TensorBoard logs.")
    return callbacks


def tensorboard_available() -> bool:
    """Return whether the `tensorboard` package, needed to write TensorBoard logs, is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def train_cnn(
    model: keras.Model,
    train: PatchCache,
    validation: PatchCache,
    model_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    verbose: int = 2,
) -> pd.DataFrame:
    """Train a compiled model on the balanced stream and select its epoch on the validation split.

    Args:
        model: A compiled model with an `auc` metric, as from `luna_utils.models.build_cnn`.
        train: Training patches; both classes must be present.
        validation: Validation patches, all of them, with their natural class balance.
        model_dir: Folder for the checkpoint, the history and the TensorBoard logs.
        config: Training settings.
        verbose: Keras verbosity (2 prints one line per epoch).

    Returns:
        The history, one row per epoch, with columns `epoch`, `loss`, `auc`, `val_loss`,
        `val_auc`. The model ends with the weights of the best validation epoch.
    """
    if len(validation) == 0:
        raise LunaError("The validation split has no patches; choose validation subsets that hold scans.")

    stream = training_dataset(
        train.patches,
        train.labels,
        batch_size=config.batch_size,
        positive_fraction=config.positive_fraction,
        augment=config.augment,
        seed=config.seed,
        size=model.input_shape[1],
    )
    held_out = evaluation_dataset(
        validation.patches, validation.labels, batch_size=2 * config.batch_size, size=model.input_shape[1]
    )
    logger.info(
        "Training on %d patches (%d positive), validating on %d (%d positive).",
        len(train), int(train.labels.sum()), len(validation), int(validation.labels.sum()),
    )

    history = model.fit(
        stream,
        epochs=config.epochs,
        steps_per_epoch=config.steps_per_epoch,
        validation_data=held_out,
        shuffle=False,
        callbacks=make_callbacks(model_dir, config, averaged_weights=bool(model.optimizer.use_ema)),
        verbose=verbose,
    )
    frame = pd.DataFrame(history.history)
    frame.insert(0, "epoch", np.arange(1, len(frame) + 1))
    return frame


def predict_patches(
    model: keras.Model,
    patches: np.ndarray,
    batch_size: int = 64,
    test_time_augmentation: bool = False,
) -> NDArray[np.float64]:
    """Return the model's nodule probability for each patch, shape (N,), in patch order.

    Args:
        model: A trained model.
        patches: Shape (N, S, S, S), int16 HU, axes (z, y, x).
        batch_size: Patches per prediction batch.
        test_time_augmentation: Average the probabilities of the eight views in
            `TEST_TIME_VIEWS` (turns and flips about the candidate), which costs eight predictions.
    """
    if len(patches) == 0:
        return np.zeros(0, dtype=np.float64)
    views = TEST_TIME_VIEWS if test_time_augmentation else ((False, 0),)
    total = np.zeros(len(patches), dtype=np.float64)
    for view in views:
        dataset = evaluation_dataset(patches, batch_size=batch_size, size=model.input_shape[1], view=view)
        total += model.predict(dataset, verbose=0).reshape(-1)
    return total / len(views)


def make_submission(candidates: pd.DataFrame, probabilities: ArrayLike) -> pd.DataFrame:
    """Pair candidates with probabilities in the LUNA16 submission format.

    Args:
        candidates: The test candidates with `seriesuid, coordX, coordY, coordZ` (world LPS mm).
        probabilities: One probability per candidate row, in row order, each in [0, 1].

    Returns:
        Columns `seriesuid, coordX, coordY, coordZ, probability`, one row per candidate, the
        coordinates copied unchanged.

    Raises:
        LunaError: On a column missing, a length mismatch, or a probability outside [0, 1] or NaN.
    """
    missing = [c for c in SUBMISSION_COLUMNS[:4] if c not in candidates.columns]
    if missing:
        raise LunaError(f"The candidate table lacks column(s) {missing}; it has {list(candidates.columns)}.")
    values = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    if values.shape[0] != len(candidates):
        raise LunaError(
            f"Got {values.shape[0]} probabilities for {len(candidates)} candidates; "
            "give one probability per candidate row, in the same order."
        )
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        index = int(np.flatnonzero(bad)[0])
        raise LunaError(
            f"Probability {values[index]!r} of candidate row {index} is outside [0, 1]; "
            "check the model output."
        )

    submission = candidates[SUBMISSION_COLUMNS[:4]].reset_index(drop=True).copy()
    submission["probability"] = values
    return submission


def _write_csv_atomic(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        # pandas writes each float64 as its shortest repr, which reads back as the same value.
        frame.to_csv(temporary, index=False)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_submission(candidates: pd.DataFrame, probabilities: ArrayLike, path: str | Path) -> pd.DataFrame:
    """Write a LUNA16 submission CSV atomically and return it; see `make_submission`."""
    submission = make_submission(candidates, probabilities)
    _write_csv_atomic(submission, Path(path))
    logger.info("Wrote %d submission rows to %s.", len(submission), Path(path).name)
    return submission


def write_seriesuids(seriesuids: ArrayLike, path: str | Path) -> pd.DataFrame:
    """Write the scans a submission covers as a one-column CSV (`seriesuid`, with header)."""
    frame = pd.DataFrame({"seriesuid": pd.unique(np.asarray(seriesuids, dtype=str))})
    _write_csv_atomic(frame, Path(path))
    return frame
